"""Poisson sources against a step-by-step reference of sPyNNaker 7.4.1's spike_source_poisson.c.

The reference (``reference.PoissonCore``) is written from the C on Python integers: the KISS
generator, Knuth's method for fast sources (a product of u0.32 uniforms from 0xFFFFFFFF), von
Neumann's exponential variate for slow ones (time kept in ticks x 1000), all slow sources
drawing their first interval at load. A core mixing both regimes must send the reference's
counts step for step, and end with the reference's generator state. The parameter
quantisation (lambda in s16.15, exp(-lambda) from expk, whole-tick ISIs, rounded start ticks,
the cut-offs as the core reads them) is pinned separately.
"""

from __future__ import annotations

import numpy as np
import pytest

from machine_models import Executor, Image, Topology, sources
from machine_models.geometry import ChipXY
from tests.machine_models.networks import POISSON_BASE, poisson_core
from tests.machine_models.reference import Kiss, PoissonCore

BOARD = Topology.single_board()


def reference(records: np.ndarray, seed: tuple[int, int, int, int], n_steps: int):  # type: ignore[no-untyped-def]
    """Per step, the spikes the core sends; and the generator's final state."""
    core = PoissonCore(records, Kiss(seed))
    per_step = [sum(k for _, k in core.step(t)) for t in range(n_steps)]
    return per_step, core.rng.state()


@pytest.mark.parametrize(
    "rates_hz",
    [
        [3.0, 900.0, 50.0, 2000.0, 0.0, 7.0],  # both regimes, and a silent source
        [900.0] * 8,  # all fast, one rate: the executor's branch-free path
        [300.0, 900.0, 1500.0],  # all fast, a rate each
    ],
)
def test_streams_match_the_reference_spike_for_spike(rates_hz: list[float]) -> None:
    seed = (123456789, 362436069, 521288629, 7654321)
    params = sources.PoissonParams(len(rates_hz), rates_hz, seed, start_ms=2.0)
    core = poisson_core(ChipXY(0, 0), 2, params, POISSON_BASE)
    _, records = sources.decode_poisson_params(core.regions[2])
    expected, final_state = reference(records, seed, 300)
    ex = Executor(Image(1000, (core,)), BOARD)
    sent = [ex.run(1).core_provenance[(0, 0, 2)]["spikes_sent"] for _ in range(300)]
    assert np.diff([0, *sent]).tolist() == expected
    assert ex._po.state[0].tolist() == final_state
    assert sum(expected) > 100


def test_rate_quantisation_is_the_cores() -> None:
    def record(rate: float, timestep_us: int, start_ms: float = 0.0) -> np.void:
        params = sources.PoissonParams(1, rate, (1, 2, 3, 4), start_ms)
        return sources.decode_poisson_params(sources.encode_poisson_params(params, timestep_us))[1][
            0
        ]

    # brunel's drive: lambda = 2.0 exactly in s16.15; exp(-2) in 15 bits is 4434 / 32768
    fast = record(20000.0, 100)
    assert fast["regime"] == sources.REGIME_FAST
    assert fast["exp_minus_lambda"] == 4434 << 17
    # slow: the mean ISI in whole ticks (1000 / 3 -> 333: 0.1 % faster than asked)
    assert record(3.0, 1000)["isi_ticks"] == 333
    assert record(5.0, 1000)["isi_ticks"] == 200
    # the cut-off as the core reads 0.01's u16.16 word: lambda 0.019 is still slow
    assert record(19.0, 1000)["regime"] == sources.REGIME_SLOW
    assert record(21.0, 1000)["regime"] == sources.REGIME_FAST
    # ... and 10's word reads as 20: lambda 19.99997 (20 kHz at 1 ms, truncated) is "fast",
    # with exp(-lambda) = 0 in 15 bits, so the source is silent, as on the chip
    silent = record(20000.0, 1000)
    assert silent["regime"] == sources.REGIME_FAST
    assert silent["exp_minus_lambda"] == 0
    assert record(25000.0, 1000)["regime"] == sources.REGIME_FASTER
    # start ticks round to nearest, half up
    assert record(100.0, 100, 1.05)["start_step"] == 11
    assert record(100.0, 100, 1.04)["start_step"] == 10


def test_a_source_with_zero_spikes_per_tick_in_15_bits_sends_nothing() -> None:
    core = poisson_core(
        ChipXY(0, 0), 2, sources.PoissonParams(4, 20000.0, (1, 2, 3, 4)), POISSON_BASE
    )
    prov = Executor(Image(1000, (core,)), BOARD).run(100).core_provenance[(0, 0, 2)]
    assert prov["spikes_sent"] == 0
