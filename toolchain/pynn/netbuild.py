"""From PyNN's objects to the toolchain's network description.

Each PyNN population becomes one toolchain population (its native parameters as scalars
or one value per neuron); each projection becomes one ``FromArrays`` projection per pair
of populations it joins (a projection between views or assemblies touches several). The
:class:`Built` record keeps which synapses went where, so that the weights the machine
stores can be handed back to the projection.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from pyNN import common

from machine_models.lif import weights_to_u16
from toolchain.network import (
    CellType,
    FromArrays,
    IFCondExp,
    IFCurrAlpha,
    IFCurrDelta,
    IFCurrExp,
    Izhikevich,
    IzhikevichCond,
    Network,
    NeuronCell,
    Population,
    Projection,
    Receptor,
    SpikeSourceArray,
    SpikeSourcePoisson,
    StaticSynapse,
    StdpSynapse,
)
from toolchain.pynn import standardmodels
from toolchain.pynn.errors import NotSupportedError
from toolchain.splitting import MappingConfig

__all__ = ["Built", "build_network", "quantised_weights"]

DEFAULT_ATOMS_PER_CORE = MappingProxyType(
    {"IF_curr_exp": 256, "IF_cond_exp": 256, "SpikeSourcePoisson": 500, "SpikeSourceArray": 256}
)
RECORDABLE = ("spikes", "v", "gsyn_exc", "gsyn_inh")


@dataclass(frozen=True)
class Part:
    """The synapses of one PyNN projection between one pair of populations."""

    projection: Projection
    selection: slice | npt.NDArray[np.int64] | None
    """The PyNN projection's synapses that went here (a range or their indices); None for all."""


@dataclass(frozen=True)
class Built:
    """A toolchain network built from the PyNN objects, and what maps to what.

    Attributes:
        network: the description to map.
        config: the mapping settings (neurons per core).
        populations: (PyNN population, toolchain population) in creation order.
        parts: per PyNN projection, its toolchain projections.
    """

    network: Network
    config: MappingConfig
    populations: Sequence[tuple[Any, Population]]
    parts: Sequence[tuple[Any, Sequence[Part]]]


def _value(value: Any) -> float | npt.NDArray[np.float64]:
    array = np.asarray(value, dtype=np.float64)
    return float(array) if array.ndim == 0 else array


def _cell(pop: Any) -> CellType:
    params = pop._parameters
    celltype = pop.celltype
    lif: dict[type, type[NeuronCell]] = {
        standardmodels.IF_curr_exp: IFCurrExp,
        standardmodels.IF_cond_exp: IFCondExp,
        standardmodels.IF_curr_alpha: IFCurrAlpha,
        standardmodels.IF_curr_delta: IFCurrDelta,
        standardmodels.Izhikevich_cond: IzhikevichCond,
        standardmodels.Izhikevich: Izhikevich,
    }
    for pynn_type, toolchain_type in lif.items():
        if isinstance(celltype, pynn_type):
            for variable in ("isyn_exc", "isyn_inh", "gsyn_exc", "gsyn_inh"):
                if variable in pop.celltype.default_initial_values and np.any(
                    pop.initial_value_array(variable) != 0.0
                ):
                    raise NotSupportedError(
                        f"initial value of {variable}", "initial synaptic inputs of 0"
                    )
            fields = dataclasses.fields(toolchain_type)
            return toolchain_type(**{f.name: _value(params[f.name]) for f in fields})  # type: ignore[return-value]
    if isinstance(celltype, standardmodels.SpikeSourcePoisson):
        return SpikeSourcePoisson(
            rate=_value(params["rate"]),
            start=_value(params["start"]),
            duration=_value(params["duration"]),
        )
    if isinstance(celltype, standardmodels.SpikeSourceArray):
        times = params["spike_times"]
        if isinstance(times, np.ndarray):
            trains = tuple(tuple(float(t) for t in seq.value) for seq in times.reshape(-1))
            return SpikeSourceArray(trains)
        return SpikeSourceArray(tuple(float(t) for t in times.value))
    raise NotSupportedError(
        f"cell type {celltype.__class__.__name__}", standardmodels.SUPPORTED_CELLS
    )


def _locate(
    cells: Any, firsts: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64] | None]:
    """(population number, index within it) of each cell of a population, view or assembly.

    The index is None for a whole population (each cell is its own index).
    """
    if isinstance(cells, common.Population):
        number = int(np.searchsorted(firsts, int(cells.first_id), side="right") - 1)
        return np.full(cells.size, number, np.int64), None
    ids = np.asarray(cells.all_cells, dtype=np.int64).reshape(-1)
    which = np.searchsorted(firsts, ids, side="right") - 1
    return which, ids - firsts[which]


