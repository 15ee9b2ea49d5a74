"""Call stacks of samples, folded stacks, a flame graph SVG, speedscope JSON.

pebslab only. A sample carries one IP; its call stack is read off the
workload's trace, which is the program's dynamic instruction sequence: a
taken branch into the first byte of another function is a call (the
return address, the branch's IP + length, is pushed), a taken branch to
the return address on top of the stack is a return (popped). ``syscall``
into the kernel and ``sysret`` back behave the same way, so a kernel
sample's stack ends in the user code that made the system call, as a
``perf record -g`` callchain does. An IP's stack is the one at its first
position in the trace; pebslab's workloads call each function from one
place, so that stack is the only one (``call_stacks`` reports IPs seen
under more than one stack).

Formats:

* folded stacks (Brendan Gregg's flame graph input): one line per
  distinct stack, ``outer;...;leaf count``, lines sorted;
* a flame graph as SVG text, written here (no plotting library): the same
  input gives the same bytes;
* speedscope's file format (``"$schema":
  "https://www.speedscope.app/file-format-schema.json"``): one "sampled"
  profile whose samples are stacks of indices into ``shared.frames``.
"""

from __future__ import annotations

import json
import zlib
from html import escape
from pathlib import Path

import numpy as np

from .. import __version__
from ..workloads import KIND_BRANCH, UNKNOWN_SYMBOL, Workload
from ._files import as_path, check_writable, write_all

KERNEL_HALF = 1 << 63


def call_stacks(workload: Workload) -> tuple[dict[int, tuple[int, ...]], set[int]]:
    """Return ({ip: return addresses, outermost first}, IPs seen under several stacks).

    pebslab only (what the unwinder behind ``perf record -g`` would find,
    read off the trace instead of the stack memory). See the module
    docstring for the rules.
    """
    if not isinstance(workload, Workload):
        raise TypeError(f"workload must be a pebslab.workloads.Workload; got "
                        f"{type(workload).__name__}")
    ips = workload.ip.tolist()
    kinds = workload.kind.tolist()
    lens = workload.length.tolist()
    starts = {s[0]: s[2] for s in workload.symbols}
    sym_of = workload.symbol_of
    stack: list[int] = []
    out: dict[int, tuple[int, ...]] = {}
    ambiguous: set[int] = set()
    n = len(ips)
    for i in range(n):
        ip = ips[i]
        st = tuple(stack)
        prev = out.setdefault(ip, st)
        if prev != st:
            ambiguous.add(ip)
        if kinds[i] != KIND_BRANCH:
            continue
        nxt = ips[(i + 1) % n]
        fall = ip + lens[i]
        if nxt == fall:
            continue                                # not taken
        if stack and nxt == stack[-1]:
            stack.pop()                             # ret / sysret
        elif nxt in starts and sym_of(nxt) != sym_of(ip):
            stack.append(fall)                      # call / syscall
    return out, ambiguous


def _check_samples(samples) -> np.ndarray:
    if not isinstance(samples, np.ndarray) or samples.dtype.names is None:
        raise TypeError(f"samples must be a numpy structured array (Recording.samples()); got "
                        f"{type(samples).__name__}")
    if "ip" not in samples.dtype.names:
        raise ValueError(f"samples must have an 'ip' field; has {samples.dtype.names}")
    if samples.ndim != 1:
        raise ValueError(f"samples must be 1-D; got shape {samples.shape}")
    if samples.size == 0:
        raise ValueError("samples is empty: there is no profile to export (did the recording "
                         "run any instructions?)")
    return samples


