# Notebook 02, exercise: the eventing IP of one raw PEBS record.
# check: ex02_decode
def eventing_ip(raw, fmt):
    """Return the eventing IP stored in a PEBS record of format ``fmt``, or None.

    Formats 2 and 3 keep it in real_ip at offset 0xB0; format 4 (adaptive)
    in the basic group's ip at offset 0x08; formats 0 and 1 do not record it.
    """
    if fmt in (0, 1):
        return None
    offset = 0xB0 if fmt in (2, 3) else 0x08
    return int.from_bytes(raw[offset:offset + 8], "little")
