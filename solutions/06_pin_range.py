# Solution to the exercise of notebook 06 (pinning).
# check: ex06_pin_range


def pages_to_pin(ds_area, buffer_base, absolute_maximum):
    """Every page-aligned GVA the PEBS assist may touch: DS area and buffer."""
    page = 4096
    ds_size = 96          # the patch's struct debug_store: 8 u64 + pebs_event_reset[4]
    pages = []
    # the DS area: from the page of its first byte to the page of its last byte
    first = ds_area & ~(page - 1)
    last = (ds_area + ds_size - 1) & ~(page - 1)
    pages += range(first, last + page, page)
    # the buffer: [buffer_base, absolute_maximum); its last byte is absolute_maximum - 1
    if absolute_maximum > buffer_base:
        first = buffer_base & ~(page - 1)
        last = (absolute_maximum - 1) & ~(page - 1)
        pages += [p for p in range(first, last + page, page) if p not in pages]
    return pages
