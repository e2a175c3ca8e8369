"""Small images built by hand for the chip-model tests: neuron cores, sources, routes."""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

from machine_models import lif, sources
from machine_models.executor import Results
from machine_models.geometry import ChipXY
from machine_models.image import AppId, CoreImage, Image, RoutingEntry, route_word
from machine_models.regions import (
    REGION_DATA,
    REGION_KEYS,
    REGION_POP_TABLE,
    REGION_RECORDING,
    REGION_SYNAPSE_PARAMS,
    REGION_SYNAPTIC_MATRIX,
    encode_keys,
)

LIF_BASE = 1 << 20
POISSON_BASE = 2 << 20
ARRAY_BASE = 3 << 20
DELAY_BASE = 4 << 20
EMPTY_TABLE = lif.PopTable((), ())
RECORD_ALL = lif.RecordingParams(True, 1, 1, 1)


def neuron_core(
    chip: ChipXY,
    p: int,
    params: lif.LifParams,
    *,
    key_base: int,
    synapse_params: lif.SynapseParams | None = None,
    pop_table: lif.PopTable = EMPTY_TABLE,
    matrix: npt.NDArray[np.uint32] | None = None,
    recording: lif.RecordingParams = RECORD_ALL,
    timestep_us: int = 1000,
    n_colour_bits: int = 4,
) -> CoreImage:
    """An IF_curr_exp core whose neuron n sends ``key_base + (n << n_colour_bits)``."""
    n = params.n_neurons
    sp = synapse_params or lif.SynapseParams(n, 8, 1, 4, 0, 0)
    words = np.zeros(0, np.uint32) if matrix is None else matrix
    return CoreImage(
        chip,
        p,
        AppId.IF_CURR_EXP,
        {
            REGION_KEYS: encode_keys(key_base + (np.arange(n) << n_colour_bits), n_colour_bits),
            REGION_DATA: lif.encode_neuron_params(params, timestep_us),
            REGION_SYNAPSE_PARAMS: lif.encode_synapse_params(sp),
            REGION_POP_TABLE: lif.encode_pop_table(pop_table),
            REGION_SYNAPTIC_MATRIX: words.astype("<u4").tobytes(),
            REGION_RECORDING: lif.encode_recording(recording),
        },
    )


def array_core(
    chip: ChipXY,
    p: int,
    steps: npt.ArrayLike,
    neurons: npt.ArrayLike,
    n_neurons: int,
    key_base: int,
) -> CoreImage:
    """A SpikeSourceArray core; neuron n sends ``key_base + (n << 4)``."""
    return CoreImage(
        chip,
        p,
        AppId.SPIKE_SOURCE_ARRAY,
        {
            REGION_KEYS: encode_keys(key_base + (np.arange(n_neurons) << 4), 4),
            REGION_DATA: sources.encode_spike_array(steps, neurons),
        },
    )


def poisson_core(
    chip: ChipXY,
    p: int,
    params: sources.PoissonParams,
    key_base: int,
    timestep_us: int = 1000,
) -> CoreImage:
    """A SpikeSourcePoisson core; neuron n sends ``key_base + (n << 4)``."""
    return CoreImage(
        chip,
        p,
        AppId.SPIKE_SOURCE_POISSON,
        {
            REGION_KEYS: encode_keys(key_base + (np.arange(params.n_neurons) << 4), 4),
            REGION_DATA: sources.encode_poisson_params(params, timestep_us),
        },
    )


def rows_block(
    n_sources: int,
    pre: npt.ArrayLike,
    words: npt.ArrayLike,
) -> tuple[npt.NDArray[np.uint32], int]:
    """A synaptic block with one row per source neuron (rows sorted by ``pre``).

    Returns:
        The block's words and its row length.
    """
    pre_a = np.asarray(pre, dtype=np.int64)
    order = np.argsort(pre_a, kind="stable")
    counts = np.bincount(pre_a, minlength=n_sources)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    row_length = max(1, int(counts.max()) if counts.size else 1)
    block = lif.encode_synaptic_block(ptr, np.asarray(words, np.uint32)[order], row_length)
    return block, row_length


