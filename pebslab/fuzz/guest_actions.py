"""The guest's actions beyond MSRs: its page tables, PEBS set-ups, perf driver, workloads.

pebslab only. Declared with :func:`~pebslab.fuzz.actions.action` into
:data:`~pebslab.fuzz.actions.ACTIONS` (see actions.py for the contract of
``draw`` and ``run``).
"""

from __future__ import annotations

from .. import scenarios as S
from ..host.mm import HostOutOfMemory
from ..hw import msr as M
from ..hw.errors import GuestCrash, GuestFault
from ..hw.mmu import PAGE_SIZE as PAGE
from .actions import (ACTIONS, WORKLOADS, action, draw_value, escaped, guest_call, perf_call,
                      run_vm)
from .invariants import walk


# =============================================================================
# guest memory
# =============================================================================

def pick_page(c, d, mapped: bool) -> int | None:
    """A known guest page that is (or is not) mapped now; a few tries, else None."""
    pages = c.known_pages()
    if not pages:
        return None
    for _ in range(6):
        gva = pages[d.integer(0, len(pages) - 1)]
        # side-effect free (translate() would fault swapped table pages in, and a
        # draw that ends in a skip is not replayed)
        if (walk(c.vm, c.guest.mm.cr3, gva) is not None) == mapped:
            return gva
    return None


def target_gpa(c, d, gva):
    how = d.choice(("old", "fresh", "alias"), (4, 3, 1))
    if how == "old" and gva in c.last_gpa:
        return "old", 0
    if how == "alias":
        return "alias", d.integer(0, 1 << 16)
    return "fresh", 0


def resolve_gpa(c, gva, target, pick):
    """The GPA a (re)map points at: the old one, an alias of a known one, or a fresh one."""
    if target == "old" and gva in c.last_gpa:
        return c.last_gpa[gva], False
    if target == "alias":
        known = sorted({g for g in c.last_gpa.values() if g is not None}
                       | set(c.guest.mm.table_pages))
        if known:
            g = known[pick % len(known)]
            return g, g in c.guest.mm.table_pages
    gpa, out = guest_call(c, lambda: c.guest.mm.alloc_phys(1), "guest.mm.alloc_phys")
    return (gpa if out == "ok" else None), False


def note_remap(c, gva):
    """The guest edits the mapping of ``gva`` (a PTE write, page-tracked under `fixed`)."""
    for v in c.vm.vcpus:
        if v.pmu.pebs_enable:
            c.stats["remap_while_pebs"] += 1


@action(2)
class alloc:
    """The guest kernel allocates and maps a few pages."""

    def draw(c, d):
        return {"pages": d.choice((1, 2, 3, 8))}

    def run(c, pages):
        gva, out = guest_call(c, lambda: c.guest.mm.alloc(pages), "guest.mm.alloc")
        if out == "ok":
            c.add_region(gva, pages, "alloc")
            for i in range(pages):
                c.last_gpa[gva + i * PAGE] = c.guest.mm.translate(gva + i * PAGE)
        return out


@action(3)
class map:
    """The guest maps an unmapped known page (to its old, a fresh or an aliased frame)."""

    def draw(c, d):
        gva = pick_page(c, d, False)
        if gva is None:
            return None
        how, pick = target_gpa(c, d, gva)
        return {"gva": gva, "target": how, "pick": pick}

    def run(c, gva, target, pick):
        if c.guest.mm.translate(gva) is not None:
            return "SKIP"
        gpa, aliased_table = resolve_gpa(c, gva, target, pick)
        if gpa is None:
            return "GUEST_OOM"
        c.scribbled |= aliased_table
        _, out = guest_call(c, lambda: c.guest.mm.map(gva, gpa), "guest.mm.map")
        if out == "ok":
            note_remap(c, gva)
        return out


@action(3)
class unmap:
    """The guest unmaps a known page (the DS area or the PEBS buffer included)."""

    def draw(c, d):
        gva = pick_page(c, d, True)
        return None if gva is None else {"gva": gva}

    def run(c, gva):
        if c.guest.mm.translate(gva) is None:
            return "SKIP"
        old, out = guest_call(c, lambda: c.guest.mm.unmap(gva), "guest.mm.unmap")
        if out == "ok":
            c.last_gpa[gva] = old
            note_remap(c, gva)
        return out


@action(3)
class remap:
    """The guest points a mapped page at another frame (copying its bytes, or not)."""

    def draw(c, d):
        gva = pick_page(c, d, True)
        if gva is None:
            return None
        how, pick = target_gpa(c, d, gva)
        return {"gva": gva, "target": how, "pick": pick, "copy": d.boolean()}

    def run(c, gva, target, pick, copy):
        if c.guest.mm.translate(gva) is None:
            return "SKIP"
        gpa, aliased_table = resolve_gpa(c, gva, target, pick)
        if gpa is None:
            return "GUEST_OOM"
        c.scribbled |= aliased_table
        data = None
        if copy:
            data, out = guest_call(c, lambda: c.guest.read(gva, PAGE), "guest.read")
            if out != "ok":
                return out
        old, out = guest_call(c, lambda: c.guest.mm.remap(gva, gpa), "guest.mm.remap")
        if out != "ok":
            return out
        c.last_gpa[gva] = old
        note_remap(c, gva)
        if data is not None and not aliased_table:
            _, out = guest_call(c, lambda: c.guest.write(gva, data), "guest.write")
        return out


