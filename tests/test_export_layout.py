"""Byte layout of the exported perf.data, ELF and kallsyms files (pure Python, no perf).

The reader below is written from tools/perf/Documentation/perf.data-file-format.txt
and include/uapi/linux/perf_event.h (offsets and sizes spelled out here, not
imported from pebslab.export), and from the ELF-64 object file format. The
samples are synthetic, built from the workload's own instruction addresses,
so these tests need no VM.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

import pebslab as pl
from pebslab import export
from pebslab.guest.perf import SAMPLE_DTYPE
from pebslab.workloads import multi_function, pointer_chase

# --- constants as the documents give them ------------------------------------------
MAGIC = b"PERFILE2"
HEADER_SIZE = 8 + 8 + 8 + 3 * 16 + 8 + 3 * 8       # magic, size, attr_size, 3 sections, flags[4]
ATTR_VER7 = 128                                     # PERF_ATTR_SIZE_VER7
SECTION = 16                                        # struct perf_file_section
SAMPLE_IP, SAMPLE_TID, SAMPLE_TIME, SAMPLE_ADDR = 1, 2, 4, 8
SAMPLE_CALLCHAIN, SAMPLE_CPU, SAMPLE_PERIOD = 1 << 5, 1 << 7, 1 << 8
SAMPLE_WEIGHT, SAMPLE_DATA_SRC = 1 << 14, 1 << 15
REC_MMAP, REC_COMM, REC_SAMPLE = 1, 3, 9
FEATURES = {"BUILD_ID": 2, "HOSTNAME": 3, "OSRELEASE": 4, "VERSION": 5, "ARCH": 6,
            "NRCPUS": 7, "CPUDESC": 8, "CPUID": 9, "CMDLINE": 11, "EVENT_DESC": 12,
            "SAMPLE_TIME": 21}
CONTEXT_KERNEL, CONTEXT_USER = 2**64 - 128, 2**64 - 512
MISC_KERNEL, MISC_USER, MISC_EXACT_IP = 1, 2, 1 << 14

W = multi_function()
HAS = pl.MODELS["silvermont"].event("INST_RETIRED.ANY_P")
EVENT = export.EventInfo(name="INST_RETIRED.ANY_P:pp", config=HAS.code, precise_ip=2,
                         usr=True, os=True, period=1009)


def synthetic_samples(w, n, seed=0, memory=False):
    """n samples at instruction addresses of w (seeded), times increasing."""
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, len(w), size=n)
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    s["ip"] = w.ip[pos]
    s["cpl"] = w.cpl[pos]
    s["time"] = np.arange(1, n + 1, dtype=np.uint64) * 1000
    s["precise"] = 1
    s["sym"] = [w.symbol_of(int(ip)) for ip in s["ip"]]
    if memory:
        s["addr"] = w.addr[pos]
        s["latency"] = w.latency[pos]
    return s


def cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode()


def read_perf_file(blob: bytes) -> dict:
    """Parse the file by the format document: header, attrs, data records, features."""
    assert blob[:8] == MAGIC
    size, attr_size = struct.unpack_from("<QQ", blob, 8)
    attrs = struct.unpack_from("<QQ", blob, 24)
    data = struct.unpack_from("<QQ", blob, 40)
    event_types = struct.unpack_from("<QQ", blob, 56)
    flags = int.from_bytes(blob[72:104], "little")
    out = {"size": size, "attr_size": attr_size, "attrs": attrs, "data": data,
           "event_types": event_types, "flags": flags}
    # attributes: perf_event_attr (attr_size - 16 bytes) + ids section
    out["attr_list"] = []
    for k in range(attrs[1] // attr_size):
        off = attrs[0] + k * attr_size
        a = blob[off:off + attr_size - SECTION]
        ids_off, ids_size = struct.unpack_from("<QQ", blob, off + attr_size - SECTION)
        ids = struct.unpack_from(f"<{ids_size // 8}Q", blob, ids_off)
        out["attr_list"].append((a, ids))
    # data: a stream of records, each starting with perf_event_header
    recs = []
    pos, end = data
    end += pos
    while pos < end:
        typ, misc, rsize = struct.unpack_from("<IHH", blob, pos)
        recs.append((typ, misc, blob[pos + 8:pos + rsize], pos, rsize))
        pos += rsize
    out["end_of_records"] = pos
    out["records"] = recs
    # features: after the data section, one perf_file_section per set bit, in bit order
    feat_off = data[0] + data[1]
    bits = [b for b in range(256) if flags >> b & 1]
    out["features"] = {}
    for i, b in enumerate(bits):
        o, s = struct.unpack_from("<QQ", blob, feat_off + SECTION * i)
        out["features"][b] = (o, s, blob[o:o + s])
    return out


def header_string(buf: bytes, pos: int = 0) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return cstr(buf[pos + 4:pos + 4 + n]), pos + 4 + n


def parse_sample(body: bytes, sample_type: int) -> dict:
    """PERF_RECORD_SAMPLE fields in perf_event.h order, for the bits we use."""
    f, p = {}, 0

    def u64():
        nonlocal p
        v = struct.unpack_from("<Q", body, p)[0]
        p += 8
        return v
    if sample_type & SAMPLE_IP:
        f["ip"] = u64()
    if sample_type & SAMPLE_TID:
        f["pid"], f["tid"] = struct.unpack_from("<ii", body, p)
        p += 8
    if sample_type & SAMPLE_TIME:
        f["time"] = u64()
    if sample_type & SAMPLE_ADDR:
        f["addr"] = u64()
    if sample_type & SAMPLE_CPU:
        f["cpu"], _ = struct.unpack_from("<II", body, p)
        p += 8
    if sample_type & SAMPLE_PERIOD:
        f["period"] = u64()
    if sample_type & SAMPLE_CALLCHAIN:
        n = u64()
        f["callchain"] = [u64() for _ in range(n)]
    if sample_type & SAMPLE_WEIGHT:
        f["weight"] = u64()
    if sample_type & SAMPLE_DATA_SRC:
        f["data_src"] = u64()
    f["_consumed"] = p
    return f


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("layout")
    s = synthetic_samples(W, 300)
    files = export.perf_data(s, d / "guest.data", workload=W, event=EVENT, cpu="silvermont")
    return s, files, files.data.read_bytes()


def test_file_header_by_the_document(exported):
    _, _, blob = exported
    h = read_perf_file(blob)
    assert h["size"] == HEADER_SIZE == 104
    assert h["attr_size"] == ATTR_VER7 + SECTION
    assert h["event_types"] == (0, 0)
    for off, size in (h["attrs"], h["data"]):
        assert off % 8 == 0 and size % 8 == 0 and off >= HEADER_SIZE
    assert h["attrs"][1] == h["attr_size"]              # one event
    assert h["data"][0] + h["data"][1] <= len(blob)
    assert not h["flags"] & 1                           # HEADER_RESERVED: always cleared


def test_attr_fields_at_the_uapi_offsets(exported):
    _, _, blob = exported
    h = read_perf_file(blob)
    attr, ids = h["attr_list"][0]
    typ, size, config, period, sample_type, read_format, flags = struct.unpack_from(
        "<IIQQQQQ", attr, 0)
    assert typ == 4 and size == ATTR_VER7                # PERF_TYPE_RAW
    assert config == 0x00C0                              # INST_RETIRED.ANY_P: event 0xc0, umask 0
    assert period == 1009 and read_format == 0
    assert sample_type & SAMPLE_IP and sample_type & SAMPLE_TID and sample_type & SAMPLE_TIME
    assert sample_type & SAMPLE_PERIOD and sample_type & SAMPLE_CALLCHAIN
    assert (flags >> 15) & 3 == 2                        # precise_ip, bits 15-16
    assert flags >> 18 & 1                               # sample_id_all
    assert not flags >> 4 & 1 and not flags >> 5 & 1     # exclude_user / exclude_kernel clear
    assert len(ids) == 1


def test_records_tile_the_data_section_8_byte_aligned(exported):
    _, _, blob = exported
    h = read_perf_file(blob)
    assert h["end_of_records"] == h["data"][0] + h["data"][1]
    for typ, misc, body, pos, rsize in h["records"]:
        assert rsize % 8 == 0 and pos % 8 == 0 and rsize >= 8


def test_comm_and_mmap_records(exported):
    _, files, blob = exported
    h = read_perf_file(blob)
    recs = h["records"]
    comm = [r for r in recs if r[0] == REC_COMM]
    mmaps = [r for r in recs if r[0] == REC_MMAP]
    assert len(comm) == 1
    pid, tid = struct.unpack_from("<ii", comm[0][2], 0)
    assert cstr(comm[0][2][8:]) == "multi_function" and pid == tid
    by_name = {}
    for _, misc, body, _, _ in mmaps:
        mpid, mtid, start, length, pgoff = struct.unpack_from("<iiQQQ", body, 0)
        by_name[cstr(body[32:])] = (misc, mpid, start, length, pgoff)
    k = by_name["[kernel.kallsyms]_text"]
    assert k[0] & 7 == MISC_KERNEL and k[1] == -1
    assert k[4] == k[2] == 0xFFFFFFFF81000000          # pgoff = address of _text
    u = by_name[str(files.elf)]
    assert u[0] & 7 == MISC_USER and u[1] == pid
    assert u[2] == 0x401000 and u[4] == 0x1000          # vaddr / file offset of the text
    for start, end, name in W.symbols:
        owner = k if start >= 1 << 63 else u
        assert owner[2] <= start and end <= owner[2] + owner[3], name


def test_sample_records_carry_the_samples(exported):
    s, _, blob = exported
    h = read_perf_file(blob)
    st = struct.unpack_from("<Q", h["attr_list"][0][0], 24)[0]
    samples = [r for r in h["records"] if r[0] == REC_SAMPLE]
    assert len(samples) == len(s)
    for (typ, misc, body, _, rsize), want in zip(samples, s):
        f = parse_sample(body, st)
        assert f["_consumed"] == rsize - 8
        assert f["ip"] == int(want["ip"]) and f["time"] == int(want["time"])
        assert f["period"] == 1009 and f["cpu"] == 0 and f["pid"] == f["tid"]
        kernel = int(want["ip"]) >= 1 << 63
        assert misc & 7 == (MISC_KERNEL if kernel else MISC_USER)
        assert misc & MISC_EXACT_IP
        cc = f["callchain"]
        assert cc[0] == (CONTEXT_KERNEL if kernel else CONTEXT_USER) and cc[1] == f["ip"]
        # each later frame is a return address: in a caller, right after a branch
        for r in cc[2:]:
            if r in (CONTEXT_KERNEL, CONTEXT_USER):
                continue
            i = int(np.flatnonzero(W.ip + W.length.astype(np.uint64) == np.uint64(r))[0])
            assert W.kind[i] == pl.workloads.KIND_BRANCH


def test_header_features(exported):
    s, files, blob = exported
    h = read_perf_file(blob)
    feats = h["features"]
    assert set(FEATURES.values()) <= set(feats)
    offs = [feats[b][0] for b in sorted(feats)]
    assert offs == sorted(offs)                          # in bit order, not overlapping
    for b, (o, size, raw) in feats.items():
        assert o % 8 == 0 and o + size <= len(blob)
    assert header_string(feats[FEATURES["HOSTNAME"]][2])[0]
    assert header_string(feats[FEATURES["ARCH"]][2])[0] == "x86_64"
    assert header_string(feats[FEATURES["CPUID"]][2])[0].startswith("GenuineIntel,6,55,")
    assert struct.unpack("<II", feats[FEATURES["NRCPUS"]][2]) == (1, 1)
    first, last = struct.unpack("<QQ", feats[FEATURES["SAMPLE_TIME"]][2])
    assert (first, last) == (int(s["time"].min()), int(s["time"].max()))
    raw = feats[FEATURES["CMDLINE"]][2]
    (nr,) = struct.unpack_from("<I", raw)
    pos, argv = 4, []
    for _ in range(nr):
        a, pos = header_string(raw, pos)
        argv.append(a)
    assert argv[:6] == ["perf", "record", "-e", "INST_RETIRED.ANY_P:pp", "-c", "1009"]
    # EVENT_DESC: nr, attr_size, then attr, nr_ids, name, ids
    raw = feats[FEATURES["EVENT_DESC"]][2]
    nr, asz = struct.unpack_from("<II", raw)
    assert nr == 1 and asz == ATTR_VER7
    assert raw[8:8 + asz] == h["attr_list"][0][0]
    (nids,) = struct.unpack_from("<I", raw, 8 + asz)
    name, pos = header_string(raw, 12 + asz)
    assert nids == 1 and name == "INST_RETIRED.ANY_P:pp"
    # strings: u32 length then a NUL-terminated string inside it
    for key in ("HOSTNAME", "OSRELEASE", "VERSION", "ARCH", "CPUDESC", "CPUID"):
        r = feats[FEATURES[key]][2]
        (n,) = struct.unpack_from("<I", r)
        assert 4 + n == len(r) and b"\0" in r[4:]


def test_build_id_feature_names_the_elf_with_its_note(exported):
    _, files, blob = exported
    raw = read_perf_file(blob)["features"][FEATURES["BUILD_ID"]][2]
    pos, found = 0, {}
    while pos < len(raw):
        typ, misc, size = struct.unpack_from("<IHH", raw, pos)
        (pid,) = struct.unpack_from("<i", raw, pos + 8)
        bid = raw[pos + 12:pos + 12 + 20]
        found[cstr(raw[pos + 36:pos + size])] = (misc & 7, pid, bid)
        pos += size
    assert found[str(files.elf)][:2] == (MISC_USER, -1)
    assert found["[kernel.kallsyms]"][:2] == (MISC_KERNEL, -1)
    elf = files.elf.read_bytes()
    note = elf.find(b"GNU\0")
    namesz, descsz, ntype = struct.unpack_from("<III", elf, note - 12)
    assert (namesz, descsz, ntype) == (4, 20, 3)          # NT_GNU_BUILD_ID
    assert elf[note + 4:note + 24] == found[str(files.elf)][2]
    assert files.build_id == elf[note + 4:note + 24].hex()


def test_elf_layout(exported):
    _, files, _ = exported
    elf = files.elf.read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1     # ELFCLASS64, LSB
    (e_type, e_machine, _, e_entry, e_phoff, e_shoff, _, e_ehsize, e_phentsize, e_phnum,
     e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", elf, 16)
    assert (e_type, e_machine, e_ehsize, e_phentsize, e_shentsize) == (2, 62, 64, 56, 64)
    loads = []
    for i in range(e_phnum):
        p_type, p_flags, p_off, p_vaddr, _, p_filesz, p_memsz, p_align = struct.unpack_from(
            "<IIQQQQQQ", elf, e_phoff + 56 * i)
        if p_type == 1:
            loads.append((p_off, p_vaddr, p_filesz, p_align, p_flags))
    assert len(loads) == 1
    p_off, p_vaddr, p_filesz, p_align, p_flags = loads[0]
    assert p_off % p_align == p_vaddr % p_align and p_flags & 1        # PF_X
    shdrs = [struct.unpack_from("<IIQQQQIIQQ", elf, e_shoff + 64 * i) for i in range(e_shnum)]
    shstr = shdrs[e_shstrndx]
    names = [cstr(elf[shstr[4] + s[0]:]) for s in shdrs]
    symtab = shdrs[names.index(".symtab")]
    strtab = shdrs[symtab[6]]
    syms = []
    for k in range(1, symtab[5] // 24):
        st_name, st_info, _, st_shndx, st_value, st_size = struct.unpack_from(
            "<IBBHQQ", elf, symtab[4] + 24 * k)
        assert st_info & 0xF == 2 and names[st_shndx] == ".text"         # STT_FUNC in .text
        syms.append((st_value, st_value + st_size, cstr(elf[strtab[4] + st_name:])))
    assert syms == [s for s in W.symbols if s[0] < 1 << 63]
    # every instruction of the trace starts a decodable-length slot at its exact address
    text = shdrs[names.index(".text")]
    assert (text[3], text[4]) == (p_vaddr, p_off)


def test_kallsyms_file_format(exported):
    _, files, _ = exported
    lines = files.kallsyms.read_text().splitlines()
    parsed = [(int(a, 16), t, n) for a, t, n in (ln.split() for ln in lines)]
    assert [p[0] for p in parsed] == sorted(p[0] for p in parsed)
    names = [p[2] for p in parsed]
    assert names[0] == "_text" and names[-1] == "_etext"
    kernel = [s for s in W.symbols if s[0] >= 1 << 63]
    assert [(a, n) for a, _, n in parsed[1:-1]] == [(s[0], s[2]) for s in kernel]
    assert parsed[-1][0] >= max(s[1] for s in kernel)     # _etext closes the last function
    assert all(len(a) == 16 for a, _, _ in (ln.split() for ln in lines))


def test_memory_samples_carry_addr_weight_and_data_source(tmp_path):
    w = pointer_chase()
    s = synthetic_samples(w, 50, memory=True)
    loads = pl.MODELS["haswell"].event("MEM_UOPS_RETIRED.ALL_LOADS")
    ev = export.EventInfo(name="MEM_UOPS_RETIRED.ALL_LOADS:pp", config=loads.code,
                          precise_ip=2, usr=True, os=True, period=7, memory=True)
    files = export.perf_data(s, tmp_path / "m.data", workload=w, event=ev, callchain=False)
    h = read_perf_file(files.data.read_bytes())
    st = struct.unpack_from("<Q", h["attr_list"][0][0], 24)[0]
    assert st & SAMPLE_ADDR and st & SAMPLE_WEIGHT and st & SAMPLE_DATA_SRC
    assert not st & SAMPLE_CALLCHAIN
    recs = [parse_sample(r[2], st) for r in h["records"] if r[0] == REC_SAMPLE]
    assert [r["addr"] for r in recs] == s["addr"].tolist()
    assert [r["weight"] for r in recs] == s["latency"].tolist()
    # no data_src field in the samples: mem_op "NA" (0x01 at bits 0-4), level NA (bit 5)
    assert all(r["data_src"] & 0x1F == 0x01 and r["data_src"] >> 5 & 0x3FFF == 0x01 for r in recs)


def test_data_src_bits_from_perf_event_h():
    # PERF_MEM_OP_LOAD 0x02 << 0; PERF_MEM_LVL_HIT|L1 = 0x0a << 5; snoop/lock/tlb NA = 1 at 19/24/26
    assert export.data_src("load", "L1") == 0x02 | (0x02 | 0x08) << 5 | 1 << 19 | 1 << 24 | 1 << 26
    assert export.data_src("load", "RAM") >> 5 & 0x3FFF == 0x80 | 0x02
    with pytest.raises(ValueError, match="level"):
        export.data_src("load", "L4")


def test_pipe_mode_layout(tmp_path):
    import io
    s = synthetic_samples(W, 20)
    buf = io.BytesIO()
    files = export.perf_data(s, buf, workload=W, event=EVENT, symbols_dir=tmp_path)
    blob = buf.getvalue()
    assert files.data is None and files.size == len(blob)
    assert blob[:8] == MAGIC and struct.unpack_from("<Q", blob, 8)[0] == 16
    pos, types = 16, []
    while pos < len(blob):
        typ, misc, size = struct.unpack_from("<IHH", blob, pos)
        assert size >= 8
        types.append(typ)
        if typ == 64:                                       # PERF_RECORD_HEADER_ATTR
            assert struct.unpack_from("<II", blob, pos + 8) == (4, ATTR_VER7)
        if typ == 80:                                       # PERF_RECORD_HEADER_FEATURE
            assert struct.unpack_from("<Q", blob, pos + 8)[0] in FEATURES.values()
        pos += size
    assert pos == len(blob)
    assert types[0] == 64 and types.count(REC_SAMPLE) == 20 and types[-1] == 68
    assert types.count(80) == len(FEATURES) - 1             # BUILD_ID goes as records (67)
    assert types.count(67) == 2
    assert (tmp_path / "multi_function").exists()


def test_same_input_same_bytes(tmp_path):
    s = synthetic_samples(W, 100, seed=3)
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    d1.mkdir()
    d2.mkdir()
    a = export.perf_data(s, d1 / "a.data", workload=W, event=EVENT)
    da = a.data.read_bytes()
    b = export.perf_data(s, d2 / "a.data", workload=W, event=EVENT)
    # the only difference: the ELF's absolute path (MMAP and BUILD_ID records)
    assert da != b.data.read_bytes()
    assert da.replace(str(d1).encode(), b"X") == b.data.read_bytes().replace(str(d2).encode(), b"X")
    assert a.elf.read_bytes() == b.elf.read_bytes() and a.build_id == b.build_id
    again = export.perf_data(s, d1 / "a.data", workload=W, event=EVENT)     # overwrite
    assert again.data.read_bytes() == da
