"""Dispatch's Prometheus metrics, registered next to the server's own in one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from protocol.dispatch import RunState

__all__ = ["DispatchMetrics"]


class DispatchMetrics:
    """Runs queued and running, steps per second, runs by outcome, worker crashes, uploads.

    Args:
        registry: the registry the server's `/metrics` exposes.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self._queued = Gauge("allotment_runs_queued", "Runs waiting for a worker.", registry=r)
        self._running = Gauge("allotment_runs_running", "Runs on a worker now.", registry=r)
        self._steps_per_s = Gauge(
            "allotment_run_steps_per_second",
            "Timesteps per second of all running runs together, at their last progress.",
            registry=r,
        )
        self._runs = Counter(
            "allotment_runs",
            "Runs ended, by outcome (done, failed, stopped).",
            ["outcome"],
            registry=r,
        )
        self._crashes = Counter(
            "allotment_worker_crashes",
            "Worker processes that ended during a run or unasked (not stopped by the server).",
            registry=r,
        )
        self._upload_bytes = Counter(
            "allotment_image_upload_bytes", "Image bytes received and accepted.", registry=r
        )

    def __repr__(self) -> str:
        return "<DispatchMetrics>"

    def set_runs(self, n_queued: int, n_running: int) -> None:
        """Set how many runs wait and run."""
        self._queued.set(n_queued)
        self._running.set(n_running)

    def set_steps_per_s(self, steps_per_s: float) -> None:
        """Set the timesteps per second of all running runs."""
        self._steps_per_s.set(steps_per_s)

    def run_ended(self, state: RunState) -> None:
        """Count a run that ended."""
        self._runs.labels(state.value).inc()

    def worker_crashed(self) -> None:
        """Count a worker process that ended without being asked to."""
        self._crashes.inc()

    def image_accepted(self, n_bytes: int) -> None:
        """Count the bytes of an accepted image."""
        self._upload_bytes.inc(n_bytes)
