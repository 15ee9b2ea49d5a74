"""Explorers for notebook 04: what the guest reads and what KVM accepts.

pebslab only. Two views, both built by driving a real simulated system
(``pl.Host`` -> ``create_vm`` -> ``GuestKernel``) and recording what
happened, never by re-deriving KVM's rules:

* :func:`perf_cap_table` - IA32_PERF_CAPABILITIES field by field: the host's
  value next to what a guest RDMSR returns under a design;
* :func:`msr_write_outcome` - one guest WRMSR to a PMU MSR: accepted (and
  what KVM did: pins, perf events, autoload entries) or the #GP and why.

Both return a :class:`TextPanel` (a ``str`` that Jupyter prints as plain
text, so it reads the same in a widget, a static cell and a test). The data
behind each panel comes from :func:`perf_cap_rows` and :func:`msr_write`.
"""

from __future__ import annotations

from ..kvm.designs import DESIGN_NAMES
from ..hw.errors import GuestFault
from ..hw import cpuid as CPUID
from ..hw import msr as M
from ..hw import pebs as PEBS
from ..hw.models import MODELS, get_model
from ..kvm import pmu as KPMU

__all__ = ["TextPanel", "MSR_CHOICES", "perf_cap_rows", "perf_cap_table", "msr_write",
           "msr_write_outcome", "register_bits_data", "register_bits", "EXPLORERS"]

#: The CPUID bits a PEBS-capable CPU announces (FACTS b.7).
PEBS_CPUID_BITS = ("DS", "DTES64", "PDCM")

#: Short names the explorer accepts, in the order a dropdown shows them.
MSR_CHOICES: dict[str, int] = {
    "PEBS_ENABLE": M.MSR_IA32_PEBS_ENABLE,
    "DS_AREA": M.MSR_IA32_DS_AREA,
    "PERF_CAPABILITIES": M.MSR_IA32_PERF_CAPABILITIES,
    "PEBS_DATA_CFG": M.MSR_PEBS_DATA_CFG,
    "PEBS_LD_LAT_THRESHOLD": M.MSR_PEBS_LD_LAT_THRESHOLD,
    "GLOBAL_CTRL": M.MSR_CORE_PERF_GLOBAL_CTRL,
    "GLOBAL_STATUS": M.MSR_CORE_PERF_GLOBAL_STATUS,
    "GLOBAL_OVF_CTRL": M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
    "FIXED_CTR_CTRL": M.MSR_CORE_PERF_FIXED_CTR_CTRL,
    "EVENTSEL0": M.MSR_P6_EVNTSEL0,
    "EVENTSEL1": M.MSR_P6_EVNTSEL0 + 1,
    "EVENTSEL2": M.MSR_P6_EVNTSEL0 + 2,
    "PERFCTR0": M.MSR_IA32_PERFCTR0,
    "PERFCTR1": M.MSR_IA32_PERFCTR0 + 1,
}

_PEBS_MSRS = (M.MSR_IA32_DS_AREA, M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_PERF_CAPABILITIES)
_PRELUDE_PERIOD = 10007
_PRELUDE_EVENT = (0x04, 0x04)   # Silvermont MEM_UOPS_RETIRED.L2_MISS_LOADS (event, umask)
_BUF_PAGES = 16                  # Linux's 64 KiB PEBS buffer (FACTS a.4)


class TextPanel(str):
    """A block of text that Jupyter shows as is (not as a quoted string repr).

    pebslab only. It *is* a ``str``: tests and callers use it as one.
    """

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))


# -----------------------------------------------------------------------------
# argument checks
# -----------------------------------------------------------------------------

def _check_cpu(cpu) -> str:
    if not isinstance(cpu, str) or cpu.lower() not in MODELS:
        raise ValueError(f"cpu must be one of {', '.join(map(repr, MODELS))}; got {cpu!r}")
    return cpu.lower()


