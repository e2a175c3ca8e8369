"""Attaching dispatch to the service: its commands, its change listener, its view of jobs.

The one place that knows which service methods dispatch uses; a service cut differently
needs only this module changed::

    dispatch = attach(service, config.dispatch, registry=metrics.registry, publisher=...)
    ...  run `dispatch.run()` in the server's task group once the service has restored
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from allocator.dispatch.commands import DispatchCommands, RunPublisher
from allocator.dispatch.metrics import DispatchMetrics
from allocator.dispatch.settings import DispatchSettings
from allocator.jobs import JobRecord
from allocator.machine import Machine
from allocator.service import Service
from machine_models.geometry import BoardXYZ, Link
from protocol.dispatch import DISPATCH_SPECS

__all__ = ["ServiceJobs", "attach"]


class ServiceJobs:
    """`JobDirectory` over the service: job records, machines and out-of-service links."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def __repr__(self) -> str:
        return f"<ServiceJobs {self._service!r}>"

    def job_record(self, job_id: int) -> JobRecord | None:
        return self._service.job_record(job_id)

    def machine(self, name: str) -> Machine | None:
        return self._service.machines.get(name)

    def out_of_service_links(self, machine_name: str) -> list[tuple[BoardXYZ, Link]]:
        return self._service.state.out_of_service_links(machine_name)


def attach(
    service: Service,
    settings: DispatchSettings,
    *,
    registry: CollectorRegistry | None = None,
    publisher: RunPublisher | None = None,
) -> DispatchCommands:
    """Build the dispatch command family and register its commands and listener.

    Args:
        service: the service whose jobs the images run for.
        settings: the ``[dispatch]`` table.
        registry: the Prometheus registry to add dispatch's metrics to.
        publisher: where run events go (MQTT).
    """
    dispatch = DispatchCommands(
        settings,
        ServiceJobs(service),
        observer=None if registry is None else DispatchMetrics(registry),
        publisher=publisher,
    )
    service.add_family("dispatch", DISPATCH_SPECS, dispatch.handlers())
    service.add_listener(dispatch.on_jobs_changed)
    service.state.add_job_listener(dispatch)
    return dispatch
