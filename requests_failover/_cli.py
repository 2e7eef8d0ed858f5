"""The ``requests-failover`` command line: a thin layer over the public API.

Exit codes: 0 ok, 1 no healthy backend (``check``), 2 bad usage or input,
141 when the reader of the output went away (``| head``), quietly, as git does.
Strings read from a state file or a store are printed with control
characters escaped: a hostile file cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import requests

from . import __version__
from . import _redact as redact
from ._config import DEFAULT_HEALTH_PATHS, ENV_STATE_URL, build_options
from ._fleet import ENV_STATE_PASSWORD
from ._health import lacks_health_endpoint, probe
from ._state import decode, namespace
from .adapter import FailoverAdapter
from .session import FailoverSession
from .store import RedisStore, _import_redis, check_url

if TYPE_CHECKING:
    from .testing import LoopbackBackend


class UsageError(Exception):
    """Bad input: one line on stderr, exit 2."""


#: Exit status after the reader of stdout went away: 128 + SIGPIPE, what git and ls end with.
EXIT_PIPE = 141
#: Seconds past a backend's due probe before ``status`` says no process is probing it.
OVERDUE_AFTER = 5.0


def _printable(text: object) -> str:
    """``text`` with every non-printable character escaped as Python would (``\\x1b``, ``\\n``)."""
    value = str(text)
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def _table(rows: List[List[str]], header: List[str]) -> str:
    rows = [[_printable(cell) for cell in row] for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _validated(urls: Sequence[str], allow_insecure: bool) -> None:
    try:
        build_options(list(urls), allow_insecure=allow_insecure, environ={})
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


# -- check ------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    _validated(args.urls, args.allow_insecure)
    try:
        options = build_options(
            args.urls,
            health_paths=args.path or DEFAULT_HEALTH_PATHS,
            health_timeout=args.timeout,
            allow_insecure=args.allow_insecure,
            environ={},
        )
    except (TypeError, ValueError) as exc:  # the argument types below catch these first
        raise UsageError(str(exc)) from None
    url = _state_url(args)
    sender = requests.adapters.HTTPAdapter()
    results = [probe(b, options.health_paths, options.health_timeout, sender.send) for b in options.targets]
    sender.close()
    active = next((r.url for r in results if r.healthy), None)
    store = None if url is None else _fleet_view(url, tuple(b.url for b in options.targets))
    missing = [r for r in results if lacks_health_endpoint(r)]
    if args.json:
        backends = [{**r.__dict__, "health_endpoint": not lacks_health_endpoint(r)} for r in results]
        document: Dict[str, Any] = {"active_backend": active, "backends": backends}
        if store is not None:
            document["state_store"] = store
        print(json.dumps(document, indent=2))
    else:
        rows = [
            [
                r.url,
                "yes" if r.healthy else "no",
                ("(none)" if lacks_health_endpoint(r) else r.path) or "-",
                str(r.status) if r.status is not None else "-",
                f"{r.latency_ms:.1f}" if r.latency_ms is not None else "-",
                r.error or "",
            ]
            for r in results
        ]
        print(_table(rows, ["backend", "healthy", "path", "status", "latency_ms", "error"]))
        for r in missing:
            print(f"\n{_no_endpoint_note(r.url, ', '.join(options.health_paths))}")
        print(f"\nactive: {active}" if active else "\nactive: none (no backend is healthy)")
        if store is not None:
            print(f"state store: {_store_text(store)}; the fleet's selection: {store['active_backend']}")
    return 0 if active else 1


def _no_endpoint_note(url: str, paths: str = "") -> str:
    asked = f" ({paths} answered 404/405)" if paths else " (every health path answered 404/405)"
    return (
        f"{url} has no usable health path{asked}: its base URL judges it, any answer below 500 counting "
        "as up. Set health_paths (--path) to a path it serves, or health_check."
    )


# -- status / reset -----------------------------------------------------------------------
def _adapter(args: argparse.Namespace) -> FailoverAdapter:
    _validated(args.urls, args.allow_insecure)
    if args.state_file:
        path = args.state_file
        if os.path.isdir(path):
            raise UsageError(f"--state-file: {path} is a directory")
        if os.path.exists(path) and not os.access(path, os.R_OK):
            raise UsageError(f"--state-file: {path} is not readable")
    return FailoverAdapter(
        args.urls,
        state_file=args.state_file or None,
        allow_insecure=args.allow_insecure,
        state_store=_state_url(args),
    )


def _state_url(args: argparse.Namespace) -> Optional[str]:
    """``--state-url``, else the environment's; a usage error names the one at fault."""
    url = args.state_url or os.environ.get(ENV_STATE_URL, "").strip() or None
    if url is not None:
        try:
            check_url(url, "--state-url" if args.state_url else ENV_STATE_URL)
            _import_redis()
        except (ValueError, ImportError) as exc:
            raise UsageError(str(exc)) from None
    return url


