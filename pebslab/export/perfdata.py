"""Write a ``perf.data`` file from the guest's samples, in file mode or pipe mode.

pebslab only. No Python library writes perf.data (readers exist, writers do
not), so this module writes it itself, in its own code, from two sources:
the format description in the kernel tree,
``tools/perf/Documentation/perf.data-file-format.txt`` (the file header,
the attribute and feature sections, the header strings, the pipe-mode
records), and the UAPI header ``include/uapi/linux/perf_event.h`` (struct
perf_event_attr at PERF_ATTR_SIZE_VER7 = 128 bytes, struct
perf_event_header, the MMAP/COMM/SAMPLE record layouts, PERF_SAMPLE_*,
PERF_RECORD_MISC_*, PERF_CONTEXT_*, the perf_mem_data_src bit fields).
What perf itself does where the document is silent (header strings padded
to 64 bytes, the build-id record's 20-byte id plus size byte, the kernel's
"[kernel.kallsyms]_text" map whose pgoff is the address of ``_text``) was
checked against perf 6.1 reading the files (tests/test_export_perf.py).

The file (all little-endian, every section 8-byte aligned)::

    0      perf_file_header (104 bytes): "PERFILE2", size, attr_size,
           attrs {offset, size}, data {offset, size}, event_types {0, 0},
           feature bitmap (256 bits)
    104    attrs: one perf_file_attr = perf_event_attr (128) + ids section (16)
    248    ids: one u64 event id
    256    data: COMM, MMAP (kernel), MMAP (user ELF), SAMPLE...
    ...    feature sections {offset, size}, one per feature bit set, then
           their payloads: BUILD_ID, HOSTNAME, OSRELEASE, VERSION, ARCH,
           NRCPUS, CPUDESC, CPUID, CMDLINE, EVENT_DESC, SAMPLE_TIME

Pipe mode (``perf report -i -`` reading a stream) has no sections: a
16-byte header, then PERF_RECORD_HEADER_ATTR, one PERF_RECORD_HEADER_FEATURE
per feature, PERF_RECORD_HEADER_BUILD_ID records, the data records and
PERF_RECORD_FINISHED_ROUND.

What goes in: the event's real encoding (PERF_TYPE_RAW, config = the
eventsel bits the guest driver programmed, precise_ip from the ``:p``
modifiers), its name (EVENT_DESC), one process (pid ``pid``, comm = the
workload's name), the kernel map (resolved through the kallsyms-style
file), the user map (the ELF from symbols.py, found through the MMAP
file name and checked against its build-id), and per sample IP, TID, TIME
(the guest TSC the sample carries, in cycles: perf prints it as if it were
nanoseconds), CPU 0, PERIOD, a callchain (stacks.call_stacks), and where
the samples carry them the data address, weight (load latency) and data
source.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .._check import check_int
from ..workloads import UNKNOWN_SYMBOL, Workload
from . import symbols as S
from ._files import as_path, check_writable, write_all
from .stacks import call_stacks

# --- include/uapi/linux/perf_event.h ------------------------------------------------
PERF_TYPE_RAW = 4
PERF_ATTR_SIZE_VER7 = 128

PERF_SAMPLE_IP = 1 << 0
PERF_SAMPLE_TID = 1 << 1
PERF_SAMPLE_TIME = 1 << 2
PERF_SAMPLE_ADDR = 1 << 3
PERF_SAMPLE_CALLCHAIN = 1 << 5
PERF_SAMPLE_ID = 1 << 6
PERF_SAMPLE_CPU = 1 << 7
PERF_SAMPLE_PERIOD = 1 << 8
PERF_SAMPLE_WEIGHT = 1 << 14
PERF_SAMPLE_DATA_SRC = 1 << 15

# perf_event_attr flag bits (the bit-field word at offset 40)
ATTR_DISABLED = 1 << 0
ATTR_INHERIT = 1 << 1
ATTR_EXCLUDE_USER = 1 << 4
ATTR_EXCLUDE_KERNEL = 1 << 5
ATTR_MMAP = 1 << 8
ATTR_COMM = 1 << 9
ATTR_ENABLE_ON_EXEC = 1 << 12
ATTR_PRECISE_IP_SHIFT = 15
ATTR_SAMPLE_ID_ALL = 1 << 18

PERF_RECORD_MMAP = 1
PERF_RECORD_COMM = 3
PERF_RECORD_SAMPLE = 9
PERF_RECORD_MISC_KERNEL = 1
PERF_RECORD_MISC_USER = 2
PERF_RECORD_MISC_EXACT_IP = 1 << 14
PERF_RECORD_MISC_BUILD_ID_SIZE = 1 << 15     # perf's own: the build-id record carries a size
PERF_CONTEXT_KERNEL = (1 << 64) - 128
PERF_CONTEXT_USER = (1 << 64) - 512

# perf_mem_data_src fields: (shift, values)
PERF_MEM_OP_SHIFT, PERF_MEM_LVL_SHIFT, PERF_MEM_SNOOP_SHIFT = 0, 5, 19
PERF_MEM_LOCK_SHIFT, PERF_MEM_TLB_SHIFT = 24, 26
PERF_MEM_OP = {"na": 0x01, "load": 0x02, "store": 0x04}
PERF_MEM_LVL_NA, PERF_MEM_LVL_HIT, PERF_MEM_LVL_MISS = 0x01, 0x02, 0x04
PERF_MEM_LVL = {"L1": 0x08, "L2": 0x20, "L3": 0x40, "RAM": 0x80}
PERF_MEM_NA_FIELD = 0x01

# --- tools/perf/Documentation/perf.data-file-format.txt ---------------------------
PERF_MAGIC = b"PERFILE2"
FILE_HEADER_SIZE = 104
PIPE_HEADER_SIZE = 16
FILE_SECTION_SIZE = 16
NAME_ALIGN = 64
PERF_RECORD_HEADER_ATTR = 64
PERF_RECORD_HEADER_BUILD_ID = 67
PERF_RECORD_FINISHED_ROUND = 68
PERF_RECORD_HEADER_FEATURE = 80

HEADER_BUILD_ID = 2
HEADER_HOSTNAME = 3
HEADER_OSRELEASE = 4
HEADER_VERSION = 5
HEADER_ARCH = 6
HEADER_NRCPUS = 7
HEADER_CPUDESC = 8
HEADER_CPUID = 9
HEADER_CMDLINE = 11
HEADER_EVENT_DESC = 12
HEADER_SAMPLE_TIME = 21

#: HOST_KERNEL_ID in perf: the pid its kernel map and kernel build-id carry.
HOST_KERNEL_ID = -1
KERNEL_MMAP_NAME = "[kernel.kallsyms]"
DEFAULT_PID = 1000
EVENT_ID = 1


def data_src(op: str = "load", level: str | None = None, hit: bool = True) -> int:
    """Encode a perf_mem_data_src value (the PERF_SAMPLE_DATA_SRC word).

    pebslab only (the bit layout of union perf_mem_data_src in
    perf_event.h: mem_op bits 0-4, mem_lvl 5-18, mem_snoop 19-23,
    mem_lock 24-25, mem_dtlb 26-32). ``op`` 'load'/'store'/'na'; ``level``
    'L1'/'L2'/'L3'/'RAM' or None (not available); snoop, lock and TLB
    are "not available".
    """
    if op not in PERF_MEM_OP:
        raise ValueError(f"op must be one of {', '.join(map(repr, PERF_MEM_OP))}; got {op!r}")
    if level is None:
        lvl = PERF_MEM_LVL_NA
    elif level in PERF_MEM_LVL:
        lvl = PERF_MEM_LVL[level] | (PERF_MEM_LVL_HIT if hit else PERF_MEM_LVL_MISS)
    else:
        raise ValueError(f"level must be None or one of {', '.join(map(repr, PERF_MEM_LVL))}; "
                         f"got {level!r}")
    return (PERF_MEM_OP[op] << PERF_MEM_OP_SHIFT | lvl << PERF_MEM_LVL_SHIFT
            | PERF_MEM_NA_FIELD << PERF_MEM_SNOOP_SHIFT | PERF_MEM_NA_FIELD << PERF_MEM_LOCK_SHIFT
            | PERF_MEM_NA_FIELD << PERF_MEM_TLB_SHIFT)


# =============================================================================
# the event
# =============================================================================

@dataclass(frozen=True)
class EventInfo:
    """What the attribute says about the sampled event.

    pebslab only. ``name`` is the event string (e.g. "cycles:pp"),
    ``config`` the eventsel bits 31:0 (event, umask, inv, cmask),
    ``precise_ip`` 0..3, ``usr``/``os`` the privilege filter, ``period``
    the sampling period, ``memory`` whether it is a memory event and
    ``mem_op`` what its samples are ('load', 'store' or 'na': the mem_op of
    the data source written when the samples carry none).
    """

    name: str
    config: int
    precise_ip: int
    usr: bool
    os: bool
    period: int
    memory: bool = False
    mem_op: str = "na"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str; got {self.name!r}")
        check_int("config", self.config, 0, (1 << 64) - 1, as_hex=True)
        check_int("precise_ip", self.precise_ip, 0, 3)
        check_int("period", self.period, 1, (1 << 63) - 1)
        for f in ("usr", "os", "memory"):
            if not isinstance(getattr(self, f), (bool, np.bool_)):
                raise TypeError(f"{f} must be True or False; got {getattr(self, f)!r}")
        if self.mem_op not in PERF_MEM_OP:
            raise ValueError(f"mem_op must be one of {', '.join(map(repr, PERF_MEM_OP))}; got "
                             f"{self.mem_op!r}")


def event_info(event, period=None) -> EventInfo:
    """Return the EventInfo of a Recording, an EventSpec or an EventInfo.

    A Recording gives its own period; an EventSpec needs ``period``.
    """
    if isinstance(event, EventInfo):
        return event if period is None else dataclasses.replace(event, period=period)
    from ..guest.perf import EventSpec, Recording
    if isinstance(event, Recording):
        spec = event.spec
        period = event.period if period is None else period
    elif isinstance(event, EventSpec):
        spec = event
        if period is None:
            raise ValueError("period is required when event is an EventSpec (a Recording "
                             "knows its own)")
    else:
        raise TypeError(f"event must be a Recording (guest.perf.record(...)), an EventSpec or "
                        f"an EventInfo; got {type(event).__name__}")
    period = check_int("period", period, 1, (1 << 63) - 1)
    from ..hw.models import EV_LLC_MISS, EV_LLC_REF, EV_LOADS, EV_STORES
    kind = spec.desc.kind if spec.desc is not None else None
    op = ("load" if kind in (EV_LOADS, EV_LLC_MISS, EV_LLC_REF)
          else "store" if kind == EV_STORES else "na")
    return EventInfo(name=spec.spec, config=spec.config, precise_ip=spec.precise_ip,
                     usr=spec.usr, os=spec.os, period=period, memory=spec.memory, mem_op=op)


# =============================================================================
# encoders for the pieces
# =============================================================================

def event_header(type_: int, misc: int, size: int) -> bytes:
    """Encode struct perf_event_header: u32 type, u16 misc, u16 size (perf_event.h)."""
    return struct.pack("<IHH", type_, misc, size)


def attr_bytes(ev: EventInfo, sample_type: int) -> bytes:
    """struct perf_event_attr (PERF_ATTR_SIZE_VER7, 128 bytes) for the event.

    type PERF_TYPE_RAW with the eventsel bits as config (the event the
    guest driver actually programmed, after the ``:pp`` cycles alias), the
    sampling period, disabled + inherit + enable_on_exec + mmap + comm as
    ``perf record`` sets them, precise_ip, exclude_user/exclude_kernel
    from the u/k modifiers, sample_id_all (so MMAP and COMM records carry
    pid, tid, time and cpu too). Corresponds to what evsel__config() in
    tools/perf/util/evsel.c sets for ``perf record -e EVENT -c PERIOD -g``.
    """
    flags = (ATTR_DISABLED | ATTR_INHERIT | ATTR_MMAP | ATTR_COMM | ATTR_ENABLE_ON_EXEC
             | ATTR_SAMPLE_ID_ALL | (ev.precise_ip & 3) << ATTR_PRECISE_IP_SHIFT
             | (0 if ev.usr else ATTR_EXCLUDE_USER) | (0 if ev.os else ATTR_EXCLUDE_KERNEL))
    b = struct.pack("<IIQQQQQ", PERF_TYPE_RAW, PERF_ATTR_SIZE_VER7, ev.config, ev.period,
                    sample_type, 0, flags)
    b += bytes(PERF_ATTR_SIZE_VER7 - len(b))
    assert len(b) == PERF_ATTR_SIZE_VER7
    return b


def header_string(s: str) -> bytes:
    """Encode a perf_header_string: u32 len, the string, NUL, zero padding to 64 bytes.

    Corresponds to do_write_string() in tools/perf/util/header.c (NAME_ALIGN 64).
    """
    raw = s.encode()
    n = (len(raw) + 1 + NAME_ALIGN - 1) // NAME_ALIGN * NAME_ALIGN
    return struct.pack("<I", n) + raw + bytes(n - len(raw))


def header_string_list(items: list[str]) -> bytes:
    """Encode a perf_header_string_list: u32 nr, then nr perf_header_strings."""
    return struct.pack("<I", len(items)) + b"".join(header_string(s) for s in items)


def sample_id_bytes(pid: int, tid: int, time: int, cpu: int) -> bytes:
    """Encode the sample_id trailer of a non-sample record for sample_type TID|TIME|CPU.

    Field order as struct sample_id in perf_event.h: pid, tid; time; cpu, res.
    """
    return struct.pack("<iiQII", pid, tid, time, cpu, 0)


def _padded_name(name: str, align: int) -> bytes:
    raw = name.encode() + b"\0"
    return raw + bytes(-len(raw) % align)


def comm_record(pid: int, tid: int, comm: str, time: int = 0) -> bytes:
    """Encode PERF_RECORD_COMM: u32 pid, tid; char comm[] (NUL, padded to 8); sample_id.

    Corresponds to perf_event__synthesize_comm() in tools/perf/util/synthetic-events.c.
    """
    body = struct.pack("<ii", pid, tid) + _padded_name(comm, 8) + sample_id_bytes(pid, tid,
                                                                                   time, 0)
    return event_header(PERF_RECORD_COMM, 0, 8 + len(body)) + body


def mmap_record(pid: int, tid: int, start: int, length: int, pgoff: int, filename: str,
                misc: int, time: int = 0) -> bytes:
    """Encode PERF_RECORD_MMAP: u32 pid, tid; u64 addr, len, pgoff; char filename[]; sample_id.

    Corresponds to perf_event__synthesize_mmap_events() and, for the kernel
    ("[kernel.kallsyms]_text", pid -1, pgoff = _text),
    perf_event__synthesize_kernel_mmap() in tools/perf/util/synthetic-events.c.
    """
    body = (struct.pack("<iiQQQ", pid, tid, start, length, pgoff) + _padded_name(filename, 8)
            + sample_id_bytes(pid, tid, time, 0))
    return event_header(PERF_RECORD_MMAP, misc, 8 + len(body)) + body


def build_id_record(pid: int, build_id: bytes, filename: str, misc: int) -> bytes:
    """Encode a build_id_event (HEADER_BUILD_ID; PERF_RECORD_HEADER_BUILD_ID in a pipe).

    header; s32 pid; 24 bytes: the id (20), its size (1), 3 reserved;
    the file name, NUL-terminated, padded to 64 bytes. ``header.misc`` is the
    cpumode plus PERF_RECORD_MISC_BUILD_ID_SIZE (perf's flag for "the size
    byte is valid"). Corresponds to write_buildid() in tools/perf/util/build-id.c.
    """
    idb = build_id + bytes(20 - len(build_id)) + bytes([len(build_id)]) + bytes(3)
    body = struct.pack("<i", pid) + idb + _padded_name(filename, NAME_ALIGN)
    return event_header(PERF_RECORD_HEADER_BUILD_ID, misc | PERF_RECORD_MISC_BUILD_ID_SIZE,
                        8 + len(body)) + body


# =============================================================================
# the profile
# =============================================================================

class _Profile:
    """Everything one export needs, checked: samples, symbols, records."""

    def __init__(self, samples, workload, event, period, cpu, comm, pid, callchain):
        if not isinstance(workload, Workload):
            raise TypeError(f"workload must be a pebslab.workloads.Workload (the program the "
                            f"samples came from); got {type(workload).__name__}")
        if not isinstance(samples, np.ndarray) or samples.dtype.names is None:
            raise TypeError(f"samples must be a numpy structured array (Recording.samples()); "
                            f"got {type(samples).__name__}")
        missing = [f for f in ("ip", "time", "cpl") if f not in samples.dtype.names]
        if missing:
            raise ValueError(f"samples must have fields ip, time and cpl; missing "
                             f"{', '.join(missing)}")
        if samples.ndim != 1:
            raise ValueError(f"samples must be 1-D; got shape {samples.shape}")
        if samples.size == 0:
            raise ValueError("samples is empty: there is no profile to export (did the "
                             "recording run any instructions?)")
        self.ev = event_info(event, period)
        self.workload = workload
        self.comm = workload.name[:15] if comm is None else comm
        if not isinstance(self.comm, str) or not self.comm:
            raise TypeError(f"comm must be a non-empty str; got {comm!r}")
        self.pid = check_int("pid", pid, 1, (1 << 31) - 1)
        if not isinstance(callchain, (bool, np.bool_)):
            raise TypeError(f"callchain must be True or False; got {callchain!r}")
        self.callchain = bool(callchain)
        self.cpu = None
        if cpu is not None:
            from ..hw.models import get_model
            self.cpu = get_model(cpu)

        ip = samples["ip"].astype(np.uint64)
        cpl = samples["cpl"].astype(np.uint8)
        kernel = ip >= np.uint64(S.KERNEL_HALF)
        bad_cpl = (cpl != 0) & (cpl != 3)
        if bad_cpl.any():
            i = int(np.flatnonzero(bad_cpl)[0])
            raise ValueError(f"samples[{i}].cpl must be 0 (kernel) or 3 (user); got {int(cpl[i])}")
        mism = kernel != (cpl == 0)
        if mism.any():
            i = int(np.flatnonzero(mism)[0])
            raise ValueError(f"samples[{i}]: ip {int(ip[i]):#x} is a "
                             f"{'kernel' if kernel[i] else 'user'} address but cpl is "
                             f"{int(cpl[i])}")
        uniq = np.unique(ip).tolist()
        outside = [u for u in uniq if workload.symbol_of(u) == UNKNOWN_SYMBOL]
        if outside:
            n_out = int(np.isin(ip, np.array(outside, dtype=np.uint64)).sum())
            raise ValueError(f"{n_out} sample(s) have IPs outside every function of workload "
                             f"{workload.name!r} (first {outside[0]:#x}; functions: "
                             + ", ".join(f"{n} {a:#x}..{b:#x}" for a, b, n in workload.symbols)
                             + "): perf could not resolve them")
        self.ip = ip
        self.kernel = kernel
        self.time = samples["time"].astype(np.uint64)
        names = samples.dtype.names
        self.precise = (samples["precise"].astype(bool) if "precise" in names
                        else np.full(ip.size, self.ev.precise_ip >= 2))
        self.addr = samples["addr"].astype(np.uint64) if "addr" in names else None
        self.weight = samples["latency"].astype(np.uint64) if "latency" in names else None
        self.dsrc = samples["data_src"].astype(np.uint64) if "data_src" in names else None
        # memory fields go in when the event is a memory event or the samples carry them
        has_mem = (self.ev.memory or self.dsrc is not None
                   or (self.addr is not None and bool(self.addr.any()))
                   or (self.weight is not None and bool(self.weight.any())))
        self.memory = has_mem
        self.stacks = call_stacks(workload)[0] if self.callchain else {}

    @property
    def sample_type(self) -> int:
        t = (PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_CPU
             | PERF_SAMPLE_PERIOD)
        if self.callchain:
            t |= PERF_SAMPLE_CALLCHAIN
        if self.memory:
            t |= PERF_SAMPLE_ADDR | PERF_SAMPLE_WEIGHT | PERF_SAMPLE_DATA_SRC
        return t

    def callchain_bytes(self, ip: int) -> bytes:
        """Encode {u64 nr; u64 ips[nr]}: context markers, the IP, return addresses, innermost first.

        A PERF_CONTEXT_KERNEL / PERF_CONTEXT_USER marker precedes each run of
        kernel / user addresses, as perf_callchain() (kernel/events/callchain.c)
        stores them.
        """
        frames = [ip] + list(reversed(self.stacks.get(ip, ())))
        out = []
        mode = None
        for f in frames:
            m = PERF_CONTEXT_KERNEL if f >= S.KERNEL_HALF else PERF_CONTEXT_USER
            if m != mode:
                out.append(m)
                mode = m
            out.append(f)
        return struct.pack(f"<Q{len(out)}Q", len(out), *out)

    def sample_records(self) -> bytes:
        """Encode every PERF_RECORD_SAMPLE, in sample order.

        Field order as perf_output_sample() (kernel/events/core.c) writes
        them and perf_event.h lists them: ip; pid, tid; time; addr; cpu,
        res; period; callchain; weight; data_src.
        """
        ev = self.ev
        pid = self.pid
        n = self.ip.size
        chains: dict[int, bytes] = {}
        mem = self.memory
        if mem:
            addr = self.addr if self.addr is not None else np.zeros(n, np.uint64)
            weight = self.weight if self.weight is not None else np.zeros(n, np.uint64)
            if self.dsrc is not None:
                dsrc = self.dsrc
            else:
                na = data_src(self.ev.mem_op, None)
                dsrc = np.full(n, na, np.uint64)
            addr, weight, dsrc = addr.tolist(), weight.tolist(), dsrc.tolist()
        buf = io.BytesIO()
        ips, times, kern, prec = (self.ip.tolist(), self.time.tolist(), self.kernel.tolist(),
                                  self.precise.tolist())
        for i in range(n):
            ip = ips[i]
            misc = (PERF_RECORD_MISC_KERNEL if kern[i] else PERF_RECORD_MISC_USER) | \
                (PERF_RECORD_MISC_EXACT_IP if prec[i] else 0)
            parts = [struct.pack("<QiiQ", ip, pid, pid, times[i])]
            if mem:
                parts.append(struct.pack("<Q", addr[i]))
            parts.append(struct.pack("<IIQ", 0, 0, ev.period))
            if self.callchain:
                cc = chains.get(ip)
                if cc is None:
                    cc = chains[ip] = self.callchain_bytes(ip)
                parts.append(cc)
            if mem:
                parts.append(struct.pack("<QQ", weight[i], dsrc[i]))
            body = b"".join(parts)
            buf.write(event_header(PERF_RECORD_SAMPLE, misc, 8 + len(body)))
            buf.write(body)
        return buf.getvalue()


@dataclass(frozen=True)
class PerfFiles:
    """The files one export wrote, and how to point perf at them.

    ``data`` the perf.data (None for a pipe), ``elf`` the user-space symbol
    file (None if the workload has no user function), ``kallsyms`` the
    kernel symbol file, ``build_id`` the ELF's build-id (hex), ``samples``
    the number of SAMPLE records, ``size`` the perf.data's bytes.
    """

    data: Path | None
    elf: Path | None
    kallsyms: Path | None
    build_id: str
    samples: int
    size: int

    def perf_args(self) -> list[str]:
        """Options every perf reading command needs: ``-i DATA`` and ``--kallsyms FILE``."""
        args = ["-i", str(self.data) if self.data is not None else "-"]
        if self.kallsyms is not None:
            args += ["--kallsyms", str(self.kallsyms)]
        return args


def _symbol_files(prof: _Profile, folder: Path, stem: str):
    """Build the ELF and kallsyms bytes and choose their paths (nothing written yet)."""
    w = prof.workload
    files = {}
    elf = kall = None
    elf_img = None
    kall_lo = kall_hi = 0
    if S.user_symbols(w):
        elf_img = S.build_elf(w)
        elf = (folder / w.name).resolve()
        files[elf] = elf_img.data
    kall_text, kall_lo, kall_hi = S.kallsyms_text(w)
    kall = folder / f"{stem}.kallsyms"
    files[kall] = kall_text.encode()
    return files, elf, elf_img, kall, kall_text, kall_lo, kall_hi


def _features(prof: _Profile, elf: Path | None, elf_img, kall_text, attr: bytes) -> dict:
    """Return {feature id: payload bytes} (the same bytes in file and pipe mode, except BUILD_ID)."""
    ev = prof.ev
    model = prof.cpu
    feats = {}
    bids = b""
    bids += build_id_record(HOST_KERNEL_ID, S.build_id_of(kall_text.encode()),
                            KERNEL_MMAP_NAME, PERF_RECORD_MISC_KERNEL)
    if elf_img is not None:
        # the pid of a build-id record is the machine's (the host's: -1), not the process's:
        # perf files build-ids per machine, and with any other pid the DSO is not matched
        bids += build_id_record(HOST_KERNEL_ID, elf_img.build_id, str(elf),
                                PERF_RECORD_MISC_USER)
    feats[HEADER_BUILD_ID] = bids
    feats[HEADER_HOSTNAME] = header_string("pebslab-guest")
    feats[HEADER_OSRELEASE] = header_string("pebslab-guest")
    feats[HEADER_VERSION] = header_string(f"pebslab {__version__}")
    feats[HEADER_ARCH] = header_string("x86_64")
    feats[HEADER_NRCPUS] = struct.pack("<II", 1, 1)
    if model is not None:
        from ..hw.cpuid import default as default_cpuid
        stepping = default_cpuid(model).leaf(0x1)[0] & 0xF     # CPUID.1 EAX[3:0]
        desc = f"pebslab simulated {model.name} (family {model.family}, model {model.model:#x})"
        cpuid = f"GenuineIntel,{model.family},{model.model},{stepping}"
    else:
        desc, cpuid = "pebslab simulated CPU", "GenuineIntel,6,0,0"
    feats[HEADER_CPUDESC] = header_string(desc)
    feats[HEADER_CPUID] = header_string(cpuid)
    feats[HEADER_CMDLINE] = header_string_list(
        ["perf", "record", "-e", ev.name, "-c", str(ev.period)]
        + (["-g"] if prof.callchain else []) + ["--", prof.comm])
    feats[HEADER_EVENT_DESC] = (struct.pack("<II", 1, len(attr)) + attr + struct.pack("<I", 1)
                                + header_string(ev.name) + struct.pack("<Q", EVENT_ID))
    feats[HEADER_SAMPLE_TIME] = struct.pack("<QQ", int(prof.time.min()), int(prof.time.max()))
    return feats


def _data_records(prof: _Profile, elf: Path | None, elf_img, kall_lo, kall_hi) -> bytes:
    """The data section: COMM, the kernel MMAP, the user MMAP, then the samples."""
    t0 = int(prof.time.min())
    out = [comm_record(prof.pid, prof.pid, prof.comm, t0),
           # every profile has a kernel map: "[kernel.kallsyms]_text" at _text, pgoff = _text
           # (perf's reference relocation symbol, checked against _text in the kallsyms file)
           mmap_record(HOST_KERNEL_ID, 0, kall_lo, kall_hi - kall_lo, kall_lo,
                       KERNEL_MMAP_NAME + "_text", PERF_RECORD_MISC_KERNEL, t0)]
    if elf_img is not None:
        out.append(mmap_record(prof.pid, prof.pid, elf_img.vaddr, elf_img.size, elf_img.offset,
                               str(elf), PERF_RECORD_MISC_USER, t0))
    out.append(prof.sample_records())
    return b"".join(out)


def _file_bytes(attr: bytes, data: bytes, feats: dict) -> bytes:
    """Lay the file out: header, attrs, ids, data, feature sections, feature payloads.

    Corresponds to perf_session__write_header() in tools/perf/util/header.c.
    """
    attrs_off = FILE_HEADER_SIZE
    attr_size = len(attr) + FILE_SECTION_SIZE
    ids_off = attrs_off + attr_size
    data_off = ids_off + 8
    feat_off = data_off + len(data)
    order = sorted(feats)
    bitmap = 0
    for f in order:
        bitmap |= 1 << f
    payload_off = feat_off + FILE_SECTION_SIZE * len(order)
    sections = b""
    payloads = b""
    for f in order:
        p = feats[f]
        sections += struct.pack("<QQ", payload_off + len(payloads), len(p))
        payloads += p + bytes(-len(p) % 8)
    header = (PERF_MAGIC + struct.pack("<QQ", FILE_HEADER_SIZE, attr_size)
              + struct.pack("<QQ", attrs_off, attr_size)
              + struct.pack("<QQ", data_off, len(data))
              + struct.pack("<QQ", 0, 0)
              + bitmap.to_bytes(32, "little"))
    assert len(header) == FILE_HEADER_SIZE
    fattr = attr + struct.pack("<QQ", ids_off, 8)
    return header + fattr + struct.pack("<Q", EVENT_ID) + data + sections + payloads


def _pipe_bytes(attr: bytes, data: bytes, feats: dict) -> bytes:
    """Lay a pipe stream out: 16-byte header, HEADER_ATTR, HEADER_FEATUREs, build-ids, data.

    Corresponds to perf_header__write_pipe(), perf_event__synthesize_attr()
    and perf_event__synthesize_features() in tools/perf/util/header.c and
    synthetic-events.c.
    """
    out = [PERF_MAGIC + struct.pack("<Q", PIPE_HEADER_SIZE)]
    body = attr + struct.pack("<Q", EVENT_ID)
    out.append(event_header(PERF_RECORD_HEADER_ATTR, 0, 8 + len(body)) + body)
    for f in sorted(feats):
        if f == HEADER_BUILD_ID:
            continue
        p = feats[f]
        p += bytes(-len(p) % 8)
        out.append(event_header(PERF_RECORD_HEADER_FEATURE, 0, 16 + len(p))
                   + struct.pack("<Q", f) + p)
    out.append(feats[HEADER_BUILD_ID])          # PERF_RECORD_HEADER_BUILD_ID records
    out.append(data)
    out.append(event_header(PERF_RECORD_FINISHED_ROUND, 0, 8))
    return b"".join(out)


def perf_data(samples, path, *, workload: Workload, event, period: int | None = None,
              cpu=None, comm: str | None = None, pid: int = DEFAULT_PID,
              callchain: bool = True, symbols_dir=None) -> PerfFiles:
    """Write ``samples`` as a perf.data file that real ``perf`` reads; return the PerfFiles.

    pebslab only (the format: see the module docstring). ``path`` is a file
    name (file mode) or a binary stream such as ``sys.stdout.buffer``
    (pipe mode: ``... | perf report -i -``). ``workload`` is the program the
    samples came from (its symbols and call structure), ``event`` the
    Recording (or an EventSpec with ``period``), ``cpu`` the CPU model name
    for the CPUID/CPUDESC header. Beside the perf.data (or in
    ``symbols_dir`` for a stream) go the ELF named after the workload and
    ``<name>.kallsyms``; perf finds the ELF by the absolute file name in
    the MMAP record and checks its build-id; the kernel symbols need
    ``--kallsyms`` (``PerfFiles.perf_args()``). Two workloads of the same
    name with different code exported into one folder share the ELF's name:
    the later export replaces it, and perf then refuses the earlier
    profile's user symbols (build-id mismatch) rather than show wrong
    ones; use a folder per workload. In a shell pipeline perf checks
    ``--kallsyms`` when it starts, so let the symbol files exist first.
    All or nothing: bad input
    (empty samples, an IP outside every function, a folder that cannot be
    written) raises before any file exists, and files appear only complete.
    """
    pipe = hasattr(path, "write") and not isinstance(path, (str, os.PathLike))
    prof = _Profile(samples, workload, event, period, cpu, comm, pid, callchain)
    if pipe:
        if symbols_dir is None:
            raise ValueError("symbols_dir is required when path is a stream (pipe mode): the "
                             "ELF and kallsyms files need a folder")
        folder = as_path("symbols_dir", symbols_dir)
        stem = workload.name
        target = None
    else:
        target = as_path("path", path)
        check_writable("path", target)
        folder = as_path("symbols_dir", symbols_dir) if symbols_dir is not None else \
            (target.parent if str(target.parent) else Path("."))
        stem = target.name
    if not folder.is_dir():
        raise ValueError(f"symbols_dir {str(folder)!r} is not an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"symbols_dir {str(folder)!r} cannot be written")
    files, elf, elf_img, kall, kall_text, kall_lo, kall_hi = _symbol_files(prof, folder, stem)
    if target is not None and target.resolve() in files:
        raise ValueError(f"path {str(target)!r} is the name the symbol file gets (the workload's "
                         "name); choose another name, e.g. 'guest.data'")
    attr = attr_bytes(prof.ev, prof.sample_type)
    feats = _features(prof, elf, elf_img, kall_text, attr)
    data = _data_records(prof, elf, elf_img, kall_lo, kall_hi)
    if pipe:
        blob = _pipe_bytes(attr, data, feats)
        write_all(files)
        path.write(blob)
        if hasattr(path, "flush"):
            path.flush()
    else:
        blob = _file_bytes(attr, data, feats)
        files[target] = blob
        write_all(files)
    return PerfFiles(data=None if pipe else target, elf=elf, kallsyms=kall,
                     build_id=elf_img.build_id.hex() if elf_img is not None else "",
                     samples=int(prof.ip.size), size=len(blob))
