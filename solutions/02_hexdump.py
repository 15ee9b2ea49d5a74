# Notebook 02, exercise 2 (apply): decode a hexdumped Silvermont PEBS record by hand.
# check: ex02_hexdump
def decode_hexdump(text):
    """Return flags, ip, status and eventing_ip of the record dumped in ``text``."""
    data = bytearray()
    for line in text.splitlines():
        hexpart = line.split(":", 1)[1].split("|", 1)[0]
        data += bytes(int(h, 16) for h in hexpart.split())
    offsets = {"flags": 0x00, "ip": 0x08, "status": 0x90, "eventing_ip": 0xB0}
    return {name: int.from_bytes(data[off:off + 8], "little") for name, off in offsets.items()}