@action(3)
class write_mem:
    """The guest writes 8 bytes into a known page (DS fields, page tables, records)."""

    def draw(c, d):
        gva = pick_page(c, d, True)
        if gva is None:
            return None
        off = d.choice((0x20, 0x28, 0x30, 0x38, 0x40, 0, d.integer(0, PAGE - 8) & ~7))
        return {"gva": gva, "offset": off, "value": draw_value(c, d, M.MSR_IA32_DS_AREA)}

    def run(c, gva, offset, value):
        gpa = c.guest.mm.translate(gva)
        if gpa is None:
            return "SKIP"
        if gpa & ~0xFFF in c.guest.mm.table_pages:
            c.scribbled = True
        if c.dirty_on:
            c.dirty_expect.add(gpa >> 12)
        _, out = guest_call(c, lambda: c.guest.write(gva + offset, value.to_bytes(8, "little")),
                            "guest.write")
        return out


@action(1)
class read_mem:
    """The guest reads from a known page."""

    def draw(c, d):
        gva = pick_page(c, d, True)
        if gva is None:
            return None
        return {"gva": gva, "n": d.choice((8, 96, PAGE, 2 * PAGE))}

    def run(c, gva, n):
        return guest_call(c, lambda: c.guest.read(gva, n), "guest.read")[1]


@action(1)
class context_switch:
    """The guest loads another CR3: a copy of its PML4, the original, or the previous copy."""

    def draw(c, d):
        return {"to": d.choice(("copy", "original", "previous"))}

    def run(c, to):
        mm = c.guest.mm
        if to == "original":
            cr3 = mm.cr3
        elif to == "previous" and c.cr3_copies:
            cr3 = c.cr3_copies[-1]
        else:
            new, out = guest_call(c, lambda: mm.alloc_phys(1), "guest.mm.alloc_phys")
            if out != "ok":
                return out
            pml4, out = guest_call(c, lambda: c.vm.phys.read(mm.cr3, PAGE), "phys.read")
            if out != "ok":
                return out
            _, out = guest_call(c, lambda: c.vm.phys.write(new, pml4), "phys.write")
            if out != "ok":
                return out
            mm.table_pages.add(new)      # the guest kernel keeps it as a page table
            c.cr3_copies.append(new)
            cr3 = new
        for v in c.vm.vcpus:
            try:
                v.load_cr3(cr3)
            except Exception as e:  # noqa: BLE001
                return escaped(c, "vcpu.load_cr3", e)
        return "ok"


# =============================================================================
# PEBS set-up
# =============================================================================

def pebs_events(c) -> list[int]:
    codes = [0x00C0, 0x00C4, 0x003C]
    codes += [e.event | e.umask << 8 for e in c.vm.cpu.events if e.pebs]
    return sorted(set(codes))


@action(5, pebs_bias=1.6)
class manual_pebs:
    """The guest sets PEBS up by hand (scenarios.manual_pebs): DS area, buffer, MSRs."""

    def draw(c, d):
        nr_gp = max(c.oracle.nr_gp, 1)
        return {
            "ds_offset": d.choice((0, 0, 8 * d.integer(0, 511), PAGE - 64, PAGE - 8)),
            "buf_offset": d.choice((0, 0, 2048, 8 * d.integer(0, 511))),
            "buf_pages": d.choice((1, 2, 4, 16, 17, 20, 40)),
            "period": d.choice((97, 500, 2000, 10007)),
            "event": d.choice(pebs_events(c)),
            "counter": d.choice(tuple(range(min(nr_gp, 8))) + (min(nr_gp, 7),)),
            "threshold_records": d.choice((1, 1, 1, 2, 8, 40, 1 << 16)),
            "vcpu": d.integer(0, c.config.vcpus - 1),
        }

    def run(c, vcpu, **kw):
        vcpu = vcpu % len(c.vm.vcpus)
        crashed = c.vm.crashed
        try:
            st = S.manual_pebs(c.guest, vcpu=vcpu, **kw)
        except GuestCrash as e:
            return "GUEST_CRASH" if crashed else escaped(c, "manual_pebs", e)
        except GuestFault:
            c.stats["GP"] += 1
            return "GP"
        except HostOutOfMemory as e:
            return escaped(c, "manual_pebs", e)
        except MemoryError:
            c.stats["GUEST_OOM"] += 1
            return "GUEST_OOM"
        except ValueError as e:
            # the helper refuses a counter the PMU does not have before touching the guest
            if "counter must be a GP counter" in str(e):
                c.stats["ARG_REJECTED"] += 1
                return "ARG_REJECTED"
            return escaped(c, "manual_pebs", e)
        except Exception as e:  # noqa: BLE001
            return escaped(c, "manual_pebs", e)
        if crashed:
            c.violate("crash", "ran-after-crash", "manual_pebs on a crashed VM did not raise "
                                                  "GuestCrash")
        c.setups.append(st)
        c.add_region(st.ds_region[0], st.ds_region[1], "ds")
        c.add_region(st.buf_region[0], st.buf_region[1], "buffer")
        for gva in c.known_pages():
            c.last_gpa.setdefault(gva, c.guest.mm.translate(gva))
        return "ok"


