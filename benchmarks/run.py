"""What failover costs and what it saves, measured side by side with plain ``requests``.

Usage::

    python benchmarks/run.py                 # every row (about 15 minutes)
    python benchmarks/run.py --quick         # fewer rounds, 8 s instead of 20 s of load
    python benchmarks/run.py --only gray     # the scenarios whose name contains "gray" (or any word)
    python benchmarks/run.py --profile       # also profile the hot path
    python benchmarks/run.py --json          # the rows as JSON

Each scenario returns its rows as data (:class:`_harness.Row`: a figure, its
unit and its target); the report evaluates every target. Exit status: 0 when
every target is met, 1 when one is missed or a scenario failed, 2 for bad
arguments. The backends run in a separate process (loopback, ephemeral
ports), so the client's own costs are what the figures show; throughput
figures are ratios to plain requests measured in the same run. Not part of
the test run (``tests/test_benchmarks.py`` checks the exit status).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import List, Optional, Tuple

# benchmarks/ is the script's directory (its modules import as top-level ones), the package is in its parent
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gray
import overhead
from _harness import Backends, Context, Scenario, report, run_all

SCENARIOS: List[Tuple[str, Scenario]] = [
    ("steady_1_thread", overhead.steady_1_thread),
    ("steady_8_threads", overhead.steady_8_threads),
    ("steady_failed_over", overhead.steady_failed_over),
    ("observed", overhead.observed),
    ("refused", overhead.refused),
    ("reprobe_stall", overhead.reprobe_stall),
    ("failback", overhead.failback),
    ("blackholed", overhead.blackholed),
    ("simultaneous_blackhole", overhead.simultaneous_blackhole),
    ("propagation", overhead.propagation),
    ("read_your_writes", overhead.read_your_writes),
    ("cold_start", overhead.cold_start),
    ("memory", overhead.memory),
    ("fleet_steady", overhead.fleet_steady),
    ("fleet_propagation", overhead.fleet_propagation),
    ("gray_slow_primary", gray.slow_primary),
    ("gray_long_tail", gray.long_tail),
    ("gray_hung_api", gray.hung_api),
    ("gray_errors_503", gray.errors_503),
    ("gray_healthy", gray.healthy),
    ("gray_failback", gray.failback),
    ("close_with_probe_in_flight", gray.close_with_probe_in_flight),
]


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    chosen = [(name, fn) for name, fn in SCENARIOS if not args.only or any(w in name for w in args.only)]
    backends = Backends()
    try:
        ctx = Context(backends, args.quick, *((3, 200) if args.quick else (9, 800)))
        rows = run_all(ctx, chosen, progress=sys.stderr)
        hot = overhead.profile(ctx) if args.profile else ""
    finally:
        backends.close()
    if args.json:
        print(json.dumps([dataclasses.asdict(row) | {"verdict": row.verdict} for row in rows], indent=2))
    status = report(rows, sys.stderr if args.json else sys.stdout)
    print(f"\nhot path (cProfile, 2000 GETs, requests_failover functions by own time):\n\n{hot}" if hot else "", end="")
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter load")
    parser.add_argument("--only", nargs="+", metavar="WORD", help="only the scenarios whose name contains a WORD")
    parser.add_argument("--profile", action="store_true", help="profile the hot path too")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (the table goes to stderr)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
