"""Delays of 1 to 8 x the on-core slots: the on-core ring buffer plus a delay-extension core."""

from __future__ import annotations

import numpy as np
import pytest

from machine_models import Executor, Topology, lif, validate
from machine_models.delays import DelayParams, encode_delay_params
from machine_models.geometry import ChipXY
from machine_models.image import AppId, CoreImage, Image, RoutingEntry, route_word
from machine_models.regions import REGION_DATA
from tests.machine_models.networks import (
    ARRAY_BASE,
    DELAY_BASE,
    LIF_BASE,
    array_core,
    neuron_core,
    rows_block,
)

BOARD = Topology.single_board()
SLOTS = 16
DELAYS = [1, 2, 15, 16, 17, 31, 32, 33, 48, 64, 65, 100, 127, 128]


def delayed_image(delays: list[int], spikes: list[tuple[int, int]]) -> Image:
    """Source neuron 0 of an array connects to neuron i of a core with ``delays[i]``.

    Delays above the core's 16 slots are split as the host does: stage
    ``(delay - 1) // 16`` through the delay extension, the rest (1..16) on the core.
    """
    n = len(delays)
    stages = [(d - 1) // SLOTS for d in delays]
    n_stages = max(max(stages), 1)
    direct = [(i, d) for i, (d, s) in enumerate(zip(delays, stages, strict=True)) if s == 0]
    late = [(i, d, s) for i, (d, s) in enumerate(zip(delays, stages, strict=True)) if s > 0]
    w = 1000
    direct_words = lif.synapse_words(
        [w] * len(direct), [d for _, d in direct], [0] * len(direct), [i for i, _ in direct], 8, 1
    )
    block0, len0 = rows_block(1, [0] * len(direct), direct_words)
    block0 = np.concatenate([block0, np.zeros(-block0.size % 4, np.uint32)])  # 16-byte aligned
    late_words = lif.synapse_words(
        [w] * len(late),
        [d - s * SLOTS for _, d, s in late],
        [0] * len(late),
        [i for i, _, _ in late],
        8,
        1,
    )
    block1, len1 = rows_block(n_stages, [s - 1 for _, _, s in late], late_words)
    table = lif.PopTable(
        (
            lif.MasterPopEntry(ARRAY_BASE, 0xFFFFF000, 0, 1, 4, 0, 0, 0),
            lif.MasterPopEntry(DELAY_BASE, 0xFFFFF000, 1, 1, 4, 0, 0, 0),
        ),
        ((0, len0), (block0.size * 4, len1)),
    )
    neurons = neuron_core(
        ChipXY(0, 0),
        1,
        lif.LifParams(n, v_thresh=100.0),
        key_base=LIF_BASE,
        synapse_params=lif.SynapseParams(n, 8, 1, 4, 2, 2),
        pop_table=table,
        matrix=np.concatenate([block0, block1]),
        recording=lif.RecordingParams(False, 0, 1, 0),
    )
    extension = CoreImage(
        ChipXY(0, 0),
        3,
        AppId.DELAY_EXTENSION,
        {
            REGION_DATA: encode_delay_params(
                DelayParams(ARRAY_BASE, 0xFFFFF000, 4, 1, n_stages, SLOTS, DELAY_BASE, 4)
            )
        },
    )
    source = array_core(
        ChipXY(0, 0), 2, [t for t, _ in spikes], [i for _, i in spikes], 1, ARRAY_BASE
    )
    tables = {
        ChipXY(0, 0): (
            RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((), (1, 3))),
            RoutingEntry(DELAY_BASE, 0xFFFFF000, route_word((), (1,))),
        )
    }
    return Image(1000, (neurons, extension, source), tables)


def test_delays_of_1_to_8_times_the_slots_arrive_on_time() -> None:
    image = delayed_image(DELAYS, [(2, 0)])
    validate(image, BOARD)
    res = Executor(image, BOARD).run(2 + 128 + 3)
    ge = res.gsyn_exc_na[(0, 0, 1)]
    arrival = [int(np.flatnonzero(ge[:, i])[0]) for i in range(len(DELAYS))]
    assert arrival == [2 + d for d in DELAYS]
    # every target got exactly one spike's worth of input
    init = float(np.max(ge[:, 0]))
    assert np.allclose(ge.max(axis=0), init, atol=2**-15)


def test_delay_extension_sends_payload_counts_and_counts_its_losses() -> None:
    # 300 spikes in one step: the 8-bit counter keeps 255 and counts 45 lost; like 7.4.1 the
    # extension re-sends the count at both stages (16 and 32 steps), although only the second
    # has a synapse waiting
    image = delayed_image([40], [(0, 0)] * 300)
    res = Executor(image, BOARD).run(45)
    assert res.core_provenance[(0, 0, 3)]["spikes_lost_to_saturation"] == 45
    assert res.core_provenance[(0, 0, 3)]["spikes_sent"] == 2 * 255
    assert res.core_provenance[(0, 0, 3)]["packets_sent"] == 2
    # the neuron core receives the array's 300 packets and both of the extension's
    assert res.core_provenance[(0, 0, 1)]["packets_received"] == 300 + 2
    # 255 x 1000 saturates the 16-bit slot: 65 additions fit, 190 are counted
    assert res.core_provenance[(0, 0, 1)]["ring_buffer_saturations"] == 255 - 65


@pytest.mark.parametrize("split", [10, 33, 70])
def test_runs_split_anywhere_give_the_same_delayed_input(split: int) -> None:
    whole = Executor(delayed_image(DELAYS, [(2, 0), (5, 0)]), BOARD).run(140)
    ex = Executor(delayed_image(DELAYS, [(2, 0), (5, 0)]), BOARD)
    a, b = ex.run(split), ex.run(140 - split)
    joined = np.concatenate([a.gsyn_exc_na[(0, 0, 1)], b.gsyn_exc_na[(0, 0, 1)]])
    assert np.array_equal(joined, whole.gsyn_exc_na[(0, 0, 1)])
