# check: ex04_valid_pebs_enable
# Notebook 04: the patch's PEBS_ENABLE check (kvm_pmu_set_msr, arch/x86/kvm/pmu.c).
def is_valid(value):
    """True if the 2014 patch accepts ``value`` in IA32_PEBS_ENABLE."""
    PATCH_VALID = 0xF0000000F   # bits 0-3: PEBS on PMC0-3; bits 32-35: load latency
    return (value & ~PATCH_VALID) == 0