def _fleet_view(url: str, backends: Tuple[str, ...]) -> Dict[str, Any]:
    """What the shared store holds for this backend set, and whether it answers."""
    store = RedisStore.from_url(url, password=os.environ.get(ENV_STATE_PASSWORD) or None)
    view: Dict[str, Any] = {"location": store.location, "reachable": True, "last_error": None, "active_backend": None}
    try:
        raw = store.get(namespace(backends))
    except Exception as exc:  # unreachable, refused credentials: reported, not raised
        view.update(reachable=False, last_error=redact.text(store.describe(exc)))  # the missing-password hint too
    else:
        try:
            view["active_backend"] = decode(raw, backends, time.time()).current() if raw else None
        except ValueError as exc:
            view["last_error"] = f"ignoring the stored selection: {exc}"
    finally:
        store.close()
    return view


def _store_text(store: Any) -> str:
    if store is None:
        return "none (the state file alone)"
    reachable = {True: "reachable", False: "NOT reachable", None: "not contacted yet"}[store["reachable"]]
    error = f" ({store['last_error']})" if store["last_error"] else ""
    return _printable(f"{store['location']}, {reachable}{error}")


def _next_probe(backend: Any, status: Any, now: float) -> str:
    """When the backend is probed next; past due for long, nobody is probing it."""
    at = backend["next_probe_at"]
    if at is None:
        return "-"
    if at > now:
        return f"{at - now:.0f} s"
    if status["health_checking"]:
        return "probing now"
    if now - at < OVERDUE_AFTER:
        return "due now"
    return "none: no process is probing"


def _gray_notes(backend: Any, now: float) -> List[str]:
    """Lines for a backend demoted for slowness, or taking requests back gradually (slow start)."""
    notes = []
    until = backend.get("demoted_until")
    if until is not None and until > now:
        reason = _printable(backend.get("demotion_reason") or "slow answers")
        notes.append(f"demoted:       {backend['url']} for {until - now:.0f} s more: {reason}")
    share = backend.get("slow_start_share")
    if share is not None:
        notes.append(f"slow start:    {backend['url']} takes {share:.0%} of requests, ramping up")
    return notes


def _status_text(status: Any) -> str:
    checked = status["last_health_check"]
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(checked)) if checked else "never"
    lines = []
    if status["development_mode"]:
        lines.append("development mode: REQUESTS_FAILOVER_BACKENDS replaces the URLs given")
    lines.append(f"state file:    {status['state_file']}")
    if status.get("state_store") is not None:
        lines.append(f"state store:   {_store_text(status['state_store'])}")
    lines.append(f"active:        {status['active_backend']}")
    lines.append(f"last checked:  {when} ({'fresh' if status['cache_valid'] else 'stale'})")
    now = time.time()
    rows = [
        [
            b["url"],
            {True: "yes", False: "no", None: "unknown"}[b["healthy"]],
            str(b["consecutive_failures"]),
            f"{b['last_latency_ms']:.1f}" if b["last_latency_ms"] is not None else "-",
            _next_probe(b, status, now),
            b["last_error"] or "",
        ]
        for b in status["backends"]
    ]
    lines.append("")
    lines.append(_table(rows, ["backend", "healthy", "failures", "latency_ms", "next_probe", "last_error"]))
    for b in status["backends"]:
        if b.get("health_endpoint") is False:
            lines.append(_no_endpoint_note(b["url"]))
        lines.extend(_gray_notes(b, now))
    if any(_next_probe(b, status, now).startswith("none") for b in status["backends"]):
        lines.append(
            "no process is probing: no process using these backends is running (or none has made a request "
            "since the probe fell due); the selection is refreshed by the processes that use it"
        )
    return "\n".join(lines)


def _status(adapter: FailoverAdapter, args: argparse.Namespace) -> Dict[str, Any]:
    """The adapter's status, with the store asked directly (the local file may have spared the adapter asking)."""
    status: Dict[str, Any] = dict(adapter.status())
    url = _state_url(args)
    if url is not None and status.get("state_store") is not None:
        view = _fleet_view(url, tuple(b["url"] for b in status["backends"]))
        status["state_store"] = {
            "location": view["location"],
            "reachable": view["reachable"],
            "last_error": view["last_error"],
        }
    return status


