"""benchmarks/run.py judges its own targets: a missed target (or a broken scenario) is a non-zero exit."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _harness import Row, Target, at_least, at_most, below, exactly, report, run_all  # noqa: E402

ONE_GET = """
import sys
sys.path.insert(0, {benchmarks!r})
import requests
import run
from _harness import Row, below

def one_get(ctx):
    answer = requests.get(ctx.backends.primary + "/one", timeout=(5, 60))
    return [Row("one GET", answer.elapsed.total_seconds() * 1000, "ms", below({bound!r}))]

run.SCENARIOS[:] = [("one_get", one_get)]
sys.exit(run.main(["--quick"]))
"""


def _run_one_get(bound: float) -> subprocess.CompletedProcess:
    """The real script's main(), backends process and all, with one tiny scenario of our own."""
    source = textwrap.dedent(ONE_GET.format(benchmarks=str(BENCHMARKS), bound=bound))
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300)


def test_an_impossible_target_makes_the_run_exit_1_and_a_met_one_0():
    missed = _run_one_get(0.0)  # a GET in less than 0 ms
    assert missed.returncode == 1, missed.stdout + missed.stderr
    assert "one GET" in missed.stdout and "MISSED" in missed.stdout
    assert "0 of 1 targets met, missed:" in missed.stdout
    met = _run_one_get(600_000.0)  # in less than ten minutes
    assert met.returncode == 0, met.stdout + met.stderr
    assert "1 of 1 targets met" in met.stdout and "MISSED" not in met.stdout


@pytest.mark.parametrize(
    ("target", "value", "verdict"),
    [
        (below(1.0), 1.0, "MISSED"),
        (below(1.0), 0.999, "ok"),
        (at_most(1.10), 1.10, "ok"),
        (at_least(99), 98.9, "MISSED"),
        (exactly(0), 0, "ok"),
        (exactly(0), 1, "MISSED"),
        (at_least(0), math.nan, "MISSED"),  # a figure that could not be measured never meets a goal
        (None, math.nan, ""),  # shown, not judged
    ],
)
def test_each_target_is_evaluated(target, value, verdict):
    assert Row("figure", value, "ms", target).verdict == verdict


def test_the_report_lists_what_was_missed_and_returns_the_exit_status():
    rows = [Row("fast enough", 2.0, "ms", below(10)), Row("load", 1.5, "x", at_most(1.05)), Row("info", 3.0, "s")]
    out = io.StringIO()
    assert report(rows, out) == 1
    text = out.getvalue()
    assert "1 of 2 targets met, missed:\n  load: 1.500x, target <= 1.050x\n" in text
    assert report(rows[:1] + rows[2:], io.StringIO()) == 0


def test_a_scenario_that_raises_is_a_missed_row_and_the_others_still_run():
    def broken(ctx):
        raise RuntimeError("backend process gone")

    def fine(ctx):
        return [Row("fine", 1.0, "", exactly(1))]

    rows = run_all(None, [("broken", broken), ("fine", fine)])  # type: ignore[arg-type]
    assert [(r.name, r.verdict) for r in rows] == [("broken: failed", "MISSED"), ("fine", "ok")]
    assert rows[0].detail == "RuntimeError: backend process gone"
    assert report(rows, io.StringIO()) == 1


def test_a_target_needs_a_known_comparison():
    with pytest.raises(ValueError, match="op"):
        Target("~", 1.0)
