"""Mapping a network onto an allocation and writing its image: the toolchain's front door.

``map_network`` runs every stage in order::

    plan delays -> split into cores -> place -> allocate keys -> synapses (matrices,
    population tables, weight shifts) -> route and merge tables -> compress if needed ->
    write each core's regions with the chip model's encoders -> one Image

and returns a :class:`MappedNetwork`, which holds the image and where every population
slice went, so a runner can load the image and read results back per population.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from machine_models.delays import DelayParams, encode_delay_params
from machine_models.executor import Results
from machine_models.geometry import ChipXY
from machine_models.image import AppId, CoreImage, CoreXYP, Image, RoutingEntry
from machine_models.izhikevich import IzhParams, encode_izh_params
from machine_models.lif import (
    LifParams,
    RecordingParams,
    SynapseParams,
    encode_alpha_params,
    encode_delta_input,
    encode_delta_params,
    encode_input_params,
    encode_neuron_params,
    encode_pop_table,
    encode_recording,
    encode_synapse_params,
)
from machine_models.regions import (
    REGION_DATA,
    REGION_INPUT_TYPE,
    REGION_KEYS,
    REGION_POP_TABLE,
    REGION_RECORDING,
    REGION_SYNAPSE_DYNAMICS,
    REGION_SYNAPSE_PARAMS,
    REGION_SYNAPTIC_MATRIX,
    encode_keys,
)
from machine_models.sources import (
    PoissonParams,
    encode_poisson_params,
    encode_spike_array,
    kiss_seed,
)
from machine_models.stdp import StdpParams, WeightRule, encode_stdp_params
from machine_models.topology import Topology
from toolchain.compression import MAX_ROUTER_ENTRIES, compress
from toolchain.errors import NetworkError, ResourceError, RoutingTableFullError
from toolchain.keys import KeySpace, allocate_keys
from toolchain.network import (
    IFCondExp,
    IFCurrAlpha,
    IFCurrDelta,
    Izhikevich,
    IzhikevichCond,
    LifCell,
    Network,
    NeuronCell,
    Population,
    Projection,
    SpikeSourcePoisson,
)
from toolchain.placement import CoreLocation, place
from toolchain.routing import build_tables
from toolchain.splitting import (
    NEURON_APPS,
    SDRAM_PER_CHIP_BYTES,
    SYNAPSE_TYPE_BITS,
    DelayPlan,
    MappingConfig,
    Vertex,
    VertexKind,
    ceil_log2,
    plan_delays,
    plan_plastic_atoms,
    split_network,
)
from toolchain.synapses import PlasticIndex, SynapseBuild, build_synapses, learned_weights

__all__ = ["MappedNetwork", "fit_tables", "map_network"]

_APPS = {
    VertexKind.NEURON: AppId.IF_CURR_EXP,
    VertexKind.POISSON: AppId.SPIKE_SOURCE_POISSON,
    VertexKind.ARRAY: AppId.SPIKE_SOURCE_ARRAY,
    VertexKind.DELAY: AppId.DELAY_EXTENSION,
}


@dataclass(frozen=True)
class MappedNetwork:
    """A network mapped onto an allocation.

    Attributes:
        network: the description that was mapped.
        topology: the allocation.
        image: the job's load (cores and routing tables).
        vertices: every core's share of the network.
        locations: where each vertex runs.
        keys: the key layout.
        delays: delay slots and extension stages.
        shifts: weight shift per (population index, synapse type).
        n_synapses: synapses built.
        uncompressed_entries: routing entries per chip before compression.
        plastic: projection index -> where its learned weights lie (STDP projections).
    """

    network: Network
    topology: Topology
    image: Image
    vertices: Sequence[Vertex]
    locations: Mapping[Vertex, CoreLocation]
    keys: KeySpace
    delays: DelayPlan
    shifts: Mapping[tuple[int, int], int]
    n_synapses: int
    uncompressed_entries: Mapping[ChipXY, int] = field(default_factory=dict)
    plastic: Mapping[int, PlasticIndex] = field(default_factory=dict)

    def learned_weights(self, projection: Projection, results: Results) -> npt.NDArray[np.float64]:
        """The weights of an STDP projection after a run, in its synapse order (nA or uS).

        Raises:
            NetworkError: the projection is not plastic or not of this network.
            ResourceError: the results lack a core's synaptic matrix.
        """
        try:
            number = self.network.projections.index(projection)
        except ValueError:
            raise NetworkError(f"projection {projection.label!r} is not in this network") from None
        index = self.plastic.get(number)
        if index is None:
            raise NetworkError(f"projection {projection.label!r} is not plastic")
        matrices = []
        for vertex in self.vertices:
            where = self.locations[vertex]
            matrices.append(results.synaptic_matrices.get(CoreXYP(where.x, where.y, where.p)))
        return learned_weights(self.network, number, index, self.shifts, matrices)

    def cores_of(self, population: Population) -> list[tuple[Vertex, CoreLocation]]:
        """The (non-delay) cores of a population in neuron order."""
        return [
            (v, self.locations[v])
            for v in self.vertices
            if v.population is population and v.kind is not VertexKind.DELAY
        ]


def map_network(
    network: Network, topology: Topology, config: MappingConfig | None = None
) -> MappedNetwork:
    """Map ``network`` onto ``topology`` and write its image.

    Raises:
        NetworkError: the description is invalid.
        ResourceError: a core's DTCM, SDRAM, delay slots or row length is exceeded.
        PlacementError: the allocation has too few cores.
        KeySpaceError: the keys do not fit 32 bits.
        RoutingError: a route is impossible or a table stays too large.
    """
    config = config or MappingConfig()
    plastic_atoms = plan_plastic_atoms(network, config)
    if plastic_atoms:
        # populations that learn fit fewer neurons per core (post-synaptic histories)
        config = replace(
            config, atoms_per_population={**config.atoms_per_population, **plastic_atoms}
        )
    timestep_us = network.dt_ms * 1000.0
    if abs(timestep_us - round(timestep_us)) > 1e-6:
        raise NetworkError(f"time step {network.dt_ms} ms is not a whole number of microseconds")
    delays = plan_delays(network, config)
    vertices = split_network(network, config, delays)
    placement = place(vertices, topology)
    keys = allocate_keys(vertices, config, delays.n_stages)
    syn = build_synapses(network, vertices, keys, delays, config)
    locations = placement.locations
    targets = {v: [locations[t] for t in ts] for v, ts in syn.targets.items()}
    raw_tables = build_tables(topology, locations, keys, targets)
    tables = fit_tables(raw_tables, is_compressing=config.compress_tables)
    step_us = round(timestep_us)
    cores = [
        _core_image(v, locations[v], network, keys, delays, syn, config, step_us) for v in vertices
    ]
    _check_sdram(cores)
    image = Image(step_us, tuple(cores), tables)
    return MappedNetwork(
        network,
        topology,
        image,
        vertices,
        locations,
        keys,
        delays,
        syn.shifts,
        syn.n_synapses,
        {chip: len(e) for chip, e in raw_tables.items()},
        syn.plastic,
    )


def fit_tables(
    tables: Mapping[ChipXY, Sequence[RoutingEntry]],
    *,
    is_compressing: bool = True,
    capacity: int = MAX_ROUTER_ENTRIES,
) -> dict[ChipXY, tuple[RoutingEntry, ...]]:
    """Compress the tables that exceed the router's capacity, and check they all fit.

    Raises:
        RoutingTableFullError: a table stays above ``capacity`` entries.
    """
    fitted: dict[ChipXY, tuple[RoutingEntry, ...]] = {}
    for chip, entries in tables.items():
        if len(entries) > capacity and is_compressing:
            entries = compress(entries, capacity)
        if len(entries) > capacity:
            raise RoutingTableFullError(chip, len(entries), capacity)
        fitted[chip] = tuple(entries)
    return fitted


def spike_array_steps(times_ms: npt.ArrayLike, timestep_us: int) -> npt.NDArray[np.int64]:
    """The step each spike time is sent in: ceil(floor(t * 1000) / dt_us), as 7.4.1 has it.

    An off-grid time fires at the next step (10.05 ms at 0.1 ms is step 101), the float64
    product included (4.35 ms is 4349.999... us, so step 44 at 0.1 ms).
    """
    micros = np.floor(np.asarray(times_ms, dtype=np.float64) * 1000.0)
    return np.ceil(micros / timestep_us).astype(np.int64)


def _check_sdram(cores: Sequence[CoreImage]) -> None:
    used: dict[ChipXY, int] = {}
    for core in cores:
        used[core.chip] = used.get(core.chip, 0) + core.sdram_bytes
    for chip, n_bytes in used.items():
        if n_bytes > SDRAM_PER_CHIP_BYTES:
            raise ResourceError(
                f"chip ({chip.x}, {chip.y}) needs {n_bytes} bytes of sdram "
                f"but has {SDRAM_PER_CHIP_BYTES}"
            )


def _core_image(
    vertex: Vertex,
    where: CoreLocation,
    network: Network,
    keys: KeySpace,
    delays: DelayPlan,
    syn: SynapseBuild,
    config: MappingConfig,
    timestep_us: int,
) -> CoreImage:
    pop = vertex.population
    chip = ChipXY(where.x, where.y)
    if vertex.kind is VertexKind.DELAY:
        n_stages = delays.n_stages[pop.index]
        source = Vertex(
            VertexKind.NEURON
            if isinstance(pop.cell, NeuronCell)
            else VertexKind.POISSON
            if isinstance(pop.cell, SpikeSourcePoisson)
            else VertexKind.ARRAY,
            pop,
            vertex.slice_index,
            vertex.lo,
            vertex.hi,
            vertex.stride,
        )
        data = encode_delay_params(
            DelayParams(
                in_key=keys.core_key(source),
                in_mask=keys.core_mask,
                in_colour_bits=config.n_colour_bits,
                n_neurons=vertex.stride,
                n_stages=n_stages,
                delay_per_stage=delays.stage_steps[pop.index],
                out_key_base=keys.core_key(vertex),
                out_colour_bits=config.n_colour_bits,
            )
        )
        return CoreImage(chip, where.p, AppId.DELAY_EXTENSION, {REGION_DATA: data})
    regions: dict[int, bytes] = {
        REGION_KEYS: encode_keys(
            keys.neuron_keys(vertex), config.n_colour_bits, has_key=vertex in syn.targets
        )
    }
    cell = pop.cell
    app = _APPS[vertex.kind]
    if isinstance(cell, NeuronCell):
        regions.update(_neuron_regions(vertex, cell, network, delays, syn, config, timestep_us))
        app = NEURON_APPS[cell.name]
    elif isinstance(cell, SpikeSourcePoisson):
        root = [network.seed, 2, pop.index] if pop.seed is None else [pop.seed, 2, 0]
        seed_words = np.random.SeedSequence([*root, vertex.slice_index]).generate_state(4)
        seed = kiss_seed(
            (int(seed_words[0]), int(seed_words[1]), int(seed_words[2]), int(seed_words[3]))
        )
        regions[REGION_DATA] = encode_poisson_params(
            PoissonParams(
                vertex.n_atoms,
                _of_core(cell.rate, vertex),
                seed,
                _of_core(cell.start, vertex),
                None
                if np.all(np.asarray(cell.duration) >= 1e9)
                else _of_core(cell.duration, vertex),
            ),
            timestep_us,
        )
    else:
        trains = cell.times_of(pop.size)[vertex.lo : vertex.hi]
        steps = [spike_array_steps(t, timestep_us) for t in trains]
        neurons = [np.full(s.size, i, dtype=np.int64) for i, s in enumerate(steps)]
        regions[REGION_DATA] = encode_spike_array(
            np.concatenate(steps) if steps else np.zeros(0, np.int64),
            np.concatenate(neurons) if neurons else np.zeros(0, np.int64),
        )
    return CoreImage(chip, where.p, app, regions)


def _of_core(value: float | npt.NDArray[np.float64], vertex: Vertex) -> npt.ArrayLike:
    """A parameter's value on one core: the population's scalar, or the core's slice."""
    if np.ndim(value) == 0:
        return value
    return np.asarray(value)[vertex.lo : vertex.hi]


