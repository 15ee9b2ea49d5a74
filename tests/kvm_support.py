"""Helpers shared by the KVM test modules: a host, a VM and a guest kernel in one call."""

from __future__ import annotations

import pebslab as pl

HOT = pl.workloads.hot_loop()
HOT_IP = int(HOT.ip[37])
NEXT_IP = int(HOT.ip[38])


def make(design="patch", cpu="silvermont", frames=2048, pages=512, seed=0, cpuid=None, **kw):
    """A Host, one VM on it under ``design`` and a booted GuestKernel."""
    host = pl.Host(cpu=cpu, frames=frames, seed=seed)
    vm = host.create_vm(design=design, memory_pages=pages, cpuid=cpuid, **kw)
    guest = pl.GuestKernel(vm)
    return host, vm, guest


def baseline(host):
    """The host's refcounts and owners, to compare after a teardown."""
    return host.mm.refcount.copy(), host.mm.owner.copy()
