"""Run requests' own test suite twice: plain, and with every Session a FailoverSession.

Usage: ``python tests/requests_suite/run.py [pytest args]`` (the tox env
``dropin`` does this). The suite is taken from the sdist of the installed
requests release, downloaded into a temporary directory (never committed).
Exit 1 if any test's outcome differs between the two runs; tests failing in
both runs are listed, not counted. Both runs load ``loopback_only``: nothing
leaves this machine, so the few tests that reach for the network (a tarpit
address, a public host name) fail at once, in both runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List

import requests

HERE = Path(__file__).resolve().parent


def fetch_suite(work: Path) -> Path:
    version = requests.__version__
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"requests=={version}",
            "-d",
            str(work),
        ],
        check=True,
    )
    (archive,) = work.glob("requests-*.tar.gz")
    with tarfile.open(archive) as tar:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(work, **safe)  # type: ignore[arg-type]  # the sdist of the release under test; some tests post its files
    return work / f"requests-{version}"


def outcomes(report: Path) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        result[name] = outcome
    return result


def run_suite(root: Path, report: Path, extra: List[str], plugin: bool) -> Dict[str, str]:
    env = dict(os.environ)
    # both runs: nothing leaves this machine (see loopback_only.py)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    args = [
        sys.executable,
        "-m",
        "pytest",
        "tests/test_requests.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        f"--junitxml={report}",
        "-p",
        "loopback_only",
        *extra,
    ]
    if plugin:
        args += ["-p", "failover_plugin"]
    completed = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    tail = completed.stdout.strip().splitlines()[-1:] or [completed.stderr.strip()[-500:]]
    print(f"{'with FailoverSession' if plugin else 'plain requests      '}: {tail[0]}")
    if not report.exists():
        print(completed.stdout[-3000:], completed.stderr[-3000:], sep="\n")
        raise SystemExit(2)
    if plugin:
        handled = re.search(r"failover adapter handled (\d+) backend requests", completed.stdout)
        if not handled or int(handled.group(1)) == 0:
            print("the plugin routed no request through the failover adapter: the comparison proves nothing")
            raise SystemExit(2)
        print(f"  ({handled.group(0)})")
    return outcomes(report)


def main() -> int:
    extra = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = fetch_suite(work)
        print(f"requests {requests.__version__}: {root / 'tests' / 'test_requests.py'}")
        plain = run_suite(root, work / "plain.xml", extra, plugin=False)
        failover = run_suite(root, work / "failover.xml", extra, plugin=True)
    differ = sorted(n for n in plain.keys() | failover.keys() if plain.get(n) != failover.get(n))
    both = sorted(n for n in plain if plain[n] == "failed" and failover.get(n) == "failed")
    if both:
        print(f"\n{len(both)} tests fail in both runs (not ours to fix: they reach off this machine):")
        for name in both:
            print(f"  {name}")
    if differ:
        print(f"\n{len(differ)} tests behave differently through FailoverSession:")
        for name in differ:
            print(f"  {name}: plain {plain.get(name)}, failover {failover.get(name)}")
        return 1
    print(f"\nsame outcome for all {len(plain)} tests with and without FailoverSession")
    return 0


if __name__ == "__main__":
    sys.exit(main())