def recurrent_network(
    seed: int = 3, n_per_core: int = 100, n_steps_hint: int = 0, *, min_delay: int = 1
) -> Image:
    """Two neuron cores on two chips, recurrently connected, driven by Poisson and an array.

    Chip (0, 0) core 1 and chip (1, 0) core 1 hold the neurons; Poisson sources (fast regime on
    (0, 0) core 2, slow on (1, 0) core 2) feed them one-to-one, and a spike array on (0, 0)
    core 3 kicks neuron 0 of both. Weights are strong enough for ring buffers to saturate.
    Every delay is at least ``min_delay`` steps (at most 15), which lets the executor advance
    that many steps between exchanges of spikes.
    """
    del n_steps_hint
    rng = np.random.default_rng(seed)
    n = 2 * n_per_core
    places = [(ChipXY(0, 0), 1), (ChipXY(1, 0), 1)]
    pre = rng.integers(0, n, 20 * n)
    post = rng.integers(0, n, 20 * n)
    is_inh = pre % 4 == 3
    weights = np.where(
        is_inh, rng.integers(2000, 9000, pre.size), rng.integers(1000, 30000, pre.size)
    )
    delays = rng.integers(min_delay, 16, pre.size)
    tables: dict[ChipXY, list[RoutingEntry]] = {ChipXY(0, 0): [], ChipXY(1, 0): []}
    cores: list[CoreImage] = []
    for c, (chip, p) in enumerate(places):
        sel = post // n_per_core == c
        words = lif.synapse_words(
            weights[sel], delays[sel], is_inh[sel].astype(np.uint32), post[sel] % n_per_core, 8, 1
        )
        block, row_length = rows_block(n, pre[sel], words)
        one_w = lif.synapse_words(
            np.full(n_per_core, 12000), min_delay, 0, np.arange(n_per_core), 8, 1
        )
        one = lif.encode_synaptic_block(np.arange(n_per_core + 1), one_w, 1)
        kick = lif.encode_synaptic_block(
            np.array([0, 1]), lif.synapse_words([60000], [max(2, min_delay)], [0], [0], 8, 1), 1
        )
        matrix = np.concatenate([block, one, kick])
        table = lif.PopTable(
            (
                # every neuron core: core index in bits 12-13, neuron in bits 4-11
                lif.MasterPopEntry(LIF_BASE, 0xFFFFC000, 0, 1, 4, 0x3, 12, n_per_core),
                lif.MasterPopEntry(POISSON_BASE | c << 12, 0xFFFFF000, 1, 1, 4, 0, 0, 0),
                lif.MasterPopEntry(ARRAY_BASE, 0xFFFFF000, 2, 1, 4, 0, 0, 0),
            ),
            (
                (0, row_length),
                (block.size * 4, 1),
                ((block.size + one.size) * 4, 1),
            ),
        )
        params = lif.LifParams(
            n_per_core,
            v_init=rng.uniform(-65.0, -55.0, n_per_core),
            v_rest=-65.0,
            cm=1.0,
            tau_m=20.0,
            v_reset=-70.0,
            v_thresh=-50.0,
            tau_refrac=2.0,
            tau_syn_e=5.0,
            tau_syn_i=5.0,
        )
        cores.append(
            neuron_core(
                chip,
                p,
                params,
                key_base=LIF_BASE | c << 12,
                synapse_params=lif.SynapseParams(n_per_core, 8, 1, 4, 1, 2),
                pop_table=table,
                matrix=matrix,
                recording=lif.RecordingParams(True, 1, 2, 3),
            )
        )
        rate = 900.0 if c == 0 else 5.0
        cores.append(
            poisson_core(
                chip,
                p + 1,
                sources.PoissonParams(n_per_core, rate, (seed, c + 1, 5, 9)),
                POISSON_BASE | c << 12,
            )
        )
        tables[chip].append(RoutingEntry(POISSON_BASE | c << 12, 0xFFFFF000, route_word((), (p,))))
    cores.append(array_core(ChipXY(0, 0), 3, [5, 5, 40, 41], [0, 0, 0, 0], 1, ARRAY_BASE))
    # spikes of core 0 and the array go east to (1, 0); spikes of core 1 go west to (0, 0)
    tables[ChipXY(0, 0)] += [
        RoutingEntry(LIF_BASE, 0xFFFFF000, route_word((0,), (1,))),
        RoutingEntry(LIF_BASE | 1 << 12, 0xFFFFF000, route_word((), (1,))),
        RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((0,), (1,))),
    ]
    tables[ChipXY(1, 0)] += [
        RoutingEntry(LIF_BASE, 0xFFFFF000, route_word((), (1,))),
        RoutingEntry(LIF_BASE | 1 << 12, 0xFFFFF000, route_word((3,), (1,))),
        RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((), (1,))),
    ]
    return Image(1000, tuple(cores), {k: tuple(v) for k, v in tables.items()})


