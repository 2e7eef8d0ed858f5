"""The command line, run as a real subprocess against loopback servers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import List

import pytest

from requests_failover import FailoverSession


def run(*args: str, env_extra: dict = {}) -> subprocess.CompletedProcess:  # noqa: B006 - read only
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "requests_failover", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


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


def test_demo_shows_failover_and_failback_and_exits_0():
    result = run("demo", "--requests", "5", "--interval", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "switched backend from" in out and "summary" in out
    assert "2 primary down  5         0       secondary x5" in out
    assert "force_refresh() -> primary" in out


@pytest.mark.skipif(shutil.which("requests-failover") is None, reason="console script not installed (plain checkout)")
def test_console_script_is_installed():
    result = subprocess.run(["requests-failover", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "requests-failover" in result.stdout


def test_status_says_when_development_mode_replaces_the_urls(primary, secondary):
    result = run("status", "https://prod.example", env_extra={"REQUESTS_FAILOVER_BACKENDS": secondary.url})
    assert result.returncode == 0, result.stderr
    assert "development mode" in result.stdout and secondary.url in result.stdout
