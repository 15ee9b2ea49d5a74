# Solution to exercise 2 (apply) of notebook 12: walk adaptive records of mixed sizes.
# check: ex12_walk_records


def walk_records(raw):
    """(offset, size, ip) of every adaptive PEBS record in ``raw``, in order."""
    out = []
    off = 0
    while off < len(raw):
        word0 = int.from_bytes(raw[off:off + 8], "little")   # basic.format_size
        size = word0 >> 48                                    # bits 63:48: record size
        ip = int.from_bytes(raw[off + 8:off + 16], "little")  # basic.ip
        out.append((off, size, ip))
        off += size
    return out