def sample_stacks(samples, workload: Workload | None = None) -> list[tuple[str, ...]]:
    """Return each sample's stack as function names, outermost first.

    pebslab only. With a workload the names come from its symbols and the
    stack from ``call_stacks``; IPs outside every symbol raise ValueError.
    Without one, each stack is just the sample's ``sym`` field.
    """
    samples = _check_samples(samples)
    if workload is None:
        if "sym" not in samples.dtype.names:
            raise ValueError("samples without a 'sym' field need workload= to name functions")
        return [(str(s),) for s in samples["sym"]]
    table, _ = call_stacks(workload)
    names: dict[int, tuple[str, ...]] = {}
    out = []
    for ip in samples["ip"].tolist():
        st = names.get(ip)
        if st is None:
            leaf = workload.symbol_of(ip)
            if leaf == UNKNOWN_SYMBOL:
                raise ValueError(f"sample IP {ip:#x} is outside every function of workload "
                                 f"{workload.name!r}")
            st = tuple(workload.symbol_of(r) for r in table.get(ip, ())) + (leaf,)
            names[ip] = st
        out.append(st)
    return out


def _counts(samples, workload) -> dict[tuple[str, ...], int]:
    counts: dict[tuple[str, ...], int] = {}
    for st in sample_stacks(samples, workload):
        counts[st] = counts.get(st, 0) + 1
    return counts


def collapsed(samples, workload: Workload | None = None) -> str:
    """Return the folded stacks of ``samples``: ``main;parse;hash_update 42`` lines.

    pebslab only. One line per distinct stack (outermost first, ``;``
    between frames, a space, the number of samples), sorted, ending in a
    newline: the input format of flamegraph.pl and speedscope.
    """
    counts = _counts(samples, workload)
    return "".join(f"{';'.join(st)} {c}\n" for st, c in sorted(counts.items()))


# -----------------------------------------------------------------------------
# flame graph
# -----------------------------------------------------------------------------

def _color(name: str, kernel: bool) -> str:
    h = zlib.crc32(name.encode())
    v1, v2 = (h & 0xFF) / 255, (h >> 8 & 0xFF) / 255
    if kernel:                                     # kernel frames: orange
        r, g, b = 230 + int(25 * v1), 120 + int(60 * v2), 40
    else:                                          # user frames: red-yellow, as flamegraph.pl
        r, g, b = 205 + int(50 * v1), int(230 * v2), 55
    return f"rgb({r},{g},{b})"


class FlameGraph:
    """A flame graph as SVG text; shows itself in Jupyter (``_repr_svg_``).

    pebslab only. ``svg`` is the document; ``save(path)`` writes it.
    """

    def __init__(self, svg: str, total: int, alt: str = ""):
        self.svg = svg
        self.total = total
        #: what the picture shows, for readers who cannot see it (the site's <img alt>)
        self.alt = alt or f"Flame graph of {total} samples"

    def _repr_svg_(self):
        return self.svg, {"alt": self.alt}

    def save(self, path) -> Path:
        """Write the SVG to ``path`` (all or nothing); return the path."""
        p = as_path("path", path)
        check_writable("path", p)
        write_all({p: self.svg.encode()})
        return p

    def __repr__(self) -> str:
        return f"FlameGraph({self.total} samples, {len(self.svg)} bytes of SVG)"