def _check_design(design) -> str:
    if design not in DESIGN_NAMES:
        raise ValueError(f"design must be one of {', '.join(map(repr, DESIGN_NAMES))}; "
                         f"got {design!r}")
    return design


def _check_bool(name, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return value


def _check_msr(msr) -> tuple[str, int]:
    if isinstance(msr, str):
        key = msr.upper().removeprefix("MSR_").removeprefix("IA32_").removeprefix("CORE_PERF_")
        if key in MSR_CHOICES:
            return key, MSR_CHOICES[key]
        raise ValueError(f"msr must be one of {', '.join(map(repr, MSR_CHOICES))} "
                         f"or an MSR number; got {msr!r}")
    if isinstance(msr, bool) or not isinstance(msr, int) or not 0 <= msr < 1 << 32:
        raise ValueError(f"msr must be one of {', '.join(map(repr, MSR_CHOICES))} "
                         f"or an MSR number in 0..0xffffffff; got {msr!r}")
    for name, number in MSR_CHOICES.items():
        if number == msr:
            return name, msr
    return M.msr_name(msr), msr


def _check_value(value) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip().replace("_", ""), 0)
        except ValueError:
            raise ValueError(f"value must be an int in 0..2**64-1 (or a string such as "
                             f"'0x1'); got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"value must be an int in 0..2**64-1 (or a string such as '0x1'); "
                         f"got {value!r}")
    return value


def _make_vm(cpu: str, design: str, hide_pebs_cpuid: bool, memory_pages: int = 64):
    """A fresh host (seed 0) with one VM and a booted guest kernel."""
    import pebslab as pl   # late import: the package imports viz lazily, never the reverse
    host = pl.Host(cpu=cpu, frames=memory_pages + 64, seed=0)
    table = CPUID.default(cpu)
    if hide_pebs_cpuid:
        table = table.without(*PEBS_CPUID_BITS)
    vm = host.create_vm(design=design, memory_pages=memory_pages, cpuid=table)
    guest = pl.GuestKernel(vm)
    return host, vm, guest


def _cpuid_bits(vm) -> str:
    return " ".join(f"{f}={int(vm.cpuid.has(f))}" for f in PEBS_CPUID_BITS)


# -----------------------------------------------------------------------------
# PERF_CAPABILITIES, field by field
# -----------------------------------------------------------------------------

def perf_cap_rows(cpu="silvermont", design="patch", hide_pebs_cpuid=False) -> dict:
    """What the host has and what the guest reads in IA32_PERF_CAPABILITIES.

    pebslab only. Boots a VM of ``design`` on a ``cpu`` host and executes a
    guest RDMSR of PERF_CAPABILITIES (kvm_pmu_get_msr). Returns a dict:
    ``host`` (int), ``guest`` (int, or None if the read raised #GP),
    ``fault`` (the #GP message or None), ``cpuid`` (the guest's DS/DTES64/
    PDCM bits), and ``rows``: one dict per field of
    :data:`pebslab.hw.msr.PERF_CAP_FIELDS` with name, bits, host, guest.
    """
    cpu = _check_cpu(cpu)
    design = _check_design(design)
    hide_pebs_cpuid = _check_bool("hide_pebs_cpuid", hide_pebs_cpuid)
    _host, vm, _guest = _make_vm(cpu, design, hide_pebs_cpuid, memory_pages=16)
    host_value = get_model(cpu).perf_capabilities
    try:
        guest_value = vm.vcpus[0].rdmsr(M.MSR_IA32_PERF_CAPABILITIES)
        fault = None
    except GuestFault as e:
        guest_value, fault = None, str(e)
    host_f = M.decode_perf_capabilities(host_value)
    guest_f = M.decode_perf_capabilities(guest_value) if guest_value is not None else None
    rows = []
    for name, lo, width in M.PERF_CAP_FIELDS:
        bits = f"{lo}" if width == 1 else f"{lo + width - 1}:{lo}"
        rows.append({"field": name, "bits": bits, "host": host_f[name],
                     "guest": None if guest_f is None else guest_f[name]})
    return {"cpu": cpu, "design": design, "host": host_value, "guest": guest_value,
            "fault": fault, "cpuid": _cpuid_bits(vm), "rows": rows}