def _neuron_regions(
    vertex: Vertex,
    cell: NeuronCell,
    network: Network,
    delays: DelayPlan,
    syn: SynapseBuild,
    config: MappingConfig,
    timestep_us: int,
) -> dict[int, bytes]:
    pop = vertex.population
    n = vertex.n_atoms
    v_init = (
        pop.initial_v[vertex.lo : vertex.hi] if pop.initial_v is not None else cell.default_v_init
    )
    neuron = _neuron_data(vertex, cell, v_init, timestep_us)
    core_syn = syn.cores[vertex]
    synapse = SynapseParams(
        n_neurons=n,
        index_bits=ceil_log2(vertex.stride),
        type_bits=SYNAPSE_TYPE_BITS,
        delay_bits=ceil_log2(delays.slots[pop.index]),
        shift_exc=syn.shifts[(pop.index, 0)],
        shift_inh=syn.shifts[(pop.index, 1)],
    )
    interval = max(1, round((pop.sampling_interval_ms or network.dt_ms) / network.dt_ms))

    def recorded(name: str) -> bool:
        ids = pop.recorded.get(name)
        return ids is not None and bool(((ids >= vertex.lo) & (ids < vertex.hi)).any())

    recording = RecordingParams(
        record_spikes=recorded("spikes"),
        v_interval_steps=interval if recorded("v") else 0,
        gsyn_exc_interval_steps=interval if recorded("gsyn_exc") else 0,
        gsyn_inh_interval_steps=interval if recorded("gsyn_inh") else 0,
    )
    regions = {
        REGION_DATA: neuron,
        REGION_SYNAPSE_PARAMS: encode_synapse_params(synapse),
        REGION_POP_TABLE: encode_pop_table(core_syn.pop_table),
        REGION_SYNAPTIC_MATRIX: core_syn.matrix,
        REGION_RECORDING: encode_recording(recording),
    }
    if isinstance(cell, IFCondExp | IzhikevichCond):
        regions[REGION_INPUT_TYPE] = encode_input_params(
            n, _of_core(cell.e_rev_E, vertex), _of_core(cell.e_rev_I, vertex)
        )
    elif isinstance(cell, IFCurrDelta):
        regions[REGION_INPUT_TYPE] = encode_delta_input(n, timestep_us)
    rule = network.plasticity_of(pop)
    if rule is not None:
        regions[REGION_SYNAPSE_DYNAMICS] = encode_stdp_params(
            StdpParams.from_pynn(
                WeightRule.ADDITIVE
                if rule.weight_rule == "additive"
                else WeightRule.MULTIPLICATIVE,
                network.dt_ms,
                tau_plus=rule.tau_plus,
                tau_minus=rule.tau_minus,
                a_plus=rule.a_plus,
                a_minus=rule.a_minus,
                w_min=rule.w_min,
                w_max=rule.w_max,
                weight_scale=cell.weight_scale,
                n_synapse_types=1 << SYNAPSE_TYPE_BITS,
            )
        )
    return regions


