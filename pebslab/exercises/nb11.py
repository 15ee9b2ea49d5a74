"""Checkers for notebook 11 (the review: CPUID gating).

pebslab only. Three exercises:

* ``ex11_hide_pebs`` (warm-up): from a host's CPUID, build the CPUID of a
  guest with a PMU but without PEBS. Judged by booting that guest under
  the ``review`` design: its PMU must work, its driver must find no PEBS,
  the PEBS MSRs must #GP, and nothing else may change.
* ``ex11_pebs_allowed`` (apply): write the review's gate, the
  ``pebs_allowed`` that ``kvm_pmu_cpuid_update`` should derive from the
  guest CPUID. The right answer for each CPUID variant is what a real
  ``review`` VM does with it (does a guest RDMSR of PEBS_ENABLE #GP?).
* ``ex11_lock_host_memory`` (investigate): as guest code whose CPUID says
  "no PEBS", pin as many host frames as KVM allows. Expected: the patch's
  MAX_PINNED_PAGES (17, from the seed) per vCPU under ``patch``, none where
  the CPUID gate holds.
"""

from __future__ import annotations

from ._base import CheckFailed, Result
from ..hw import cpuid as CPUID
from ..hw import msr as M
from ..hw.errors import GuestFault
from ..system import Host

#: MAX_PINNED_PAGES in the patch's kvm_host.h hunk (the course's seed).
MAX_PINNED_PAGES = 17
_PEBS_BITS = ("DS", "DTES64", "PDCM")