def perf_cap_table(cpu="silvermont", design="patch", hide_pebs_cpuid=False) -> TextPanel:
    """IA32_PERF_CAPABILITIES decoded field by field: host value vs what the guest reads.

    pebslab only. ``cpu`` is a pebslab CPU model, ``design`` one of
    'patch', 'review', 'fixed', 'icelake'; ``hide_pebs_cpuid`` gives the
    guest a CPUID without DS, DTES64 and PDCM. The note column says
    "hidden" where the host has a non-zero field the guest reads as 0.
    """
    d = perf_cap_rows(cpu, design, hide_pebs_cpuid)
    lines = [f"IA32_PERF_CAPABILITIES (MSR {M.MSR_IA32_PERF_CAPABILITIES:#x}) - "
             f"{d['cpu']} host, design '{d['design']}'",
             f"guest CPUID: {d['cpuid']}",
             f"host value {d['host']:#x}; guest RDMSR -> "
             + (f"{d['guest']:#x}" if d["guest"] is not None else d["fault"]),
             "",
             f"{'field':<18}{'bits':>6}{'host':>7}{'guest':>7}  note",
             "-" * 48]
    for r in d["rows"]:
        if r["guest"] is None:
            guest, note = "#GP", ""
        else:
            guest = str(r["guest"])
            note = "hidden" if r["host"] and not r["guest"] else (
                "passed" if r["host"] else "")
        lines.append(f"{r['field']:<18}{r['bits']:>6}{r['host']:>7}{guest:>7}  {note}".rstrip())
    return TextPanel("\n".join(lines))


# -----------------------------------------------------------------------------
# one WRMSR, and what KVM made of it
# -----------------------------------------------------------------------------

def _events(vcpu) -> dict[str, str]:
    out = {}
    for pmc in vcpu.pmu.pmcs():
        ev = pmc.perf_event
        if ev is None:
            out[pmc.name] = "no host perf event"
        else:
            where = (f"host counter {'PMC' if ev.hw_idx < 32 else 'FIXED'}"
                     f"{ev.hw_idx if ev.hw_idx < 32 else ev.hw_idx - 32}"
                     if ev.hw_idx >= 0 else f"not on a counter ({ev.state})")
            out[pmc.name] = f"host perf event, precise_ip={ev.attr.precise_ip}, {where}"
    return out