def digest(results: Results) -> str:
    """A SHA-256 over every spike, recording and counter of a run, for pinning outputs."""
    h = hashlib.sha256()
    for name, mapping in (
        ("spikes", results.spikes),
        ("v", results.v_mv),
        ("ge", results.gsyn_exc_na),
        ("gi", results.gsyn_inh_na),
    ):
        for xyp in sorted(mapping):
            h.update(f"{name}{tuple(xyp)}".encode())
            h.update(np.ascontiguousarray(mapping[xyp]).tobytes())
    for xyp in sorted(results.core_provenance):
        h.update(repr((tuple(xyp), sorted(results.core_provenance[xyp].items()))).encode())
    for chip in sorted(results.router_provenance):
        h.update(repr((tuple(chip), sorted(results.router_provenance[chip].items()))).encode())
    return h.hexdigest()


def driven_image(
    params: lif.LifParams,
    spikes: list[tuple[int, int]],
    synapses: list[tuple[int, int, int, int, int]],
    *,
    n_sources: int = 1,
    shifts: tuple[int, int] = (2, 2),
    delay_bits: int = 4,
    recording: lif.RecordingParams = RECORD_ALL,
    timestep_us: int = 1000,
) -> Image:
    """A spike array on (0, 0) core 2 driving the neuron core (0, 0) core 1.

    Args:
        params: The neurons.
        spikes: (step, source neuron) of every spike the array sends.
        synapses: (source, target, stored u16 weight, delay steps, type 0 exc / 1 inh).
        n_sources: Neurons of the spike array.
        shifts: Ring-buffer weight shifts (excitatory, inhibitory).
        delay_bits: log2 of the neuron core's delay slots.
        recording: What the neuron core records.
        timestep_us: The step of the image.
    """
    pre = [s[0] for s in synapses]
    words = lif.synapse_words(
        [s[2] for s in synapses],
        [s[3] for s in synapses],
        [s[4] for s in synapses],
        [s[1] for s in synapses],
        8,
        1,
    )
    block, row_length = rows_block(n_sources, pre, words)
    table = lif.PopTable(
        (lif.MasterPopEntry(ARRAY_BASE, 0xFFFFF000, 0, 1, 4, 0, 0, 0),), ((0, row_length),)
    )
    sp = lif.SynapseParams(params.n_neurons, 8, 1, delay_bits, shifts[0], shifts[1])
    neurons = neuron_core(
        ChipXY(0, 0),
        1,
        params,
        key_base=LIF_BASE,
        synapse_params=sp,
        pop_table=table,
        matrix=block,
        recording=recording,
        timestep_us=timestep_us,
    )
    source = array_core(
        ChipXY(0, 0), 2, [s[0] for s in spikes], [s[1] for s in spikes], n_sources, ARRAY_BASE
    )
    tables = {ChipXY(0, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((), (1,))),)}
    return Image(timestep_us, (neurons, source), tables)
