"""The host's and userspace's actions: memory pressure, dirty logging, migration, reset, destroy.

pebslab only. Declared with :func:`~pebslab.fuzz.actions.action` into
:data:`~pebslab.fuzz.actions.ACTIONS` after the guest's actions. What they
call of the migration code goes through :mod:`._targets`.
"""

from __future__ import annotations

from ..hw import msr as M
from . import _targets as T
from .actions import ACTIONS, CPUS, action, check_rdmsr, host_call


# =============================================================================
# host
# =============================================================================

@action(6, pebs_bias=1.3)
class reclaim:
    """The host reclaims guest memory (memory pressure)."""

    def draw(c, d):
        return {"n": d.choice((1, 4, 32, 1 << 20))}

    def run(c, n):
        out, res = host_call(c, lambda: c.vm.host.reclaim(n), "host.reclaim")
        if res == "ok":
            c.stats["reclaimed"] += len(out)
        return res


@action(1)
class dirty_log_start:
    """Userspace turns dirty logging on (the first step of live migration)."""

    def draw(c, d):
        return {} if T.has("start_dirty_logging") else None

    def run(c):
        if c.vm.destroyed:
            return "SKIP"
        _, out = host_call(c, lambda: T.MIG.start_dirty_logging(c.vm), "start_dirty_logging")
        if out == "ok":
            c.dirty_on = True
            c.dirty_expect = set()
        return out


@action(1)
class dirty_log_get:
    """Userspace collects the dirty log: every page the guest wrote must be in it."""

    def draw(c, d):
        return {} if T.has("get_dirty_log") else None

    def run(c):
        if not c.dirty_on:
            return "SKIP"
        got, out = host_call(c, lambda: T.MIG.get_dirty_log(c.vm), "get_dirty_log")
        if out == "ok":
            missed = c.dirty_expect - set(got)
            if missed and not c.vm.crashed:
                c.violate("dirty-log", "missed-page", f"pages written while logging but not "
                          f"reported dirty: gfns {sorted(hex(g) for g in missed)[:8]}")
            c.dirty_expect = set()
        return out


@action(1)
class dirty_log_stop:
    """Userspace turns dirty logging off."""

    def draw(c, d):
        return {} if T.has("stop_dirty_logging") else None

    def run(c):
        if not c.dirty_on:
            return "SKIP"
        _, out = host_call(c, lambda: T.MIG.stop_dirty_logging(c.vm), "stop_dirty_logging")
        c.dirty_on = False
        return out


def rebind_guest(guest, vm) -> None:
    """Point a GuestKernel at the machine it was migrated to.

    pebslab only. The guest's memory and registers travel with
    save_state/restore_state, but the Python objects that stand for its
    kernel (GuestMM over ``phys``, the perf driver's vCPU) still point at
    the source machine; pebslab has no API for this yet (a strict xfail in
    tests/test_fuzz.py), so the fuzzer does it by hand.
    """
    guest.machine = vm
    guest.mm.phys = vm.phys
    guest.perf.machine = vm
    guest.perf.vcpu = vm.vcpus[0]


@action(1)
class migrate:
    """Userspace saves the VM and restores it on a new host (maybe another CPU model)."""

    def draw(c, d):
        if not T.has("save_state", "restore_state"):
            return None
        return {"cpu": d.choice((c.vm.cpu.name,) * 3 + CPUS),
                "order": d.choice(getattr(T.MIG, "MSR_ORDERS", ("userspace",))),
                "seed": d.integer(0, 1 << 16)}

    def run(c, cpu, order, seed):
        src = c.vm
        if src.crashed:
            return "SKIP"
        if c.dirty_on:
            ACTIONS["dirty_log_stop"].run(c)
        state, out = host_call(c, lambda: T.MIG.save_state(src), "save_state")
        if out != "ok":
            return out
        dest = c.new_host(cpu, seed)
        err = getattr(T.MIG, "MigrationError", ())
        new, out = host_call(c, lambda: T.MIG.restore_state(state, dest, None, order),
                             "restore_state", allowed=err)
        if out == "ESCAPED":
            # reported; the half-restored destination cannot be torn down: forget its host
            c.hosts.remove(dest)
            c.active_hosts.remove(dest)
            return out
        if out != "ok":
            c.stats["MIGRATION_REFUSED"] += 1
            return "MIGRATION_REFUSED"
        c.all_vms.append(new)
        c.destroy_checked(src)
        rebind_guest(c.guest, new)
        c.vm = new
        c.host = dest
        keep = (c.setups, c.regions, c.last_gpa, c.recordings, c.countings)
        c.adopt_vm(new, state.cpuid)
        c.setups, c.regions, c.last_gpa, c.recordings, c.countings = keep
        c.stats["migrations"] += 1
        return "ok"


@action(1.5)
class reset:
    """INIT/RESET of a vCPU: the PMU's control MSRs read 0 afterwards."""

    def draw(c, d):
        return {"vcpu": d.integer(0, c.config.vcpus - 1)}

    def run(c, vcpu):
        v = c.vcpu(vcpu)
        _, out = host_call(c, v.reset, "vcpu.reset")
        if out != "ok" or c.vm.crashed:
            return out
        # 2014 kvm_pmu_reset clears FIXED_CTR_CTRL, GLOBAL_CTRL, GLOBAL_STATUS; the
        # `fixed` design (FIXES: reset_clears_pebs) and `icelake` also PEBS_ENABLE and
        # DS_AREA (ASSUMPTION for icelake)
        msrs = [M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_STATUS,
                M.MSR_CORE_PERF_FIXED_CTR_CTRL]
        if c.vm.design.name in ("fixed", "icelake"):
            msrs += [M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_DS_AREA]
        bad = {}
        for msr in msrs:
            if c.oracle.kind(msr) is None:
                continue
            got, out = check_rdmsr(c, v, msr)
            if out == "ok" and got:
                bad[M.msr_name(msr)] = hex(got)
        if c.vm.design.name in ("fixed", "icelake") and v.pmu.pinned_pages:
            bad["pinned pages"] = len(v.pmu.pinned_pages)
        if bad:
            c.violate("reset", "not-cleared", f"after vCPU reset: {bad}")
        return "ok"


@action(0.7)
class destroy:
    """Userspace destroys the VM under test; a new one takes its place."""

    def draw(c, d):
        return {}

    def run(c):
        c.destroy_checked(c.vm)
        c.scan_traces()
        c.new_subject(c.host)
        return "ok"
