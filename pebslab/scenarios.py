"""Ready-made set-ups that notebooks, tests and the fuzzer share.

pebslab only. :func:`manual_pebs` programs PEBS "step by step, without the
perf driver" (DESIGN section 3): it allocates a DS area and a buffer at
chosen offsets in guest kernel memory, writes the DS fields, and programs
the MSRs in the order Linux does, through the vCPU (so each access is a VM
exit under KVM). The other helpers build the situations the notebooks
discuss: a guest that remaps its buffer, memory pressure, side-by-side
designs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .hw import msr as M
from .hw import pebs as PEBS

PAGE = 4096


@dataclass
class ManualPebs:
    """What :func:`manual_pebs` set up, and the samples its PMI handler drained."""

    guest: object
    ds: int                       # GVA of the DS save area
    buffer: int                   # GVA of pebs_buffer_base
    buffer_bytes: int
    record_size: int
    period: int
    counter: int = 0
    ds_region: tuple = (0, 0)     # (GVA, pages) allocated for the DS area
    buf_region: tuple = (0, 0)    # (GVA, pages) allocated for the buffer
    samples: list = field(default_factory=list)   # decoded record rows (dicts)
    pmis: int = 0

    @property
    def absolute_maximum(self) -> int:
        return self.buffer + self.record_size * (self.buffer_bytes // self.record_size)

    def debug_store(self) -> PEBS.DebugStore:
        """The DS area as it is in guest memory now."""
        return PEBS.DebugStore.from_bytes(self.guest.read(self.ds, PEBS.DS_SIZE))

    def sample_ips(self, field_name: str = "real_ip") -> list[int]:
        return [int(s[field_name]) for s in self.samples]


def manual_pebs(guest, *, ds_offset: int = 0, buf_offset: int = 0, buf_pages: int = 16,
                period: int = 10007, event: int = 0x0404, counter: int = 0,
                threshold_records: int = 1, vcpu: int = 0) -> ManualPebs:
    """Program one PEBS counter by hand: DS area, buffer, MSRs, a minimal PMI handler.

    ``ds_offset`` / ``buf_offset`` place the DS area and the buffer base at
    that byte offset inside their first page (so a learner can make the DS
    area straddle a page, or the buffer start unaligned). ``event`` is
    event|umask<<8 (default 0x0404: Silvermont's L2-miss loads, which only
    the hot load of ``hot_loop`` produces). The handler drains every record
    into ``samples``, resets ``pebs_index`` and acknowledges GLOBAL_STATUS.
    """
    if not hasattr(guest, "mm") or not hasattr(guest, "vcpus"):
        raise TypeError(f"guest must be a pebslab.GuestKernel; got {type(guest).__name__}")
    ncpu = len(guest.vcpus)
    model = _cpu_of(guest)
    for name, v, lo, hi in (("vcpu", vcpu, 0, ncpu - 1),
                            ("event", event, 0, 0xFFFF),
                            ("ds_offset", ds_offset, 0, PAGE - 8),
                            ("buf_offset", buf_offset, 0, PAGE - 8),
                            ("buf_pages", buf_pages, 1, 64),
                            ("period", period, 1, (1 << 31) - 1),
                            ("threshold_records", threshold_records, 1, 1 << 16),
                            ("counter", counter, 0, 7)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int in {lo}..{hi}; got {type(v).__name__} {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be an int in {lo}..{hi}; got {v!r}")
    if counter >= model.n_gp:
        raise ValueError(f"counter must be a GP counter of {model.name} "
                         f"(0..{model.n_gp - 1}); got {counter}")
    if ds_offset % 8 or buf_offset % 8:
        raise ValueError(f"ds_offset and buf_offset must be multiples of 8; got "
                         f"{ds_offset} and {buf_offset}")
    v = guest.vcpus[vcpu]
    cpu = _cpu_of(guest)
    fmt = cpu.pebs_format
    rec_size = PEBS.record_size(fmt) if fmt < 4 else 32
    ds_pages = 2 if ds_offset + PEBS.DS_SIZE > PAGE else 1
    ds_region = guest.mm.alloc(ds_pages)
    extra = 1 if buf_offset else 0
    buf_region = guest.mm.alloc(buf_pages + extra)
    ds = ds_region + ds_offset
    buf = buf_region + buf_offset
    nbytes = buf_pages * PAGE
    mask = (1 << cpu.width) - 1
    reset = [0] * PEBS.DS_RESET_SLOTS
    reset[counter] = (-period) & mask
    absmax = buf + rec_size * (nbytes // rec_size)
    store = PEBS.DebugStore(pebs_buffer_base=buf, pebs_index=buf, pebs_absolute_maximum=absmax,
                            pebs_interrupt_threshold=min(absmax, buf + rec_size * threshold_records),
                            pebs_event_reset=tuple(reset))
    guest.write(ds, store.to_bytes())
    st = ManualPebs(guest=guest, ds=ds, buffer=buf, buffer_bytes=nbytes, record_size=rec_size,
                    period=period, counter=counter, ds_region=(ds_region, ds_pages),
                    buf_region=(buf_region, buf_pages + extra))

    def handler(vcpu_, ip, cpl):
        st.pmis += 1
        status = vcpu_.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS)
        d = st.debug_store()
        n = d.pebs_index - d.pebs_buffer_base      # bytes written (adaptive records vary)
        if n > 0:
            raw = guest.read(d.pebs_buffer_base, n)
            recs = PEBS.decode(raw, fmt)
            for r in recs:
                if fmt >= 4:   # adaptive: the basic group carries the eventing IP
                    row = {k: int(r["basic"][k]) for k in r["basic"].dtype.names}
                    row["real_ip"] = row["ip"]
                else:
                    row = {k: int(r[k]) for k in recs.dtype.names}
                st.samples.append(row)
            guest.write(st.ds + PEBS.DS_OFF_PEBS_INDEX, d.pebs_buffer_base.to_bytes(8, "little"))
        if status:
            vcpu_.wrmsr(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, status)

    v.set_pmi_handler(handler)
    v.wrmsr(M.MSR_IA32_DS_AREA, ds)
    v.wrmsr(M.MSR_IA32_PERFCTR0 + counter, (-period) & 0xFFFFFFFF)
    v.wrmsr(M.MSR_P6_EVNTSEL0 + counter, M.encode_eventsel(event & 0xFF, event >> 8 & 0xFF))
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1 << counter)
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << counter)
    return st


def _cpu_of(guest):
    m = guest.machine
    return getattr(m, "cpu", None) or m.vcpus[0].core.model


def remap_buffer_page(guest, st: ManualPebs, page: int = 0) -> tuple[int, int]:
    """The guest moves one page of its PEBS buffer to a new physical page.

    pebslab only: what the patch says a guest "could" do after set-up. The
    page's bytes are copied, the PTE is rewritten (with a TLB flush); the old
    physical page is left allocated. Returns (old GPA, new GPA).
    """
    if isinstance(page, bool) or not isinstance(page, int) or not 0 <= page < st.buf_region[1]:
        raise ValueError(f"page must be in 0..{st.buf_region[1] - 1}; got {page!r}")
    gva = st.buf_region[0] + page * PAGE
    data = guest.read(gva, PAGE)
    new = guest.mm.alloc_phys(1)
    old = guest.mm.remap(gva, new)
    guest.write(gva, data)
    return old, new


def frames_written_by_pebs(vm) -> set[int]:
    """Host frames that PEBS records were written to, from the trace."""
    rows = vm.trace.of("PEBS_WRITE")
    return {int(f) for f in rows["frame"]}