def flamegraph(samples, workload: Workload | None = None, *, title: str = "Flame graph",
               width: int = 1200, frame_height: int = 16) -> FlameGraph:
    """Draw the folded stacks of ``samples`` as a flame graph (SVG).

    pebslab only, after Brendan Gregg's flame graphs: the root "all" at the
    bottom, callees above callers, each frame as wide as its samples,
    siblings in alphabetical order (so width, not position, means time);
    kernel functions orange, user functions red-yellow; hover shows
    samples and share. Deterministic: the same samples give the same bytes.
    """
    if not isinstance(title, str):
        raise TypeError(f"title must be a str; got {type(title).__name__}")
    if isinstance(width, bool) or not isinstance(width, int) or not 200 <= width <= 10000:
        raise ValueError(f"width must be an int in 200..10000; got {width!r}")
    if isinstance(frame_height, bool) or not isinstance(frame_height, int) \
            or not 8 <= frame_height <= 64:
        raise ValueError(f"frame_height must be an int in 8..64; got {frame_height!r}")
    counts = _counts(samples, workload)
    kernel_names = set()
    if workload is not None:
        kernel_names = {s[2] for s in workload.symbols if s[0] >= KERNEL_HALF}
    # a tree of dicts: name -> [count, children]
    root = [0, {}]
    for st, c in counts.items():
        root[0] += c
        node = root
        for name in st:
            node = node[1].setdefault(name, [0, {}])
            node[0] += c
    total = root[0]
    depth = max(len(st) for st in counts) + 1
    pad_x, top, bottom = 10, 40, 10
    inner = width - 2 * pad_x
    height = top + depth * frame_height + bottom
    char_w = 0.6 * (frame_height - 4)
    rects = []

    def emit(name, count, x, level, kernel):
        w = inner * count / total
        y = top + (depth - 1 - level) * frame_height
        pct = 100.0 * count / total
        tip = f"{name} ({count} samples, {pct:.2f}%)"
        fill = "rgb(230,230,230)" if level == 0 else _color(name, kernel)
        rects.append(f'<g><title>{escape(tip)}</title>'
                     f'<rect x="{pad_x + x:.2f}" y="{y}" width="{w:.2f}" '
                     f'height="{frame_height - 1}" fill="{fill}" rx="2"/>')
        room = int((w - 6) // char_w)
        if room >= 3:
            label = name if len(name) <= room else name[:room - 2] + ".."
            rects.append(f'<text x="{pad_x + x + 3:.2f}" y="{y + frame_height - 5}">'
                         f'{escape(label)}</text>')
        rects.append("</g>")

    def walk(children, x, level):
        for name in sorted(children):
            count, sub = children[name]
            emit(name, count, x, level, name in kernel_names)
            walk(sub, x, level + 1)
            x += inner * count / total

    emit("all", total, 0.0, 0, False)
    walk(root[1], 0.0, 1)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Verdana, sans-serif" '
           f'font-size="{frame_height - 5}">\n'
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="rgb(250,250,240)"/>\n'
           f'<text x="{width / 2:.1f}" y="24" text-anchor="middle" '
           f'font-size="{frame_height}">{escape(title)}</text>\n'
           + "\n".join(rects) + "\n</svg>\n")
    return FlameGraph(svg, total, alt=f"{title}: flame graph of {total} samples, the root at "
                                      f"the bottom, each frame as wide as its share of them")


# -----------------------------------------------------------------------------
# speedscope
# -----------------------------------------------------------------------------

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def speedscope_dict(samples, workload: Workload | None = None, *, name: str | None = None) -> dict:
    """Return the speedscope document for ``samples`` (see ``speedscope``)."""
    stacks = sample_stacks(samples, workload)
    frames: dict[str, int] = {}
    for st in stacks:
        for f in st:
            frames.setdefault(f, len(frames))
    if name is None:
        name = workload.name if workload is not None else "pebslab profile"
    if not isinstance(name, str):
        raise TypeError(f"name must be a str; got {type(name).__name__}")
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "shared": {"frames": [{"name": f} for f in frames]},
        "profiles": [{
            "type": "sampled",
            "name": name,
            "unit": "none",
            "startValue": 0,
            "endValue": len(stacks),
            "samples": [[frames[f] for f in st] for st in stacks],
            "weights": [1] * len(stacks),
        }],
        "name": name,
        "activeProfileIndex": 0,
        "exporter": f"pebslab {__version__}",
    }


def speedscope(samples, path, workload: Workload | None = None, *,
               name: str | None = None) -> Path:
    """Write ``samples`` as a speedscope JSON file (open it at speedscope.app); return the path.

    pebslab only. One "sampled" profile in sample order (speedscope's
    "time order" view then is the guest's sample order), each sample
    weighing 1. All or nothing: bad input leaves no file.
    """
    p = as_path("path", path)
    doc = speedscope_dict(samples, workload, name=name)
    check_writable("path", p)
    write_all({p: (json.dumps(doc, indent=None, separators=(",", ":")) + "\n").encode()})
    return p
