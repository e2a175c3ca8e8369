"""A tiny image run a few steps, so that a fresh process loads the executor's kernels early.

numba compiles a kernel (or loads it from its cache) on the kernel's first call, so the first
run in a fresh process pays that loading before its first step. A process that is going to run
images (a dispatch worker) calls `warm_kernels` while it has nothing else to do::

    Poisson sources (core 2) --one-to-one--> LIF neurons (core 1), recorded, on chip (0, 0)
"""

from __future__ import annotations

import numba
import numpy as np

from machine_models import lif, sources
from machine_models.executor import Executor
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
from machine_models.topology import Topology

__all__ = ["warm_kernels", "warm_up_image"]

_N_NEURONS = 8
_LIF_KEY = 1 << 18
_POISSON_KEY = 2 << 18
_KEY_MASK = 0xFFFFF000
_COLOUR_BITS = 4
_TIMESTEP_US = 100


def warm_up_image() -> Image:
    """The warm-up network's image: eight neurons on one core, each driven by its own source."""
    index = np.arange(_N_NEURONS)
    weight = lif.weights_to_u16(2.0, 1)
    matrix = lif.encode_synaptic_block(
        np.arange(_N_NEURONS + 1),
        lif.synapse_words(np.full(_N_NEURONS, weight), 15, 0, index, 8, 1),
        1,
    )
    pop = lif.PopTable(
        (lif.MasterPopEntry(_POISSON_KEY, _KEY_MASK, 0, 1, _COLOUR_BITS, 0, 0, 0),),
        ((0, 1),),
    )
    params = lif.brunel_cell(_N_NEURONS, np.full(_N_NEURONS, 15.0))
    chip = ChipXY(0, 0)
    neurons = CoreImage(
        chip,
        1,
        AppId.IF_CURR_EXP,
        {
            REGION_KEYS: encode_keys(_LIF_KEY | index << _COLOUR_BITS, _COLOUR_BITS),
            REGION_DATA: lif.encode_neuron_params(params, _TIMESTEP_US),
            REGION_SYNAPSE_PARAMS: lif.encode_synapse_params(
                lif.SynapseParams(_N_NEURONS, 8, 1, _COLOUR_BITS, 1, 3)
            ),
            REGION_POP_TABLE: lif.encode_pop_table(pop),
            REGION_SYNAPTIC_MATRIX: matrix.astype("<u4").tobytes(),
            REGION_RECORDING: lif.encode_recording(lif.RecordingParams(True)),
        },
    )
    drive = CoreImage(
        chip,
        2,
        AppId.SPIKE_SOURCE_POISSON,
        {
            REGION_KEYS: encode_keys(_POISSON_KEY | index << _COLOUR_BITS, _COLOUR_BITS),
            REGION_DATA: sources.encode_poisson_params(
                sources.PoissonParams(_N_NEURONS, 2000.0, (1, 2, 7, 11)), _TIMESTEP_US
            ),
        },
    )
    table = (RoutingEntry(_POISSON_KEY, _KEY_MASK, route_word((), (1,))),)
    return Image(_TIMESTEP_US, (neurons, drive), {chip: table})


def warm_kernels(n_steps: int = 200) -> int:
    """Run the warm-up image `n_steps` steps on one thread; the number of spikes it recorded.

    One thread: the warm-up loads code, it has no work worth spreading over the cores that
    another process may be using.
    """
    n_threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        results = Executor(warm_up_image(), Topology.single_board()).run(n_steps)
    finally:
        numba.set_num_threads(n_threads)
    return sum(len(spikes) for spikes in results.spikes.values())
