"""The invariants a campaign checks after every step, and the side-effect-free views they use.

pebslab only. Each check takes the :class:`~pebslab.fuzz.campaign.Campaign`
and reports a broken invariant with ``c.violate(invariant, rule, message)``;
``invariant/rule`` is the violation's signature.

isolation
    every PEBS record lands in a frame the VM owns (each ``PEBS_WRITE`` row
    of the trace), every present EPT entry maps a frame of its VM
    (``host.mm.check_invariants``), no ``HOST_FAULT``, the bystander VM never
    crashes and its memory never changes.
accounting
    every frame of a live VM has refcount 1 + its pins (``pinned_pages`` of
    every vCPU), no pin holds a foreign frame, no VM owns a frame its EPT does
    not map; after ``destroy`` nothing of the VM is left.
crashes
    a guest crash is reported as one (a ``GUEST_CRASH`` row, ``vm.crashed``,
    ``vm.crash_reason``), and only where :func:`classify_crash` can name the
    cause: the guest's own doing, or a documented limitation of the design on
    a CPU without EPT-friendly PEBS.

The MSR, CPUID and exception invariants are checked where the action runs
(actions.py), against :mod:`pebslab.fuzz.oracle`.
"""

from __future__ import annotations

import numpy as np

from ..host import perf_hw
from ..hw import msr as M
from ..hw.mmu import EPT_ADDR_MASK, EPT_R, PAGE_SIZE as PAGE, is_canonical, leaf_gpa, walk_tables
from ..hw.pebs import DS_SIZE_PATCH, DebugStore
from ..trace import KIND_ID as TRACE_KINDS
from .oracle import pebs_possible

U64 = (1 << 64) - 1


# =============================================================================
# a debugger's view of guest memory (no faults, no exits, no trace rows)
# =============================================================================

def peek(vm, gpa: int, n: int) -> bytes | None:
    """Bytes of guest memory as they are now, without faulting anything in.

    pebslab only: resident pages from host memory, swapped ones from the swap
    store. None if the range leaves guest memory.
    """
    out = bytearray()
    mm = vm.host_mm
    while n > 0:
        gfn, off = gpa >> 12, gpa & (PAGE - 1)
        chunk = min(n, PAGE - off)
        if not 0 <= gfn < vm.memory_pages:
            return None
        e = int(vm.ept[gfn])
        if e & EPT_R:
            base = (e & EPT_ADDR_MASK) + off
            out += mm.mem[base:base + chunk].tobytes()
        else:
            page = mm.swap.get((vm.id, gfn))
            out += page[off:off + chunk] if page is not None else bytes(chunk)
        gpa += chunk
        n -= chunk
    return bytes(out)


def walk(vm, cr3: int, gva: int) -> int | None:
    """The GPA ``gva`` maps to under ``cr3`` (side-effect free), or None."""
    if not 0 <= gva <= U64 or not is_canonical(gva):
        return None

    def read_entry(gpa):
        raw = peek(vm, gpa, 8)
        return None if raw is None else int.from_bytes(raw, "little")

    for level, _, entry in walk_tables(read_entry, cr3, gva):
        if entry is None or not entry & 1:
            return None
        if level == 1 or (level <= 3 and entry & 0x80):     # PS: a 1 GiB / 2 MiB leaf
            return leaf_gpa(level, entry, gva)
    return None  # pragma: no cover - walk_tables always ends at a leaf or a hole


def read_virt(vm, cr3: int, gva: int, n: int) -> bytes | None:
    """Bytes at a guest virtual address under ``cr3`` (side-effect free), or None."""
    out = bytearray()
    while n > 0:
        chunk = min(n, PAGE - (gva & (PAGE - 1)))
        gpa = walk(vm, cr3, gva)
        data = None if gpa is None else peek(vm, gpa, chunk)
        if data is None:
            return None
        out += data
        gva += chunk
        n -= chunk
    return bytes(out)


def ds_pages(ds_area: int, base: int, top: int, ds_size: int = DS_SIZE_PATCH) -> list[int]:
    """Every page the PEBS assist may touch: the DS area's and [base, top)'s (page GVAs)."""
    pages = list(range(ds_area & ~(PAGE - 1), ds_area + ds_size, PAGE))
    if top > base:
        pages += range(base & ~(PAGE - 1), top, PAGE)
    return pages


