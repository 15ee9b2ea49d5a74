"""Open a simulated guest profile in the tools people already use.

pebslab only. ``perf_data`` writes a real ``perf.data`` (with an ELF for
the user functions and a kallsyms-style file for the kernel ones) that
unchanged ``perf report``, ``perf script``, ``perf annotate``, ``perf mem
report`` and ``perf data convert --to-json`` read; ``collapsed`` gives
folded stacks, ``flamegraph`` an SVG for notebooks, ``speedscope`` a JSON
file for speedscope.app. The command line ``python -m pebslab record``
runs a scenario and writes all of them.

    rec = guest.perf.record("cycles:pp", period=10007)
    vm.run(w, instructions=2_000_000)
    files = pl.export.perf_data(rec.samples(), "guest.data", workload=w, event=rec,
                                cpu="silvermont")
    # perf report --stdio  -i guest.data --kallsyms guest.data.kallsyms
"""

from .perfdata import EventInfo, PerfFiles, data_src, event_info, perf_data
from .stacks import (FlameGraph, call_stacks, collapsed, flamegraph, sample_stacks, speedscope,
                     speedscope_dict)
from .symbols import build_elf, kallsyms_text
from .tool import INSTALL_HINT, overhead_table, perf_path, perf_report, run_perf

__all__ = ["perf_data", "PerfFiles", "EventInfo", "event_info", "data_src", "collapsed",
           "flamegraph", "FlameGraph", "speedscope", "speedscope_dict", "call_stacks",
           "sample_stacks", "build_elf", "kallsyms_text", "perf_path", "run_perf", "perf_report",
           "overhead_table", "INSTALL_HINT"]
