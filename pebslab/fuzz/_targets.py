"""The one place the fuzzer imports what it drives outside the guest's instructions.

pebslab only. Save/restore and live migration are the VMM's job
(:mod:`pebslab.vmm.migrate`, what QEMU does); dirty logging is KVM's
(:mod:`pebslab.kvm.dirty_log`, a ``dirty_log`` object of the VM). :data:`MIG`
gathers the functions the fuzzer calls from both, so the actions name one
target.
"""

from __future__ import annotations

from types import SimpleNamespace

from ..kvm import dirty_log as _dirty_log
from ..vmm import migrate as _migrate

#: the functions the fuzzer calls, and the names it reads
USED = ("start_dirty_logging", "get_dirty_log", "stop_dirty_logging", "save_state",
        "restore_state")

MIG = SimpleNamespace(
    start_dirty_logging=_dirty_log.start_dirty_logging,
    get_dirty_log=_dirty_log.get_dirty_log,
    stop_dirty_logging=_dirty_log.stop_dirty_logging,
    save_state=_migrate.save_state,
    restore_state=_migrate.restore_state,
    MigrationError=_migrate.MigrationError,
    MSR_ORDERS=_migrate.MSR_ORDERS,
)


def has(*names: str) -> bool:
    """True if :data:`MIG` has every named function (always, in this tree)."""
    return all(hasattr(MIG, n) for n in names)
