"""``python -m pebslab record ...``: run a guest profile and write it for real ``perf``.

pebslab only. The ``record`` command builds a host of the chosen CPU model,
a VM with the chosen KVM design and a guest kernel, opens the event with
the guest's perf driver (``perf record -e EVENT -c PERIOD`` inside the
guest), runs the workload for the given number of instructions (with a
progress bar on a terminal), and writes the samples as perf.data, with the
ELF and kallsyms files beside it (pebslab.export.perf_data); optionally
also folded stacks, a flame graph SVG and speedscope JSON. Bad arguments
(an unknown workload, CPU, design or event; an event the guest cannot
sample; a folder that cannot be written) exit with status 2 and one line
on stderr, as argparse does; a run that produces no samples exits 1.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1
DEFAULTS = {"cpu": "silvermont", "design": "patch", "workload": "multi_function",
            "event": "cycles:pp", "period": 10007, "instructions": 2_000_000, "seed": 0}
CHUNKS = 50        # progress-bar steps; the samples do not depend on the chunking


class UsageError(Exception):
    """A bad command-line argument: printed on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):          # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def _pebs_matrix() -> dict[tuple[str, str], bool]:
    """Which (CPU model, design) pairs give the guest PEBS (probed, as the guest driver does)."""
    import pebslab as pl
    out = {}
    for cpu in pl.MODELS:
        for d in pl.DESIGN_NAMES:
            vm = pl.Host(cpu=cpu, frames=1024, seed=0).create_vm(design=d, memory_pages=256)
            out[cpu, d] = pl.GuestKernel(vm).perf.probe().has_pebs
    return out


def _help_epilog() -> str:
    import pebslab as pl
    from pebslab.guest.perf import GENERIC_EVENTS
    lines = ["workloads:"]
    for name, fn in pl.workloads.WORKLOADS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {name:<16} {doc}")
    lines.append("")
    lines.append("designs (KVM variants): " + ", ".join(pl.DESIGN_NAMES))
    lines.append("")
    lines += textwrap.wrap("events per CPU model (append :p or :pp for a precise, PEBS-sampled "
                           "event; * = may use PEBS; on every model also the generic "
                           + ", ".join(GENERIC_EVENTS) + " and raw r<hex>):", width=92,
                           break_on_hyphens=False)
    for m in pl.MODELS.values():
        evs = ", ".join(e.name + ("*" if e.pebs else "") for e in m.events)
        lines += textwrap.wrap(f"{evs}; cycles:pp* via the PEBS alias", width=92, break_on_hyphens=False,
                               initial_indent=f"  {m.name:<11} ", subsequent_indent=" " * 14)
    lines.append("")
    pebs = _pebs_matrix()
    lines.append("precise events need PEBS in the guest; it has it with:")
    for cpu in pl.MODELS:
        ds = [d for d in pl.DESIGN_NAMES if pebs[cpu, d]]
        lines.append(f"  {cpu:<11} " + (", ".join(f"--design {d}" for d in ds) if ds
                                         else "no design (non-precise events only)"))
    lines.append("")
    lines.append("example:\n  python -m pebslab record --workload multi_function "
                 "--event INST_RETIRED.ANY_P:pp --design patch -o guest.data\n"
                 "  perf report --stdio -i guest.data --kallsyms guest.data.kallsyms")
    return "\n".join(lines)


def _parser(with_epilog: bool) -> _Parser:
    import pebslab as pl
    p = _Parser(prog="python -m pebslab",
                description="pebslab command line: record a simulated guest profile.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    r = sub.add_parser(
        "record", help="run a workload in a guest under perf record; write perf.data",
        description="Run a workload in a simulated KVM guest under `perf record` and write "
                    "the samples as perf.data (plus an ELF and a kallsyms file beside it) that "
                    "the real perf reads.",
        epilog=_help_epilog() if with_epilog else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--workload", default=DEFAULTS["workload"], choices=list(pl.workloads.WORKLOADS),
                   metavar="NAME", help="workload to run (default %(default)s; listed below)")
    r.add_argument("--event", "-e", default=DEFAULTS["event"],
                   help="event to sample, perf syntax (default %(default)s)")
    r.add_argument("--cpu", default=DEFAULTS["cpu"], choices=list(pl.MODELS), metavar="MODEL",
                   help="CPU model: " + ", ".join(pl.MODELS) + " (default %(default)s)")
    r.add_argument("--design", default=DEFAULTS["design"], choices=list(pl.DESIGN_NAMES),
                   metavar="DESIGN",
                   help="KVM design: " + ", ".join(pl.DESIGN_NAMES) + " (default %(default)s)")
    r.add_argument("--period", "-c", type=int, default=DEFAULTS["period"],
                   help="sample period in events (default %(default)s)")
    r.add_argument("--instructions", "-n", type=int, default=DEFAULTS["instructions"],
                   help="guest instructions to run (default %(default)s)")
    r.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="host and workload seed (default %(default)s)")
    r.add_argument("--output", "-o", default="guest.data", help="perf.data file to write "
                   "(default %(default)s)")
    r.add_argument("--no-callchain", action="store_true",
                   help="leave out call chains (perf record without -g)")
    r.add_argument("--folded", metavar="FILE", help="also write folded stacks")
    r.add_argument("--flamegraph", metavar="FILE", help="also write a flame graph SVG")
    r.add_argument("--speedscope", metavar="FILE", help="also write speedscope JSON")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_output(name: str, value: str) -> Path:
    from pebslab.export._files import as_path, check_writable
    try:
        p = as_path(name, value)
        check_writable(name, p)
    except (TypeError, ValueError) as e:
        raise UsageError(f"python -m pebslab record: {e}") from None
    return p


