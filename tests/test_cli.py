"""The command line, run as a real subprocess against loopback servers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import List

import pytest

from requests_failover import FailoverSession

from .conftest import BOUND
from .conftest import cli as run


def assert_usage_error(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines: List[str] = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


def test_check_prints_a_table_and_the_active_backend(primary, secondary):
    primary.set(routes={"/health": 404, "/api/health": 200})
    result = run("check", primary.url, secondary.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["backend", "healthy", "path", "status", "latency_ms", "error"]
    assert primary.url in lines[2] and "/api/health" in lines[2] and "200" in lines[2]
    assert f"active: {primary.url}" in result.stdout


def test_check_json_and_exit_1_when_none_is_healthy(primary, secondary):
    primary.set("refuse")
    secondary.set(status=503)
    result = run("check", "--json", "--timeout", "1", primary.url, secondary.url)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["active_backend"] is None
    assert [b["healthy"] for b in document["backends"]] == [False, False]
    assert document["backends"][1]["status"] == 503


@pytest.mark.parametrize(
    "args",
    [
        ["check"],
        ["check", "primary.example"],
        ["check", "ftp://primary.example"],
        ["check", "http://primary.example"],
        ["check", "--timeout", "soon", "https://a.example"],
        ["status"],
        ["frobnicate"],
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args):
    assert_usage_error(run(*args))


def test_no_command_prints_help_and_exits_2():
    result = run()
    assert result.returncode == 2 and "usage:" in result.stdout and "Traceback" not in result.stderr


def test_status_and_reset_read_and_clear_the_shared_file(primary, secondary, tmp_path):
    state = str(tmp_path / "s.json")
    with FailoverSession([primary.url, secondary.url], state_file=state) as session:
        primary.set("refuse")
        session.get(primary.url + "/")
    result = run("status", "--state-file", state, primary.url, secondary.url)
    assert result.returncode == 0, result.stderr
    assert f"active:        {secondary.url}" in result.stdout
    assert "refused" in result.stdout.lower()
    document = json.loads(run("status", "--json", "--state-file", state, primary.url, secondary.url).stdout)
    assert document["active_backend"] == secondary.url and document["state_file"] == state
    result = run("reset", "--state-file", state, primary.url, secondary.url)
    assert result.returncode == 0 and state in result.stdout
    document = json.loads(run("status", "--json", "--state-file", state, primary.url, secondary.url).stdout)
    assert document["last_health_check"] is None and document["active_backend"] == primary.url


def test_status_uses_the_backend_sets_default_file(primary, secondary):
    with FailoverSession([primary.url, secondary.url]) as session:
        primary.set("refuse")
        session.get(primary.url + "/")
    document = json.loads(run("status", "--json", primary.url, secondary.url).stdout)
    assert document["active_backend"] == secondary.url


def test_status_rejects_an_unreadable_state_file(tmp_path):
    assert_usage_error(run("status", "--state-file", str(tmp_path), "https://a.example"))


@pytest.mark.parametrize("command", ["demo", "check", "status", "reset"])
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_demo_shows_failover_and_the_automatic_failback_and_exits_0():
    result = run("demo", "--requests", "5", "--interval", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "switched backend from" in out and "summary" in out
    assert "demo settings: healthy_threshold=1 (shortened from the default 2" in out
    assert "2 primary down  5         0       secondary x5" in out
    # the primary came back by the background probes: the switch back is theirs, before phase 3
    back = out.index("3. the primary comes back")
    assert " is healthy again" in out[back : out.index("3 primary back ")]
    assert "by the background probes alone: no force_refresh()" in out
    assert "force_refresh() ->" not in out
    assert "3 primary back  5         0       primary x5" in out


@pytest.mark.skipif(shutil.which("requests-failover") is None, reason="console script not installed (plain checkout)")
def test_console_script_is_installed():
    result = subprocess.run(["requests-failover", "--version"], capture_output=True, text=True, timeout=BOUND)
    assert result.returncode == 0 and "requests-failover" in result.stdout


def test_status_says_when_development_mode_replaces_the_urls(primary, secondary):
    result = run("status", "https://prod.example", env={"REQUESTS_FAILOVER_BACKENDS": secondary.url})
    assert result.returncode == 0, result.stderr
    assert "development mode" in result.stdout and secondary.url in result.stdout


# -- piped, escaped, consistent ---------------------------------------------------------------------

CLI = [sys.executable, "-m", "requests_failover"]


def test_status_watch_piped_into_head_ends_quietly(primary, secondary):
    """``status --watch | head -2``: head leaves after two lines, the watch ends without a word."""
    watch = subprocess.Popen(
        [*CLI, "status", "--watch", primary.url, secondary.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    head = subprocess.Popen(["head", "-2"], stdin=watch.stdout, stdout=subprocess.PIPE)
    assert watch.stdout is not None and watch.stderr is not None
    watch.stdout.close()  # head alone reads the pipe now
    lines = head.communicate(timeout=120)[0].decode().splitlines()
    assert watch.wait(120) == 141
    assert watch.stderr.read() == b""
    watch.stderr.close()
    assert len(lines) == 2 and lines[0].startswith("-- ") and lines[1].startswith("state file:")


def test_check_json_into_a_closed_pipe_ends_quietly(primary):
    """The reader is gone before the answer is written (as after ``| head -1`` has its line)."""
    primary.set(delay=0.5)  # the probe's answer comes well after the reader left
    check = subprocess.Popen([*CLI, "check", "--json", primary.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert check.stdout is not None
    check.stdout.close()
    _, stderr = check.communicate(timeout=120)
    assert (check.returncode, stderr) == (141, b"")


def test_the_demo_into_a_closed_pipe_ends_quietly():
    """Its log lines, written by the library's logger, meet the closed pipe first: no logging traceback."""
    demo = subprocess.Popen(
        [*CLI, "demo", "--requests", "3", "--interval", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert demo.stdout is not None
    demo.stdout.close()
    _, stderr = demo.communicate(timeout=120)
    assert (demo.returncode, stderr) == (141, b"")


def test_count_without_watch_is_a_usage_error(primary):
    result = run("status", "--count", "2", primary.url)
    assert_usage_error(result)
    assert result.stderr.strip() == "error: --count: only with --watch (it counts the redraws)"


def state_document(backends: List[str], checked_at: float, last_error: str) -> str:
    """A state file as a session writes it: the primary down with ``last_error``."""
    health = {
        backends[0]: {
            "consecutive_failures": 1,
            "down_until": 0.0,
            "failed_at": checked_at,
            "healthy": False,
            "hold_until": 0.0,
            "last_error": last_error,
            "last_latency_ms": 1.0,
            "level": 1,
            "probed_at": checked_at,
            "successes": 0,
        }
    }
    document = {
        "active": backends[1],
        "backends": backends,
        "checked_at": checked_at,
        "health": health,
        "probing_by": None,
        "probing_until": 0.0,
        "version": 1,
    }
    return json.dumps(document)


def test_status_escapes_control_characters_of_a_hostile_state_file(primary, secondary, tmp_path):
    state = tmp_path / "s.json"
    hostile = "refused\x1b]0;owned\x07\x1b[2J\r\nfake line"
    state.write_text(state_document([primary.url, secondary.url], time.time(), hostile))
    result = run("status", "--state-file", str(state), primary.url, secondary.url)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\r" not in result.stdout
    assert "refused\\x1b]0;owned\\x07\\x1b[2J\\r\\nfake line" in result.stdout
    assert not any(line.startswith("fake line") for line in result.stdout.splitlines())


def test_status_says_no_process_is_probing_once_a_probe_is_long_overdue(primary, secondary, tmp_path):
    state = tmp_path / "s.json"
    long_ago = time.time() - 3600  # stale for an hour: the probe fell due 55 minutes ago
    state.write_text(state_document([primary.url, secondary.url], long_ago, "refused"))
    result = run("status", "--state-file", str(state), primary.url, secondary.url)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(secondary.url)]
    assert len(rows) == 1 and "none: no process is probing" in rows[0]
    assert " 0 s " not in result.stdout
    assert "no process is probing: no process using these backends is running" in result.stdout


def test_check_says_plainly_when_a_backend_has_no_health_path(primary, secondary):
    primary.set(routes={"/health": 404, "/api/health": 404, "/status": 404})
    result = run("check", primary.url, secondary.url)
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[2].split()
    assert row[:4] == [primary.url, "yes", "(none)", "200"]
    assert (
        f"{primary.url} has no usable health path (/health, /api/health, /status answered 404/405): its base URL "
        "judges it, any answer below 500 counting as up. Set health_paths (--path) to a path it serves, or "
        "health_check."
    ) in result.stdout
    document = json.loads(run("check", "--json", primary.url, secondary.url).stdout)
    assert [b["health_endpoint"] for b in document["backends"]] == [False, True]


def test_status_with_a_state_file_reports_the_store_as_status_does(primary, secondary, valkey, tmp_path):
    state = str(tmp_path / "s.json")
    with FailoverSession([primary.url, secondary.url], state_file=state, state_store=valkey.url) as session:
        session.get(primary.url + "/")
    for extra in (["--state-file", state], []):
        result = run("status", *extra, "--state-url", valkey.url, primary.url, secondary.url)
        assert result.returncode == 0, result.stderr
        assert f"state store:   {valkey.url}, reachable" in result.stdout, extra
        document = json.loads(
            run("status", "--json", *extra, "--state-url", valkey.url, primary.url, secondary.url).stdout
        )
        assert document["state_store"] == {"location": valkey.url, "reachable": True, "last_error": None}


def test_status_says_which_backend_is_demoted_and_why(primary, secondary, tmp_path):
    state = tmp_path / "s.json"
    now = time.time()
    document = json.loads(state_document([primary.url, secondary.url], now, ""))
    document["active"] = primary.url
    document["health"] = {
        primary.url: {
            "healthy": True,
            "demoted_until": now + 120,
            "demotion_level": 1,
            "demotion_reason": "3 slow answers in a row (2.0 s)\x1b[2J",
        }
    }
    state.write_text(json.dumps(document))
    result = run("status", "--state-file", str(state), primary.url, secondary.url)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if line.startswith("demoted:")]
    assert len(notes) == 1, result.stdout
    assert notes[0].startswith(f"demoted:       {primary.url} for 1")  # 119 or 120 s more
    assert notes[0].endswith(": 3 slow answers in a row (2.0 s)\\x1b[2J")
