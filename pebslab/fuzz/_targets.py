"""The one place the fuzzer imports what it drives outside the guest's instructions.

pebslab only. Save/restore, live migration and dirty logging are moving
from ``pebslab.kvm.migration`` to ``pebslab.vmm.migrate`` (plus a
``dirty_log`` object of the VM); re-point :data:`MIG` here and the whole
fuzzer follows. Every use is guarded (``has(name)``), so a tree without a
function just skips the actions that need it.
"""

from __future__ import annotations

try:
    from ..kvm import migration as MIG
except ImportError:  # pragma: no cover - depends on the tree
    MIG = None

#: the functions of MIG the fuzzer calls: start_dirty_logging, get_dirty_log,
#: stop_dirty_logging, save_state, restore_state; and the attributes it reads:
#: MigrationError, MSR_ORDERS, _STATE (a VM -> dirty-log state map it empties)
USED = ("start_dirty_logging", "get_dirty_log", "stop_dirty_logging", "save_state",
        "restore_state")


def has(*names: str) -> bool:
    """True if the migration module is there and has every named function."""
    return MIG is not None and all(hasattr(MIG, n) for n in names)