def page_count(ds_area: int, base: int, top: int, ds_size: int = DS_SIZE_PATCH) -> int:
    """len(ds_pages(...)) in O(1) (a guest may describe a buffer of 2**52 pages)."""
    n = ((ds_area + ds_size - 1) >> 12) - (ds_area >> 12) + 1
    if top > base:
        n += ((top - 1) >> 12) - (base >> 12) + 1
    return n


# =============================================================================
# after every step
# =============================================================================

def check(c) -> None:
    """Check every invariant now (side-effect free)."""
    c.stats["checks"] += 1
    for v in c.vm.vcpus:     # KVM pins through the CR3 of the moment
        if v.pmu.pinned_pages != c.pins_seen.get(v.index):
            c.pins_seen[v.index] = list(v.pmu.pinned_pages)
            c.pin_cr3[v.index] = v.cr3
    scan_traces(c)
    for vm in c.live_vms():
        check_crash(c, vm)
    check_accounting(c)
    if c.bystander.crashed:
        if id(c.bystander) not in c.crash_seen:
            c.crash_seen.add(id(c.bystander))
            c.violate("isolation", "bystander-crashed",
                      f"the bystander VM crashed: {c.bystander.crash_reason}")
    elif c.vm_digest(c.bystander) != c.bystander_digest:
        c.violate("isolation", "bystander-memory", "the bystander VM's memory changed")
        c.bystander_digest = c.vm_digest(c.bystander)


def scan_traces(c) -> None:
    """Count the new trace rows of every VM; check HOST_FAULT and PEBS_WRITE rows."""
    kinds = TRACE_KINDS
    for vm in c.all_vms:
        a = vm.trace.array
        start = c.scanned.get(id(vm), 0)
        if start == len(a):
            continue
        new = a[start:]
        c.scanned[id(vm)] = len(a)
        for name in ("PEBS_WRITE", "PEBS_FAULT", "HOST_FAULT", "EPT_VIOLATION", "SWAPIN",
                     "PMI_INJECT", "RECLAIM", "PIN"):
            n = int(np.count_nonzero(new["kind"] == kinds[name]))
            if n:
                c.stats[name] += n
        hf = new[new["kind"] == kinds["HOST_FAULT"]]
        if hf.size:
            c.violate("isolation", "host-fault", f"VM {vm.id}: {hf.size} HOST_FAULT event(s): "
                                                 f"the host ran with guest PEBS state")
        pw_idx = np.flatnonzero(new["kind"] == kinds["PEBS_WRITE"]) + start
        if pw_idx.size and not vm.destroyed:
            check_pebs_writes(c, vm, a, pw_idx)
        if c.dirty_on and vm is c.vm and pw_idx.size:
            mm = vm.host_mm
            for i in pw_idx:
                f = int(a["frame"][i])
                if int(mm.owner[f]) == vm.id:
                    c.dirty_expect.add(int(mm.gfn[f]))


def check_pebs_writes(c, vm, a, idx) -> None:
    """Every PEBS record of ``vm`` was written into a frame ``vm`` owned."""
    mm = vm.host_mm
    owner = mm.owner[a["frame"][idx]]
    bad = idx[owner != vm.id]
    reclaim = TRACE_KINDS["RECLAIM"]
    for i in bad:
        f = int(a["frame"][i])
        later = a[i + 1:]
        if np.any((later["kind"] == reclaim) & (later["frame"] == f)):
            continue      # the VM owned it; reclaim took it after the write
        c.violate("isolation", "pebs-write-foreign-frame",
                  f"VM {vm.id}: a PEBS record was written to host frame {f} "
                  f"(hpa {int(a['hpa'][i]):#x}), owned by {int(mm.owner[f])}")


