"""The machinery every exercise checker shares.

pebslab only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


class CheckFailed(AssertionError):
    """Raised by a checker with ``strict=True`` when a case is wrong."""


@dataclass
class Result:
    """The outcome of checking a learner's function."""

    name: str
    passed: int = 0
    failed: list = field(default_factory=list)   # (case description, expected, got)
    hint: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.error

    def __str__(self) -> str:
        total = self.passed + len(self.failed)
        if self.error:
            return f"{self.name}: not run yet - {self.error}"
        if self.ok:
            return f"{self.name}: all {total} cases right. Well done."
        lines = [f"{self.name}: {self.passed} of {total} cases right."]
        for desc, expected, got in self.failed[:3]:
            lines.append(f"  wrong for {desc}: expected {expected!r}, got {got!r}")
        if len(self.failed) > 3:
            lines.append(f"  ... and {len(self.failed) - 3} more")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython shows the text, not a repr
        p.text(str(self))


def run_cases(name: str, candidate: Callable, cases: Iterable[tuple[str, tuple, Any]],
              *, hint: str = "", compare: Callable[[Any, Any], bool] | None = None,
              strict: bool = False, quiet: bool = False) -> Result:
    """Run ``candidate(*args)`` for each (description, args, expected) case.

    A stub that raises NotImplementedError yields a friendly "not run yet".
    Any other exception counts as a wrong answer with the exception as "got".
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    res = Result(name, hint=hint)
    cmp = compare or (lambda a, b: a == b)
    for desc, args, expected in cases:
        try:
            got = candidate(*args)
        except NotImplementedError:
            res.error = "your function still raises NotImplementedError; fill it in"
            break
        except Exception as e:  # noqa: BLE001 - a learner's bug is a wrong answer
            got = f"{type(e).__name__}: {e}"
            res.failed.append((desc, expected, got))
            continue
        if cmp(got, expected):
            res.passed += 1
        else:
            res.failed.append((desc, expected, got))
    if not quiet:
        print(res)
    if strict and not res.ok:
        raise CheckFailed(str(res))
    return res


def unwritten(name: str, candidate, args: tuple, quiet: bool, strict: bool):
    """If ``candidate`` is still the notebook's stub, the "not run yet" result; else None.

    pebslab only. Calls ``candidate(*args)`` once: a NotImplementedError means
    the learner has not written it yet (cheap: no case is built). Any other
    outcome is left to the real cases.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    try:
        candidate(*args)
    except NotImplementedError:
        return run_cases(name, candidate, [("a first call", args, None)], quiet=quiet,
                         strict=strict)
    except Exception:  # noqa: BLE001 - judged case by case by the caller
        pass
    return None