def _neuron_data(
    vertex: Vertex, cell: NeuronCell, v_init: npt.ArrayLike, timestep_us: int
) -> bytes:
    """The neuron-parameter region of a core of ``cell``: its application's record."""
    n = vertex.n_atoms
    pop = vertex.population
    if isinstance(cell, Izhikevich):
        u_init = (
            pop.initial_u[vertex.lo : vertex.hi]
            if pop.initial_u is not None
            else cell.default_u_init
        )
        return encode_izh_params(
            IzhParams(
                n_neurons=n,
                a=_of_core(cell.a, vertex),
                b=_of_core(cell.b, vertex),
                c=_of_core(cell.c, vertex),
                d=_of_core(cell.d, vertex),
                v_init=v_init,
                u_init=u_init,
                i_offset=_of_core(cell.i_offset, vertex),
                tau_syn_e=_of_core(cell.tau_syn_E, vertex),
                tau_syn_i=_of_core(cell.tau_syn_I, vertex),
            ),
            timestep_us,
        )
    if not isinstance(cell, LifCell | IFCurrDelta):
        raise NetworkError(f"{cell.name} has no chip application")
    params = LifParams(
        n_neurons=n,
        v_init=v_init,
        v_rest=_of_core(cell.v_rest, vertex),
        cm=_of_core(cell.cm, vertex),
        tau_m=_of_core(cell.tau_m, vertex),
        i_offset=_of_core(cell.i_offset, vertex),
        v_reset=_of_core(cell.v_reset, vertex),
        v_thresh=_of_core(cell.v_thresh, vertex),
        tau_refrac=_of_core(cell.tau_refrac, vertex),
    )
    if isinstance(cell, IFCurrDelta):
        return encode_delta_params(params, timestep_us)
    params = replace(
        params,
        tau_syn_e=_of_core(cell.tau_syn_E, vertex),
        tau_syn_i=_of_core(cell.tau_syn_I, vertex),
    )
    if isinstance(cell, IFCurrAlpha):
        return encode_alpha_params(params, timestep_us)
    return encode_neuron_params(params, timestep_us)