def judge(name: str, candidate, cases, verdict, *, hint_of=None, strict: bool = False,
          quiet: bool = False) -> Result:
    """Run ``candidate`` on each case and let ``verdict`` say what is wrong.

    pebslab only. ``cases`` are (description, args); ``verdict(case_index,
    args, output)`` returns None when the output is right, else
    (expected, got) texts. ``hint_of(failed)`` picks the hint from the
    failures. A stub that raises NotImplementedError is "not run yet".
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    res = Result(name)
    for i, (desc, args) in enumerate(cases):
        try:
            got = candidate(*args)
        except NotImplementedError:
            res.error = "your function still raises NotImplementedError; fill it in"
            break
        except Exception as e:  # noqa: BLE001 - a learner's bug is a wrong answer
            res.failed.append((desc, "a result", f"{type(e).__name__}: {e}"))
            continue
        bad = verdict(i, args, got)
        if bad is None:
            res.passed += 1
        else:
            res.failed.append((desc,) + tuple(bad))
    if res.failed and hint_of is not None:
        res.hint = hint_of(res.failed)
    if not quiet:
        print(res)
    if strict and not res.ok:
        raise CheckFailed(str(res))
    return res


# -----------------------------------------------------------------------------
# warm-up: a PMU without PEBS
# -----------------------------------------------------------------------------

def _boot(cpu: str, design: str, cpuid):
    host = Host(cpu=cpu, frames=256, seed=0)
    vm = host.create_vm(design=design, memory_pages=64, cpuid=cpuid)
    from ..guest.kernel import GuestKernel
    return vm, GuestKernel(vm)


def _leaf1_other_bits(c: CPUID.Cpuid) -> dict:
    return {f: c.has(f) for f in CPUID.FEATURES if f not in _PEBS_BITS}


def ex11_hide_pebs(candidate, *, strict: bool = False, quiet: bool = False) -> Result:
    """Check ``hide_pebs(cpuid) -> Cpuid``: a PMU-without-PEBS guest CPUID."""
    inputs = (
        ("the silvermont host's CPUID", "silvermont", "review",
         CPUID.default("silvermont")),
        ("the icelake host's CPUID (icelake design)", "icelake", "icelake",
         CPUID.default("icelake")),
        ("a silvermont CPUID that already lacks DS", "silvermont", "review",
         CPUID.default("silvermont").without("DS")),
    )
    cases = [(desc, (cpuid,)) for desc, _cpu, _d, cpuid in inputs]

    def verdict(i, args, got):
        _desc, cpu, design, original = inputs[i]
        if not isinstance(got, CPUID.Cpuid):
            return ("a pl.cpuid.Cpuid", f"a {type(got).__name__}")
        if got.leaf(0xA) != original.leaf(0xA):
            return ("leaf 0xA unchanged (the PMU stays)",
                    "leaf 0xA changed: you hid (part of) the PMU itself, not just PEBS")
        changed = [f for f, v in _leaf1_other_bits(got).items()
                   if v != _leaf1_other_bits(original)[f]]
        if changed:
            return ("only PEBS bits changed", f"you also changed {', '.join(changed)}")
        vm, guest = _boot(cpu, design, got)
        info = guest.perf.probe()
        v = vm.vcpus[0]
        if info.has_pebs:
            return ("the guest driver finds no PEBS", "the guest driver still finds PEBS")
        try:
            v.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0x00))
        except GuestFault:
            return ("EVENTSEL0 works", "EVENTSEL0 #GPs: the guest has no usable PMU")
        try:
            v.rdmsr(M.MSR_IA32_PEBS_ENABLE)
            return ("PEBS_ENABLE #GPs under the review design",
                    "PEBS_ENABLE is readable: KVM still exposes PEBS to this guest")
        except GuestFault:
            return None

    def hint_of(failed):
        got = " ".join(str(f[2]) for f in failed)
        if "leaf 0xA" in got:
            return ("'PMU' clears CPUID leaf 0xA: the guest loses its counters too. Hide only "
                    "the bits that announce PEBS.")
        if "also changed" in got:
            return "leave every other feature bit as it was: the guest keeps SSE, APIC, ..."
        return ("which CPUID.1 bits does the guest's perf driver look at before it uses PEBS? "
                "(section 1 of this notebook and notebook 04)")

    return judge("ex11_hide_pebs", candidate, cases, verdict, hint_of=hint_of, strict=strict,
                 quiet=quiet)


# -----------------------------------------------------------------------------
# apply: the review's gate
# -----------------------------------------------------------------------------

class GuestCpuid:
    """The guest CPUID as KVM stores it: only ``leaf(function) -> (eax, ebx, ecx, edx)``.

    pebslab only. What kvm_pmu_cpuid_update() can look at
    (kvm_find_cpuid_entry() in the kernel): raw register values.
    """

    def __init__(self, cpuid: CPUID.Cpuid, label: str):
        self._c = cpuid
        self._label = label

    def leaf(self, function: int) -> tuple[int, int, int, int]:
        """(eax, ebx, ecx, edx) of CPUID leaf ``function`` (zeros if absent)."""
        return self._c.leaf(function)

    def __repr__(self) -> str:
        return f"GuestCpuid({self._label})"


def _variant(hide=(), pmu_version=None, also_hide=()):
    c = CPUID.default("silvermont").without(*hide, *also_hide)
    if pmu_version is not None:
        eax, ebx, ecx, edx = c.leaf(0xA)
        leaves = dict(c.leaves)
        leaves[0xA] = ((eax & ~0xFF) | pmu_version, ebx, ecx, edx) if pmu_version else \
            (0, 0, 0, 0)
        c = CPUID.Cpuid(leaves)
    return c


def _label(c: CPUID.Cpuid) -> str:
    bits = " ".join(f"{b}={int(c.has(b))}" for b in _PEBS_BITS)
    return f"{bits}, PMU v{c.pmu()['version']}"


def _review_allows(c: CPUID.Cpuid) -> bool:
    """What a `review` VM on a Silvermont host does: is PEBS_ENABLE a PMU MSR?"""
    vm, _g = _boot("silvermont", "review", c)
    try:
        vm.vcpus[0].rdmsr(M.MSR_IA32_PEBS_ENABLE)
        return True
    except GuestFault:
        return False


def _gate_variants():
    out = []
    import itertools
    for hidden in itertools.chain.from_iterable(
            itertools.combinations(_PEBS_BITS, k) for k in range(4)):
        out.append(("PEBS bits " + ("all present" if not hidden else
                                    "without " + "+".join(hidden)), _variant(hidden)))
    out.append(("all PEBS bits but no PMU (leaf 0xA zero)", _variant(pmu_version=0)))
    out.append(("all PEBS bits, PMU version 1", _variant(pmu_version=1)))
    out.append(("all PEBS bits, MMX and SSE2 hidden", _variant(also_hide=("MMX", "XMM2"))))
    out.append(("DS and DTES64 but no PDCM, PMU version 1",
                _variant(hide=("PDCM",), pmu_version=1)))
    return out


def ex11_pebs_allowed(candidate, *, strict: bool = False, quiet: bool = False) -> Result:
    """Check ``pebs_allowed(cpuid) -> bool`` against real `review` VMs."""
    variants = _gate_variants()
    expected = [_review_allows(c) for _d, c in variants]
    cases = [(f"{desc} ({_label(c)})", (GuestCpuid(c, _label(c)),)) for desc, c in variants]

    def verdict(i, args, got):
        if not isinstance(got, bool):
            return ("True or False", f"{type(got).__name__} {got!r}")
        if got != expected[i]:
            word = {True: "allows PEBS (its PEBS MSRs work)",
                    False: "refuses PEBS (its PEBS MSRs #GP)"}
            return (f"review KVM {word[expected[i]]}", f"your gate {'allows' if got else 'refuses'}")
        return None

    def hint_of(failed):
        descs = " | ".join(f[0] for f in failed)
        if "without" in descs:
            return ("the guest's driver needs all three: DS (CPUID.1 EDX bit 21) for the DS "
                    "area, DTES64 (ECX bit 2) for its 64-bit layout, PDCM (ECX bit 15) to read "
                    "the PEBS format. Does your gate check each one in the right register?")
        if "no PMU" in descs:
            return ("PEBS samples with the PMU's counters: what does leaf 0xA EAX[7:0] = 0 "
                    "(version 0) leave a guest to sample with?")
        if "MMX" in descs or "version 1" in descs:
            return ("only the PMU's bits matter here; a PMU of version 1 still has "
                    "general-purpose counters")
        return "compare the failing case's CPUID bits with the ones your gate tests"

    return judge("ex11_pebs_allowed", candidate, cases, verdict, hint_of=hint_of,
                 strict=strict, quiet=quiet)


# -----------------------------------------------------------------------------
# investigate: how much host memory can a "no PEBS" guest lock?
# -----------------------------------------------------------------------------

def _no_pebs_guest(design: str, vcpus: int):
    host = Host(cpu="silvermont", frames=1024, seed=0)
    vm = host.create_vm(design=design, memory_pages=256,
                        cpuid=CPUID.default("silvermont").without(*_PEBS_BITS), vcpus=vcpus)
    from ..guest.kernel import GuestKernel
    return host, vm, GuestKernel(vm)


def _run_guest_code(candidate, guest):
    """Run the learner's guest code; a modeled #GP ends it, as it would end guest code."""
    try:
        candidate(guest)
    except GuestFault:
        pass
    return None