def cmd_status(args: argparse.Namespace) -> int:
    if args.count is not None and not args.watch:
        raise UsageError("--count: only with --watch (it counts the redraws)")
    adapter = _adapter(args)
    if args.json:
        print(json.dumps(_status(adapter, args), indent=2))
        return 0
    if not args.watch:
        print(_status_text(_status(adapter, args)))
        return 0
    terminal = sys.stdout.isatty()
    drawn = 0
    try:
        while args.count is None or drawn < args.count:
            text = _status_text(_status(adapter, args))
            stamp = time.strftime("%H:%M:%S")
            if terminal:  # redraw in place, like watch(1)
                sys.stdout.write(f"\x1b[H\x1b[2Jevery 1 s, {stamp} (Ctrl-C to stop)\n\n{text}\n")
            else:
                sys.stdout.write(f"-- {stamp}\n{text}\n\n")
            sys.stdout.flush()
            drawn += 1
            if args.count is None or drawn < args.count:
                time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    adapter = _adapter(args)
    adapter.clear_cache()
    status = adapter.status()
    where = status["state_file"] if status["state_store"] is None else status["state_store"]["location"]
    print(f"cleared the selection in {where}")
    adapter.close()
    return 0 if status["state_store"] is None or status["state_store"]["reachable"] else 1


