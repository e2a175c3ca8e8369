"""Poisson sources: rate statistics of the slow, fast and faster regimes; determinism by seed."""

from __future__ import annotations

import numpy as np
import pytest

from machine_models import Executor, Image, Topology, sources
from machine_models.geometry import ChipXY
from tests.machine_models.networks import POISSON_BASE, poisson_core

BOARD = Topology.single_board()


def run_sources(
    rate_hz: float, n: int, n_steps: int, seed: tuple[int, int, int, int]
) -> dict[str, int]:
    core = poisson_core(ChipXY(0, 0), 2, sources.PoissonParams(n, rate_hz, seed), POISSON_BASE)
    return dict(Executor(Image(1000, (core,)), BOARD).run(n_steps).core_provenance[(0, 0, 2)])


@pytest.mark.parametrize(
    ("rate_hz", "regime"),
    [(5.0, sources.REGIME_SLOW), (200.0, sources.REGIME_FAST), (25000.0, sources.REGIME_FASTER)],
)
def test_rate_matches_in_every_regime(rate_hz: float, regime: int) -> None:
    n, n_steps = 200, 2000
    data = sources.encode_poisson_params(sources.PoissonParams(n, rate_hz, (1, 2, 3, 4)), 1000)
    assert sources.decode_poisson_params(data)[1]["regime"][0] == regime
    prov = run_sources(rate_hz, n, n_steps, (9, 8, 7, 6))
    lam = rate_hz / 1000.0
    # round((Z / 2 + sqrt(lambda))^2) has mean lambda + 1/4: the chip's method, bias included
    expected = (lam + (0.25 if regime == sources.REGIME_FASTER else 0.0)) * n * n_steps
    # a Poisson count: within 5 standard deviations
    assert abs(prov["spikes_sent"] - expected) < 5 * np.sqrt(lam * n * n_steps)


def test_slow_regime_sends_one_spike_per_packet_and_faster_sends_payloads() -> None:
    slow = run_sources(5.0, 200, 2000, (17, 29, 31, 37))
    # two spikes of one source in one step are rare at lambda = 0.005 (one packet, payload 2)
    assert 0 <= slow["spikes_sent"] - slow["packets_sent"] < 0.01 * slow["spikes_sent"]
    faster = run_sources(25000.0, 20, 100, (17, 29, 31, 37))
    assert faster["packets_sent"] == 20 * 100  # lambda = 25: k = 0 is practically impossible
    assert faster["spikes_sent"] > 20 * faster["packets_sent"]


def test_faster_regime_variance_is_close_to_lambda() -> None:
    # per-step counts of one source: mean and variance both about lambda = 25
    core = poisson_core(
        ChipXY(0, 0), 2, sources.PoissonParams(1, 25000.0, (3, 1, 4, 1)), POISSON_BASE
    )
    ex = Executor(Image(1000, (core,)), BOARD)
    counts = []
    for _ in range(400):
        counts.append(ex.run(1).core_provenance[(0, 0, 2)]["spikes_sent"])
    per_step = np.diff([0, *counts])
    assert abs(per_step.mean() - 25.25) < 5 * np.sqrt(25.0 / 400)
    assert 15.0 < per_step.var() < 36.0


def test_same_seed_same_spikes_other_seed_other_spikes() -> None:
    a = run_sources(300.0, 50, 500, (5, 6, 7, 8))
    b = run_sources(300.0, 50, 500, (5, 6, 7, 8))
    c = run_sources(300.0, 50, 500, (5, 6, 7, 9))
    assert a == b
    assert a["spikes_sent"] != c["spikes_sent"]


@pytest.mark.parametrize(
    ("seed", "fact"), [((0, 0, 0, 0), "y must not be zero"), ((1, 2, 3, 0), "c = 0")]
)
def test_bad_kiss_seeds_are_rejected(seed: tuple[int, int, int, int], fact: str) -> None:
    with pytest.raises(ValueError, match=fact):
        sources.encode_poisson_params(sources.PoissonParams(1, 10.0, seed), 1000)


def test_rates_the_core_cannot_hold_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"70000\.0 hz"):
        sources.encode_poisson_params(sources.PoissonParams(1, 70000.0, (1, 2, 3, 4)), 1000)