Selection = slice | npt.NDArray[np.int64] | None
"""Which of a projection's synapses: a range, their indices, or None for all of them."""


def _index(
    index: npt.NDArray[np.int64] | None, cells: npt.NDArray[np.int64], pick: Selection
) -> npt.NDArray[np.int64]:
    picked = cells if pick is None else cells[pick]
    return picked if index is None else index[picked]


def _side(
    pop_of: npt.NDArray[np.int64], cells: npt.NDArray[np.int64]
) -> list[tuple[int, slice | npt.NDArray[np.bool_] | None]]:
    """Per population on one side of a projection: the synapses touching it (None: all).

    When each population is one run of cells (an Assembly) and the synapses are in order
    of their cells on this side (as PyNN's connectors make them, target by target), each
    population's synapses are one range: a slice, so nothing is copied.
    """
    numbers = np.unique(pop_of)
    if numbers.size == 1:
        return [(int(numbers[0]), None)]
    starts = np.flatnonzero(np.r_[True, pop_of[1:] != pop_of[:-1]])
    if starts.size == numbers.size:  # each population one run of cells (an Assembly)
        ends = np.r_[starts[1:], pop_of.size]
        if bool(np.all(cells[1:] >= cells[:-1])):
            los = np.searchsorted(cells, starts).tolist()
            his = np.searchsorted(cells, np.asarray(ends)).tolist()
            return [
                (int(pop_of[first]), slice(a, b))
                for first, a, b in zip(starts.tolist(), los, his, strict=True)
            ]
        return [
            (int(pop_of[lo]), (cells >= lo) & (cells < hi))
            for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True)
        ]
    of_synapse = pop_of[cells]
    return [(int(n), of_synapse == n) for n in numbers.tolist()]


def _mask(selector: slice | npt.NDArray[np.bool_], n: int) -> npt.NDArray[np.bool_]:
    if isinstance(selector, slice):
        mask = np.zeros(n, dtype=bool)
        mask[selector] = True
        return mask
    return selector


def _groups(
    pre_pop: npt.NDArray[np.int64],
    post_pop: npt.NDArray[np.int64],
    pre: npt.NDArray[np.int64],
    post: npt.NDArray[np.int64],
) -> list[tuple[int, int, Selection]]:
    """(pre population, post population, their synapses) of each pair of populations joined."""
    pairs: list[tuple[int, int, Selection]] = []
    for a, from_a in _side(pre_pop, pre):
        for b, to_b in _side(post_pop, post):
            if from_a is None or to_b is None:
                one = from_a if to_b is None else to_b
                if one is None or isinstance(one, slice):
                    if one is None or one.stop > one.start:
                        pairs.append((a, b, one))
                    continue
                mask = one
            elif isinstance(from_a, slice) and isinstance(to_b, slice):
                both = slice(max(from_a.start, to_b.start), min(from_a.stop, to_b.stop))
                if both.stop > both.start:
                    pairs.append((a, b, both))
                continue
            else:
                mask = _mask(from_a, pre.size) & _mask(to_b, post.size)
            selection = np.flatnonzero(mask)
            if selection.size:
                pairs.append((a, b, selection))
    return pairs


def _picked(values: npt.NDArray[np.float64], pick: Selection) -> npt.NDArray[np.float64]:
    """The selected synapses' values; one value for all stays one broadcast value."""
    if pick is None:
        return values
    if values.strides == (0,) and values.size:
        n = len(range(*pick.indices(values.size))) if isinstance(pick, slice) else pick.size
        return np.broadcast_to(values[:1], (n,))
    return values[pick]


