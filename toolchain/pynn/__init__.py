"""PyNN backend for allotment: scripts written for sPyNNaker run with their import changed.

::

    import allotment.pynn as sim          # or, in a batch job, import pyNN.spiNNaker

    sim.setup(timestep=1.0)
    cell = sim.Population(1, sim.IF_curr_exp(), label="cell")
    stim = sim.Population(1, sim.SpikeSourceArray(spike_times=[0, 10]), label="input")
    sim.Projection(stim, cell, sim.OneToOneConnector(), sim.StaticSynapse(weight=5, delay=1))
    cell.record(["spikes", "v"])
    sim.run(100)
    block = cell.get_data()              # a neo Block
    sim.end()

Built on :mod:`pyNN.common` as PyNN's own backends are: populations, views, assemblies,
connectors, random distributions, recording and neo output are PyNN's. The network maps
onto the chips through :mod:`toolchain` and runs on :mod:`machine_models` (virtual mode).
"""

from pyNN import errors, random, space
from pyNN.connectors import (
    AllToAllConnector,
    ArrayConnector,
    CloneConnector,
    DisplacementDependentProbabilityConnector,
    DistanceDependentProbabilityConnector,
    FixedNumberPostConnector,
    FixedNumberPreConnector,
    FixedProbabilityConnector,
    FixedTotalNumberConnector,
    FromFileConnector,
    FromListConnector,
    IndexBasedProbabilityConnector,
    OneToOneConnector,
)
from pyNN.network import Network
from pyNN.random import GSLRNG, NumpyRNG, RandomDistribution
from pyNN.space import (
    Cuboid,
    Grid2D,
    Grid3D,
    Line,
    RandomStructure,
    Space,
    Sphere,
    distance,
)
from pyNN.standardmodels import StandardCellType  # noqa: F401

from toolchain.pynn import extra_models
from toolchain.pynn.control import (
    end,
    get_current_time,
    get_machine,
    get_max_delay,
    get_min_delay,
    get_time_step,
    initialize,
    name,
    num_processes,
    rank,
    reset,
    run,
    run_for,
    run_until,
    set_allow_delay_extensions,
    set_number_of_neurons_per_core,
    set_number_of_synapse_cores,
    setup,
)
from toolchain.pynn.errors import NotSupportedError, RunError
from toolchain.pynn.extra_models import SPYNNAKER_ONLY, external_devices
from toolchain.pynn.populations import Assembly, Population, PopulationView
from toolchain.pynn.procedural import connect, create, record, record_gsyn, record_v
from toolchain.pynn.projections import Projection
from toolchain.pynn.standardmodels import (
    UNSUPPORTED,
    AdditiveWeightDependence,
    IF_cond_exp,
    IF_curr_alpha,
    IF_curr_delta,
    IF_curr_exp,
    Izhikevich,
    Izhikevich_cond,
    MultiplicativeWeightDependence,
    SpikePairRule,
    SpikeSourceArray,
    SpikeSourcePoisson,
    StaticSynapse,
    STDPMechanism,
)

globals().update(UNSUPPORTED)
globals().update(SPYNNAKER_ONLY)

__all__ = [
    "GSLRNG",
    "AdditiveWeightDependence",
    "AllToAllConnector",
    "ArrayConnector",
    "Assembly",
    "CloneConnector",
    "DisplacementDependentProbabilityConnector",
    "DistanceDependentProbabilityConnector",
    "FixedNumberPostConnector",
    "FixedNumberPreConnector",
    "FixedProbabilityConnector",
    "FixedTotalNumberConnector",
    "FromFileConnector",
    "FromListConnector",
    "IF_cond_exp",
    "IF_curr_alpha",
    "IF_curr_delta",
    "IF_curr_exp",
    "IndexBasedProbabilityConnector",
    "Izhikevich",
    "Izhikevich_cond",
    "MultiplicativeWeightDependence",
    "NotSupportedError",
    "NumpyRNG",
    "OneToOneConnector",
    "Population",
    "PopulationView",
    "Projection",
    "RandomDistribution",
    "RunError",
    "STDPMechanism",
    "Space",
    "SpikePairRule",
    "SpikeSourceArray",
    "SpikeSourcePoisson",
    "StaticSynapse",
    "connect",
    "create",
    "extra_models",
    "end",
    "get_current_time",
    "get_machine",
    "get_max_delay",
    "get_min_delay",
    "get_time_step",
    "initialize",
    "list_standard_models",
    "name",
    "num_processes",
    "rank",
    "record",
    "record_gsyn",
    "record_v",
    "reset",
    "run",
    "run_for",
    "run_until",
    "set_number_of_neurons_per_core",
    "Cuboid",
    "Grid2D",
    "Grid3D",
    "Line",
    "Network",
    "RandomStructure",
    "Sphere",
    "distance",
    "errors",
    "external_devices",
    "random",
    "space",
    "set_allow_delay_extensions",
    "set_number_of_synapse_cores",
    "setup",
    *UNSUPPORTED,
    *SPYNNAKER_ONLY,
]


def list_standard_models() -> list[str]:
    """The standard cell types this backend runs."""
    return [
        "IF_curr_exp",
        "IF_cond_exp",
        "IF_curr_alpha",
        "IF_curr_delta",
        "Izhikevich",
        "Izhikevich_cond",
        "SpikeSourceArray",
        "SpikeSourcePoisson",
    ]
