"""Splitting populations into cores, and the per-core resources that bound the split.

Each population becomes one or more *slices*: contiguous neuron ranges, each run by one
core. Every slice of a population but the last has exactly ``max_atoms_per_core`` neurons,
so a source neuron's index is ``slice_index * atoms_per_core + local`` (the master
population table relies on that stride).

A neuron core's DTCM holds its ring buffers and its neuron state. The ring buffer has
``2 ** (I + T + Dbits)`` 16-bit slots, with ``I = ceil(log2(atoms per core))`` index bits,
``T = 1`` synapse-type bit and ``Dbits`` delay bits, and must fit 32 KB (14 bits)::

    slots available  = 2 ** (14 - I - T)          256 neurons -> 32 delay slots
    slots used       = min(next power of 2 >= longest incoming delay, available)

Delays longer than the slots go through a delay-extension core per source slice, which
adds whole stages of ``slots`` steps; at most 8 stages, so 8 x slots is the longest delay.

A population that learns (an STDP projection onto it) also keeps each neuron's post-synaptic
history in DTCM (``POST_HISTORY_BYTES``, 100 bytes) and the rule's lookup tables, so fewer of
its neurons fit a core: :func:`plan_plastic_atoms` picks the most that fit, and the mapping
uses that instead of ``max_atoms_per_core``::

    256 neurons, 32 delay slots:  32 KB ring + 256 x 96 state + 4 KB          fits (60.5 KB)
    plastic, the same:            ... + 256 x 100 history + tables             does not
    plastic, 142 neurons:         32 KB ring + 142 x 196 + 4 KB + tables       fits
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from machine_models import neuron_apps
from machine_models.image import AppId
from machine_models.stdp import POST_HISTORY_BYTES, exp_lut
from toolchain.errors import ResourceError
from toolchain.network import (
    IFCondExp,
    IFCurrAlpha,
    IFCurrDelta,
    IFCurrExp,
    Izhikevich,
    IzhikevichCond,
    Network,
    NeuronCell,
    Population,
)

__all__ = [
    "DTCM_BYTES",
    "MAX_DELAY_STAGES",
    "MAX_RING_BUFFER_BITS",
    "MAX_ROW_SYNAPSES",
    "NEURON_STATE_BYTES",
    "SDRAM_PER_CHIP_BYTES",
    "DelayPlan",
    "MappingConfig",
    "Vertex",
    "VertexKind",
    "ceil_log2",
    "plan_delays",
    "plan_plastic_atoms",
    "plastic_dtcm_bytes",
    "split_network",
]

SDRAM_PER_CHIP_BYTES = 123_469_792
"""SDRAM left to applications on a chip after SC&MP's reservations."""
DTCM_BYTES = 64 * 1024
"""Data memory of one core."""
MAX_RING_BUFFER_BITS = 14
"""Ring buffers hold at most 2 ** 14 16-bit slots (32 KB of DTCM)."""
MAX_DELAY_STAGES = 8
"""Delay-extension stages; the longest delay is 8 x the post core's slots."""
MAX_ROW_SYNAPSES = 256
"""The address list stores row length - 1 in 8 bits."""
NEURON_STATE_BYTES = 96
"""DTCM per IF_curr_exp neuron: parameters, state, synaptic inputs, keys and recording."""
NEURON_APPS = {
    IFCurrExp.name: AppId.IF_CURR_EXP,
    IFCondExp.name: AppId.IF_COND_EXP,
    IFCurrDelta.name: AppId.IF_CURR_DELTA,
    IFCurrAlpha.name: AppId.IF_CURR_ALPHA,
    Izhikevich.name: AppId.IZK_CURR_EXP,
    IzhikevichCond.name: AppId.IZK_COND_EXP,
}
"""The chip application that runs each neuron cell type."""
_IF_CURR_EXP_RECORD_BYTES = neuron_apps.NEURON_APPS[AppId.IF_CURR_EXP].dtcm_bytes_per_neuron
INPUT_TYPE_BYTES = {
    name: neuron_apps.NEURON_APPS[app].dtcm_bytes_per_neuron - _IF_CURR_EXP_RECORD_BYTES
    for name, app in NEURON_APPS.items()
}
"""DTCM per neuron a cell type's records take beyond IF_curr_exp's (IF_cond_exp: its two
reversal potentials, 8 bytes; IF_curr_delta 12 fewer; IF_curr_alpha 16 more)."""
SYNAPSE_TYPE_BITS = 1
DTCM_FIXED_BYTES = 4096
"""DTCM for the application's own stack, DMA buffers and spike queue."""


class VertexKind(Enum):
    """What a core runs."""

    NEURON = "IF_curr_exp"
    POISSON = "SpikeSourcePoisson"
    ARRAY = "SpikeSourceArray"
    DELAY = "DelayExtension"


def ceil_log2(value: int) -> int:
    """The smallest b with ``2 ** b >= value`` (0 for values up to 1)."""
    return 0 if value <= 1 else math.ceil(math.log2(value))


