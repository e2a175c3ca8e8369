"""PyNN's procedural API (create, connect, record) over this backend's classes."""

from __future__ import annotations

from typing import Any

from pyNN import common
from pyNN.connectors import FixedProbabilityConnector

from toolchain.pynn import simulator
from toolchain.pynn.populations import Population
from toolchain.pynn.projections import Projection
from toolchain.pynn.standardmodels import StaticSynapse

__all__ = ["connect", "create", "record", "record_gsyn", "record_v"]

create = common.build_create(Population)
connect = common.build_connect(Projection, FixedProbabilityConnector, StaticSynapse)
record = common.build_record(simulator)


def record_v(source: Any, filename: str) -> Any:
    """Record the membrane potential of ``source`` into ``filename`` at end()."""
    return record(["v"], source, filename)


def record_gsyn(source: Any, filename: str) -> Any:
    """Record the synaptic inputs of ``source`` into ``filename`` at end()."""
    return record(["gsyn_exc", "gsyn_inh"], source, filename)
