"""The course's appendix as data: glossary, references and the mechanism index.

pebslab only. Notebook 99 renders these tables; ``tests/test_appendix.py``
keeps them honest (every function imports, every notebook, section, explorer
and exercise a row names exists, every glossary term is first used where the
table says). The rows live here, in one place, so a chapter that moves a
section changes one line.

A mechanism row marked ``pending=True`` points at a notebook or section that
is still being written outside main; the test skips it and names the
notebook. Flip it to ``False`` once that notebook is merged.

Used in: notebook 99 (the appendix); checked by tests/test_appendix.py.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ._check import check_choice

__all__ = [
    "Term", "Reference", "Mechanism", "GLOSSARY", "REFERENCES", "MECHANISMS", "PATCH_HUNKS",
    "NOTEBOOK_DIR", "notebook_stems", "notebook_path", "notebook_headings", "notebook_markdown",
    "notebook_code", "resolve", "mentions", "first_mention", "check_term", "check_mechanism",
    "glossary_table", "references_table", "mechanism_table", "hunk_walk", "Table",
]

#: the notebooks of this repository
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


# ----------------------------------------------------------------------------- rows

@dataclass(frozen=True)
class Term:
    """A glossary entry: the term, a definition, and the notebook that first uses it.

    ``patterns`` are the regular expressions (case-sensitive) that count as a
    use of the term in a notebook's markdown; by default the term itself as a
    whole word.
    """

    term: str
    definition: str
    first: str
    patterns: tuple = ()

    def regexes(self) -> tuple:
        return self.patterns or (r"(?<![\w-])" + re.escape(self.term) + r"(?![\w-])",)


@dataclass(frozen=True)
class Reference:
    """A source the course relies on: what it is, where to find it, what it is for."""

    key: str
    kind: str          # "thread", "SDM", "kernel file", "kernel commit", "kvm-unit-tests"
    title: str
    where: str
    used_for: str


@dataclass(frozen=True)
class Mechanism:
    """One row of the mechanism index: a piece of the patch or the review, where it is taught.

    ``pebslab`` are dotted paths that import (module attributes, class
    attributes or dataclass fields); ``notebook`` is a notebook's file stem;
    ``section`` the text of one of its headings (without the ``#``);
    ``explorer`` the dotted path of a viz function the notebook wires to
    widgets; ``exercise`` the name of a ``pebslab.exercises.check`` checker
    the notebook calls. Every row has an explorer or an exercise.
    """

    mechanism: str
    hunk: str
    pebslab: tuple
    notebook: str
    section: str
    explorer: str | None = None
    exercise: str | None = None
    pending: bool = False


# ----------------------------------------------------------------------------- glossary

_W = r"(?<![\w-])"       # no word character or hyphen before
_E = r"(?![\w-])"        # ... nor after


def _t(term, first, definition, *patterns):
    return Term(term, definition, first, tuple(patterns))


#: Every term the course uses, in the order a learner meets them.
GLOSSARY: tuple[Term, ...] = (
    _t("PMU", "00_welcome",
       "Performance monitoring unit: the part of a core that counts hardware events "
       "(instructions, cycles, cache misses) in programmable and fixed counters.",
       _W + r"PMU" + _E),
    _t("PMC", "01_pmu_basics_and_skid",
       "Performance monitoring counter: one of the PMU's general-purpose counters "
       "(IA32_PMC0, PMC1, ...), each with its own event select register.",
       _W + r"PMCs?" + _E, r"\bPMC\d"),
    _t("MSR", "00_welcome",
       "Model-specific register: a numbered CPU register read with RDMSR and written with "
       "WRMSR at ring 0; every PMU control lives in one.",
       _W + r"MSRs?" + _E),
    _t("WRMSR / RDMSR", "00_welcome",
       "The instructions that write and read an MSR. In a guest, KVM intercepts them for "
       "the PMU MSRs: each one is a VM exit.",
       r"\bWRMSR\b", r"\bRDMSR\b"),
    _t("event select", "00_welcome",
       "IA32_PERFEVTSELx: chooses what a general-purpose counter counts (event, umask) and "
       "how (user/kernel, edge, invert, CMASK, interrupt on overflow, enable).",
       r"event select", r"PERFEVTSEL", r"EVNTSEL"),
    _t("fixed counter", "01_pmu_basics_and_skid",
       "A counter wired to one event (instructions, core cycles, reference cycles), "
       "controlled by 4 bits of IA32_FIXED_CTR_CTRL instead of an event select.",
       r"fixed counters?"),
    _t("CPUID leaf 0xA", "01_pmu_basics_and_skid",
       "The architectural-PMU leaf: PMU version, number and width of the general-purpose "
       "and fixed counters, and which architectural events are missing.",
       r"0xA\b", r"0AH\b"),
    _t("PMI", "00_welcome",
       "Performance monitoring interrupt: the local-APIC interrupt (LVTPC) a counter "
       "raises when it overflows with its interrupt bit set, or when the PEBS buffer "
       "reaches its threshold.",
       _W + r"PMIs?" + _E),
    _t("NMI", "00_welcome",
       "Non-maskable interrupt. Linux programs the PMI as an NMI, so the host's PMU "
       "handler runs even with interrupts disabled; in a VM it forces a VM exit.",
       _W + r"NMIs?" + _E),
    _t("skid", "00_welcome",
       "The distance between the instruction that caused a counter overflow and the one "
       "the interrupt reports: the PMI arrives some instructions late.",
       r"\bskid\b"),
    _t("PEBS", "00_welcome",
       "Precise event-based sampling: on overflow of a PEBS-enabled counter, the CPU "
       "itself writes a record of the machine state to a memory buffer, without an "
       "interrupt per sample.",
       _W + r"PEBS" + _E),
    _t("PEBS_ENABLE", "00_welcome",
       "IA32_PEBS_ENABLE (0x3F1): one bit per counter that makes its overflow produce a "
       "PEBS record (on Silvermont only bit 0, PMC0, is real).",
       r"PEBS_ENABLE"),
    _t("DS_AREA", "00_welcome",
       "IA32_DS_AREA (0x600): the linear (virtual) address of the DS save area.",
       r"DS_AREA"),
    _t("DS area", "00_welcome",
       "The debug store save area: a small structure (struct debug_store) that gives the "
       "CPU the PEBS buffer's base, its write index, its end, the interrupt threshold "
       "and the counter reset values.",
       r"\bDS (save )?area\b"),
    _t("PEBS record", "00_welcome",
       "What the assist writes per sample: flags, IP, general registers and, depending on "
       "the format, status, data address, latency, eventing IP, TSC.",
       r"PEBS records?"),
    _t("PEBS assist", "00_welcome",
       "The microcode step that writes a PEBS record into the buffer (through the current "
       "page tables) and reloads the counter; it cannot take a page fault.",
       r"\bassists?\b"),
    _t("interrupt threshold", "00_welcome",
       "The DS field pebs_interrupt_threshold: when the write index reaches it, the CPU "
       "sets GLOBAL_STATUS bit 62 and raises a PMI so software drains the buffer.",
       r"threshold"),
    _t("GLOBAL_CTRL", "01_pmu_basics_and_skid",
       "IA32_PERF_GLOBAL_CTRL: one enable bit per counter (GP counter i at bit i, fixed "
       "counter i at bit 32+i); a counter counts only if enabled here too.",
       r"GLOBAL_CTRL"),
    _t("GLOBAL_STATUS", "00_welcome",
       "IA32_PERF_GLOBAL_STATUS: one overflow bit per counter plus status bits such as "
       "62 (PEBS buffer threshold) and 63 (CondChgd); the PMI handler reads it first.",
       r"GLOBAL_STATUS"),
    _t("GLOBAL_STATUS bit 62", "00_welcome",
       "OvfBuffer: the PEBS buffer reached its interrupt threshold. The patch's "
       "kvm_perf_overflow sets it in the guest's virtual GLOBAL_STATUS for a precise event.",
       r"bit 62"),
    _t("PEBS format", "00_welcome",
       "PERF_CAPABILITIES bits 11:8, the record layout the CPU writes: 0 Core2, 1 Nehalem, "
       "2 Haswell (and Silvermont's layout), 3 Skylake, 4 adaptive.",
       r"PEBS format", r"record format", r"\bfmt\s?\d"),
    _t("trap-like", "02_pebs_bare_metal",
       "A PEBS assist that records the state after the sampled instruction "
       "(PERF_CAPABILITIES bit 6, PEBS_TRAP): the recorded IP is the next instruction.",
       r"trap-like"),
    _t("EventingRIP", "00_welcome",
       "The record field (offset 0xB0 from format 2 on) holding the address of the "
       "instruction that caused the event, so :pp needs no IP fix-up.",
       r"EventingRIP", r"[Ee]venting IP"),
    _t("precise_ip", "02_pebs_bare_metal",
       "The perf_event_attr field behind :p/:pp/:ppp: how exact the sampled IP must be. "
       "Any value above 0 makes Linux use PEBS; the patch sets 1 for a guest PEBS counter.",
       r"precise_ip"),
    _t("LBR", "02_pebs_bare_metal",
       "Last branch record: a ring of from/to addresses of recent branches; Linux uses "
       "it to fix up the off-by-one IP of trap-like PEBS records without EventingRIP.",
       _W + r"LBRs?" + _E),
    _t("adaptive PEBS", "00_welcome",
       "PEBS format 4 (Ice Lake): a 32-byte basic record plus groups chosen by "
       "PEBS_DATA_CFG, so records have a variable size.",
       r"[Aa]daptive PEBS", r"adaptive records?"),
    _t("PEBS_DATA_CFG", "02_pebs_bare_metal",
       "MSR 0x3F2 (adaptive PEBS): which record groups to write (memory info, GPRs, XMM, "
       "LBRs) and how many LBR entries.",
       r"PEBS_DATA_CFG", r"\bDATA_CFG\b"),
    _t("load latency", "00_welcome",
       "PEBS load-latency sampling (PEBS_ENABLE bits 32-35 on big cores): records a load's "
       "data address and latency; Silvermont has none, and the patch does not emulate it.",
       r"load latency", r"load-latency"),
    _t("Silvermont", "00_welcome",
       "The Atom core the patch supports, and the only one: PEBS on PMC0 only, "
       "format 2, trap-like, with reserved address/source/latency fields.",
       r"Silvermont"),
    _t("perf event", "00_welcome",
       "The kernel's object for one thing to count or sample (perf_event_attr + state); "
       "the host perf core schedules events onto hardware counters.",
       r"perf events?"),
    _t("sample period", "00_welcome",
       "How many events between samples; the counter is preset to minus the period so "
       "it overflows after that many.",
       r"sample period", r"sampling period"),
    _t("KVM", "00_welcome",
       "The Linux kernel's hypervisor (arch/x86/kvm): runs a guest with hardware "
       "virtualization and emulates what the guest may not touch directly, the PMU included.",
       _W + r"KVM" + _E),
    _t("QEMU", "04_cpuid_and_msrs",
       "The user-space VMM that drives KVM: it chooses the guest's CPUID, saves and "
       "restores MSRs, and migrates the VM (pebslab.vmm plays it).",
       _W + r"QEMU" + _E),
    _t("vCPU", "00_welcome",
       "A virtual CPU: the guest's view of a core, run by KVM on a host CPU.",
       r"\bvCPUs?\b"),
    _t("vPMU", "00_welcome",
       "The virtual PMU KVM gives a guest: each guest counter is backed by a host perf "
       "event (pmu.c), its MSRs intercepted.",
       _W + r"vPMU" + _E, r"virtual PMU"),
    _t("VMX", "04_cpuid_and_msrs",
       "Intel's virtualization extensions: VM entry, VM exit, the VMCS and its MSR lists.",
       _W + r"VMX" + _E),
    _t("VM exit", "00_welcome",
       "The CPU leaving the guest for the hypervisor (an intercepted WRMSR, an NMI, an EPT "
       "violation...); the guest stops until KVM enters it again.",
       r"VM[ -]exits?"),
    _t("VM entry", "00_welcome",
       "The CPU entering the guest; it loads guest state, including the MSRs on the "
       "VM-entry MSR-load list.",
       r"VM[ -]entry", r"VM[ -]entries"),
    _t("MSR-load list", "00_welcome",
       "The VMCS lists of MSRs the CPU loads at VM entry and VM exit (8 slots in 2014 "
       "KVM); the patch puts DS_AREA on it.",
       r"load list", r"autoload"),
    _t("GVA / GPA / HPA", "00_welcome",
       "Guest virtual, guest physical and host physical address: the guest's page tables "
       "map GVA to GPA, EPT maps GPA to HPA.",
       _W + r"GVA" + _E, _W + r"GPA" + _E, _W + r"HPA" + _E),
    _t("page table", "00_welcome",
       "The 4-level x86-64 structures (rooted at CR3) that map virtual to physical "
       "addresses; in a guest they are bytes in guest memory.",
       r"page[ -]tables?"),
    _t("CR3", "05_ds_area_in_guest_memory",
       "The register holding the physical address of the top-level page table of the "
       "current address space.",
       r"\bCR3\b"),
    _t("EPT", "00_welcome",
       "Extended page tables: the second translation, GPA to HPA, that the hypervisor "
       "owns; the CPU walks it under every guest access.",
       _W + r"EPT" + _E),
    _t("EPT violation", "05_ds_area_in_guest_memory",
       "A guest access whose GPA has no (or no writable) EPT entry: a VM exit that KVM "
       "resolves by faulting the page in. A PEBS assist cannot survive one before "
       "EPT-friendly PEBS.",
       r"EPT violations?"),
    _t("canonical address", "04_cpuid_and_msrs",
       "A 64-bit address whose bits 63:47 are all equal; a non-canonical DS_AREA makes "
       "WRMSR (and an MSR-load entry) fail.",
       r"canonical"),
    _t("reclaim", "00_welcome",
       "The host kernel taking memory back under pressure: it unmaps a page (zapping the "
       "EPT entry) and may swap it out.",
       r"\breclaim"),
    _t("swap", "05_ds_area_in_guest_memory",
       "Writing a reclaimed page's bytes to backing store and freeing its frame; the next "
       "access faults a (possibly different) frame in.",
       r"\bswap"),
    _t("gfn_to_pfn", "05_ds_area_in_guest_memory",
       "KVM's guest-frame-to-host-frame lookup; it takes a reference on the page, which "
       "is what the patch calls pinning.",
       r"gfn_to_pfn"),
    _t("get_page / put_page", "05_ds_area_in_guest_memory",
       "Take and drop a reference on a host page. A reference keeps the frame from being "
       "freed, not the EPT entry from being zapped.",
       r"\bget_page\b", r"\bput_page\b"),
    _t("pinning", "00_welcome",
       "Holding a reference on a guest page's host frame so it stays put; the patch pins "
       "the DS area and buffer pages when PEBS is enabled.",
       r"\bpin(s|ning|ned)?\b"),
    _t("MMU notifier", "05_ds_area_in_guest_memory",
       "The hook by which the host's memory manager tells KVM that a mapping is going "
       "away, so KVM zaps the EPT entry; it fires even for a referenced page.",
       r"MMU notifier", r"mmu_notifier"),
    _t("PDCM", "00_welcome",
       "CPUID.1:ECX bit 15, Perfmon and Debug Capability: says IA32_PERF_CAPABILITIES exists.",
       _W + r"PDCM" + _E),
    _t("DS (CPUID bit)", "00_welcome",
       "CPUID.1:EDX bit 21, Debug Store: says the DS save area and IA32_DS_AREA exist.",
       _W + r"DS" + _E + r"(?! (save )?area)"),
    _t("DTES64", "00_welcome",
       "CPUID.1:ECX bit 2: the DS area uses the 64-bit layout; Linux's PEBS driver "
       "requires it.",
       r"DTES64"),
    _t("PERF_CAPABILITIES", "00_welcome",
       "IA32_PERF_CAPABILITIES (0x345): LBR format, PEBS trap, PEBS arch regs, PEBS "
       "record format, full-width writes, PEBS baseline...; the guest reads the host's "
       "PEBS bits through the patch.",
       r"PERF_CAPABILITIES"),
    _t("full-width writes", "01_pmu_basics_and_skid",
       "PERF_CAPABILITIES bit 13: counters writable at full width through 0x4C1+i "
       "(the legacy 0xC1+i alias sign-extends 32 bits). 2014 KVM did not emulate it.",
       r"full-width", r"FW_WRITES"),
    _t("PEBS_BASELINE", "04_cpuid_and_msrs",
       "PERF_CAPABILITIES bit 14: extended PEBS (every counter PEBS-capable) and "
       "adaptive records.",
       r"PEBS_BASELINE", r"[Bb]aseline"),
    _t("perf_pebs_virtualization", "00_welcome",
       "The host perf helper the patch calls to ask whether this host can virtualize PEBS "
       "(defined elsewhere in the series); the patch gates the CPUID bits and the PEBS MSRs "
       "on it.",
       r"perf_pebs_virtualization"),
    _t("pebs_allowed", "00_welcome",
       "The per-VM flag Eric Northup asked for: PEBS MSRs visible only when the guest's "
       "CPUID announces PEBS, set by kvm_pmu_cpuid_update.",
       r"pebs_allowed"),
    _t("host perf", "00_welcome",
       "The host kernel's perf subsystem; KVM asks it for counters on the guest's behalf.",
       r"host perf\b"),
    _t("guest-owned event", "03_virtual_pmu",
       "A host perf event created for a guest counter and marked as the guest's (the last "
       "argument the patch passes to __perf_event_create_kernel_counter).",
       r"guest-owned", r"guest_owned"),
    _t("cross-mapped counter", "04_cpuid_and_msrs",
       "A guest counter backed by a different host counter (guest PMC0 on host PMC1); "
       "a PEBS record would name the wrong counter, so upstream KVM disables guest PEBS "
       "on it.",
       r"cross-mapped", r"cross_mapped"),
    _t("EPT-friendly PEBS", "00_welcome",
       "The Ice Lake server feature (SDM 18.9.5) that lets a PEBS write take an EPT "
       "violation as an ordinary VM exit; upstream guest PEBS requires it and pins nothing.",
       r"EPT-[Ff]riendly PEBS"),
    _t("architectural PEBS", "00_welcome",
       "The 2024-25 PEBS with no DS area: the buffer is given by physical address in "
       "IA32_PEBS_BASE, so the virtual-address problem disappears.",
       r"[Aa]rchitectural PEBS", r"arch-PEBS"),
    _t("throttling", "00_welcome",
       "perf lowering the maximum sample rate when its interrupt handlers take too long "
       "(\"perf: interrupt took too long\"), from kernel/events/core.c.",
       r"throttl"),
    _t("perf_cpu_time_max_percent", "03_virtual_pmu",
       "The sysctl bounding the share of CPU time perf's sampling interrupts may take; the "
       "patch's commit message suggests writing 0 in a guest to stop the throttling.",
       r"perf_cpu_time_max_percent"),
    _t("migration", "00_welcome",
       "Moving a running VM to another host: its memory while it runs, then the vCPU "
       "state, MSRs included.",
       r"\b[Mm]igrat"),
    _t("dirty logging", "10_migration",
       "KVM recording which guest pages were written since the last look, so live "
       "migration can send them again.",
       r"[Dd]irty[ -]log"),
    _t("design", "00_welcome",
       "pebslab's name for one variant of KVM: patch (as posted), review (Northup's gate), "
       "fixed (the corrections), icelake (EPT-friendly PEBS, no pinning).",
       r"\bdesigns?\b"),
)


# ----------------------------------------------------------------------------- references

def _r(key, kind, title, where, used_for):
    return Reference(key, kind, title, where, used_for)


#: The sources, in the order: thread, SDM, kernel files, kernel commits, kvm-unit-tests.
REFERENCES: tuple[Reference, ...] = (
    _r("seed", "thread", "Re: [PATCH 4/4] kvm: Implement PEBS virtualization (Eric Northup, 2014-06-02)",
       "LKML/kvm, reply to Andi Kleen's patch of 2014-05-29; the patch text: "
       "lkml.iu.edu/hypermail/linux/kernel/1406.2/04841.html",
       "The document the course is built around: the patch, hunk by hunk (00-08), and the "
       "review (04, 11)."),
    _r("likexu-v11", "thread", "KVM: x86/pmu: Add *basic* support to enable guest PEBS via DS (v11)",
       "Like Xu, 2021-12-10, Message-Id 20211210133525.46465-1-likexu@tencent.com",
       "How guest PEBS finally landed (Linux 6.0): fast path only, EPT-friendly PEBS required (12)."),
    _r("sdm-18.6.1.1", "SDM", "Vol. 3B 18.6.1.1 and Table 18-13: Silvermont PEBS",
       "Intel SDM Vol. 3B, Silvermont PEBS (PMC0 only, trap-like, 192-byte record)",
       "Why the patch is Silvermont-only, and which record fields are reserved there (02, 04)."),
    _r("sdm-ds-area", "SDM", "Vol. 3B Figure 'IA-32e Mode DS Save Area'",
       "Intel SDM Vol. 3B, the 64-bit DS save area layout",
       "struct debug_store: the offsets the assist and kvm_pmu_pebs_pin read (02, 06)."),
    _r("sdm-pebs-formats", "SDM", "Vol. 3B: PEBS record formats and PERF_CAPABILITIES",
       "Intel SDM Vol. 3B, IA32_PERF_CAPABILITIES and the PEBS record format tables",
       "The PERF_CAP bits the patch passes through, and the formats per generation (02, 04)."),
    _r("sdm-18.9.5", "SDM", "Vol. 3 18.9.5: EPT-friendly PEBS",
       "Intel SDM, December 2021 edition, Vol. 3, section 18.9.5",
       "The hardware fix that made pinning unnecessary (12)."),
    _r("sdm-26.4", "SDM", "Vol. 3C 26.4: VM-entry MSR loading",
       "Intel SDM Vol. 3C, loading MSRs on VM entry",
       "Why a non-canonical DS_AREA on the load list fails the VM entry (07)."),
    _r("pmu.c", "kernel file", "arch/x86/kvm/pmu.c (Linux 3.15)",
       "torvalds/linux v3.15, arch/x86/kvm/pmu.c",
       "The file most of the patch changes: kvm_pmu_msr, get/set_msr, reprogramming, pinning "
       "(pebslab.kvm.pmu, pebslab.kvm.pebs_pin)."),
    _r("vmx.c", "kernel file", "arch/x86/kvm/vmx.c (Linux 3.15)",
       "torvalds/linux v3.15, arch/x86/kvm/vmx.c (vmx_vcpu_run, atomic_switch_perf_msrs, "
       "NR_AUTOLOAD_MSRS 8)",
       "The DS_AREA hunk and the MSR-load lists (07; pebslab.kvm.vmx)."),
    _r("cpuid.c", "kernel file", "arch/x86/kvm/cpuid.c (Linux 3.15)",
       "torvalds/linux v3.15, arch/x86/kvm/cpuid.c (__do_cpuid_ent)",
       "The f_ds / f_dtes64 / f_pdcm hunk (04; pebslab.kvm.cpuid)."),
    _r("kvm_host.h", "kernel file", "arch/x86/include/asm/kvm_host.h (Linux 3.15)",
       "torvalds/linux v3.15, struct kvm_pmu",
       "The patch's four new fields and MAX_PINNED_PAGES (06; pebslab.kvm.pmu.KvmPmu)."),
    _r("msr-index.h", "kernel file", "arch/x86/include/uapi/asm/msr-index.h",
       "torvalds/linux, MSR numbers and PERF_CAP_* bits",
       "MSR numbers and the PERF_CAP bits the patch defines (pebslab.hw.msr)."),
    _r("ds.c", "kernel file", "arch/x86/events/intel/ds.c (3.15: perf_event_intel_ds.c)",
       "torvalds/linux, at c058e7a8f8af (~v6.5) and v3.15",
       "The perf driver's DS/PEBS side: buffers, thresholds, drains, IP fix-up "
       "(02, 08; pebslab.guest.perf)."),
    _r("intel_ds.h", "kernel file", "arch/x86/include/asm/intel_ds.h",
       "torvalds/linux at 10043e02db7f (2017) and recent",
       "struct debug_store as Linux declares it, PEBS_BUFFER_SIZE 64 KiB (02, 06)."),
    _r("perf_event.h", "kernel file", "arch/x86/include/asm/perf_event.h",
       "torvalds/linux, recent",
       "Event-select and GLOBAL_STATUS bits, adaptive PEBS groups (01, 02, 12)."),
    _r("pmu_intel.c", "kernel file", "arch/x86/kvm/vmx/pmu_intel.c",
       "torvalds/linux, ~v6.10",
       "How upstream KVM gates and checks the PEBS MSRs today: the review's idea in code (11)."),
    _r("core.c", "kernel file", "kernel/events/core.c",
       "torvalds/linux, 2014 and current (perf_sample_event_took)",
       "Sample throttling and the 'interrupt took too long' message (09)."),
    _r("vmscan-rmap", "kernel file", "mm/vmscan.c, mm/rmap.c, virt/kvm/kvm_main.c (Linux 3.15.5)",
       "torvalds/linux v3.15.5",
       "What a page reference keeps under reclaim: the frame, not the EPT entry (05, 06)."),
    _r("fb358e0b811e", "kernel commit", "perf/x86/intel: Add EPT-Friendly PEBS for Ice Lake Server",
       "torvalds/linux fb358e0b811e", "pebs_ept: guest PEBS that needs no pinning (05, 06, 12)."),
    _r("69e575dd4fba", "kernel commit", "Handle guest PEBS overflow PMI for KVM guest",
       "torvalds/linux 69e575dd4fba", "How upstream delivers the guest's bit-62 PMI (08)."),
    _r("39a4d779546a", "kernel commit", "perf/x86/core: Pass struct kvm_pmu * ...",
       "torvalds/linux 39a4d779546a", "Host perf is told the guest's PMU state when it fills the "
       "switch lists (c.3)."),
    _r("bef6ecca46ac", "kernel commit", "Set MSR_IA32_MISC_ENABLE_EMON ...",
       "torvalds/linux bef6ecca46ac", "The MISC_ENABLE bit a guest with a vPMU reads."),
    _r("2c985527dd8d", "kernel commit", "Introduce the ctrl_mask value for fixed counter",
       "torvalds/linux 2c985527dd8d", "Reserved-bit masks computed once per vCPU, as "
       "kvm_pmu_cpuid_update does here."),
    _r("0d23dc34a7ce", "kernel commit", "Add pebs_capable ...",
       "torvalds/linux 0d23dc34a7ce", "Which counters host perf treats as PEBS counters."),
    _r("c59a1f106f5c", "kernel commit", "Add IA32_PEBS_ENABLE MSR emulation for extended PEBS",
       "torvalds/linux c59a1f106f5c", "Upstream's PEBS_ENABLE: checked, switched, nothing pinned "
       "(04, 07, 11, 12)."),
    _r("79f3e3b58386", "kernel commit", "Reprogram PEBS event to emulate guest PEBS counter",
       "torvalds/linux 79f3e3b58386", "Upstream's precise_ip for a guest PEBS counter (03, 08)."),
    _r("6ebe44366bde", "kernel commit", "Adjust precise_ip to emulate Ice Lake guest PDIR counter",
       "torvalds/linux 6ebe44366bde", "precise_ip above 1 for a guest counter."),
    _r("8183a538cd95", "kernel commit", "Add IA32_DS_AREA MSR emulation",
       "torvalds/linux 8183a538cd95", "DS_AREA checked for a canonical address, which the patch "
       "did not do (04, 06, 07, 10-12)."),
    _r("902caeb6841a", "kernel commit", "Add PEBS_DATA_CFG MSR emulation to support adaptive PEBS",
       "torvalds/linux 902caeb6841a", "Adaptive PEBS in a guest (11, 12)."),
    _r("d10551738f6a", "kernel commit", "Set PEBS_UNAVAIL in IA32_MISC_ENABLE when PEBS is enabled",
       "torvalds/linux d10551738f6a", "The MISC_ENABLE bit that tells a guest PEBS is usable."),
    _r("854250329c02", "kernel commit", "Disable guest PEBS temporarily in two rare situations",
       "torvalds/linux 854250329c02", "Cross-mapped counters and host PEBS users (12)."),
    _r("968635abd5f5", "kernel commit", "Add kvm_pmu_cap ...",
       "torvalds/linux 968635abd5f5", "Host PMU capabilities read once, as the patch reads "
       "host_perf_cap once."),
    _r("59cc99f6e971", "kernel commit", "Refactor host/guest CPU model consistency check",
       "torvalds/linux 59cc99f6e971", "The guest's CPU model checked against the host's."),
    _r("cf8e55fe50df", "kernel commit", "Expose CPUIDs feature bits PDCM, DS, DTES64",
       "torvalds/linux cf8e55fe50df", "Upstream's version of the patch's cpuid.c hunk (04, 11)."),
    _r("971079464001", "kernel commit", "KVM: x86/pmu: fix masking logic for MSR_CORE_PERF_GLOBAL_CTRL",
       "torvalds/linux 971079464001 (2024-01-04)", "A switching bug that crashed every guest on "
       "a host (07, 12)."),
    _r("bfb088d9fb5a", "kernel commit", "KVM: vmx, pmu: accept 0 for host-initiated write to MSR_IA32_DS_AREA",
       "torvalds/linux bfb088d9fb5a", "Restoring DS_AREA from user space (04, 10)."),
    _r("feb889fb40fa", "kernel commit", "Reclaim skips pinned anonymous pages before add_to_swap (v5.11)",
       "torvalds/linux feb889fb40fa", "Only a DMA pin counts, and the reference gfn_to_pfn takes "
       "never is one (06)."),
    _r("6c1c07b33eb0", "kernel commit", "Avoid unnecessary PEBS_ENABLE MSR access in PMI (v5.7)",
       "torvalds/linux 6c1c07b33eb0", "Why a 3.15 guest writes PEBS_ENABLE twice per PMI and a "
       "current one does not (09)."),
    _r("kut-pmu_pebs.c", "kvm-unit-tests", "x86/pmu_pebs.c",
       "kvm-unit-tests, x86/pmu_pebs.c", "How KVM's guest PEBS is tested: DS layout, "
       "adaptive records, start values near overflow (02, 12)."),
    _r("kut-pmu.c", "kvm-unit-tests", "x86/pmu.c",
       "kvm-unit-tests, x86/pmu.c", "Counter width, the full-width alias, overflow presets (01, 03)."),
    _r("kut-headers", "kvm-unit-tests", "lib/x86/pmu.h, lib/x86/msr.h, lib/x86/processor.h",
       "kvm-unit-tests, lib/x86/", "MSR numbers, CPUID bits DS/PDCM, PERF_CAP bits (04)."),
)


# ----------------------------------------------------------------------------- mechanism index

def _m(mechanism, hunk, pebslab, notebook, section, explorer=None, exercise=None, pending=False):
    if isinstance(pebslab, str):
        pebslab = (pebslab,)
    return Mechanism(mechanism, hunk, tuple(pebslab), notebook, section, explorer, exercise, pending)


_PIN = "pebslab.viz.pinning.page_map"
_MSRW = "pebslab.viz.msrs.msr_write_outcome"
_SW = "pebslab.viz.switching.switch_timeline"
_PROF = "pebslab.viz.profile.profile_explorer"
_NB04_S2 = "2. PERF_CAPABILITIES, field by field"
_NB06_S2 = "2. `kvm_pmu_pebs_pin`, step by step"

#: Mechanism -> pebslab -> notebook section -> explorer / exercise, in the patch's order,
#: then the commit message's claims, then the review.
MECHANISMS: tuple[Mechanism, ...] = (
    _m("struct kvm_pmu gains pebs_enable, ds_area, pinned_pages, num_pinned_pages",
       "kvm_host.h",
       ("pebslab.kvm.pmu.KvmPmu.pebs_enable", "pebslab.kvm.pmu.KvmPmu.ds_area",
        "pebslab.kvm.pmu.KvmPmu.pinned_pages", "pebslab.kvm.pmu.KvmPmu.num_pinned_pages"),
       "06_pinning", _NB06_S2, _PIN, "ex06_pin_range"),
    _m("MAX_PINNED_PAGES 17 (\"64k buffer + ds\")", "kvm_host.h",
       "pebslab.kvm.pebs_pin.MAX_PINNED_PAGES",
       "06_pinning", "5. The 17-page limit", _PIN, "ex06_pin_range"),
    _m("PERF_CAP_PEBS_TRAP, PERF_CAP_ARCH_REG, PERF_CAP_PEBS_FORMAT", "msr-index.h",
       ("pebslab.hw.msr.PERF_CAP_PEBS_TRAP", "pebslab.hw.msr.PERF_CAP_ARCH_REG",
        "pebslab.hw.msr.PERF_CAP_PEBS_FORMAT", "pebslab.kvm.pmu.PATCH_PERF_CAP_BITS"),
       "04_cpuid_and_msrs", _NB04_S2, _MSRW),
    _m("CPUID.1 bits DS, DTES64, PDCM passed through when perf_pebs_virtualization()",
       "cpuid.c __do_cpuid_ent",
       ("pebslab.kvm.cpuid.__do_cpuid_ent", "pebslab.kvm.cpuid.kvm_filter_cpuid",
        "pebslab.kvm.cpuid.PEBS_CPUID_FEATURES"),
       "04_cpuid_and_msrs", "1. How a guest finds out that PEBS exists", _MSRW),
    _m("CPUID.1 bits DS, DTES64, PDCM passed through when perf_pebs_virtualization()",
       "cpuid.c __do_cpuid_ent", "pebslab.kvm.cpuid.kvm_filter_cpuid",
       "11_the_review", "Explorer: hide any of the bits",
       "pebslab.viz.review.gate_grid", "ex11_hide_pebs"),
    _m("struct debug_store (the patch's own copy, 4 reset slots)", "pmu.c",
       ("pebslab.hw.pebs.DS_SIZE_PATCH", "pebslab.hw.pebs.DS_AREA_DTYPE",
        "pebslab.kvm.pebs_pin._unpack_ds"),
       "02_pebs_bare_metal", "2. The DS save area", "pebslab.viz.pebs.assist_timeline"),
    _m("struct debug_store (the patch's own copy, 4 reset slots)", "pmu.c",
       "pebslab.kvm.pebs_pin._unpack_ds",
       "06_pinning", _NB06_S2, _PIN, "ex06_pin_range"),
    _m("static u64 host_perf_cap", "pmu.c",
       "pebslab.kvm.pmu.KvmPmu.host_perf_cap",
       "04_cpuid_and_msrs", _NB04_S2, _MSRW),
    _m("kvm_perf_overflow sets GLOBAL_STATUS bit 62 for a precise event", "pmu.c kvm_perf_overflow",
       "pebslab.kvm.pmu.kvm_perf_overflow",
       "08_end_to_end", "1. The chain of one sample", _PROF, "ex08_shares"),
    _m("GLOBAL_STATUS bit 62 on bare metal: the buffer threshold", "pmu.c kvm_perf_overflow",
       "pebslab.hw.msr.GLOBAL_STATUS_BUFFER_OVF",
       "02_pebs_bare_metal", "5. Step through the PEBS assist", "pebslab.viz.pebs.assist_timeline"),
    _m("reprogram_counter: precise_ip = 1 for a PEBS counter", "pmu.c reprogram_counter",
       "pebslab.kvm.pmu.reprogram_counter",
       "08_end_to_end", "2. Is the profile right?", _PROF, "ex08_profile_error"),
    _m("precise_ip: what :p and :pp ask of the hardware", "pmu.c reprogram_counter",
       "pebslab.host.perf.PerfEventAttr.precise_ip",
       "02_pebs_bare_metal", "6. No PEBS, `:p` and `:pp`", "pebslab.viz.pebs.precision_compare",
       "ex02_decode"),
    _m("the guest-owned event: __perf_event_create_kernel_counter(..., true) and the "
       "interrupting handler for intr || pebs", "pmu.c reprogram_counter",
       ("pebslab.host.perf.HostPerf.create_kernel_counter", "pebslab.kvm.pmu.kvm_perf_overflow_intr"),
       "08_end_to_end", "4. The guest-owned host event", _PROF),
    _m("the guest-owned event: host perf hands its PEBS state to the guest",
       "pmu.c reprogram_counter",
       ("pebslab.kvm.vmx.atomic_switch_perf_msrs", "pebslab.host.perf_hw.intel_guest_get_msrs"),
       "07_switching_msrs", "2. Perf decides: `atomic_switch_perf_msrs` and `intel_guest_get_msrs`",
       _SW, "ex07_predict_list"),
    _m("reprogram_gp_counter(pmu, pmc, eventsel): pebs = test_bit(pmc->idx, pebs_enable)",
       "pmu.c reprogram_gp_counter", "pebslab.kvm.pmu.reprogram_gp_counter",
       "03_virtual_pmu", "2. Where the sample period comes from",
       "pebslab.viz.vpmu.exit_timeline", "ex03_host_event"),
    _m("reprogram_fixed_counter: pebs = false (no PEBS on fixed counters)",
       "pmu.c reprogram_fixed_counter", "pebslab.kvm.pmu.reprogram_fixed_counter",
       "03_virtual_pmu", "3. From an overflow to an interrupt inside the guest",
       "pebslab.viz.vpmu.exit_timeline", "ex03_host_event"),
    _m("kvm_pmu_msr: DS_AREA, PEBS_ENABLE, PERF_CAPABILITIES are PMU MSRs iff "
       "perf_pebs_virtualization()", "pmu.c kvm_pmu_msr",
       ("pebslab.kvm.pmu.kvm_pmu_msr", "pebslab.kvm.pmu.perf_pebs_virtualization"),
       "04_cpuid_and_msrs", "3. Who handles a guest WRMSR", _MSRW, "ex04_valid_pebs_enable"),
    _m("kvm_pmu_get_msr of DS_AREA, PEBS_ENABLE, PERF_CAPABILITIES (\"Report host PEBS format\")",
       "pmu.c kvm_pmu_get_msr",
       ("pebslab.kvm.pmu.kvm_pmu_get_msr", "pebslab.kvm.pmu.guest_perf_capabilities"),
       "04_cpuid_and_msrs", _NB04_S2, _MSRW),
    _m("kvm_pmu_set_msr of PERF_CAPABILITIES: no case, so a guest write #GPs (read-only)",
       "pmu.c kvm_pmu_set_msr", "pebslab.kvm.pmu.kvm_pmu_set_msr",
       "04_cpuid_and_msrs", "5. Explorer: write any PMU MSR", _MSRW),
    _m("kvm_pmu_msr: DS_AREA, PEBS_ENABLE, PERF_CAPABILITIES are PMU MSRs iff "
       "perf_pebs_virtualization()", "pmu.c kvm_pmu_msr",
       ("pebslab.kvm.pmu.kvm_pmu_msr", "pebslab.kvm.pmu.pebs_msrs_visible"),
       "00_welcome", "Reading the patch: the hunk the review questioned", None, "ex00_gate"),
    _m("kvm_pmu_set_msr of DS_AREA: stored as is, no check", "pmu.c kvm_pmu_set_msr",
       ("pebslab.kvm.pmu.kvm_pmu_set_msr", "pebslab.kvm.pmu.ds_area_changed"),
       "07_switching_msrs", "7. A non-canonical DS_AREA on the load list", _SW, "ex07_diagnose"),
    _m("kvm_pmu_set_msr of DS_AREA: a guest virtual address", "pmu.c kvm_pmu_set_msr",
       "pebslab.kvm.pmu.ds_area_changed",
       "05_ds_area_in_guest_memory", "1. DS_AREA is a guest virtual address",
       "pebslab.viz.addr.page_walk", "ex05_indices"),
    _m("kvm_pmu_set_msr of PEBS_ENABLE: #GP if data & ~0xf0000000f", "pmu.c kvm_pmu_set_msr",
       ("pebslab.kvm.pmu.kvm_pmu_set_msr", "pebslab.kvm.pmu.pebs_enable_valid"),
       "04_cpuid_and_msrs", "Exercise 1 (warm-up): the patch's PEBS_ENABLE check", _MSRW,
       "ex04_valid_pebs_enable"),
    _m("kvm_pmu_set_msr of PEBS_ENABLE: release and re-pin when data && data != pebs_enable; "
       "release on 0", "pmu.c kvm_pmu_set_msr",
       "pebslab.kvm.pmu.pebs_enable_changed_patch",
       "06_pinning", _NB06_S2, _PIN, "ex06_pin_range"),
    _m("kvm_pmu_set_msr of PEBS_ENABLE: release and re-pin when data && data != pebs_enable; "
       "release on 0", "pmu.c kvm_pmu_set_msr",
       "pebslab.kvm.pmu.pebs_enable_changed_patch",
       "06_pinning", "3. When the patch pins again, and when it does not", _PIN, "ex06_repin"),
    _m("kvm_pmu_release_pin: put_page every pinned page", "pmu.c kvm_pmu_release_pin",
       "pebslab.kvm.pebs_pin.kvm_pmu_release_pin",
       "06_pinning", _NB06_S2, _PIN),
    _m("get_guest_page: gva_to_gpa, then gfn_to_pfn (a page reference)", "pmu.c get_guest_page",
       ("pebslab.kvm.pebs_pin.get_guest_page", "pebslab.kvm.vm.VM.gva_to_gpa"),
       "05_ds_area_in_guest_memory", "5. Explorer: walk any address of the PEBS set-up",
       "pebslab.viz.addr.page_walk", "ex05_indices"),
    _m("pin_and_copy: pin the DS page and copy the DS out of it", "pmu.c pin_and_copy",
       "pebslab.kvm.pebs_pin.pin_and_copy",
       "06_pinning", _NB06_S2, _PIN, "ex06_pin_range"),
    _m("kvm_pmu_pebs_pin: DS page(s), then the buffer from base to absolute maximum, "
       "at most 17 pages", "pmu.c kvm_pmu_pebs_pin",
       ("pebslab.kvm.pebs_pin.kvm_pmu_pebs_pin", "pebslab.kvm.pebs_pin.patch_pin_plan"),
       "06_pinning", _NB06_S2, _PIN, "ex06_pin_range"),
    _m("kvm_pmu_init reads the host's PERF_CAPABILITIES if PDCM", "pmu.c kvm_pmu_init",
       "pebslab.kvm.pmu.kvm_pmu_init",
       "04_cpuid_and_msrs", _NB04_S2, _MSRW),
    _m("kvm_pmu_destroy releases the pins (kvm_pmu_reset does not)", "pmu.c kvm_pmu_destroy",
       ("pebslab.kvm.pmu.kvm_pmu_destroy", "pebslab.kvm.pmu.kvm_pmu_reset"),
       "06_pinning", "Where this is in the patch", _PIN),
    _m("kvm_pmu_destroy releases the pins (kvm_pmu_reset does not)", "pmu.c kvm_pmu_destroy",
       ("pebslab.kvm.pmu.kvm_pmu_destroy", "pebslab.kvm.pmu.kvm_pmu_reset"),
       "06_pinning", "A reset does not unpin", _PIN),
    _m("kvm_pmu_reset keeps ds_area: a bad DS_AREA survives a guest reset", "pmu.c kvm_pmu_destroy",
       "pebslab.kvm.pmu.kvm_pmu_reset",
       "07_switching_msrs", "7. A non-canonical DS_AREA on the load list", _SW, "ex07_diagnose"),
    _m("vmx_vcpu_run: DS_AREA on the MSR-load lists with perf_get_ds_area() (\"Move this "
       "somewhere else?\")", "vmx.c vmx_vcpu_run",
       ("pebslab.kvm.vmx.vmx_prepare_msrs", "pebslab.kvm.vmx.add_atomic_switch_msr"),
       "07_switching_msrs", "3. The patch's hunk: DS_AREA on every entry", _SW, "ex07_predict_list"),
    _m("commit message: the CPU cannot handle faults during guest PEBS writes, so pin "
       "against host swapping", "commit message",
       ("pebslab.host.mm.HostMM", "pebslab.viz.addr.address_spaces"),
       "05_ds_area_in_guest_memory", "7. Host reclaim: the guest cannot know",
       "pebslab.viz.addr.address_spaces"),
    _m("commit message: a guest that changes its page tables after set-up \"could only crash "
       "itself\"", "commit message",
       "pebslab.kvm.pebs_pin.kvm_pmu_pebs_pin_fixed",
       "06_pinning", "6. Where it breaks: remapping, and the page tables", _PIN),
    _m("commit message, Timing: emulation costs more than a real PMU; "
       "perf_cpu_time_max_percent", "commit message",
       ("pebslab.kvm.vm.Costs", "pebslab.viz.vpmu.pmi_costs"),
       "03_virtual_pmu", "5. Explorer: period, event, and the assumed costs",
       "pebslab.viz.vpmu.pmi_costs"),
    _m("commit message, Timing: emulation costs more than a real PMU; "
       "perf_cpu_time_max_percent", "commit message",
       ("pebslab.host.perf.perf_sample_event_took", "pebslab.host.perf.perf_cpu_time_max_percent_handler"),
       "09_timing", "4. `perf_cpu_time_max_percent = 0`",
       "pebslab.viz.timing.throttle_explorer", "ex09_first_warning"),
    _m("commit message, Migration: needs the same PEBS event and format; no save/restore code",
       "commit message",
       ("pebslab.vmm.migrate.save_state", "pebslab.vmm.migrate.restore_state",
        "pebslab.vmm.migrate.restore_order"),
       "10_migration", "2. Restoring, one entry at a time",
       "pebslab.viz.migration.restore_timeline", "ex10_restore_order"),
    _m("commit message, Migration: needs the same PEBS event and format; no save/restore code",
       "commit message", "pebslab.vmm.migrate.check_compatible",
       "10_migration", "3. A destination that cannot take the guest",
       "pebslab.viz.migration.restore_timeline", "ex10_compatible"),
    _m("commit message: only Silvermont; no extended MSRs (no load latency)", "commit message",
       ("pebslab.kvm.designs.pebs_virtualization_supported", "pebslab.kvm.pmu.pebs_enable_valid_bits"),
       "04_cpuid_and_msrs", "Exercise 2 (apply): the check Silvermont needs", _MSRW,
       "ex04_slm_pebs_enable"),
    _m("review: pebs_allowed from the guest's CPUID (kvm_pmu_cpuid_update)", "review of kvm_pmu_msr",
       ("pebslab.kvm.pmu.kvm_pmu_cpuid_update", "pebslab.kvm.pmu.pebs_msrs_visible",
        "pebslab.kvm.pmu.KvmPmu.pebs_allowed"),
       "04_cpuid_and_msrs", "4. The review: a guest with a PMU but without PEBS", _MSRW),
    _m("review: pebs_allowed from the guest's CPUID (kvm_pmu_cpuid_update)", "review of kvm_pmu_msr",
       ("pebslab.kvm.pmu.kvm_pmu_cpuid_update", "pebslab.kvm.pmu.pebs_msrs_visible"),
       "11_the_review", "4. The `review` design: `pebs_allowed` from the guest's CPUID",
       "pebslab.viz.review.gate_grid", "ex11_pebs_allowed"),
    _m("after the patch: EPT-friendly PEBS pins nothing", "commit message",
       "pebslab.kvm.designs.ICELAKE",
       "12_what_came_next", "2. EPT-friendly PEBS",
       None, "ex12_assist_faults"),
)


#: The patch's hunks in order, for "how to read the real patch now": (file, where, what, notebook).
PATCH_HUNKS: tuple[tuple[str, str, str, str], ...] = (
    ("arch/x86/include/asm/kvm_host.h", "before struct kvm_pmu",
     "MAX_PINNED_PAGES 17", "06"),
    ("arch/x86/include/asm/kvm_host.h", "end of struct kvm_pmu",
     "pebs_enable, ds_area, pinned_pages[], num_pinned_pages", "06"),
    ("arch/x86/include/uapi/asm/msr-index.h", "after MSR_IA32_PERF_CAPABILITIES",
     "PERF_CAP_PEBS_TRAP, PERF_CAP_ARCH_REG, PERF_CAP_PEBS_FORMAT", "04"),
    ("arch/x86/kvm/cpuid.c", "__do_cpuid_ent, the locals",
     "pebs = perf_pebs_virtualization(); f_ds, f_pdcm, f_dtes64", "04"),
    ("arch/x86/kvm/cpuid.c", "__do_cpuid_ent, CPUID.1 EDX and ECX words",
     "f_ds in EDX; f_dtes64 and f_pdcm in ECX", "04"),
    ("arch/x86/kvm/pmu.c", "includes and file scope",
     "highmem.h, mmu.h; struct debug_store; static host_perf_cap", "02, 04, 06"),
    ("arch/x86/kvm/pmu.c", "kvm_perf_overflow",
     "bit 62 instead of the counter's bit when precise_ip", "03, 08"),
    ("arch/x86/kvm/pmu.c", "reprogram_counter",
     "new pebs argument: precise_ip = 1, interrupting handler, guest-owned event", "03, 07, 08"),
    ("arch/x86/kvm/pmu.c", "reprogram_gp_counter / reprogram_fixed_counter / reprogram_idx",
     "pmu argument; pebs from PEBS_ENABLE for GP counters, false for fixed", "03"),
    ("arch/x86/kvm/pmu.c", "kvm_pmu_msr",
     "DS_AREA, PEBS_ENABLE, PERF_CAPABILITIES iff perf_pebs_virtualization() (the review's hunk)",
     "04, 11"),
    ("arch/x86/kvm/pmu.c", "kvm_pmu_get_msr",
     "the three MSRs; PERF_CAPABILITIES = host bits & PEBS_TRAP|ARCH_REG|PEBS_FORMAT", "04"),
    ("arch/x86/kvm/pmu.c", "new: kvm_pmu_release_pin, get_guest_page, pin_and_copy, kvm_pmu_pebs_pin",
     "the pinning", "05, 06"),
    ("arch/x86/kvm/pmu.c", "kvm_pmu_set_msr",
     "DS_AREA stored; PEBS_ENABLE masked with 0xf0000000f, release/pin; reprogram_gp_counter(pmu, ...)",
     "04, 06"),
    ("arch/x86/kvm/pmu.c", "kvm_pmu_init", "read host PERF_CAPABILITIES if PDCM", "04"),
    ("arch/x86/kvm/pmu.c", "kvm_pmu_destroy", "kvm_pmu_release_pin after reset", "06"),
    ("arch/x86/kvm/vmx.c", "vmx_vcpu_run, after atomic_switch_perf_msrs",
     "DS_AREA on the MSR-load lists (\"Move this somewhere else?\")", "07"),
)


# ----------------------------------------------------------------------------- notebooks

def _nb_dir(root) -> Path:
    return NOTEBOOK_DIR if root is None else Path(root) / "notebooks"


def notebook_stems(root=None) -> list[str]:
    """The course notebooks' file stems (``NN_name``), in order; the appendix (99) excluded.

    pebslab only. ``root`` is a checkout (default: this repository).
    """
    return sorted(p.stem for p in _nb_dir(root).glob("[0-9][0-9]_*.ipynb")
                  if not p.stem.startswith("99"))


def notebook_path(stem: str, root=None) -> Path:
    """The path of notebook ``stem`` (it need not exist)."""
    if not isinstance(stem, str) or not re.fullmatch(r"\d\d_\w+", stem):
        raise ValueError(f"stem must be a notebook file stem like '06_pinning'; got {stem!r}")
    return _nb_dir(root) / f"{stem}.ipynb"


def _cells(stem: str, root=None) -> list[dict]:
    return json.loads(notebook_path(stem, root).read_text(encoding="utf-8"))["cells"]


def _src(cell) -> str:
    s = cell.get("source", "")
    return s if isinstance(s, str) else "".join(s)


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def notebook_headings(stem: str, root=None) -> list[str]:
    """Every markdown heading of a notebook, as text without the ``#`` marks."""
    out = []
    for c in _cells(stem, root):
        if c["cell_type"] == "markdown":
            for line in _src(c).splitlines():
                m = _HEADING.match(line)
                if m:
                    out.append(m.group(2))
    return out


def notebook_markdown(stem: str, root=None, *, skip_glossary: bool = True) -> str:
    """The markdown text of a notebook, optionally without its Glossary section.

    A glossary lists terms; it does not use them, so it does not count as a
    first use. The section runs from a heading named "Glossary" to the next
    heading of the same or a higher level.
    """
    parts, skip_level = [], None
    for c in _cells(stem, root):
        if c["cell_type"] != "markdown":
            continue
        keep = []
        for line in _src(c).splitlines():
            m = _HEADING.match(line)
            if m:
                level = len(m.group(1))
                if skip_level is not None and level <= skip_level:
                    skip_level = None
                if skip_glossary and m.group(2).strip().lower() == "glossary":
                    skip_level = level
            if skip_level is None:
                keep.append(line)
        parts.append("\n".join(keep))
    return "\n\n".join(parts)


def notebook_code(stem: str, root=None) -> list[str]:
    """The source of every code cell of a notebook."""
    return [_src(c) for c in _cells(stem, root) if c["cell_type"] == "code"]


# ----------------------------------------------------------------------------- checks

def _check_row(name: str, value, cls):
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__} (a row of pebslab.appendix); "
                        f"got {type(value).__name__} {value!r}")
    return value