def check_accounting(c) -> None:
    """Refcounts = 1 + pins; pins hold own frames; owned frames are mapped (or zapped but kept)."""
    live = c.live_vms()
    for host in c.active_hosts:
        mm = host.mm
        try:
            mm.check_invariants()
        except AssertionError as e:
            c.violate("accounting", "host-mm", f"host.mm.check_invariants: {e}")
        pins = np.zeros(mm.frames, np.int64)
        for vm in live:
            if vm.host_mm is not mm:
                continue
            for v in vm.vcpus:
                for f in v.pmu.pinned_pages:
                    if int(mm.owner[f]) != vm.id:
                        c.violate("isolation", "foreign-pin", f"VM {vm.id} vCPU {v.index} pins "
                                  f"frame {f}, owned by {int(mm.owner[f])}")
                    pins[f] += 1
            owned = np.flatnonzero(mm.owner == vm.id)
            mapped = (vm.ept[mm.gfn[owned]] & np.uint64(EPT_ADDR_MASK)) >> np.uint64(12)
            present = (vm.ept[mm.gfn[owned]] & np.uint64(EPT_R)) != 0
            orphan = owned[~present | (mapped != owned.astype(np.uint64))]
            # a zapper may take a pinned (or kept) frame's EPT entry and leave the frame
            # resident (FACTS g.1): host.mm.unmapped names those; the next access refaults it
            orphan = np.array([f for f in orphan.tolist()
                               if mm.unmapped.get((vm.id, int(mm.gfn[f]))) != f], np.int64)
            if orphan.size:
                c.violate("accounting", "unmapped-owned-frame", f"VM {vm.id} owns frames its "
                          f"EPT does not map: {orphan[:8].tolist()}")
        want = 1 + pins
        bad = np.flatnonzero((mm.owner >= 1) & (mm.refcount != want))
        if bad.size:
            f = int(bad[0])
            c.violate("accounting", "refcount", f"frame {f} (VM {int(mm.owner[f])}) has "
                      f"refcount {int(mm.refcount[f])}, expected 1 + {int(pins[f])} pins")
        ref0, _ = c.baselines[id(host)]
        r = mm.reserved_host_frames
        if not np.array_equal(mm.refcount[:r], ref0[:r]):
            c.violate("accounting", "host-reserved", "the host kernel's reserved frames "
                                                     "changed refcount")


# =============================================================================
# crashes
# =============================================================================

def check_crash(c, vm) -> None:
    """A crash is reported once, completely, and only with a cause classify_crash allows."""
    if not vm.crashed or id(vm) in c.crash_seen:
        return
    c.crash_seen.add(id(vm))
    c.stats["GUEST_CRASH"] += 1
    rows = vm.trace.of("GUEST_CRASH")
    if len(rows) != 1:
        c.violate("crash", "crash-rows", f"VM {vm.id} crashed with {len(rows)} GUEST_CRASH rows")
    if not vm.crash_reason:
        c.violate("crash", "crash-reason", f"VM {vm.id} crashed without a crash_reason")
    if vm is c.bystander:
        return      # reported as an isolation violation by check()
    allowed, why = classify_crash(c, vm)
    c.stats[f"crash:{why}"] += 1
    if not allowed:
        c.violate("crash", why, f"{vm.design.name} on {vm.cpu.name}: {why}: {vm.crash_reason}")


