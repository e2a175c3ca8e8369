"""Synaptic matrices, master population tables and ring-buffer weight shifts, vectorised.

Every synapse of the network becomes one fixed word in one row of one block::

    target core  --- master population table: one entry per incoming partition
                        key/mask of the partition, core field, neurons per source core
                 --- synaptic matrix: one block per incoming partition,
                        one row per source neuron (core * neurons_per_core + local),
                        every row padded to the block's longest row (at most 256)

A synapse whose delay exceeds what its source can deliver directly goes through the
source's delay extension: stage ``s = (delay - 1) // stage_steps`` (0 = direct), stored
delay ``delay - s * stage_steps``, and its row sits in the delay partition's block at
``core * n_stages * stride + (s - 1) * stride + local``.

Weights are stored as ``round(|w| * 2 ** (15 - shift))`` with one shift per target
population and synapse type, chosen as sPyNNaker 7.4.1 chooses it (:func:`weight_shifts`).

Synapses of STDP projections go into plastic blocks of their own (one beside the static block
of the same partition, both under one population-table entry), laid out as 7.4.1 lays plastic
rows (``machine_models.stdp``): about the same 4 bytes per synapse, 3 header and 2 history
words per row. Where each plastic synapse's weight lies is kept, so that the weights a run
learned can be read back (:func:`learned_weights`).

All of it is done with numpy over whole projections: one sort of every synapse by
(target core, partition, row), never a Python loop per synapse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from machine_models.lif import (
    MasterPopEntry,
    PopTable,
    encode_synaptic_block,
    ring_buffer_shift,
    synapse_words,
    weights_to_u16,
)
from machine_models.stdp import encode_plastic_block, plastic_row_words
from toolchain.errors import ResourceError
from toolchain.keys import KeySpace, Partition
from toolchain.network import Network, NeuronCell, Population, StdpSynapse
from toolchain.splitting import (
    MAX_ROW_SYNAPSES,
    SYNAPSE_TYPE_BITS,
    DelayPlan,
    MappingConfig,
    Vertex,
    VertexKind,
    ceil_log2,
)

__all__ = [
    "CoreSynapses",
    "PlasticIndex",
    "SynapseBuild",
    "build_synapses",
    "learned_weights",
    "weight_shifts",
]

_ROW_BITS = 32
_ROW_MASK = (1 << _ROW_BITS) - 1


@dataclass(frozen=True)
class CoreSynapses:
    """The synaptic data of one neuron core."""

    pop_table: PopTable
    matrix: bytes
    n_synapses: int
    plastic_origin: npt.NDArray[np.int64] | None = None
    """Per plastic synapse of the matrix, ``projection index << 40 | synapse index``..."""
    plastic_halfword: npt.NDArray[np.int64] | None = None
    """...and the u16 of the matrix region that holds its weight."""


@dataclass(frozen=True)
class PlasticIndex:
    """Where the weights of one STDP projection lie, in the projection's synapse order.

    Attributes:
        vertex: per synapse, the neuron vertex (an index into the mapping's vertex list).
        halfword: per synapse, the u16 of that core's synaptic matrix holding the weight.
    """

    vertex: npt.NDArray[np.int64]
    halfword: npt.NDArray[np.int64]


@dataclass(frozen=True)
class SynapseBuild:
    """Everything synapses decide for the mapping.

    Attributes:
        cores: synaptic data per neuron vertex.
        targets: sending vertex -> vertices that must receive its packets.
        shifts: (population index, synapse type) -> weight shift.
        n_synapses: synapses built (multapses counted each).
        plastic: projection index -> where its learned weights lie (STDP projections).
    """

    cores: Mapping[Vertex, CoreSynapses]
    targets: Mapping[Vertex, set[Vertex]]
    shifts: Mapping[tuple[int, int], int]
    n_synapses: int
    plastic: Mapping[int, PlasticIndex] = field(default_factory=dict)


def _weight_scale(post: Population) -> float:
    """The factor 7.4.1's host applies to weights onto ``post`` (1024 for conductance input)."""
    return post.cell.weight_scale if isinstance(post.cell, NeuronCell) else 1.0


POISSON_SIGMA_SUMMATION_LIMIT = 3.0
"""Standard deviations above the mean spike count at which 7.4.1 ends the Poisson sum of the
weight variance (its ``POSSION_SIGMA_SUMMATION_LIMIT``)."""


@dataclass
class _RunningStats:
    """7.4.1's ``RunningStats``: mean and variance of items added in batches by their own."""

    n_items: int = 0
    mean: float = 0.0
    mean_2: float = 0.0

    def add_items(self, mean: float, variance: float, n_items: int) -> None:
        """Add ``n_items`` items of that mean and (sample) variance."""
        if n_items <= 0:
            return
        total = self.n_items + n_items
        delta = mean - self.mean
        self.mean_2 += variance * (n_items - 1.0) + delta * delta * self.n_items * n_items / total
        self.mean = (self.n_items * self.mean + n_items * mean) / total
        self.n_items = total

    @property
    def variance(self) -> float:
        return 0.0 if self.n_items <= 1 else self.mean_2 / (self.n_items - 1.0)


def _log_poisson_below(lam: float, upper: int) -> float:
    """log of sum_{k < upper} lam**k / k!, summed in logs (no overflow for large ``lam``)."""
    terms = [k * math.log(lam) - math.lgamma(k + 1) for k in range(upper)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def expected_upper_bound(
    weight_mean: float,
    weight_sd: float,
    spikes_per_second: float,
    n_synapses: int,
    sigma: float,
    steps_per_second: float,
) -> float:
    """7.4.1's ``_ring_buffer_expected_upper_bound``: mean + sigma sd of one step's summed input.

    ``n_synapses`` sources at ``spikes_per_second`` bring lam = n r / steps spikes a step.
    The variance has a Poisson part, lam x mean**2, and a weight part, the weight variance
    times the expected count over counts up to U = round(lam + 3 sqrt(lam)):
    sum_{k <= U} P(k) k sd**2 = lam sd**2 P(count < U). 7.4.1 writes the last factor as
    ``exp(-lam) (exp(lam) gammaincc(U + 1, lam) - lam**U / U!)``, the same sum, and leaves the
    weight part out where log(lam**U / U!) is 0 or beyond +-701 (so always when U is 0, a
    handful of synapses at a fine timestep).
    """
    lam = n_synapses * spikes_per_second / steps_per_second
    poisson_variance = lam * weight_mean**2
    upper = round(lam + POISSON_SIGMA_SUMMATION_LIMIT * math.sqrt(lam))
    weight_variance = 0.0
    if weight_sd > 0 and lam > 0:
        big_ratio = math.log(lam) * upper - math.lgamma(1 + upper)
        if -701.0 < big_ratio < 701.0 and big_ratio != 0.0:
            weight_variance = math.exp(
                -lam + math.log(lam) + 2.0 * math.log(weight_sd) + _log_poisson_below(lam, upper)
            )
    return lam * weight_mean + sigma * math.sqrt(poisson_variance + weight_variance)


def weight_shifts(network: Network, config: MappingConfig) -> dict[tuple[int, int], int]:
    """The ring-buffer weight shift of every (target population, synapse type), as 7.4.1 picks it.

    For each synapse type W is the largest summed weight one step may bring (spec 3.5), from
    each projection's largest in-degree n, the mean, variance and largest of its |weights|
    (an STDP projection counts as all at the rule's ``w_max``, 7.4.1's ``get_weight_mean``),
    and the variance of its delays (``population_vertex.py``'s ``_Stats``):

    * when no projection of that type has delays that vary, the worst case: the sum over the
      projections of n x max |weight|, every source counting as one spike per step;
    * otherwise :func:`expected_upper_bound` of all the type's synapses pooled (7.4.1's
      ``RunningStats``, n the sum of the projections' n) with every source firing at
      ``spikes_per_second``, capped by that worst case, at least the largest weight.

    The shift is then ceil(log2 W), one more when W is a power of two, at least 0.
    ``config.weight_shifts``, when given, is used as it is (a run continued after a
    parameter change keeps the shifts its ring buffers were filled with).
    """
    if config.weight_shifts is not None:
        return dict(config.weight_shifts)
    steps_per_second = 1000.0 / network.dt_ms
    spikes_per_step = max(1.0, config.spikes_per_second / steps_per_second)
    weights: dict[tuple[int, int], _RunningStats] = {}
    delays: dict[tuple[int, int], _RunningStats] = {}
    biggest: dict[tuple[int, int], float] = {}
    worst: dict[tuple[int, int], float] = {}
    for proj in network.projections:
        _, post, weight, delay = proj.synapses(network.dt_ms)
        if weight.size == 0:
            continue
        magnitude = np.abs(weight) * _weight_scale(proj.post)
        w_max = float(magnitude.max())
        w_mean, w_var = float(magnitude.mean()), float(magnitude.var())
        if isinstance(proj.synapse, StdpSynapse):
            # 7.4.1 scales for the largest weight the rule may set, every weight at it
            w_max = max(w_max, proj.synapse.w_max * _weight_scale(proj.post))
            w_mean, w_var = w_max, 0.0
        slot = (proj.post.index, 0 if proj.receptor_type == "excitatory" else 1)
        n_conns = int(np.bincount(post, minlength=proj.post.size).max())
        weights.setdefault(slot, _RunningStats()).add_items(w_mean, w_var, n_conns)
        delays.setdefault(slot, _RunningStats()).add_items(0.0, float(np.var(delay)), n_conns)
        worst[slot] = worst.get(slot, 0.0) + spikes_per_step * w_max * n_conns
        biggest[slot] = max(biggest.get(slot, 0.0), w_max)
    shifts: dict[tuple[int, int], int] = {}
    for pop in network.populations:
        for syn_type in (0, 1):
            slot = (pop.index, syn_type)
            if slot not in worst:
                shifts[slot] = 0
                continue
            if delays[slot].variance == 0.0:
                bound = max(worst[slot], biggest[slot])
            else:
                stats = weights[slot]
                spread = expected_upper_bound(
                    stats.mean,
                    math.sqrt(stats.variance),
                    config.spikes_per_second,
                    stats.n_items,
                    config.ring_buffer_sigma,
                    steps_per_second,
                )
                bound = max(min(spread, worst[slot]), biggest[slot])
            shifts[slot] = ring_buffer_shift(bound)
    return shifts


def build_synapses(
    network: Network,
    vertices: Sequence[Vertex],
    keys: KeySpace,
    delays: DelayPlan,
    config: MappingConfig,
) -> SynapseBuild:
    """Build the synaptic matrices and master population tables of every neuron core.

    Raises:
        ResourceError: a row (one source neuron to one core, one delay stage) holds more
            than 256 synapses, or a population has more cores than the table can index.
    """
    by_slot = {(v.population.index, v.kind is VertexKind.DELAY, v.slice_index): v for v in vertices}
    neuron_vertices = [v for v in vertices if v.kind is VertexKind.NEURON]
    post_id = {v: n for n, v in enumerate(neuron_vertices)}
    part_list = sorted(keys.partition_index, key=lambda p: keys.partition_index[p])
    n_parts = len(part_list)
    shifts = weight_shifts(network, config)

    gkeys: list[npt.NDArray[np.int64]] = []
    words: list[npt.NDArray[np.uint32]] = []
    origins: list[npt.NDArray[np.int64]] = []
    n_synapses = 0
    for proj_index, proj in enumerate(network.projections):
        pre, post, weight, delay_ms = proj.synapses(network.dt_ms)
        if pre.size == 0:
            continue
        is_plastic = isinstance(proj.synapse, StdpSynapse)
        n_synapses += pre.size
        steps = network.delay_steps(delay_ms).astype(np.int32)
        pre_stride = config.atoms_per_core(proj.pre)
        post_stride = config.atoms_per_core(proj.post)
        stage_steps = delays.stage_steps.get(proj.pre.index)
        if stage_steps is None:
            stage = np.zeros(pre.size, dtype=np.int32)
        else:
            stage = (steps - 1) // stage_steps
            steps = steps - stage * stage_steps
        syn_type = 0 if proj.receptor_type == "excitatory" else 1
        index_bits = ceil_log2(post_stride)
        w16 = weights_to_u16(weight * _weight_scale(proj.post), shifts[(proj.post.index, syn_type)])
        post_slice = (post // post_stride).astype(np.int32)
        word = synapse_words(
            w16,
            steps,
            np.uint32(syn_type),
            post - post_slice * post_stride,
            index_bits,
            SYNAPSE_TYPE_BITS,
        )
        del w16
        first_post = post_id[by_slot[(proj.post.index, False, 0)]]
        direct = keys.partition_index[Partition(proj.pre.index, False)]
        row = pre.copy()
        part = np.full(pre.size, direct, dtype=np.int64)
        delayed = stage > 0
        if delayed.any():
            n_stages = delays.n_stages[proj.pre.index]
            src_core = pre[delayed] // pre_stride
            row[delayed] = (
                src_core * n_stages * pre_stride
                + (stage[delayed] - 1) * pre_stride
                + pre[delayed]
                - src_core * pre_stride
            )
            part[delayed] = keys.partition_index[Partition(proj.pre.index, True)]
        group = (first_post + post_slice.astype(np.int64)) * n_parts + part
        gkeys.append((group * 2 + int(is_plastic)) << _ROW_BITS | row)
        words.append(word)
        origins.append(
            (proj_index << _ORIGIN_BITS) + np.arange(pre.size, dtype=np.int64)
            if is_plastic
            else np.full(pre.size, -1, dtype=np.int64)
        )
        del row, part, post_slice, steps, stage
    if not gkeys:
        all_keys = np.zeros(0, dtype=np.int64)
        all_words = np.zeros(0, dtype=np.uint32)
        all_origins = np.zeros(0, dtype=np.int64)
    else:
        all_keys = np.concatenate(gkeys)
        all_words = np.concatenate(words)
        all_origins = np.concatenate(origins)
        del gkeys, words, origins
        order = np.argsort(all_keys, kind="stable")
        all_keys = all_keys[order]
        all_words = all_words[order]
        all_origins = all_origins[order]
        del order
    groups = all_keys >> _ROW_BITS
    starts = (
        np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        if groups.size
        else np.zeros(0, dtype=np.int64)
    )
    ends = np.r_[starts[1:], groups.size].astype(np.int64) if groups.size else starts

    per_core: dict[Vertex, list[_Block]] = {}
    targets: dict[Vertex, set[Vertex]] = {}
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        cell_group, plastic_bit = divmod(int(groups[lo]), 2)
        post_vertex = neuron_vertices[cell_group // n_parts]
        partition = part_list[cell_group % n_parts]
        rows = all_keys[lo:hi] & _ROW_MASK
        pre_pop = network.populations[partition.population_index]
        stride = config.atoms_per_core(pre_pop)
        n_stages = delays.n_stages.get(pre_pop.index, 0) if partition.is_delay else 1
        rows_per_core = stride * n_stages
        per_core.setdefault(post_vertex, []).append(
            _Block(
                partition,
                rows_per_core,
                rows,
                all_words[lo:hi],
                all_origins[lo:hi] if plastic_bit else None,
            )
        )
        src_rows = np.unique(rows)
        for core in np.unique(src_rows // rows_per_core).tolist():
            source = by_slot[(pre_pop.index, partition.is_delay, core)]
            targets.setdefault(source, set()).add(post_vertex)
        if partition.is_delay:
            for core in np.unique(src_rows // rows_per_core).tolist():
                delay_vertex = by_slot[(pre_pop.index, True, core)]
                targets.setdefault(by_slot[(pre_pop.index, False, core)], set()).add(delay_vertex)

    cores: dict[Vertex, CoreSynapses] = {}
    for vertex in neuron_vertices:
        cores[vertex] = _core_synapses(per_core.get(vertex, []), keys, config)
    plastic = _plastic_index(network, vertices, cores)
    return SynapseBuild(cores, targets, shifts, n_synapses, plastic)


_ORIGIN_BITS = 40


@dataclass(frozen=True)
class _Block:
    """The synapses of one block: one partition's rows on one core, static or plastic."""

    partition: Partition
    rows_per_core: int
    rows: npt.NDArray[np.int64]
    words: npt.NDArray[np.uint32]
    origins: npt.NDArray[np.int64] | None
    """Per synapse of a plastic block, ``projection << 40 | synapse``; None when static."""


def _plastic_index(
    network: Network, vertices: Sequence[Vertex], cores: Mapping[Vertex, CoreSynapses]
) -> dict[int, PlasticIndex]:
    vertex_index = {v: i for i, v in enumerate(vertices)}
    parts: dict[int, list[tuple[npt.NDArray[np.int64], int, npt.NDArray[np.int64]]]] = {}
    for vertex, core in cores.items():
        if core.plastic_origin is None or core.plastic_halfword is None:
            continue
        proj = core.plastic_origin >> _ORIGIN_BITS
        for p in np.unique(proj).tolist():
            sel = proj == p
            parts.setdefault(int(p), []).append(
                (
                    core.plastic_origin[sel] & ((1 << _ORIGIN_BITS) - 1),
                    vertex_index[vertex],
                    core.plastic_halfword[sel],
                )
            )
    index: dict[int, PlasticIndex] = {}
    for p, pieces in parts.items():
        n = network.projections[p].synapses(network.dt_ms)[0].size
        where_vertex = np.full(n, -1, dtype=np.int64)
        where_half = np.full(n, -1, dtype=np.int64)
        for synapse, v, half in pieces:
            where_vertex[synapse] = v
            where_half[synapse] = half
        index[p] = PlasticIndex(where_vertex, where_half)
    return index


def _core_synapses(
    blocks: list[_Block],
    keys: KeySpace,
    config: MappingConfig,
) -> CoreSynapses:
    entries: list[MasterPopEntry] = []
    addresses: list[tuple[int, int]] = []
    chunks: list[bytes] = []
    offset = 0
    n_synapses = 0
    core_field = (1 << keys.n_core_bits) - 1
    origins: list[npt.NDArray[np.int64]] = []
    halfwords: list[npt.NDArray[np.int64]] = []
    for block_info in sorted(
        blocks, key=lambda b: (keys.partition_key(b.partition), b.origins is not None)
    ):
        partition, rows_per_core, rows, words = (
            block_info.partition,
            block_info.rows_per_core,
            block_info.rows,
            block_info.words,
        )
        n_rows = int(rows.max()) + 1
        n_rows = math.ceil(n_rows / rows_per_core) * rows_per_core
        counts = np.bincount(rows, minlength=n_rows)
        is_plastic = block_info.origins is not None
        row_length = max(1, int(counts.max()))
        if is_plastic:
            row_length = int(plastic_row_words(row_length))
        if row_length > MAX_ROW_SYNAPSES:
            worst = int(counts.argmax())
            what = f"plastic synapses ({row_length} words)" if is_plastic else "synapses"
            raise ResourceError(
                f"source neuron row {worst} of partition {partition.population_index}"
                f"{' (delayed)' if partition.is_delay else ''} has {int(counts.max())} {what} "
                f"to one core, above the {MAX_ROW_SYNAPSES} a row can hold"
            )
        if core_field >= 1 << 8:
            raise ResourceError(
                f"a population of {core_field + 1} cores exceeds the 256 "
                f"cores a master population entry can index"
            )
        row_ptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=row_ptr[1:])
        if block_info.origins is not None:
            block = encode_plastic_block(
                row_ptr, words >> np.uint32(16), words & np.uint32(0xFFFF), row_length
            ).tobytes()
            # weight j of row r: u16 2 * (3 + r * (row_length + 3)) + j of the block
            row_of = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
            within = np.arange(words.size, dtype=np.int64) - row_ptr[row_of]
            halfwords.append(offset // 2 + 2 * (3 + row_of * (row_length + 3)) + within)
            origins.append(block_info.origins)
        else:
            block = encode_synaptic_block(row_ptr, words, row_length).tobytes()
        key = keys.partition_key(partition)
        if entries and entries[-1].key == key:
            # the plastic block of a partition that also has a static one: a second address
            last = entries.pop()
            entries.append(replace(last, count=last.count + 1))
        else:
            entries.append(
                MasterPopEntry(
                    key=key,
                    mask=keys.partition_mask,
                    start=len(addresses),
                    count=1,
                    n_colour_bits=config.n_colour_bits,
                    core_mask=core_field,
                    mask_shift=keys.core_shift,
                    n_neurons=rows_per_core,
                )
            )
        addresses.append((offset, row_length))
        padding = -len(block) % 16
        chunks.append(block + b"\0" * padding)
        offset += len(block) + padding
        n_synapses += int(words.size)
    return CoreSynapses(
        PopTable(tuple(entries), tuple(addresses)),
        b"".join(chunks),
        n_synapses,
        np.concatenate(origins) if origins else None,
        np.concatenate(halfwords) if halfwords else None,
    )


def learned_weights(
    network: Network,
    projection_index: int,
    index: PlasticIndex,
    shifts: Mapping[tuple[int, int], int],
    matrices: Sequence[npt.NDArray[np.uint32] | None],
) -> npt.NDArray[np.float64]:
    """The weights (nA, uS on conductance cells) of an STDP projection, in synapse order.

    Args:
        network: the mapped network.
        projection_index: the projection's position in ``network.projections``.
        index: where its weights lie (:attr:`SynapseBuild.plastic`).
        shifts: the mapping's weight shifts.
        matrices: per vertex of the mapping (by index), the synaptic-matrix region of its
            core as a run left it, or None for cores that are not plastic.

    Raises:
        ResourceError: a core that holds some of the weights has no matrix.
    """
    proj = network.projections[projection_index]
    syn_type = 0 if proj.receptor_type == "excitatory" else 1
    shift = shifts[(proj.post.index, syn_type)]
    out = np.zeros(index.vertex.size, dtype=np.float64)
    for v in np.unique(index.vertex).tolist():
        matrix = matrices[int(v)]
        if matrix is None:
            raise ResourceError(f"no synaptic matrix was read back for core {v} of {proj.label!r}")
        sel = index.vertex == v
        halves = np.ascontiguousarray(matrix, dtype=np.uint32).view(np.uint16)
        out[sel] = halves[index.halfword[sel]].astype(np.float64)
    return out * 2.0 ** (shift - 15) / _weight_scale(proj.post)
