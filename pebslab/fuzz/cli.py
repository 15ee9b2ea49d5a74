"""The command line: ``python -m pebslab.fuzz``; campaigns over designs x CPU models, a report.

pebslab only::

    python -m pebslab.fuzz --actions 100000 [--seed N] [--profile long|short] [--jobs 2]

spreads seeded campaigns over designs x CPU models and prints a summary
table, the MSR coverage table, every violation grouped by its signature,
and a one-line result. The exit status is non-zero on any violation whose
signature is not named with ``--allow``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from ..kvm.designs import DESIGN_NAMES
from ..hw import msr as M
from . import _targets as T
from .campaign import CPUS, PROFILES, Violation, run_campaign, warm_up
from .oracle import MSR_IA32_DEBUGCTLMSR, pmu_msr_indices

_SUMMARY_COLS = (
    ("campaigns", "camp"), ("actions", "actions"), ("checks", "checks"),
    ("violations", "VIOL"), ("GP", "GP"), ("GUEST_CRASH", "CRASH"),
    ("PEBS_WRITE", "PEBS_WR"), ("PEBS_FAULT", "PEBS_FLT"), ("HOST_FAULT", "HOST_FLT"),
    ("SWAPIN", "SWAPIN"), ("reclaimed", "RECLAIM"),
    ("PMI_INJECT", "PMI"), ("PERF_ERR", "PERF_ERR"), ("GUEST_OOPS", "OOPS"),
    ("MIGRATION_REFUSED", "MIG_REF"), ("migrations", "MIG"),
)


def _table(names, rows) -> list[str]:
    widths = [max(len(names[i]), *(len(r[i]) for r in rows)) for i in range(len(names))]

    def line(cells):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(cells))
    return [line(names), line(["-" * w for w in widths])] + [line(r) for r in rows]


def format_summary(results: list[dict], elapsed: float, header: str) -> str:
    """The summary table: one row per design x CPU, then the totals."""
    rows: dict = {}
    total: Counter = Counter()
    for r in results:
        cfg = r["config"]
        st = Counter(r["stats"])
        st["campaigns"] = 1
        st["violations"] = len(r["violations"])
        rows.setdefault((cfg.design, cfg.cpu), Counter()).update(st)
        total.update(st)
    table = [[f"{d}/{c}"] + [str(rows[(d, c)][k]) for k, _ in _SUMMARY_COLS]
             for (d, c) in sorted(rows, key=lambda k: (DESIGN_NAMES.index(k[0]),
                                                       CPUS.index(k[1])))]
    lines = _table(["design/cpu"] + [h for _, h in _SUMMARY_COLS], table)
    lines.append(lines[1])
    lines += _table(["total"] + [h for _, h in _SUMMARY_COLS],
                    [["total"] + [str(total[k]) for k, _ in _SUMMARY_COLS]])[2:]
    out = [header] + lines
    n = max(total["actions"], 1)
    out.append(f"time: {elapsed:.1f} s ({1000 * elapsed / n:.2f} ms per action, "
               f"{total['instructions']} guest instructions, {total['replays']} replays)")
    crashes = Counter({k[len("crash:"):]: v for k, v in total.items() if k.startswith("crash:")})
    if crashes:
        out.append("guest crashes by cause:")
        out += [f"  {n:6d}  {why}" for why, n in crashes.most_common()]
    return "\n".join(out)


def _msr_label(msr: int) -> str:
    if msr == MSR_IA32_DEBUGCTLMSR:
        return "MSR_IA32_DEBUGCTLMSR"
    return M.msr_name(msr)


def coverage(results: list[dict]) -> tuple[str, list[Violation]]:
    """The coverage table per MSR index, and a violation per (design, cpu, MSR) left short.

    A design x CPU pair that ran must have swept each MSR index of its
    host's ranges, written every one of its 64 bits alone, and run an
    enabling sequence after it.
    """
    per_pair: dict = {}
    for r in results:
        cfg = r["config"]
        pair = per_pair.setdefault((cfg.design, cfg.cpu), {})
        for msr, cov in r["coverage"].items():
            acc = pair.setdefault(msr, Counter())
            for k, v in cov.items():
                if k.startswith("bits_"):
                    acc[k] |= v
                else:
                    acc[k] += v
    msrs = sorted({m for _, cpu in per_pair for m in pmu_msr_indices(cpu)})
    rows, short = [], []
    full = (1 << 64) - 1
    for msr in msrs:
        pairs = [(p, cov.get(msr, Counter())) for p, cov in per_pair.items()
                 if msr in pmu_msr_indices(p[1])]
        tot = Counter()
        for _, cov in pairs:
            for k, v in cov.items():
                if not k.startswith("bits_"):
                    tot[k] += v
        done = 0
        for (d, c), cov in pairs:
            bits = cov["bits_def"] | cov["bits_rsv"]
            ok = cov["sweeps"] > 0 and bits == full and cov["enabled"] > 0
            done += ok
            if not ok:
                short.append(Violation("coverage", "msr-short", f"{d}/{c}: MSR {msr:#x} swept "
                                       f"{cov['sweeps']} time(s), {bin(bits).count('1')}/64 "
                                       f"bits alone, {cov['enabled']} enabling run(s)",
                                       0, "run", {}))
        defb = min((bin(cov["bits_def"]).count("1") for _, cov in pairs), default=0)
        maxdef = max((bin(cov["bits_def"]).count("1") for _, cov in pairs), default=0)
        rows.append([f"{msr:#05x} {_msr_label(msr)}", f"{done}/{len(pairs)}",
                     str(tot["sweeps"]), str(tot["wr"]), str(tot["rd"]), str(tot["gp"]),
                     f"{defb}..{maxdef}", str(tot["values"]), str(tot["enabled"])])
    names = ["MSR", "pairs", "sweeps", "WRMSR", "RDMSR", "#GP", "def.bits", "values", "enabled"]
    head = ("MSR coverage (pairs: design/cpu pairs that swept every bit alone and enabled it; "
            "def.bits: bits the guest may set, min..max over pairs; the rest were reserved)")
    return "\n".join([head] + _table(names, rows)), short


def run_fuzz(actions: int, seed: int = 0, profile: str = "long", *, design=None, cpu=None,
             campaign: int | None = None, allow=(), jobs: int = 1, out=None) -> int:
    """Run campaigns until ``actions`` random actions are done; report; return failing count."""
    out = out or sys.stdout
    length = PROFILES[profile]["campaign"]
    if campaign is not None:
        indices = [campaign]
        length = min(length, actions)
    else:
        indices = list(range(max(1, -(-actions // length))))

    def n_of(i):
        return length if campaign is not None else min(length, actions - i * length)
    warm_up()
    t0 = time.perf_counter()
    if jobs > 1 and len(indices) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
            futs = [ex.submit(run_campaign, seed, i, profile, n_of(i), design=design, cpu=cpu)
                    for i in indices]
            results = [f.result() for f in futs]
    else:
        results = [run_campaign(seed, i, profile, n_of(i), design=design, cpu=cpu)
                   for i in indices]
    elapsed = time.perf_counter() - t0
    header = (f"pebslab fuzz: {sum(r['stats']['actions'] for r in results)} actions in "
              f"{len(results)} campaigns, seed {seed}, profile {profile}, jobs {jobs}")
    print(format_summary(results, elapsed, header), file=out)
    table, short = coverage(results)
    print(table, file=out)
    listing = [(r, v) for r in results for v in r["violations"]]
    listing += [(None, v) for v in short]
    by_sig: dict[str, list] = {}
    for r, v in listing:
        by_sig.setdefault(v.signature, []).append((r, v))
    failing = sum(len(hits) for sig, hits in by_sig.items() if sig not in allow)
    filt = (f" --design {design}" if design else "") + (f" --cpu {cpu}" if cpu else "")
    if by_sig:
        print(f"violations by signature ({len(by_sig)}):", file=out)
    for sig, hits in sorted(by_sig.items(), key=lambda kv: -len(kv[1])):
        pairs = sorted({f"{r['config'].design}/{r['config'].cpu}" for r, _ in hits if r})
        tag = " (allowed)" if sig in allow else ""
        print(f"  {len(hits):6d}  {sig}{tag}  [{', '.join(pairs) or 'run'}]", file=out)
        r, v = hits[0]
        if r is not None:
            print(f"          first: campaign {r['index']} ({r['config'].describe()}): {v}\n"
                  f"          replay: python -m pebslab.fuzz --seed {seed} --profile {profile}"
                  f"{filt} --campaign {r['index']}", file=out)
        else:
            print(f"          first: {v.message}", file=out)
    if not T.has("restore_state"):
        print("note: the migration module is missing: migration and dirty-logging actions "
              "skipped", file=out)
    print(f"result: {'FAIL' if failing else 'OK'} ({len(listing)} violation(s), "
          f"{failing} failing, {len(by_sig)} signature(s))", file=out)
    return failing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pebslab.fuzz", description=(
        "Fuzz pebslab with random guest and host actions across designs x CPU models; "
        "check isolation, accounting, MSR semantics against an independent oracle, "
        "crash reporting, determinism and MSR coverage."))
    p.add_argument("--actions", type=int, default=None,
                   help="random actions in all (default: 2000 short, 100000 long); each "
                        "campaign then sweeps the MSR indices it has not covered")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=("short", "long"), default="long")
    p.add_argument("--design", choices=DESIGN_NAMES, default=None)
    p.add_argument("--cpu", choices=CPUS, default=None)
    p.add_argument("--campaign", type=int, default=None, help="run only this campaign index")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--allow", action="append", default=[], metavar="SIGNATURE",
                   help="report violations with this signature but do not fail on them "
                        "(repeatable)")
    a = p.parse_args(argv)
    actions = a.actions if a.actions is not None else (2000 if a.profile == "short" else 100000)
    if actions < 1:
        p.error("--actions must be >= 1")
    if a.jobs < 1:
        p.error("--jobs must be >= 1")
    failing = run_fuzz(actions, a.seed, a.profile, design=a.design, cpu=a.cpu,
                       campaign=a.campaign, jobs=a.jobs, allow=tuple(a.allow))
    return 1 if failing else 0