def resolve(dotted: str):
    """Import ``dotted`` (module, then attributes; dataclass fields count) and return it.

    pebslab only. Raises ImportError naming the path when it does not resolve.
    """
    if not isinstance(dotted, str) or not dotted.startswith("pebslab."):
        raise ValueError(f"dotted must be a 'pebslab.' path; got {dotted!r}")
    parts = dotted.split(".")
    obj, i = None, len(parts)
    while i > 0:
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError as e:
            if e.name is None or not ".".join(parts[:i]).startswith(e.name):
                raise
            i -= 1
    for name in parts[i:]:
        if hasattr(obj, name):
            obj = getattr(obj, name)
        elif dataclasses.is_dataclass(obj) and name in {f.name for f in dataclasses.fields(obj)}:
            obj = next(f for f in dataclasses.fields(obj) if f.name == name)
        else:
            raise ImportError(f"{dotted}: {'.'.join(parts[:parts.index(name)])} has no {name!r}")
    return obj


def mentions(term: Term, stem: str, root=None) -> bool:
    """Does notebook ``stem``'s markdown (its glossary aside) use ``term``?"""
    _check_row("term", term, Term)
    text = notebook_markdown(stem, root)
    return any(re.search(p, text) for p in term.regexes())


def first_mention(term: Term, root=None) -> str | None:
    """The first course notebook whose markdown uses ``term``, or None."""
    _check_row("term", term, Term)
    for stem in notebook_stems(root):
        if mentions(term, stem, root):
            return stem
    return None


