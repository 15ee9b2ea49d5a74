# Solution to exercise 3 (investigate) of notebook 11.
# check: ex11_lock_host_memory


def lock_host_memory(guest):
    """Guest code that ignores its CPUID and asks KVM to pin as much as it will."""
    import pebslab as pl

    page = 4096
    for v in guest.vcpus:                   # every vCPU has its own kvm_pmu and pins
        ds = guest.mm.alloc(1)
        buf = guest.mm.alloc(16)            # DS page + 16 buffer pages = MAX_PINNED_PAGES
        end = buf + 16 * page
        guest.write(ds, pl.pebs.DebugStore(pebs_buffer_base=buf, pebs_index=buf,
                                           pebs_absolute_maximum=end,
                                           pebs_interrupt_threshold=end).to_bytes())
        v.wrmsr(pl.msr.MSR_IA32_DS_AREA, ds)        # #GP here where the CPUID gate holds
        v.wrmsr(pl.msr.MSR_IA32_PEBS_ENABLE, 1)     # the patch pins on this write
