"""Ready-made observers for Prometheus and OpenTelemetry.

Pass one in ``observers=[...]``; each needs its optional extra:
``pip install requests-failover[prometheus]`` (``prometheus_client``) or
``requests-failover[otel]`` (``opentelemetry-api``; an SDK or a distro
decides where the numbers go). What they measure (Prometheus name; the
OpenTelemetry name has dots, e.g. ``requests_failover.attempt.duration``):

- ``requests_failover_attempts_total`` {backend, outcome}: error rate per
  backend, user impact (``outcome="failed"``);
- ``requests_failover_switches_total`` {previous, current}: failover frequency;
- ``requests_failover_attempt_duration_seconds`` {backend}: a histogram;
- ``requests_failover_probe_duration_seconds`` {backend, healthy}: health-check
  durations;
- ``requests_failover_active_backend`` {backend}: 1 for the backend requests
  go to, 0 for the others;
- ``requests_failover_backend_down`` {backend}: 1 while a backend is marked down.

The gauges reflect the events this process saw (its own requests and probes,
and switches it noticed in the shared state).

Several ``PrometheusObserver`` objects on one registry (a session per
service, each with its own observer) share one set of metrics: the
``backend`` label tells the services apart. Only another collector already
holding one of these names is an error, which says to pass ``namespace=``.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Dict, Iterable, Optional, Tuple

from .events import AttemptEvent, Event, ProbeEvent, SwitchEvent

__all__ = ["OpenTelemetryObserver", "PrometheusObserver"]

#: Buckets (seconds) for attempt and probe durations: loopback to a slow health timeout.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Gauges:
    """Which backend is active and which are down, as this process has seen it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active: Optional[str] = None
        self.down: Dict[str, bool] = {}

    def changes(self, event: AttemptEvent) -> bool:
        """Whether a successful attempt would change a gauge (a fast, lock-free check)."""
        return self.active is None or self.down.get(event.backend) is not False

    def see(self, event: Event) -> Tuple[Optional[str], Optional[Tuple[str, bool]]]:
        """Apply ``event``; return (new active backend or None, (backend, down) changed or None)."""
        with self._lock:
            active: Optional[str] = None
            if isinstance(event, SwitchEvent):
                self.active = active = event.current
                return active, None
            if isinstance(event, AttemptEvent):
                if event.outcome in ("raised", "abandoned"):  # not the backend's fault; a lost hedge is slow, not down
                    return None, None
                down = event.outcome != "success" or (event.status_code or 0) in (500, 502, 503, 504)
                if not down and self.active is None and not event.failover:
                    self.active = active = event.backend
            elif isinstance(event, ProbeEvent):
                down = not event.healthy
            else:  # a DemotionEvent: a demoted backend is slow, not down
                return None, None
            changed = self.down.get(event.backend) != down
            self.down[event.backend] = down
            return active, ((event.backend, down) if changed else None)


class _PrometheusMetrics:
    """The six metrics of one namespace in one registry: built once, shared by its observers."""

    def __init__(self, prometheus_client: Any, registry: Any, namespace: str) -> None:
        kw: Dict[str, Any] = {"namespace": namespace, "registry": registry}
        self.attempts = prometheus_client.Counter(
            "attempts", "Attempts of requests to a backend, by outcome", ["backend", "outcome"], **kw
        )
        self.switches = prometheus_client.Counter(
            "switches", "Changes of the active backend", ["previous", "current"], **kw
        )
        self.attempt_duration = prometheus_client.Histogram(
            "attempt_duration_seconds", "Duration of one attempt", ["backend"], buckets=DURATION_BUCKETS, **kw
        )
        self.probe_duration = prometheus_client.Histogram(
            "probe_duration_seconds",
            "Duration of one health probe",
            ["backend", "healthy"],
            buckets=DURATION_BUCKETS,
            **kw,
        )
        self.active = prometheus_client.Gauge(
            "active_backend", "1 for the backend requests go to", ["backend"], multiprocess_mode="livemax", **kw
        )
        self.down = prometheus_client.Gauge(
            "backend_down", "1 while the backend is marked down", ["backend"], multiprocess_mode="livemax", **kw
        )


# registry -> namespace -> its metrics; weak, so a registry dropped by a test leaves nothing behind
_shared: weakref.WeakKeyDictionary[Any, Dict[str, _PrometheusMetrics]] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def _metrics_for(prometheus_client: Any, registry: Any, namespace: str) -> _PrometheusMetrics:
    """The metrics of ``namespace`` in ``registry``, registered by the first observer, shared by the next."""
    with _shared_lock:
        by_namespace = _shared.setdefault(registry, {})
        metrics = by_namespace.get(namespace)
        if metrics is None:
            try:
                metrics = _PrometheusMetrics(prometheus_client, registry, namespace)
            except ValueError as exc:  # prometheus_client: "Duplicated timeseries in CollectorRegistry"
                raise ValueError(
                    f"PrometheusObserver: metrics named {namespace}_* are already registered in this registry "
                    f"by another collector ({exc}); pass namespace='...' for another prefix, or registry=..."
                ) from None
            by_namespace[namespace] = metrics
        return metrics