def check_term(term: Term, root=None) -> list[str]:
    """What is wrong with a glossary row: its notebook does not use it, or an earlier one does.

    Only notebooks present under ``root`` are read; a row whose notebook is
    not there is checked only for earlier uses.
    """
    _check_row("term", term, Term)
    problems = []
    stems = notebook_stems(root)
    earlier = [s for s in stems if s < term.first and mentions(term, s, root)]
    if earlier:
        problems.append(f"{term.term!r}: stated first use {term.first}, but {earlier[0]} already uses it")
    if term.first in stems and not mentions(term, term.first, root):
        problems.append(f"{term.term!r}: {term.first} does not use it (patterns {term.regexes()})")
    return problems


def _explorer_wired(name: str, code: list[str]) -> bool:
    pat = re.compile(r"(?<![\w])" + re.escape(name) + r"(?![\w])")
    return any(("interact(" in src or "explore(" in src) and pat.search(src) for src in code)


def check_mechanism(row: Mechanism, root=None, *, imports: bool = True) -> list[str]:
    """What is wrong with a mechanism-index row, as a list of sentences (empty: nothing).

    Checks that every pebslab path imports, the notebook exists and has the
    section as a heading, the explorer imports and is wired to widgets in that
    notebook, the exercise is a checker the notebook calls, and that the row
    has an explorer or an exercise.
    """
    _check_row("row", row, Mechanism)
    problems = []
    if not row.explorer and not row.exercise:
        problems.append(f"{row.mechanism!r}: neither explorer nor exercise")
    if imports:
        for dotted in row.pebslab + ((row.explorer,) if row.explorer else ()):
            try:
                resolve(dotted)
            except ImportError as e:
                problems.append(f"{row.mechanism!r}: {dotted} does not import ({e})")
    path = notebook_path(row.notebook, root)
    if not path.is_file():
        return problems + [f"{row.mechanism!r}: notebook {row.notebook} does not exist"]
    if row.section not in notebook_headings(row.notebook, root):
        problems.append(f"{row.mechanism!r}: {row.notebook} has no heading {row.section!r}")
    code = notebook_code(row.notebook, root)
    if row.explorer and not _explorer_wired(row.explorer.rsplit(".", 1)[1], code):
        problems.append(f"{row.mechanism!r}: {row.notebook} wires no explorer {row.explorer}")
    if row.exercise:
        if imports:
            from .exercises import check
            if not callable(getattr(check, row.exercise, None)):
                problems.append(f"{row.mechanism!r}: no checker check.{row.exercise}")
        if not any(re.search(r"check\." + re.escape(row.exercise) + r"\(", src) for src in code):
            problems.append(f"{row.mechanism!r}: {row.notebook} does not call check.{row.exercise}")
    return problems