def record(args) -> int:
    """Run the ``record`` command; return the exit status."""
    import pebslab as pl
    from pebslab import export
    from pebslab.guest.perf import PerfOpenError

    prog = "python -m pebslab record"
    for name in ("period", "instructions"):
        if getattr(args, name) < 1:
            raise UsageError(f"{prog}: --{name} must be >= 1; got {getattr(args, name)}")
    if args.seed < 0:
        raise UsageError(f"{prog}: --seed must be >= 0; got {args.seed}")
    out = _check_output("--output", args.output)
    extra = {k: _check_output(f"--{k}", getattr(args, k))
             for k in ("folded", "flamegraph", "speedscope") if getattr(args, k)}

    host = pl.Host(cpu=args.cpu, seed=args.seed)
    vm = host.create_vm(design=args.design)
    guest = pl.GuestKernel(vm)
    try:
        rec = guest.perf.record(args.event, period=args.period)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{prog}: --event {args.event!r} on {args.cpu}/{args.design}: {e}") \
            from None
    except PerfOpenError as e:
        raise UsageError(f"{prog}: --event {args.event!r}: perf_event_open failed: {e}") from None
    workload = pl.workloads.by_name(args.workload, seed=args.seed)

    from tqdm import tqdm
    total = args.instructions
    step = max(1, -(-total // CHUNKS))
    with tqdm(total=total, unit="instr", unit_scale=True, desc=f"{args.workload} in guest",
              disable=True if args.no_progress else None, file=sys.stderr) as bar:
        left = total
        while left > 0:
            n = min(step, left)
            res = vm.run(workload, instructions=n)
            left -= n
            bar.update(n)
            bar.set_postfix(samples=len(rec), refresh=False)
            if vm.crashed:
                break
    samples = rec.samples()
    if vm.crashed:
        print(f"{prog}: the guest crashed ({res}); {len(samples)} samples before the crash",
              file=sys.stderr)
    if samples.size == 0:
        print(f"{prog}: no samples recorded ({args.event} with period {args.period} over "
              f"{total} instructions); nothing written", file=sys.stderr)
        return EXIT_FAILED
    files = export.perf_data(samples, out, workload=workload, event=rec, cpu=args.cpu,
                             callchain=not args.no_callchain)
    lines = [f"wrote {files.data} ({files.samples} samples, {files.size} bytes)"]
    if files.elf is not None:
        lines.append(f"wrote {files.elf} (ELF symbols, build-id {files.build_id})")
    if files.kallsyms is not None:
        lines.append(f"wrote {files.kallsyms} (kernel symbols)")
    if "folded" in extra:
        from pebslab.export._files import write_all
        write_all({extra["folded"]: export.collapsed(samples, workload).encode()})
        lines.append(f"wrote {extra['folded']} (folded stacks)")
    if "flamegraph" in extra:
        export.flamegraph(samples, workload, title=f"{args.workload}: {args.event} "
                          f"({args.cpu}, {args.design})").save(extra["flamegraph"])
        lines.append(f"wrote {extra['flamegraph']} (flame graph)")
    if "speedscope" in extra:
        export.speedscope(samples, extra["speedscope"], workload)
        lines.append(f"wrote {extra['speedscope']} (speedscope)")
    lines.append("read it with: perf report --stdio " + " ".join(files.perf_args()))
    print("\n".join(lines))
    return 0 if not vm.crashed else EXIT_FAILED


def main(argv=None) -> int:
    """Entry point: parse ``argv`` and run the command; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    want_help = any(a in ("-h", "--help") for a in argv)
    try:
        args = _parser(with_epilog=want_help).parse_args(argv)
        if args.command is None:
            raise UsageError("python -m pebslab: a command is required: record "
                             "(see python -m pebslab record --help)")
        return record(args)
    except UsageError as e:
        print(str(e).splitlines()[0] if str(e) else "usage error", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