def classify_crash(c, vm) -> tuple[bool, str]:
    """(allowed?, cause) of a guest crash.

    Allowed: the guest's own doing (its PMI handler faulted, PEBS pointed at
    memory its page tables do not map, the DS buffer rewritten or unmapped
    while PEBS runs, page tables scribbled), and - on CPUs without
    EPT-friendly PEBS - the documented limitations of the `patch` and
    `review` designs (unpinned buffer tail, unpinned page tables, 17-page
    cap, dirty logging, a full autoload list). Under `fixed` an EPT
    violation in the assist of a well-formed set-up is a violation;
    `icelake` on an EPT-friendly CPU never crashes from EPT.
    """
    d, host = vm.design, vm.cpu
    reason = vm.crash_reason
    if reason.startswith("guest PMI handler"):
        return True, "guest PMI handler fault (self-harm)"
    if reason.startswith("EPT violation outside guest memory"):
        if c.scribbled:
            return True, "guest mapped beyond its memory (self-harm)"
        return False, "EPT violation outside guest memory without a cause"
    if reason.startswith("KVM: entry failed, hardware error 0x80000022"):
        # FACTS g.4: the patch stores a non-canonical DS_AREA unchecked and puts it on the
        # VM-entry MSR-load list; the entry fails and the VMM stops the VM (host unharmed)
        ent = getattr(vm, "entry_failure", None) or {}
        if d.name in ("patch", "review") and ent.get("msr") == M.MSR_IA32_DS_AREA \
                and not is_canonical(ent.get("value", 0)):
            return True, "non-canonical DS_AREA in the MSR-load list (patch limitation)"
        return False, "VM-entry failure without a non-canonical DS_AREA under patch/review"
    if not reason.startswith("PEBS assist"):
        return False, "unexplained crash"
    faults = vm.trace.rows("PEBS_FAULT")
    if not faults:
        return False, "PEBS crash without a PEBS_FAULT row"
    row = faults[-1]
    v = vm.vcpus[row["vcpu"]] if 0 <= row["vcpu"] < len(vm.vcpus) else vm.vcpus[0]
    if not pebs_possible(d.name, host.name):
        return False, "PEBS fault where the design gives the guest no PEBS"
    if "EPT" not in row["info"]:
        host_ds = perf_hw.HOST_DS_AREA
        if host_ds <= row["gva"] < host_ds + PAGE and v.pmu.ds_area != host_ds:
            full = len(vm.trace.of("AUTOLOAD_FULL")) > 0
            if d.name in ("patch", "review") and (full or not v.pmu.ds_area):
                return True, "guest ran with the host's DS_AREA (patch limitation: full " \
                             "autoload list or DS_AREA never switched)"
            return False, "guest ran with the host's DS_AREA"
        return True, "guest page fault in the PEBS assist (self-harm)"
    if host.pebs_ept:
        return False, "an EPT violation crashed a CPU with EPT-friendly PEBS"
    if d.name in ("patch", "review"):
        return True, "unpinned or write-protected PEBS memory (patch limitation)"
    if d.name != "fixed":
        return False, "EPT violation in the assist under a design that does not pin"
    if v.pmu.pebs_enable and not v.pmu.pinned_pages and c.ds_repin_failed.get(v.index):
        return False, "DS_AREA re-pin failed silently (fixed)"
    why = self_harm(c, vm, v)
    if why:
        return True, why
    if armed_precise(v) and not v.pmu.pebs_enable:
        return False, "PEBS still armed after PEBS_ENABLE=0 (fixed)"
    if v.cr3 != c.pin_cr3.get(v.index, v.cr3):
        return False, "context switch after pinning (fixed)"
    if armed_precise(v) and not v.pmu.pinned_pages:
        return False, "PEBS armed with nothing pinned (fixed)"
    return False, "EPT violation in the assist of a well-formed set-up (fixed)"


def armed_precise(v) -> bool:
    """Does a guest-owned precise host event still sit on a counter of ``v``'s pCPU?"""
    return any(ev.hw_idx >= 0 and ev.guest_owned and ev.attr.precise_ip
               for ev in v.pcpu.perf.events())


def self_harm(c, vm, v) -> str | None:
    """Why the PEBS set-up of vCPU ``v`` is the guest's own broken one (or None)."""
    if c.scribbled:
        return "guest wrote into its own page tables"
    ds = v.pmu.ds_area
    if not is_canonical(ds):
        return "non-canonical DS_AREA"
    raw = read_virt(vm, v.cr3, ds, DS_SIZE_PATCH)
    if raw is None:
        return "DS area unmapped by the guest"
    cur = DebugStore.from_bytes(raw)
    base, top = cur.pebs_buffer_base, cur.pebs_absolute_maximum
    seen = v.pmu.pin_view.get("ds") if v.pmu.pin_view else None
    if seen and (seen["pebs_buffer_base"], seen["pebs_absolute_maximum"]) != (base, top):
        return "guest changed the DS buffer pointers while PEBS was enabled"
    if page_count(ds, base, top) > vm.design.pin_limit:
        return "PEBS buffer larger than the design pins"
    pages = ds_pages(ds, base, top)
    gpas = [walk(vm, v.cr3, gva) for gva in pages]
    if any(g is None for g in gpas):
        return "PEBS buffer partly unmapped by the guest"
    gfns = [g >> 12 for g in gpas]
    if len(set(gfns)) != len(gfns):
        return "PEBS pages aliased by the guest"
    if not base <= cur.pebs_index <= top:
        return "pebs_index outside the buffer"
    return None
