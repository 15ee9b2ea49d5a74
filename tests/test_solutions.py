"""Every reference solution in solutions/ passes its notebook's checker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pebslab.exercises import check

SOLUTIONS = sorted((Path(__file__).resolve().parent.parent / "solutions").glob("*.py"))


def _checker_of(text: str) -> str:
    m = re.search(r"#\s*check:\s*(ex\w+)", text)
    assert m, "a solution file must name its checker in a '# check: exNN_name' line"
    return m.group(1)


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_passes_its_check(path):
    text = path.read_text()
    name = _checker_of(text)
    namespace: dict = {}
    exec(compile(text, str(path), "exec"), namespace)
    fn_name = re.search(r"^def (\w+)\(", text, re.M).group(1)
    result = getattr(check, name)(namespace[fn_name], quiet=True)
    assert result.ok, str(result)


def test_every_checker_has_a_solution():
    named = {_checker_of(p.read_text()) for p in SOLUTIONS}
    assert set(check.__all__) <= named, f"checkers without a solution: {set(check.__all__) - named}"


def test_a_stub_is_told_to_fill_it_in():
    for name in check.__all__:
        def stub(*args, **kwargs):
            raise NotImplementedError
        res = getattr(check, name)(stub, quiet=True)
        assert not res.ok and "NotImplementedError" in res.error