def _collapse(lines: list[str], keep: int = 2) -> list[str]:
    """Shorten runs of more than keep+1 lines of the same kind to keep lines + a count."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        kind = lines[i].split(":", 1)[0]
        j = i
        while j < len(lines) and lines[j].split(":", 1)[0] == kind:
            j += 1
        run = lines[i:j]
        if len(run) > keep + 1:
            out += run[:keep] + [f"... and {len(run) - keep} more {kind} rows "
                                 f"({len(run)} in all)"]
        else:
            out += run
        i = j
    return out


def _why_not_pmu_msr(vcpu, msr: int) -> str:
    """Explain, in the terms of kvm_pmu_msr, why ``msr`` is not a PMU MSR here."""
    d = vcpu.design
    if msr in _PEBS_MSRS or msr == M.MSR_PEBS_DATA_CFG:
        if not KPMU.perf_pebs_virtualization(vcpu):
            if d.require_pebs_ept:
                return (f"perf_pebs_virtualization() is false: the '{d.name}' design needs "
                        f"EPT-friendly PEBS, which {vcpu.host_cpu.name} lacks")
            return (f"perf_pebs_virtualization() is false on {vcpu.host_cpu.name} (pebslab "
                    f"ASSUMPTION: true on Silvermont only; patches 1-3 are not archived)")
        if d.pebs_msrs_gate == "guest_cpuid" and not vcpu.pmu.pebs_allowed:
            return ("the guest CPUID lacks DS/DTES64/PDCM, so kvm_pmu_cpuid_update left "
                    "pebs_allowed false (the review's gate)")
        if msr == M.MSR_PEBS_DATA_CFG:
            return ("only the 'icelake' design emulates MSR_PEBS_DATA_CFG (adaptive PEBS, "
                    "format >= 4)")
    if msr in (M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_CORE_PERF_GLOBAL_STATUS,
               M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL):
        return f"the guest's PMU version is {vcpu.pmu.version}; these MSRs need version 2"
    n = vcpu.pmu.nr_arch_gp_counters
    for base in (M.MSR_IA32_PERFCTR0, M.MSR_P6_EVNTSEL0):
        if base <= msr < base + M.INTEL_PMC_MAX_GENERIC:
            return (f"the guest has {n} GP counter(s) (CPUID.0AH), "
                    f"so counter {msr - base} does not exist")
    if msr == M.MSR_PEBS_LD_LAT_THRESHOLD:
        return ("KVM does not handle this MSR: the patch 'doesn't implement the extended "
                "MSRs' (latency profiling)")
    return "KVM's PMU code does not handle this MSR"


def msr_write(msr="PEBS_ENABLE", value=0x1, design="patch", cpu="silvermont",
              hide_pebs_cpuid=False) -> dict:
    """Execute one guest WRMSR on a fresh VM and report what KVM did.

    pebslab only. Set-up (the prelude), as a guest perf driver would have
    done before enabling PEBS: the guest allocates a DS area and a 16-page
    buffer and fills in the DS fields (plain memory writes), then writes
    DS_AREA, PERFCTR0 (-10007) and EVENTSEL0 (L2-miss loads, enabled);
    GLOBAL_CTRL and PEBS_ENABLE stay 0. Each prelude write that #GPs is
    reported, not fatal. Then ``vcpu.wrmsr(msr, value)`` runs.

    Returns a dict: name, msr, value, accepted (bool), fault (message or
    None), is_pmu_msr, why (list of str), did (list of str: KVM's trace
    and state changes), readback (int, or the #GP message), prelude (list
    of str), cpuid (the guest's PEBS CPUID bits).
    """
    name, number = _check_msr(msr)
    value = _check_value(value)
    design = _check_design(design)
    cpu = _check_cpu(cpu)
    hide_pebs_cpuid = _check_bool("hide_pebs_cpuid", hide_pebs_cpuid)
    host, vm, guest = _make_vm(cpu, design, hide_pebs_cpuid)
    v = vm.vcpus[0]
    model = get_model(cpu)

    # --- the prelude: DS area in guest memory, then the MSRs before PEBS_ENABLE ---
    ds = guest.mm.alloc(1)
    buf = guest.mm.alloc(_BUF_PAGES)
    rec = model.pebs_record_size
    nbytes = _BUF_PAGES * PEBS.PAGE_SIZE
    absmax = buf + rec * (nbytes // rec)
    reset = [0] * PEBS.DS_RESET_SLOTS
    reset[0] = (-_PRELUDE_PERIOD) & ((1 << model.width) - 1)
    guest.write(ds, PEBS.DebugStore(pebs_buffer_base=buf, pebs_index=buf,
                                    pebs_absolute_maximum=absmax,
                                    pebs_interrupt_threshold=buf + rec,
                                    pebs_event_reset=tuple(reset)).to_bytes())
    prelude = [f"guest memory: DS area at GVA {ds:#x}, {_BUF_PAGES}-page buffer at "
               f"GVA {buf:#x}"]
    for pm, pv in ((M.MSR_IA32_DS_AREA, ds),
                   (M.MSR_IA32_PERFCTR0, (-_PRELUDE_PERIOD) & 0xFFFFFFFF),
                   (M.MSR_P6_EVNTSEL0, M.encode_eventsel(*_PRELUDE_EVENT))):
        try:
            v.wrmsr(pm, pv)
            prelude.append(f"WRMSR {M.msr_name(pm)} <- {pv:#x}: accepted")
        except GuestFault:
            prelude.append(f"WRMSR {M.msr_name(pm)} <- {pv:#x}: #GP")

    # --- the write ---------------------------------------------------------------
    pmu = v.pmu
    before = {"pebs_enable": pmu.pebs_enable, "ds_area": pmu.ds_area,
              "pinned": list(pmu.pinned_pages), "events": _events(v),
              "created": vm.perf_events_created, "autoload": v.autoload.table()}
    is_pmu = KPMU.kvm_pmu_msr(v, number)
    mark = len(vm.trace)
    try:
        v.wrmsr(number, value)
        accepted, fault = True, None
    except GuestFault as e:
        accepted, fault = False, str(e)
    why = []
    if not is_pmu:
        why.append("kvm_pmu_msr says: not a PMU MSR for this guest - "
                   + _why_not_pmu_msr(v, number))
    elif not accepted:
        why.append("kvm_pmu_set_msr refused it: " + fault.split(" - ", 1)[-1])
    else:
        why.append("kvm_pmu_msr: a PMU MSR for this guest; kvm_pmu_set_msr accepted it")

    did = _collapse([f"{row['kind']}: {row['info']}" for row in vm.trace.rows()[mark:]
                     if row["kind"] not in ("VMEXIT", "MSR_WRITE", "GP")])
    if accepted:
        if pmu.pebs_enable != before["pebs_enable"]:
            did.append(f"pmu->pebs_enable {before['pebs_enable']:#x} -> {pmu.pebs_enable:#x}")
        if pmu.ds_area != before["ds_area"]:
            did.append(f"pmu->ds_area {before['ds_area']:#x} -> {pmu.ds_area:#x}")
        if pmu.pinned_pages != before["pinned"]:
            did.append(f"pinned host frames: {len(before['pinned'])} -> "
                       f"{len(pmu.pinned_pages)}")
        made = vm.perf_events_created - before["created"]
        if made:
            did.append(f"host perf events created: {made}")
        for k, desc in _events(v).items():
            if before["events"].get(k) != desc:
                did.append(f"{k}: {before['events'].get(k)} -> {desc}")
        if not did:
            did.append("stored the value; nothing else changed")
    try:
        readback = v.rdmsr(number)
    except GuestFault as e:
        readback = str(e)
    return {"name": name, "msr": number, "value": value, "design": design, "cpu": cpu,
            "accepted": accepted, "fault": fault, "is_pmu_msr": is_pmu, "why": why,
            "did": did, "readback": readback, "prelude": prelude, "cpuid": _cpuid_bits(vm),
            "pebs_enable_valid": KPMU.pebs_enable_valid(v)}


def msr_write_outcome(msr="PEBS_ENABLE", value=0x1, design="patch", cpu="silvermont",
                      hide_pebs_cpuid=False) -> TextPanel:
    """One guest WRMSR to a PMU MSR: accepted (and what KVM did) or #GP (and why).

    pebslab only; the text view of :func:`msr_write`. ``msr`` is a name from
    :data:`MSR_CHOICES` (or an MSR number), ``value`` an int or a string such
    as '0x1', ``design`` one of 'patch', 'review', 'fixed', 'icelake',
    ``cpu`` a pebslab CPU model; ``hide_pebs_cpuid`` gives the guest a
    CPUID without DS, DTES64 and PDCM (a PMU-without-PEBS guest).
    """
    r = msr_write(msr, value, design, cpu, hide_pebs_cpuid)
    lines = [f"WRMSR {M.msr_name(r['msr'])} ({r['msr']:#x}) <- {r['value']:#x}",
             f"  host {r['cpu']}, design '{r['design']}', guest CPUID {r['cpuid']}",
             "",
             "before it (the prelude):"]
    lines += [f"  {p}" for p in r["prelude"]]
    lines += ["", "outcome: " + ("ACCEPTED" if r["accepted"] else r["fault"])]
    lines += [f"  {w}" for w in r["why"]]
    if r["accepted"]:
        lines += ["", "what KVM did:"] + [f"  {d}" for d in r["did"]]
    rb = r["readback"]
    lines += ["", "RDMSR afterwards: " + (f"{rb:#x}" if isinstance(rb, int) else rb)]
    return TextPanel("\n".join(lines))


#: Every explorer of this module at its defaults (bench/bench_explorers.py times them).
EXPLORERS = {
    "perf_cap_table": (perf_cap_table, {"cpu": "silvermont", "design": "patch",
                                        "hide_pebs_cpuid": False}),
    "msr_write_outcome": (msr_write_outcome, {"msr": "PEBS_ENABLE", "value": 0x1,
                                              "design": "patch", "cpu": "silvermont",
                                              "hide_pebs_cpuid": False}),
}


# -----------------------------------------------------------------------------
# The opening picture: which bits the guest is told, which bits it may set
# -----------------------------------------------------------------------------

#: PEBS_ENABLE bits the figure shows: PEBS on PMC0-3, load latency on PMC0-3, precise store.
PEBS_ENABLE_BITS = (0, 1, 2, 3, 32, 33, 34, 35, 63)


def register_bits_data(cpu="silvermont", design="patch") -> dict:
    """The bits behind :func:`register_bits`, each from a real access.

    pebslab only. ``perf_cap``: for bits 0..17 of IA32_PERF_CAPABILITIES,
    the host's value (the core's RDMSR) and the guest's (a guest RDMSR
    through KVM; None if it #GPs). ``pebs_enable``: for each bit of
    :data:`PEBS_ENABLE_BITS`, whether the host core accepts a WRMSR of that
    bit alone (``Core.wrmsr_fault``) and whether KVM accepts the guest's
    WRMSR of it (each on a fresh VM).
    """
    import pebslab as pl
    from ..hw.core import Core
    cpu = _check_cpu(cpu)
    design = _check_design(design)
    core = Core(cpu)
    host_cap = core.rdmsr(M.MSR_IA32_PERF_CAPABILITIES)
    _host, vm, _guest = _make_vm(cpu, design, False, memory_pages=16)
    try:
        guest_cap = vm.vcpus[0].rdmsr(M.MSR_IA32_PERF_CAPABILITIES)
    except GuestFault:
        guest_cap = None
    rows_cap = [{"bit": b, "host": bool(host_cap >> b & 1),
                 "guest": None if guest_cap is None else bool(guest_cap >> b & 1)}
                for b in range(18)]
    rows_pe = []
    for b in PEBS_ENABLE_BITS:
        host_ok = core.wrmsr_fault(M.MSR_IA32_PEBS_ENABLE, 1 << b) is None
        h = pl.Host(cpu=cpu, frames=64, seed=0)
        v = h.create_vm(design=design, memory_pages=16).vcpus[0]
        try:
            v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1 << b)
            guest_ok = True
        except GuestFault as e:
            # a refusal for want of a DS area to pin is not a reserved bit
            guest_ok = "reserved" not in str(e) and "not a PMU MSR" not in str(e)
        rows_pe.append({"bit": b, "host": host_ok, "guest": guest_ok})
    return {"cpu": cpu, "design": design, "host_cap": host_cap, "guest_cap": guest_cap,
            "perf_cap": rows_cap, "pebs_enable": rows_pe}


_CAP_LABELS = {2.5: "LBR fmt", 6: "trap", 7: "arch regs", 9.5: "PEBS format", 12: "SMM",
               13: "FW_WRITES", 14: "baseline", 15: "metrics", 16: "PT", 17: "timed"}


def register_bits(cpu="silvermont", design="patch"):
    """Draw what the guest is told (PERF_CAPABILITIES) and what it may set (PEBS_ENABLE).

    pebslab only. Two panels of bit cells, each row from a real access (see
    :func:`register_bits_data`): top, bits 17..0 of PERF_CAPABILITIES as
    the host has them and as a guest RDMSR returns them; bottom, the
    PEBS_ENABLE bits the host CPU accepts and those KVM accepts from the
    guest. Filled = set / accepted; a hatched red cell marks a bit KVM
    accepts that the CPU itself refuses. Returns the Figure.

    Used in: notebook 04 (the opening picture).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    d = register_bits_data(cpu, design)
    blue, grey, red = "#0072B2", "#F0F0F0", "#D55E00"
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5.2),
                                   gridspec_kw={"height_ratios": [1, 1]})

    def cell(ax, x, y, on, bad=False, off_label=None):
        ax.add_patch(Rectangle((x, y), 0.9, 0.8, facecolor=(red if bad else blue) if on else grey,
                               edgecolor="black", lw=0.6, hatch="//" if bad else None))
        ax.text(x + 0.45, y + 0.4, "1" if on else (off_label or "0"), ha="center", va="center",
                fontsize=8, color="white" if on else "black")

    caps = d["perf_cap"]
    for i, r in enumerate(reversed(caps)):           # bit 17 on the left
        cell(ax1, i, 1, r["host"])
        if r["guest"] is None:
            cell(ax1, i, 0, False, off_label="-")
        else:
            cell(ax1, i, 0, r["guest"])
    ax1.set_xlim(-0.2, len(caps))
    ax1.set_ylim(-0.1, 1.9)
    ax1.set_xticks([i + 0.45 for i in range(len(caps))])
    ax1.set_xticklabels([str(r["bit"]) for r in reversed(caps)], fontsize=8)
    for b, name in _CAP_LABELS.items():
        ax1.text(len(caps) - 1 - b + 0.45, 1.85, name, ha="center", va="bottom", fontsize=7,
                 rotation=35)
    ax1.set_yticks([0.4, 1.4])
    guest_txt = ("guest RDMSR: #GP" if d["guest_cap"] is None
                 else f"guest reads {d['guest_cap']:#x}")
    ax1.set_yticklabels([guest_txt, f"host has {d['host_cap']:#x}"], fontsize=8)
    ax1.set_title(f"IA32_PERF_CAPABILITIES (0x345) bits 17..0: what a {d['design']} guest "
                  f"on {d['cpu']} is told", fontsize=10, pad=34)
    for s in ax1.spines.values():
        s.set_visible(False)

    pe = d["pebs_enable"]
    for i, r in enumerate(pe):
        cell(ax2, i, 1, r["host"])
        cell(ax2, i, 0, r["guest"], bad=r["guest"] and not r["host"])
    ax2.set_xlim(-0.2, len(pe))
    ax2.set_ylim(-0.1, 1.9)
    names = {0: "PMC0", 1: "PMC1", 2: "PMC2", 3: "PMC3", 32: "LL0", 33: "LL1", 34: "LL2",
             35: "LL3", 63: "PS"}
    ax2.set_xticks([i + 0.45 for i in range(len(pe))])
    ax2.set_xticklabels([f"{r['bit']}\n{names[r['bit']]}" for r in pe], fontsize=8)
    ax2.set_yticks([0.4, 1.4])
    ax2.set_yticklabels(["KVM accepts from the guest", f"the {d['cpu']} CPU accepts"],
                        fontsize=8)
    ax2.set_title("IA32_PEBS_ENABLE (0x3F1), one bit at a time (1 = WRMSR accepted); "
                  "hatched: accepted by KVM, refused by the CPU", fontsize=10)
    for s in ax2.spines.values():
        s.set_visible(False)
    ax2.set_xlabel("bit (LL = load latency, PS = precise store)", fontsize=8)
    fig.tight_layout()
    return fig