def build_network(
    populations: Sequence[Any],
    projections: Sequence[Any],
    dt_ms: float,
    neurons_per_core: dict[str, int],
    weight_shifts: dict[tuple[int, int], int] | None = None,
) -> Built:
    """Describe the PyNN network for the toolchain.

    Raises:
        NotSupportedError: a cell, initial value or connection the chip model lacks.
        NetworkError: the toolchain rejects the description.
    """
    network = Network(dt_ms=dt_ms, seed=1)
    pairs: list[tuple[Any, Population]] = []
    used: set[str] = set()
    for number, pop in enumerate(populations):
        label = pop.label if pop.label not in used else f"{pop.label}#{number}"
        used.add(label)
        tpop = network.population(pop.size, _cell(pop), label, seed=pop.seed)
        if isinstance(tpop.cell, Izhikevich):
            tpop.initialize(pop.initial_value_array("v"), u=pop.initial_value_array("u"))
        elif isinstance(tpop.cell, NeuronCell):
            tpop.initialize(pop.initial_value_array("v"))
        recorder = pop.recorder
        for name in RECORDABLE:
            ids = recorder.recorded_indices(name)
            if ids.size:
                tpop.record(name, ids, recorder.sampling_interval)
        pairs.append((pop, tpop))
    firsts = np.array([int(pop.first_id) for pop in populations], dtype=np.int64)
    parts: list[tuple[Any, list[Part]]] = []
    for proj in projections:
        pre, post, weight, delay = proj.arrays()
        pre_pop, pre_index = _locate(proj.pre, firsts)
        post_pop, post_index = _locate(proj.post, firsts)
        receptor: Receptor = "inhibitory" if proj.receptor_type == "inhibitory" else "excitatory"
        is_one_weight = weight.strides == (0,) and weight.size > 0
        sample = weight[:1] if is_one_weight else weight  # one weight stays one value
        # current-based inhibitory weights are negative in the toolchain; conductances >= 0
        is_negative = receptor == "inhibitory" and not proj.post.conductance_based
        signed = -np.abs(sample) if is_negative else sample
        if is_one_weight:
            signed = np.broadcast_to(signed, weight.shape)
        own: list[Part] = []
        rule = _stdp_rule(proj.synapse_type)
        for a, b, pick in _groups(pre_pop, post_pop, pre, post):
            weights, delays = _picked(signed, pick), _picked(delay, pick)
            synapse: StaticSynapse | StdpSynapse = (
                StaticSynapse(weights, delays)
                if rule is None
                else StdpSynapse(weights, delays, **rule)
            )
            tproj = network.project(
                pairs[a][1],
                pairs[b][1],
                FromArrays(_index(pre_index, pre, pick), _index(post_index, post, pick)),
                synapse,
                receptor,
                f"{proj.label}#{len(parts)}.{len(own)}",
            )
            own.append(Part(tproj, pick))
        parts.append((proj, own))
    config = MappingConfig(
        max_atoms_per_core=MappingProxyType({**DEFAULT_ATOMS_PER_CORE, **neurons_per_core}),
        weight_shifts=weight_shifts,
    )
    return Built(network, config, pairs, parts)


def _stdp_rule(synapse_type: Any) -> dict[str, Any] | None:
    """The toolchain's STDP parameters of a PyNN ``STDPMechanism``; None for a static synapse."""
    if not isinstance(synapse_type, standardmodels.STDPMechanism):
        return None

    def value(component: Any, name: str) -> float:
        base = component.parameter_space[name].base_value
        if np.ndim(base) != 0 or not isinstance(base, numbers.Real):  # a RandomDistribution too
            raise NotSupportedError(
                f"{name} varying across synapses", "one value of each STDP parameter"
            )
        return float(base)

    timing, weight = synapse_type.timing_dependence, synapse_type.weight_dependence
    is_additive = isinstance(weight, standardmodels.AdditiveWeightDependence)
    return {
        "weight_rule": "additive" if is_additive else "multiplicative",
        "tau_plus": value(timing, "tau_plus"),
        "tau_minus": value(timing, "tau_minus"),
        "a_plus": value(timing, "A_plus"),
        "a_minus": value(timing, "A_minus"),
        "w_min": value(weight, "w_min"),
        "w_max": value(weight, "w_max"),
    }


def learned_weights(proj: Any, parts: Sequence[Part], mapped: Any, results: Any) -> Any:
    """The weights of a PyNN STDP projection as the last run left them (nA or uS)."""
    _, _, weight, _ = proj.arrays()
    stored = np.array(weight, dtype=np.float64, copy=True)
    for part in parts:
        pick = slice(None) if part.selection is None else part.selection
        magnitude = mapped.learned_weights(part.projection, results)
        stored[pick] = np.where(np.asarray(weight[pick]) < 0, -magnitude, magnitude)
    return stored


def quantised_weights(
    proj: Any, parts: Sequence[Part], shifts: dict[tuple[int, int], int] | Any
) -> npt.NDArray[np.float64]:
    """The weights of a PyNN projection as the machine stores them (16 bits, shifted)."""
    _, _, weight, _ = proj.arrays()
    stored = np.array(weight, dtype=np.float64, copy=True)
    for part in parts:
        synapse_type = 0 if part.projection.receptor_type == "excitatory" else 1
        shift = shifts[(part.projection.post.index, synapse_type)]
        pick = slice(None) if part.selection is None else part.selection
        magnitude = weights_to_u16(weight[pick], shift) * 2.0 ** (shift - 15)
        stored[pick] = np.sign(weight[pick]) * magnitude
    return stored