class PrometheusObserver:
    """An observer recording into ``prometheus_client`` metrics.

    :param registry: where to register (default: ``prometheus_client.REGISTRY``).
    :param namespace: the metric name prefix.

    Under gunicorn with several workers use prometheus_client's multiprocess
    mode (``PROMETHEUS_MULTIPROC_DIR``): counters and histograms add up across
    workers; the two gauges use the ``livemax`` mode (a backend counts as
    active/down if it is for any live worker).

    A second observer with the same registry and namespace (another session,
    another service) records into the same metrics, told apart by their
    ``backend`` labels; prometheus_client allows each name once per registry.
    """

    def __init__(self, registry: Any = None, *, namespace: str = "requests_failover") -> None:
        try:
            import prometheus_client
        except ImportError:  # pragma: no cover - the extra is installed in the tests
            raise ImportError(
                "PrometheusObserver needs prometheus_client: pip install requests-failover[prometheus]"
            ) from None
        if not isinstance(namespace, str) or not namespace.replace("_", "").isalnum():
            raise ValueError(f"namespace: letters, digits and underscores, got {namespace!r}")
        registry = prometheus_client.REGISTRY if registry is None else registry
        metrics = _metrics_for(prometheus_client, registry, namespace)
        self.attempts = metrics.attempts
        self.switches = metrics.switches
        self.attempt_duration = metrics.attempt_duration
        self.probe_duration = metrics.probe_duration
        self.active = metrics.active
        self.down = metrics.down
        self._gauges = _Gauges()
        self._children: Dict[Tuple[str, str], Tuple[Any, Any]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptEvent):
            key = (event.backend, event.outcome)
            children = self._children.get(key)
            if children is None:  # labels() takes a lock and builds a key: once per backend and outcome
                children = (self.attempts.labels(*key), self.attempt_duration.labels(event.backend))
                self._children[key] = children
            children[0].inc()
            children[1].observe(event.duration)
            if event.outcome == "success" and not self._gauges.changes(event):
                return  # the steady state: nothing else to record
        elif isinstance(event, ProbeEvent):
            if event.duration is not None:
                self.probe_duration.labels(event.backend, str(event.healthy).lower()).observe(event.duration)
        elif isinstance(event, SwitchEvent):
            self.switches.labels(event.previous, event.current).inc()
            self.active.labels(event.previous).set(0)
        active, down = self._gauges.see(event)
        if active is not None:
            self.active.labels(active).set(1)
        if down is not None:
            self.down.labels(down[0]).set(1 if down[1] else 0)


class OpenTelemetryObserver:
    """An observer recording through the OpenTelemetry metrics API.

    :param meter_provider: default: the global one
        (``opentelemetry.metrics.get_meter_provider()``).
    """

    def __init__(self, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError:  # pragma: no cover - the extra is installed in the tests
            raise ImportError(
                "OpenTelemetryObserver needs opentelemetry-api: pip install requests-failover[otel]"
            ) from None
        from . import __version__

        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        meter = provider.get_meter("requests_failover", __version__)
        self.attempts = meter.create_counter(
            "requests_failover.attempts", unit="{attempt}", description="Attempts of requests to a backend"
        )
        self.switches = meter.create_counter(
            "requests_failover.switches", unit="{switch}", description="Changes of the active backend"
        )
        self.attempt_duration = meter.create_histogram(
            "requests_failover.attempt.duration", unit="s", description="Duration of one attempt"
        )
        self.probe_duration = meter.create_histogram(
            "requests_failover.probe.duration", unit="s", description="Duration of one health probe"
        )
        self._gauges = _Gauges()
        self._metrics = metrics
        meter.create_observable_gauge(
            "requests_failover.active_backend",
            callbacks=[self._observe_active],
            description="1 for the backend requests go to",
        )
        meter.create_observable_gauge(
            "requests_failover.backend.down", callbacks=[self._observe_down], description="1 while marked down"
        )

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptEvent):
            attributes = {"backend": event.backend, "outcome": event.outcome}
            self.attempts.add(1, attributes)
            self.attempt_duration.record(event.duration, {"backend": event.backend})
        elif isinstance(event, ProbeEvent):
            if event.duration is not None:
                self.probe_duration.record(event.duration, {"backend": event.backend, "healthy": event.healthy})
        elif isinstance(event, SwitchEvent):
            self.switches.add(1, {"previous": event.previous, "current": event.current})
        self._gauges.see(event)

    def _observe_active(self, options: Any) -> Iterable[Any]:
        gauges = self._gauges
        backends = set(gauges.down) | ({gauges.active} if gauges.active else set())
        return [self._metrics.Observation(1 if b == gauges.active else 0, {"backend": b}) for b in sorted(backends)]

    def _observe_down(self, options: Any) -> Iterable[Any]:
        return [self._metrics.Observation(int(d), {"backend": b}) for b, d in sorted(self._gauges.down.items())]
