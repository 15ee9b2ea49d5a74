"""pebslab: see and drive how a hypervisor virtualizes Intel PEBS.

A byte-exact, deterministic model of a simulated Intel core, a host kernel,
KVM with the 2014 "kvm: Implement PEBS virtualization" patch (and its
variants) and a guest kernel with a Linux-like perf driver.
"""

from . import trace, workloads
from .hw import errors
from .kvm import designs
from .kvm.designs import DESIGN_NAMES, Design, get_design
from .hw.errors import GuestCrash, GuestFault, HostCrash
from .hw import cpuid, msr, pebs
from .hw.models import MODELS, get_model
from .system import Host

__version__ = "0.1.0"


def __getattr__(name):
    # lazily imported so that `import pebslab` stays fast and layered
    if name == "GuestKernel":
        from .guest.kernel import GuestKernel
        return GuestKernel
    if name == "export":
        import importlib
        return importlib.import_module(".export", __name__)
    if name == "BareMetal":
        from .baremetal import BareMetal
        return BareMetal
    raise AttributeError(f"module 'pebslab' has no attribute {name!r}")


__all__ = ["Host", "GuestKernel", "BareMetal", "Design", "get_design", "DESIGN_NAMES",
           "GuestFault", "GuestCrash", "HostCrash", "MODELS", "get_model", "cpuid", "msr",
           "pebs", "workloads", "designs", "errors", "trace", "export"]