# ----------------------------------------------------------------------------- rendering

_IDENT = re.compile(r"(?<![\w`])([A-Za-z_][A-Za-z0-9]*_[A-Za-z0-9_]*(?:\.[a-z]+\b)?(?:\(\))?)")


def _code_idents(s: str) -> str:
    """Put identifiers with an underscore in backticks (outside existing code spans)."""
    parts = str(s).split("`")
    return "`".join(_IDENT.sub(r"`\1`", p) if i % 2 == 0 else p for i, p in enumerate(parts))


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


#: long dotted names and paths wrap (at dots and slashes first), so a wide table fits the page
_CODE_CSS = "white-space:normal;overflow-wrap:break-word"


def _html_cell(s: str) -> str:
    """A cell's markdown (code spans, bold, <br>) as HTML, everything else escaped."""
    out = []
    for i, part in enumerate(str(s).split("`")):
        part = html.escape(part, quote=False)
        if i % 2:
            part = part.replace(".", ".<wbr>").replace("/", "/<wbr>")   # break at dots and slashes
            out.append(f"<code style=\"{_CODE_CSS}\">{part}</code>")
        else:
            part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
            out.append(part.replace("&lt;br&gt;", "<br>"))
    return "".join(out)


class Table(str):
    """A markdown table that Jupyter shows as an HTML table.

    pebslab only. It *is* the markdown ``str`` (tests and callers use it as
    one); notebooks and the book display its HTML form, which every
    renderer shows as a table.
    """

    def __new__(cls, header: tuple, rows, widths: tuple | None = None):
        rows = [tuple(str(c) for c in r) for r in rows]
        if widths is not None and (len(widths) != len(header) or sum(widths) != 100):
            raise ValueError(f"widths must be {len(header)} percentages adding up to 100; got {widths!r}")
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
        self = super().__new__(cls, "\n".join(lines))
        self.header, self.rows, self.widths = tuple(header), rows, widths
        return self

    def __repr__(self) -> str:
        return f"<table of {len(self.rows)} rows: {', '.join(self.header)}>"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th style=\"text-align:left\">{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td style=\"text-align:left\">{_html_cell(c)}</td>"
                                        for c in r) + "</tr>" for r in self.rows)
        style, cols = "font-size:0.85em", ""
        if self.widths:
            style += ";table-layout:fixed;width:100%"
            cols = "<colgroup>" + "".join(f"<col style=\"width:{w}%\">" for w in self.widths) + "</colgroup>"
        return (f"<div style=\"overflow-x:auto\"><table style=\"{style}\">{cols}<thead><tr>"
                f"{head}</tr></thead><tbody>{body}</tbody></table></div>")