# -- demo ------------------------------------------------------------------------------------
class _DemoLog(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in typeshed
    """The demo's log lines, on stdout between its own lines."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            return  # the reader left: the demo's next print ends it quietly (main)
        super().handleError(record)


#: The demo's only departures from the defaults (printed when it starts).
DEMO_HEALTHY_THRESHOLD = 1
DEMO_CACHE_TTL = 3600.0
DEMO_SLOW_START = 0.0
#: Seconds the demo waits at most for the failback (the documented bound is about 32 s).
DEMO_FAILBACK_BOUND = 40.0


def cmd_demo(args: argparse.Namespace) -> int:
    """Two loopback backends, a stream of requests, an outage, an automatic failback."""
    from .testing import LoopbackBackend  # only the demo needs servers

    log = logging.getLogger("requests_failover")
    handler = _DemoLog(sys.stdout)
    handler.setFormatter(logging.Formatter("        [log] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    demo = _Demo(args.requests, args.interval)
    try:
        with LoopbackBackend("primary") as primary, LoopbackBackend("secondary") as secondary:
            session = demo.setup(primary.url, secondary.url)
            with session:
                demo.outage(session, primary)
                if not demo.failback(session, primary):
                    return 1
    finally:
        log.removeHandler(handler)
    return demo.summary()


class _Demo:
    """One run of the demo, phase by phase: each phase sends a burst of requests
    and keeps what it measured (the time of each request, who served it, the failures)."""

    def __init__(self, count: int, interval: float) -> None:
        self.count, self.interval = count, interval
        self.times: Dict[str, List[float]] = {}
        self.served: Dict[str, Dict[str, int]] = {}
        self.failed: Dict[str, int] = {}

    def setup(self, primary: str, secondary: str) -> FailoverSession:
        """Setup: print the two backends and the demo's departures from the defaults; the session over them."""
        print(f"primary   {primary}\nsecondary {secondary}\n")
        print(
            f"demo settings: healthy_threshold={DEMO_HEALTHY_THRESHOLD} (shortened from the default 2: one "
            "healthy failback probe takes the primary back, not two 1 s apart); "
            f"cache_ttl={DEMO_CACHE_TTL:.0f} (lengthened from 300, so the failback below is the background "
            "probes' doing, not a cache expiring); "
            f"slow_start={DEMO_SLOW_START:g} (from 20 s: the primary takes every request back at once, not a "
            "share ramping from 10 %). Everything else is at its default.\n"
        )
        return FailoverSession(
            [primary, secondary],
            state_file=False,
            healthy_threshold=DEMO_HEALTHY_THRESHOLD,
            cache_ttl=DEMO_CACHE_TTL,
            slow_start=DEMO_SLOW_START,
        )

    def outage(self, session: FailoverSession, primary: LoopbackBackend) -> None:
        """Outage: a burst with both backends up (the primary serves), then one with the primary refusing."""
        print("1. both backends up: requests go to the primary")
        self._burst(session, primary.url, "1 primary up")
        print("\n2. the primary dies (connections refused)")
        primary.set("refuse")
        self._burst(session, primary.url, "2 primary down")

    def failback(self, session: FailoverSession, primary: LoopbackBackend) -> bool:
        """Failback: the primary comes back; traffic goes on until the background probes alone take it
        back (at most :data:`DEMO_FAILBACK_BOUND` seconds), then a last burst. False: no failback in time."""
        print("\n3. the primary comes back; the background failback probes take it back (no force_refresh)")
        primary.set("up")
        back = time.monotonic()
        waiting = 0
        while session.active_backend != primary.url and time.monotonic() - back < DEMO_FAILBACK_BOUND:
            try:  # traffic goes on meanwhile, served by the secondary
                session.get(primary.url + "/api/items/wait", timeout=(1, 2))
            except requests.RequestException:
                pass  # counted in no phase: the phases below show the failures
            waiting += 1
            time.sleep(0.05)
        took = time.monotonic() - back
        if session.active_backend != primary.url:
            print(f"  no failback within {DEMO_FAILBACK_BOUND:.0f} s: see docs/troubleshooting.rst")
            return False
        print(
            f"  failback after {took:.1f} s ({waiting} requests sent meanwhile), "
            "by the background probes alone: no force_refresh()"
        )
        self._burst(session, primary.url, "3 primary back")
        return True

    def summary(self) -> int:
        """Summary: a table of the phases and the cost of the outage; the exit status (1: a request failed)."""
        rows = []
        for phase, times in self.times.items():
            who = ", ".join(f"{k} x{v}" for k, v in self.served[phase].items())
            row = [phase, str(len(times)), str(self.failed[phase]), who]
            rows.append([*row, f"{statistics.median(times):.1f}", f"{max(times):.1f}"])
        print("\nsummary")
        print(_table(rows, ["phase", "requests", "failed", "served by", "median_ms", "max_ms"]))
        outage = self.times["2 primary down"]
        failed = sum(self.failed.values())
        print(
            f"\ncost of the outage: {failed} failed requests; the first request after it took "
            f"{outage[0]:.1f} ms, {outage[0] - statistics.median(outage):.1f} ms more than the median."
        )
        return 0 if failed == 0 else 1

    def _burst(self, session: FailoverSession, base: str, phase: str) -> None:
        """Send the phase's requests one by one, ``interval`` apart; print the first three and the last."""
        times: List[float] = []
        served: Dict[str, int] = {}
        self.times[phase], self.served[phase], self.failed[phase] = times, served, 0
        for i in range(self.count):
            started = time.perf_counter()
            try:
                who = session.get(base + f"/api/items/{i}", timeout=(1, 2)).json()["server"]
            except requests.RequestException as exc:
                self.failed[phase] += 1
                who = f"FAILED {type(exc).__name__}"
            ms = (time.perf_counter() - started) * 1000
            times.append(ms)
            served[who] = served.get(who, 0) + 1
            if i < 3 or i == self.count - 1:
                print(f"  {phase:<22} GET /api/items/{i:<3} -> {who:<10} {ms:7.1f} ms")
            elif i == 3:
                print(f"  {phase:<22} ...")
            time.sleep(self.interval)


# -- entry point -------------------------------------------------------------------------------
def _seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _pause(text: str) -> float:
    """A finite number of seconds >= 0."""
    if text.strip() in ("0", "0.0"):
        return 0.0
    return _seconds(text)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def _health_path(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in " \r\n#"):
        raise argparse.ArgumentTypeError(f"must be an absolute path such as /health, got {text!r}")
    return text


def _state_file(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must be a path")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="requests-failover", description="Failover for requests: demo and diagnostics.")
    parser.add_argument("--version", action="version", version=f"requests-failover {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log probes (DEBUG) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", help="show a failover and a failback between two local backends")
    demo.add_argument("--requests", type=_count, default=10, help="requests per phase (default 10)")
    demo.add_argument("--interval", type=_pause, default=0.02, help="seconds between requests (default 0.02)")
    demo.set_defaults(func=cmd_demo)

    def backends(p: argparse.ArgumentParser) -> None:
        p.add_argument("urls", nargs="+", metavar="URL", help="backend base URLs, in priority order")
        p.add_argument("--allow-insecure", action="store_true", help="accept http:// on non-loopback hosts")
        p.add_argument("--json", action="store_true", help="print JSON for machines")

    def state_url(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-url",
            metavar="URL",
            help=f"the fleet's store, redis:// or rediss:// (default: ${ENV_STATE_URL}, else none)",
        )

    check = sub.add_parser("check", help="probe each backend and show which would be active")
    backends(check)
    check.add_argument("--timeout", type=_seconds, default=3.0, help="seconds per probe (default 3)")
    check.add_argument(
        "--path", type=_health_path, action="append", help="health path (repeatable; default the three standard)"
    )
    state_url(check)
    check.set_defaults(func=cmd_check)

    for name, func, text in (
        ("status", cmd_status, "print the shared selection and each backend's health"),
        ("reset", cmd_reset, "clear the shared selection"),
    ):
        p = sub.add_parser(name, help=text)
        backends(p)
        p.add_argument(
            "--state-file", metavar="F", type=_state_file, help="the state file (default: the backend set's own)"
        )
        state_url(p)
        if name == "status":
            p.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
            p.add_argument("--count", type=_count, help="with --watch: stop after N redraws")
        p.set_defaults(func=func)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.verbose:
            logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # The reader went away (``| head -1``): end quietly, as git does. Point stdout
        # at /dev/null so the interpreter's last flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
