"""The job-runner side: describe a network, map it onto an allocation, write its image.

Typical use::

    net = Network(dt_ms=0.1, seed=1)
    cells = net.population(100, IFCurrExp(), "cells")
    drive = net.population(100, SpikeSourcePoisson(rate=50.0), "drive")
    net.project(drive, cells, OneToOne(), StaticSynapse(weight=0.5, delay=1.0))
    mapped = map_network(net, virtual_allocation(1))
    results = Executor(mapped.image, mapped.topology).run(1000)

On an allotment server instead (``toolchain.remote``)::

    mapped, results = run_on_server(net, 1000, host="localhost", port=22244, owner="me")
"""

from toolchain.allocation import allocation_from_machine_info, virtual_allocation
from toolchain.build import MappedNetwork, map_network
from toolchain.errors import (
    AllocationError,
    KeySpaceError,
    NetworkError,
    PlacementError,
    RemoteError,
    RemoteRunError,
    ResourceError,
    RoutingError,
    RoutingTableFullError,
    ToolchainError,
)
from toolchain.network import (
    AllToAll,
    FixedNumberPre,
    FixedProbability,
    FromArrays,
    FromList,
    IFCondExp,
    IFCurrAlpha,
    IFCurrDelta,
    IFCurrExp,
    Izhikevich,
    IzhikevichCond,
    Network,
    OneToOne,
    Population,
    Projection,
    SpikeSourceArray,
    SpikeSourcePoisson,
    StaticSynapse,
    StdpSynapse,
)
from toolchain.splitting import MappingConfig

__all__ = [
    "AllToAll",
    "AllocationError",
    "FixedNumberPre",
    "FixedProbability",
    "FromArrays",
    "FromList",
    "IFCondExp",
    "IFCurrAlpha",
    "IFCurrDelta",
    "IFCurrExp",
    "Izhikevich",
    "IzhikevichCond",
    "KeySpaceError",
    "MappedNetwork",
    "MappingConfig",
    "Network",
    "NetworkError",
    "OneToOne",
    "PlacementError",
    "Population",
    "Projection",
    "RemoteError",
    "RemoteRunError",
    "ResourceError",
    "RoutingError",
    "RoutingTableFullError",
    "SpikeSourceArray",
    "SpikeSourcePoisson",
    "StaticSynapse",
    "StdpSynapse",
    "ToolchainError",
    "allocation_from_machine_info",
    "map_network",
    "virtual_allocation",
]
