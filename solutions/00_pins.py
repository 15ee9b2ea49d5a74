# Notebook 00, exercise 3 (investigate): host frames each design pins.
# check: ex00_pins
def pins(design, cpu):
    """Return how many host frames KVM pins after the guest's perf record."""
    import pebslab as pl
    event = {"silvermont": "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp",
             "icelake": "MEM_LOAD_RETIRED.L3_MISS:pp"}[cpu]
    host = pl.Host(cpu=cpu, frames=1024, seed=0)
    vm = host.create_vm(design=design, memory_pages=256)
    guest = pl.GuestKernel(vm)
    try:
        guest.perf.record(event, period=10007)
    except ValueError:          # the guest's driver was refused PEBS
        return 0
    return len(vm.kvm.pmu.pinned_pages)
