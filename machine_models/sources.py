"""Spike sources: SpikeSourceArray playback and SpikeSourcePoisson (spec §4); region layouts.

SpikeSourceArray regions: ``REGION_KEYS`` (1) and ``REGION_DATA`` (2) = ``n_spikes`` then
``n_spikes`` u32 steps then ``n_spikes`` u32 neuron indices, sorted by step then neuron. At
step t the core sends ``key[i] | colour`` once for every (t, i) listed.

SpikeSourcePoisson regions: ``REGION_KEYS`` (1) and ``REGION_DATA`` (2) = ``seed`` (4 u32,
not all zero), ``n_neurons``, then per neuron 7 words: ``start_step, end_step`` (active for
start <= t < end), ``regime`` (0 slow, 1 fast, 2 faster, 3 off), ``exp_minus_lambda`` (u0.32),
``sqrt_lambda`` (s16.15), ``isi_ticks`` (mean inter-spike interval in ticks, s16.15),
``time_to_spike`` (s16.15; 0 = draw at load). Regimes by lambda = rate x dt:

=========  ================  =============================================================
slow       lambda < 0.01     time to next spike = isi x Exp(1), counted down one per tick
fast       lambda < 10       k ~ Poisson(lambda): multiply u0.32 uniforms until < e^-lambda
faster     lambda >= 10      k = round((Phi^-1(U) / 2 + sqrt(lambda))^2)
=========  ================  =============================================================

When k > 0 the core sends one packet ``key[i] | colour`` with payload k. The generator is a
xorshift128 per core (four u32 words of state), so runs do not depend on numpy's generators.
The fast regime is pure integer arithmetic, hence bit-identical everywhere. The slow and
faster regimes go through a float64 ``log`` (and ``sqrt``): results are identical on machines
whose libm rounds ``log`` the same way (glibc on x86-64 and aarch64 does); the faster
regime's k has mean lambda + 1/4, a property of the chip's method that the model keeps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from machine_models.regions import to_s1615, to_u032

__all__ = [
    "POISSON_DTYPE",
    "REGIME_FAST",
    "REGIME_FASTER",
    "REGIME_OFF",
    "REGIME_SLOW",
    "PoissonParams",
    "decode_poisson_params",
    "decode_spike_array",
    "encode_poisson_params",
    "encode_spike_array",
]

REGIME_SLOW = 0
REGIME_FAST = 1
REGIME_FASTER = 2
REGIME_OFF = 3
SLOW_LAMBDA = 0.01
FASTER_LAMBDA = 10.0
NEVER = 0xFFFFFFFF

POISSON_DTYPE = np.dtype(
    [
        ("start_step", "<u4"),
        ("end_step", "<u4"),
        ("regime", "<u4"),
        ("exp_minus_lambda", "<u4"),
        ("sqrt_lambda", "<i4"),
        ("isi_ticks", "<i4"),
        ("time_to_spike", "<i4"),
    ]
)


def encode_spike_array(steps: npt.ArrayLike, neurons: npt.ArrayLike) -> bytes:
    """Encode a SpikeSourceArray's spikes (sorted here by step, then neuron).

    Args:
        steps: Step of each spike (floor(t_ms * 1000 / timestep_us)).
        neurons: Neuron index on the core of each spike.
    """
    s = np.asarray(steps, dtype=np.uint32)
    n = np.asarray(neurons, dtype=np.uint32)
    order = np.lexsort((n, s))
    return (
        struct.pack("<I", s.size)
        + s[order].astype("<u4").tobytes()
        + n[order].astype("<u4").tobytes()
    )


def decode_spike_array(data: bytes) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """Decode a SpikeSourceArray's region into (steps, neurons).

    Raises:
        ValueError: the length does not match the spike count.
    """
    (count,) = struct.unpack_from("<I", data, 0)
    if len(data) != 4 + 8 * count:
        raise ValueError(f"spike array region of {len(data)} bytes does not hold {count} spikes")
    steps = np.frombuffer(data, "<u4", count, 4).astype(np.uint32)
    neurons = np.frombuffer(data, "<u4", count, 4 + 4 * count).astype(np.uint32)
    return steps, neurons


@dataclass(frozen=True)
class PoissonParams:
    """Poisson sources of one core: rates in Hz, start and duration in ms (None = forever)."""

    n_neurons: int
    rate_hz: npt.ArrayLike
    seed: tuple[int, int, int, int]
    start_ms: npt.ArrayLike = 0.0
    duration_ms: npt.ArrayLike | None = None


def encode_poisson_params(params: PoissonParams, timestep_us: int) -> bytes:
    """Choose each source's regime and encode the Poisson region.

    Raises:
        ValueError: the seed is all zero (the generator would stay at zero) or a rate is negative.
    """
    if not any(params.seed):
        raise ValueError("poisson seed must not be all zero")
    n = params.n_neurons
    dt_s = timestep_us / 1e6
    rate = np.broadcast_to(np.asarray(params.rate_hz, dtype=np.float64), (n,))
    if (rate < 0).any():
        raise ValueError(f"poisson rate {float(rate.min())} hz is negative")
    lam = rate * dt_s
    rec = np.zeros(n, dtype=POISSON_DTYPE)
    start = np.broadcast_to(np.asarray(params.start_ms, dtype=np.float64), (n,))
    rec["start_step"] = np.floor(start * 1000.0 / timestep_us + 1e-9).astype(np.uint32)
    if params.duration_ms is None:
        rec["end_step"] = NEVER
    else:
        end = start + np.broadcast_to(np.asarray(params.duration_ms, dtype=np.float64), (n,))
        rec["end_step"] = np.floor(end * 1000.0 / timestep_us + 1e-9).astype(np.uint32)
    regime = np.where(
        lam <= 0,
        REGIME_OFF,
        np.where(
            lam < SLOW_LAMBDA,
            REGIME_SLOW,
            np.where(lam < FASTER_LAMBDA, REGIME_FAST, REGIME_FASTER),
        ),
    )
    rec["regime"] = regime
    rec["exp_minus_lambda"] = to_u032(np.exp(-lam))
    rec["sqrt_lambda"] = to_s1615(np.sqrt(lam))
    with np.errstate(divide="ignore"):
        isi = np.where(lam > 0, 1.0 / np.maximum(lam, 1e-300), 0.0)
    rec["isi_ticks"] = to_s1615(np.minimum(isi, 65535.0))
    return struct.pack("<4II", *params.seed, n) + rec.tobytes()


def decode_poisson_params(data: bytes) -> tuple[tuple[int, int, int, int], npt.NDArray[np.void]]:
    """Decode the Poisson region into (seed, per-neuron records of :data:`POISSON_DTYPE`).

    Raises:
        ValueError: the length does not match the neuron count.
    """
    *seed, n = struct.unpack_from("<4II", data, 0)
    if len(data) != 20 + n * POISSON_DTYPE.itemsize:
        raise ValueError(f"poisson region of {len(data)} bytes does not hold {n} sources")
    rec = np.frombuffer(data, POISSON_DTYPE, n, 20).copy()
    return (seed[0], seed[1], seed[2], seed[3]), rec