def _table(header: tuple, rows, widths: tuple | None = None) -> Table:
    return Table(header, rows, widths)


def glossary_table() -> str:
    """The glossary as a markdown table: term, definition, first used in."""
    return _table(("term", "definition", "first used in"),
                  ((f"**{t.term}**", _code_idents(t.definition), t.first[:2]) for t in GLOSSARY),
                  (20, 70, 10))


def references_table(kind: str | None = None) -> str:
    """The references as a markdown table, all of them or one ``kind``."""
    kinds = tuple(dict.fromkeys(r.kind for r in REFERENCES))
    if kind is not None:
        check_choice("kind", kind, kinds)
    return _table(("source", "where", "what it is for here"),
                  ((r.title if r.kind != "kernel commit" else f"`{r.key}` {r.title}", r.where,
                    _code_idents(r.used_for)) for r in REFERENCES if kind is None or r.kind == kind),
                  (35, 30, 35))


def _short(dotted: str | None) -> str:
    return "" if not dotted else "`" + dotted.removeprefix("pebslab.") + "`"


def mechanism_table(pending: bool = True) -> str:
    """The mechanism index as a markdown table; ``pending=False`` drops rows not yet in main."""
    if not isinstance(pending, bool):
        raise TypeError(f"pending must be a bool; got {type(pending).__name__} {pending!r}")
    rows = []
    for m in MECHANISMS:
        if m.pending and not pending:
            continue
        where = f"{m.notebook[:2]} § {m.section}" + (" (in progress)" if m.pending else "")
        rows.append((_code_idents(m.mechanism), _code_idents(m.hunk),
                     "<br>".join(_short(p) for p in m.pebslab), where,
                     _short(m.explorer), f"`check.{m.exercise}`" if m.exercise else ""))
    return _table(("mechanism", "in the patch", "pebslab", "notebook § section", "explorer",
                   "exercise"), rows, (24, 12, 22, 18, 12, 12))


def hunk_walk() -> str:
    """The patch's hunks in order, as a markdown table: file, where, what, notebooks."""
    return _table(("#", "file", "where", "what it adds", "notebooks"),
                  ((i, f"`{f}`", _code_idents(w), _code_idents(what), nb)
                   for i, (f, w, what, nb) in enumerate(PATCH_HUNKS, 1)),
                  (4, 24, 24, 36, 12))