@dataclass(frozen=True)
class MappingConfig:
    """Knobs of the mapping.

    Attributes:
        max_atoms_per_core: neurons per core by cell type name.
        n_colour_bits: colour bits below the neuron index in every spike key.
        spikes_per_second: rate every source is assumed to fire at when ring-buffer weights
            are scaled from statistics (7.4.1 assumes it of every source, Poisson or not).
        ring_buffer_sigma: standard deviations above the mean summed weight to allow for.
        compress_tables: whether to compress routing tables that exceed the router.
        weight_shifts: (population index, synapse type) -> shift to use instead of
            computing them; a run that continues after a parameter change keeps the
            shifts its ring buffers were filled with.
    """

    max_atoms_per_core: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType(
            {
                **dict.fromkeys(NEURON_APPS, 256),
                "SpikeSourcePoisson": 500,
                "SpikeSourceArray": 256,
            }
        )
    )
    n_colour_bits: int = 4
    spikes_per_second: float = 30.0
    ring_buffer_sigma: float = 5.0
    compress_tables: bool = True
    weight_shifts: Mapping[tuple[int, int], int] | None = None
    atoms_per_population: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    """Neurons per core by population index, below ``max_atoms_per_core``; the mapping sets
    it for populations that learn (:func:`plan_plastic_atoms`)."""

    def atoms_per_core(self, population: Population) -> int:
        """Neurons per core for this population (at most its size)."""
        limit = self.max_atoms_per_core.get(population.cell.name, 256)
        if limit < 1:
            raise ResourceError(
                f"max atoms per core for {population.cell.name} must be >= 1, got {limit}"
            )
        limit = min(limit, self.atoms_per_population.get(population.index, limit))
        return min(limit, population.size)


@dataclass(frozen=True)
class Vertex:
    """One core's worth of a population (or of its delay extension).

    Attributes:
        kind: the application the core runs.
        population: the population the neurons belong to.
        slice_index: index of this core within its population (the key's M field).
        lo: first neuron (inclusive).
        hi: last neuron (exclusive).
        stride: neurons per core of the population (``lo = slice_index * stride``).
    """

    kind: VertexKind
    population: Population
    slice_index: int
    lo: int
    hi: int
    stride: int

    @property
    def n_atoms(self) -> int:
        """Neurons on this core."""
        return self.hi - self.lo

    def __repr__(self) -> str:
        return f"<Vertex {self.kind.value} {self.population.label}[{self.lo}:{self.hi}]>"


_KINDS = {
    **dict.fromkeys(NEURON_APPS, VertexKind.NEURON),
    "SpikeSourcePoisson": VertexKind.POISSON,
    "SpikeSourceArray": VertexKind.ARRAY,
}


@dataclass(frozen=True)
class DelayPlan:
    """Delay slots of each target population and the extension stages of each source.

    Attributes:
        slots: delay slots (a power of 2) per neuron (LIF) population index.
        stage_steps: steps per delay-extension stage per source population index.
        n_stages: number of extension stages per source population index (1..8 exclusive
            of the direct stage 0).
    """

    slots: Mapping[int, int]
    stage_steps: Mapping[int, int]
    n_stages: Mapping[int, int]


def plan_delays(network: Network, config: MappingConfig) -> DelayPlan:
    """Choose delay slots per target population and delay extensions per source.

    Raises:
        ResourceError: a delay exceeds 8 x the slots of its target, or the ring buffer of a
            population cannot hold even one delay slot.
    """
    slots: dict[int, int] = {}
    longest: dict[int, int] = {}
    for pop in network.populations:
        if isinstance(pop.cell, NeuronCell):
            longest[pop.index] = 1
    for proj in network.projections:
        _, _, _, delay = proj.synapses(network.dt_ms)
        if delay.size:
            steps = int(network.delay_steps(delay).max())
            longest[proj.post.index] = max(longest[proj.post.index], steps)
    for index, steps in longest.items():
        pop = network.populations[index]
        index_bits = ceil_log2(config.atoms_per_core(pop))
        avail_bits = MAX_RING_BUFFER_BITS - index_bits - SYNAPSE_TYPE_BITS
        if avail_bits < 0:
            raise ResourceError(
                f"population {pop.label!r} with {config.atoms_per_core(pop)} neurons per core "
                f"needs ring buffers of 2^{index_bits + SYNAPSE_TYPE_BITS} slots, above the "
                f"2^{MAX_RING_BUFFER_BITS} that fit 32 KB of dtcm"
            )
        slots[index] = min(1 << ceil_log2(steps), 1 << avail_bits)
    stage_steps: dict[int, int] = {}
    n_stages: dict[int, int] = {}
    for proj in network.projections:
        _, _, _, delay = proj.synapses(network.dt_ms)
        if not delay.size:
            continue
        steps = int(network.delay_steps(delay).max())
        post_slots = slots[proj.post.index]
        if steps > MAX_DELAY_STAGES * post_slots:
            raise ResourceError(
                f"projection {proj.label!r} has a delay of {steps} steps, above the "
                f"{MAX_DELAY_STAGES} x {post_slots} = {MAX_DELAY_STAGES * post_slots} steps "
                f"that delay extensions of {proj.post.label!r} can reach"
            )
        if steps > post_slots:
            pre = proj.pre.index
            stage_steps[pre] = min(stage_steps.get(pre, post_slots), post_slots)
    for proj in network.projections:
        pre = proj.pre.index
        if pre in stage_steps:
            _, _, _, delay = proj.synapses(network.dt_ms)
            if delay.size:
                steps = int(network.delay_steps(delay).max())
                stages = (steps - 1) // stage_steps[pre]
                if stages > MAX_DELAY_STAGES - 1:
                    raise ResourceError(
                        f"projection {proj.label!r} needs {stages + 1} delay stages of "
                        f"{stage_steps[pre]} steps, above {MAX_DELAY_STAGES}"
                    )
                n_stages[pre] = max(n_stages.get(pre, 0), stages)
    return DelayPlan(slots=slots, stage_steps=stage_steps, n_stages=n_stages)