def ex11_lock_host_memory(candidate, *, strict: bool = False, quiet: bool = False) -> Result:
    """Check ``lock_host_memory(guest)``: guest code that pins what KVM lets it pin."""
    setups = (("patch", 1), ("patch", 2), ("review", 1), ("fixed", 2), ("icelake", 1))
    expected = {("patch", 1): MAX_PINNED_PAGES, ("patch", 2): 2 * MAX_PINNED_PAGES}
    made = {}
    cases = []
    for design, n in setups:
        made[(design, n)] = _no_pebs_guest(design, n)
        cases.append((f"a {design} VM with {n} vCPU{'s' if n > 1 else ''}, CPUID without "
                      f"DS/DTES64/PDCM", (made[(design, n)][2],)))
    per_vcpu = []

    def verdict(i, args, got):
        design, n = setups[i]
        _host, vm, _guest = made[(design, n)]
        per = [len(v.pmu.pinned_pages) for v in vm.vcpus]
        want = expected.get((design, n), 0)
        if sum(per) == want:
            return None
        per_vcpu.append(per)
        return (f"{want} host frames pinned ({MAX_PINNED_PAGES} per vCPU)" if want else
                "0 host frames pinned", f"{sum(per)} pinned (per vCPU: {per})")

    def hint_of(failed):
        per = per_vcpu[0] if per_vcpu else []
        if len(per) > 1 and max(per) == MAX_PINNED_PAGES and min(per) == 0:
            return ("each vCPU has its own struct kvm_pmu with its own pinned_pages[]: "
                    "guest.vcpus lists them all")
        if per and max(per) == 0:
            return ("pinning starts on a non-zero PEBS_ENABLE write and reads the DS area that "
                    "DS_AREA pointed to at that moment")
        if per and max(per) <= 2:
            return ("KVM pins the DS page and then the buffer that the DS area describes: what do "
                    "pebs_buffer_base and pebs_absolute_maximum say in yours?")
        return ("compare your buffer with the cap: how many pages does MAX_PINNED_PAGES leave "
                "for the buffer after the DS page?")

    return judge("ex11_lock_host_memory", lambda g: _run_guest_code(candidate, g), cases,
                 verdict, hint_of=hint_of, strict=strict, quiet=quiet)
