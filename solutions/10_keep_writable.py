# Notebook 10, exercise 3 (investigate): the pages dirty logging must not write-protect.
# check: ex10_keep_writable
def keep_writable(vcpu):
    """Return the gfns of the DS area and of the whole PEBS buffer.

    The patch's pins are not enough: for an unaligned buffer they miss its
    last page. Read the DS area the way KVM does and take every page of
    [ds_area, ds_area + 96) and [pebs_buffer_base, pebs_absolute_maximum).
    """
    from pebslab.hw.pebs import DebugStore, DS_SIZE

    ds_area = vcpu.pmu.ds_area
    ds = DebugStore.from_bytes(vcpu.read_guest_virt(ds_area, DS_SIZE))
    page = 4096
    gvas = set()
    for first, end in ((ds_area, ds_area + 96),
                       (ds.pebs_buffer_base, ds.pebs_absolute_maximum)):
        for p in range(first & ~(page - 1), end, page):
            gvas.add(p)
    return sorted({vcpu.gva_to_gpa(g) >> 12 for g in gvas})