def neuron_dtcm_bytes(n_atoms_stride: int, n_slots: int, cell_name: str = "IF_curr_exp") -> int:
    """DTCM a neuron core needs: ring buffers, neuron state and fixed overheads."""
    ring_entries = 1 << (ceil_log2(n_atoms_stride) + SYNAPSE_TYPE_BITS + ceil_log2(n_slots))
    per_neuron = NEURON_STATE_BYTES + INPUT_TYPE_BYTES.get(cell_name, 0)
    return 2 * ring_entries + per_neuron * n_atoms_stride + DTCM_FIXED_BYTES


def plastic_dtcm_bytes(network: Network, population: Population, n_atoms_stride: int) -> int:
    """DTCM that learning adds to a core of ``population``: post-synaptic histories and the
    rule's two lookup tables and weight records; 0 when nothing onto it is plastic."""
    rule = network.plasticity_of(population)
    if rule is None:
        return 0
    luts = sum(
        4 + 2 * len(exp_lut(network.dt_ms, tau).values) for tau in (rule.tau_plus, rule.tau_minus)
    )
    return POST_HISTORY_BYTES * n_atoms_stride + luts + 16 * (1 << SYNAPSE_TYPE_BITS)


def _longest_delay_steps(network: Network, population: Population) -> int:
    longest = 1
    for proj in network.projections:
        if proj.post is population:
            _, _, _, delay = proj.synapses(network.dt_ms)
            if delay.size:
                longest = max(longest, int(network.delay_steps(delay).max()))
    return longest


def plan_plastic_atoms(network: Network, config: MappingConfig) -> dict[int, int]:
    """Neurons per core of each population that learns: the most (up to the configured
    limit) whose ring buffers, state, post-synaptic histories and tables fit DTCM.

    Raises:
        ResourceError: not even one neuron fits.
    """
    plan: dict[int, int] = {}
    for pop in network.populations:
        if not isinstance(pop.cell, NeuronCell) or network.plasticity_of(pop) is None:
            continue
        longest = _longest_delay_steps(network, pop)
        n = config.atoms_per_core(pop)
        while n >= 1:
            index_bits = ceil_log2(n)
            avail_bits = MAX_RING_BUFFER_BITS - index_bits - SYNAPSE_TYPE_BITS
            slots = min(1 << ceil_log2(longest), 1 << max(avail_bits, 0))
            needed = neuron_dtcm_bytes(n, slots, pop.cell.name) + plastic_dtcm_bytes(
                network, pop, n
            )
            if avail_bits >= 0 and needed <= DTCM_BYTES:
                break
            n -= 1
        if n < 1:
            raise ResourceError(
                f"population {pop.label!r} learns, and not even one neuron with its "
                f"post-synaptic history fits {DTCM_BYTES} bytes of dtcm"
            )
        if n < config.atoms_per_core(pop):
            plan[pop.index] = n
    return plan


def split_network(network: Network, config: MappingConfig, delays: DelayPlan) -> list[Vertex]:
    """Split every population into cores, plus one delay-extension core per source slice.

    Raises:
        ResourceError: a neuron core's ring buffers and state do not fit its DTCM.
    """
    vertices: list[Vertex] = []
    for pop in network.populations:
        stride = config.atoms_per_core(pop)
        kind = _KINDS[pop.cell.name]
        if kind is VertexKind.NEURON:
            needed = neuron_dtcm_bytes(
                stride, delays.slots[pop.index], pop.cell.name
            ) + plastic_dtcm_bytes(network, pop, stride)
            if needed > DTCM_BYTES:
                raise ResourceError(
                    f"population {pop.label!r} with {stride} neurons per core needs {needed} "
                    f"bytes of dtcm but a core has {DTCM_BYTES}"
                )
        n_slices = math.ceil(pop.size / stride)
        for index in range(n_slices):
            lo = index * stride
            vertices.append(Vertex(kind, pop, index, lo, min(pop.size, lo + stride), stride))
        if pop.index in delays.stage_steps:
            for index in range(n_slices):
                lo = index * stride
                vertices.append(
                    Vertex(VertexKind.DELAY, pop, index, lo, min(pop.size, lo + stride), stride)
                )
    return vertices
