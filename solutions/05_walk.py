# check: ex05_walk
# Notebook 05, exercise 2: the 4-level walk, by hand.
def walk(cr3, gva, read_u64):
    """GPAs of the entries a 4-level walk of ``gva`` reads, then the data GPA.

    Stops after a not-present entry (bit 0 clear). SDM Vol. 3A, 4-level paging.
    """
    addr_mask = ((1 << 52) - 1) & ~0xFFF       # bits 51:12: the next table or the page
    table = cr3 & addr_mask
    out = []
    for shift in (39, 30, 21, 12):             # PML4, PDPT, PD, PT
        entry_gpa = table + 8 * ((gva >> shift) & 0x1FF)
        out.append(entry_gpa)
        entry = read_u64(entry_gpa)
        if not entry & 1:
            return out
        table = entry & addr_mask
    out.append(table + (gva & 0xFFF))
    return out
