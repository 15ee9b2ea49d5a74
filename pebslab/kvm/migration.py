"""Transitional name: migration moved to :mod:`pebslab.vmm.migrate`, dirty logging
to :mod:`pebslab.kvm.dirty_log`.

pebslab only. Kept until every caller (pebslab/fuzz.py) imports the new
modules; then this file goes. The VMM-side names are looked up lazily
(vmm/ sits above kvm/; nothing in kvm/ imports it).
"""

from .dirty_log import dirty_log_state, get_dirty_log, start_dirty_logging, stop_dirty_logging

__all__ = ["dirty_log_state", "get_dirty_log", "start_dirty_logging", "stop_dirty_logging"]


def __getattr__(name):
    from ..vmm import migrate
    try:
        return getattr(migrate, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
