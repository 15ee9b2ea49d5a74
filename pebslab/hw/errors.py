"""Exceptions that model hardware and kernel outcomes (not API misuse).

pebslab only. API misuse raises ``ValueError``/``TypeError``; these classes
are what the *simulated* system does: a #GP injected into the guest, a guest
that crashed, a host that would have crashed.
"""

from __future__ import annotations


class PebslabFault(Exception):
    """Base class of modeled faults."""


class GuestFault(PebslabFault):
    """A fault the CPU (or KVM) raises in the guest, e.g. ``#GP`` on a bad WRMSR.

    Models kvm_inject_gp() in arch/x86/kvm/x86.c for MSR accesses and the
    hardware's own #GP on reserved bits.
    """

    def __init__(self, vector: str = "#GP", *, msr: int | None = None,
                 value: int | None = None, reason: str = ""):
        self.vector = vector
        self.msr = msr
        self.value = value
        self.reason = reason
        parts = [vector]
        if msr is not None:
            from .msr import msr_name
            parts.append(f"on {'WRMSR' if value is not None else 'RDMSR'} "
                         f"{msr_name(msr)} ({msr:#x})")
        if value is not None:
            parts.append(f"value {value:#x}")
        if reason:
            parts.append(f"- {reason}")
        super().__init__(" ".join(parts))


class GuestCrash(PebslabFault):
    """The guest died (triple fault / KVM internal error): only this VM is hurt."""


class HostCrash(PebslabFault):
    """Something that would bring the whole host down happened (model of a host oops)."""
