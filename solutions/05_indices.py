# check: ex05_indices
# Notebook 05: split a guest virtual address the way the 4-level walk uses it.
def split_gva(gva):
    """Return (pml4, pdpt, pd, pt, offset) for a 48-bit canonical address."""
    pml4 = (gva >> 39) & 0x1FF
    pdpt = (gva >> 30) & 0x1FF
    pd = (gva >> 21) & 0x1FF
    pt = (gva >> 12) & 0x1FF
    return pml4, pdpt, pd, pt, gva & 0xFFF