@action(2)
class remap_buffer_page:
    """The guest moves one page of a hand-made PEBS buffer to a new frame."""

    def draw(c, d):
        if not c.setups:
            return None
        return {"setup": d.integer(0, len(c.setups) - 1), "page": d.integer(0, 40)}

    def run(c, setup, page):
        st = c.setups[setup % len(c.setups)]
        page %= st.buf_region[1]
        gva = st.buf_region[0] + page * PAGE
        if c.guest.mm.translate(gva) is None:
            return "SKIP"
        r, out = guest_call(c, lambda: S.remap_buffer_page(c.guest, st, page),
                            "remap_buffer_page")
        if out == "ok":
            c.last_gpa[gva] = r[0]
            note_remap(c, gva)
        return out


@action(4, pebs_bias=0.7)
class perf_record:
    """The guest's perf driver samples an event (PEBS for the :p modifiers)."""

    def draw(c, d):
        names = ["cycles", "instructions", "branches", "ref-cycles", "cache-misses",
                 "cycles:p", "cycles:pp", "instructions:pp", "branches:pp", "instructions:u",
                 "r00c0:pp", "cycles:ppp"]
        names += [e.name + ":pp" for e in c.vm.cpu.events if e.pebs]
        return {"event": d.choice(names),
                "period": d.choice((97, 1000, 10007, 100003, (1 << 31) + 11)),
                "large": d.boolean(0.3)}

    def run(c, event, period, large):
        p = c.guest.perf
        rec, out = perf_call(c, lambda: p.record(event, period, large_pebs=large),
                             f"guest.perf.record({event!r})")
        if out == "ok":
            c.recordings.append(rec)
        if p.ds_gva is not None:
            c.add_region(p.ds_gva, 1, "perf-ds")
            c.add_region(p.pebs_buffer_gva, p.pebs_buffer_size // PAGE, "perf-buffer")
            for gva in c.known_pages():
                c.last_gpa.setdefault(gva, c.guest.mm.translate(gva))
        return out


@action(2)
class perf_stat:
    """The guest's perf driver counts one to three events."""

    def draw(c, d):
        pool = ["instructions", "cycles", "branches", "ref-cycles", "cache-references",
                "instructions:u", "cycles:k", "branch-misses"]
        return {"events": [d.choice(pool) for _ in range(d.integer(1, 3))]}

    def run(c, events):
        cnt, out = perf_call(c, lambda: c.guest.perf.stat(events), "guest.perf.stat")
        if out == "ok":
            c.countings.append(cnt)
        return out


@action(3)
class perf_stop:
    """The guest reads or stops one of its recordings / countings."""

    def draw(c, d):
        live = len(c.recordings) + len(c.countings)
        if not live:
            return None
        return {"pick": d.integer(0, live - 1), "read_only": d.boolean(0.3)}

    def run(c, pick, read_only):
        live = c.recordings + c.countings
        if not live:
            return "SKIP"
        obj = live[pick % len(live)]
        if read_only:
            fn = obj.read if hasattr(obj, "read") else obj.samples
            return perf_call(c, fn, "perf read")[1]
        _, out = perf_call(c, obj.stop, "perf stop")
        if obj in c.recordings:
            c.recordings.remove(obj)
        else:
            c.countings.remove(obj)
        return out


# =============================================================================
# running
# =============================================================================

@action(14, pebs_bias=1.4)
class run:
    """The guest runs a workload on one vCPU."""

    def draw(c, d):
        return {"n": d.choice(c.config.runs), "workload": d.integer(0, len(WORKLOADS) - 1),
                "vcpu": d.integer(0, c.config.vcpus - 1)}

    def run(c, n, workload, vcpu):
        w = WORKLOADS[workload % len(WORKLOADS)]
        return run_vm(c, c.vm, lambda: c.vm.run(w, n, vcpu=vcpu % len(c.vm.vcpus)), "vm.run")


@action(1.5)
class bystander_run:
    """The other VM on the host runs (it only counts instructions)."""

    def draw(c, d):
        return {"n": d.choice(c.config.runs)}

    def run(c, n):
        return run_vm(c, c.bystander, lambda: c.bystander.run(WORKLOADS[0], n), "bystander.run")


@action(0.2, ci=False)
class pressure_run:
    """The guest runs half a million instructions while the host reclaims at every tick."""

    def draw(c, d):
        return {"pressure": d.choice((1, 8, 64)), "n": 520_000}

    def run(c, pressure, n):
        host = c.vm.host
        host.pressure = pressure
        try:
            return ACTIONS["run"].run(c, n, 0, 0)
        finally:
            host.pressure = 0
