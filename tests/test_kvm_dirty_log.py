"""kvm/dirty_log.py: KVM_MEM_LOG_DIRTY_PAGES and KVM_GET_DIRTY_LOG on the VM's dirty_log.

Expected behaviour from KVM's dirty logging (kvm_mmu_slot_remove_write_access on
start; a write to a write-protected page is an EPT violation that marks the
gfn dirty and restores W; KVM_GET_DIRTY_LOG returns and clears the bitmap
and write-protects again). No method of the VM is replaced at run time.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import pebslab as pl
from pebslab.hw.mmu import EPT_R, EPT_W
from pebslab.kvm import dirty_log as DL
from pebslab.kvm.vm import VM


def vm_of(design="patch"):
    host = pl.Host(frames=512)
    return host, host.create_vm(design=design, memory_pages=64)


def writable(vm):
    return {int(g) for g in np.flatnonzero((vm.ept & np.uint64(EPT_W)) != 0)}


def test_start_write_protects_every_present_page_and_nothing_is_replaced():
    _, vm = vm_of()
    present = {int(g) for g in np.flatnonzero((vm.ept & np.uint64(EPT_R)) != 0)}
    st = DL.start_dirty_logging(vm)
    assert st is vm.dirty_log and vm.dirty_logging
    assert writable(vm) == set() and st.protected == present
    assert "handle_ept_violation" not in vars(vm) and "write" not in vars(vm.phys)
    assert type(vm).handle_ept_violation is VM.handle_ept_violation


def test_a_write_takes_one_fault_marks_dirty_and_restores_w():
    _, vm = vm_of()
    DL.start_dirty_logging(vm)
    vm.phys.write(5 * 4096 + 8, b"x")
    vm.phys.write(5 * 4096 + 16, b"y")              # W restored: no second fault
    assert vm.dirty_log.faults == 1 and 5 in writable(vm)
    assert DL.get_dirty_log(vm) == [5]
    assert 5 not in writable(vm)                    # cleared and protected again
    assert DL.get_dirty_log(vm) == []


def test_stop_makes_every_page_writable_again():
    _, vm = vm_of()
    before = writable(vm)
    DL.start_dirty_logging(vm)
    DL.stop_dirty_logging(vm)
    assert writable(vm) == before and not vm.dirty_logging
    with pytest.raises(ValueError, match="dirty logging is not enabled"):
        DL.get_dirty_log(vm)


def test_a_vm_destroyed_while_logging_is_freed():
    host, vm = vm_of()
    DL.start_dirty_logging(vm)
    vm.destroy()
    assert vm not in host.vms
    ref = weakref.ref(vm)
    del vm
    gc.collect()
    assert ref() is None


def test_bad_vm_argument():
    with pytest.raises(TypeError, match="vm must be a pebslab VM"):
        DL.start_dirty_logging(object())
