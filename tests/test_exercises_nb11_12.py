"""The checkers of notebooks 11 and 12 name what is wrong in a wrong answer.

(That the reference solutions pass and stubs are told to fill in is
tests/test_solutions.py.)
"""

from __future__ import annotations

import pebslab as pl
from pebslab.exercises import check


def test_hide_pebs_names_a_hidden_pmu_and_extra_bits():
    res = check.ex11_hide_pebs(lambda c: c.without("PMU"), quiet=True)
    assert not res.ok and "leaf 0xA" in str(res)
    res = check.ex11_hide_pebs(lambda c: c.without("DS", "MMX"), quiet=True)
    assert not res.ok and "MMX" in str(res)
    res = check.ex11_hide_pebs(lambda c: c, quiet=True)   # nothing hidden: PEBS still there
    assert not res.ok and "finds PEBS" in str(res)


def test_pebs_allowed_names_the_failing_cpuid_variant():
    ds_only = lambda c: bool(c.leaf(1)[3] >> 21 & 1)      # noqa: E731
    res = check.ex11_pebs_allowed(ds_only, quiet=True)
    assert not res.ok
    assert "without DTES64" in str(res) and "DTES64=0" in str(res)
    no_pmu_check = lambda c: bool(c.leaf(1)[3] >> 21 & 1 and c.leaf(1)[2] >> 2 & 1   # noqa: E731
                                  and c.leaf(1)[2] >> 15 & 1)
    res = check.ex11_pebs_allowed(no_pmu_check, quiet=True)
    assert [f[0] for f in res.failed] == ["all PEBS bits but no PMU (leaf 0xA zero) "
                                          "(DS=1 DTES64=1 PDCM=1, PMU v0)"]
    assert "version 0" in res.hint
    res = check.ex11_pebs_allowed(lambda c: 1, quiet=True)
    assert "True or False" in str(res)


def test_lock_host_memory_counts_every_vcpu():
    def one_vcpu(guest):
        v = guest.vcpus[0]
        ds, buf = guest.mm.alloc(1), guest.mm.alloc(16)
        guest.write(ds, pl.pebs.DebugStore(pebs_buffer_base=buf, pebs_index=buf,
                                           pebs_absolute_maximum=buf + 65536).to_bytes())
        v.wrmsr(pl.msr.MSR_IA32_DS_AREA, ds)
        v.wrmsr(pl.msr.MSR_IA32_PEBS_ENABLE, 1)
    res = check.ex11_lock_host_memory(one_vcpu, quiet=True)
    assert len(res.failed) == 1 and "[17, 0]" in str(res) and "each vCPU" in res.hint


def test_data_cfg_names_the_lbr_count_off_by_one():
    res = check.ex12_data_cfg(lambda m, g, x, n: int(m) | g << 1 | x << 2
                              | ((8 | n << 24) if n else 0), quiet=True)
    assert not res.ok and "count from" in res.hint
    res = check.ex12_data_cfg(lambda m, g, x, n: int(g) | m << 1 | x << 2
                              | ((8 | (n - 1) << 24) if n else 0), quiet=True)
    assert not res.ok and "MEMINFO, GP, XMMS, LBRS" in res.hint


def test_walk_records_names_a_fixed_size_walk():
    def fixed32(raw):
        return [(o, 32, int.from_bytes(raw[o + 8:o + 16], "little"))
                for o in range(0, len(raw), 32)]
    res = check.ex12_walk_records(fixed32, quiet=True)
    assert not res.ok and "record 0: offset 0x0, size 208" in str(res)
    assert "first u64" in res.hint


def test_assist_faults_names_the_page_tables():
    def everything_is_buffer(vm, st):
        n = len([r for r in vm.trace.rows("SWAPIN") if "PEBS assist" in r["info"]])
        return {"page tables": 0, "DS area": 0, "buffer": n}
    res = check.ex12_assist_faults(everything_is_buffer, quiet=True)
    assert not res.ok and "page tables" in res.hint
    assert res.passed == 1           # the run where the guest had faulted DS and tables back in
