"""Spike sources: SpikeSourceArray playback and SpikeSourcePoisson (spec §4); region layouts.

SpikeSourceArray regions: ``REGION_KEYS`` (1) and ``REGION_DATA`` (2) = ``n_spikes`` then
``n_spikes`` u32 steps then ``n_spikes`` u32 neuron indices, sorted by step then neuron. At
step t the core sends ``key[i] | colour`` once for every (t, i) listed.

SpikeSourcePoisson regions: ``REGION_KEYS`` (1) and ``REGION_DATA`` (2) = ``seed`` (4 u32: the
KISS generator's x, y, z, c), ``n_neurons``, then per neuron 6 words: ``start_step, end_step``
(active for start <= t < end), ``regime`` (0 slow, 1 fast, 2 faster), ``exp_minus_lambda``
(u0.32), ``sqrt_lambda`` (s16.15), ``isi_ticks`` (mean inter-spike interval in whole ticks).
The encoder derives them from the rate as sPyNNaker 7.4.1 does (spec §3.7a, §4.2), step by
step on the words its data specification writes:

=========================  =============================================================
rate (Hz)                  u32.32, rounded; the core reads it as s16.15 (truncated)
lambda = rate x dt         (rate_s1615 x seconds_per_tick_u032) >> 32, truncated
regime                     slow when lambda < 0.02, faster when lambda >= 20 (see below),
                           else fast
fast: exp(-lambda)         ``expk`` (15 bits) widened to u0.32
slow: mean ISI             ticks_per_second / rate, truncated to whole ticks
start, end                 ms x ticks_per_ms + 0.5, truncated (rounded to nearest)
=========================  =============================================================

The cut-offs: the host writes 0.01 and 10 as u16.16 words, and the core reads those words as
s16.15, so the regimes change at 655 / 2**15 = 0.019989 and 20.0 spikes per tick. A fast
source with lambda above about 10.4 has exp(-lambda) = 0 in 15 bits and, as on the chip,
sends nothing.

Each tick, source by source: a fast source multiplies u0.32 uniforms from 0xFFFFFFFF until
the product is at most exp(-lambda) and sends one less than the number of draws (none when
exp(-lambda) is 0); a slow source with a non-zero ISI counts down a time to spike held in
ticks x 1000, adding ``round(E x 1000) x isi`` (E an exponential variate by von Neumann's
method, in s16.15) for every spike, and subtracting 1000 per tick; a faster source sends
``round((Phi^-1(U) / 2 + sqrt(lambda))^2)``. Every slow source draws its first time to spike
at load, in order. When k > 0 the core sends one packet ``key[i] | colour`` with payload k.

The generator is 7.4.1's KISS (an LCG, a xorshift and a multiply-with-carry; output x + y + z)
and the slow and fast regimes are integer arithmetic throughout, so a seeded core's stream is
the chip's spike for spike. The faster regime's Phi^-1 and sqrt are float64 (Acklam's
approximation; sqrt truncated to s16.15), not spinn_common's fixed-point routines: its counts
follow the same distribution (mean lambda + 1/4, the method's own bias) but not the same
stream.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import numpy.typing as npt

from machine_models import fixedpoint as fx

__all__ = [
    "POISSON_DTYPE",
    "REGIME_FAST",
    "REGIME_FASTER",
    "REGIME_SLOW",
    "PoissonParams",
    "check_kiss_seed",
    "decode_poisson_params",
    "decode_spike_array",
    "encode_poisson_params",
    "encode_spike_array",
    "kiss_seed",
]

REGIME_SLOW = 0
REGIME_FAST = 1
REGIME_FASTER = 2
NEVER = 0xFFFFFFFF
MARS_C_MAX = 698769068
"""The largest c of a KISS seed (c is 1..this, so z and c are never both zero)."""
SLOW_CUTOFF_BITS = 655
"""0.01 written as u16.16 (655.36 rounds to 655), read by the core as s16.15."""
FASTER_CUTOFF_BITS = 10 << 16
"""10 written as u16.16, read by the core as s16.15: 20.0."""
ISI_SCALE = 1000
"""The slow regime counts time in ticks x 1000."""
MAX_RATE_HZ = 65535.0
"""The core reads the rate as s16.15."""

POISSON_DTYPE = np.dtype(
    [
        ("start_step", "<u4"),
        ("end_step", "<u4"),
        ("regime", "<u4"),
        ("exp_minus_lambda", "<u4"),
        ("sqrt_lambda", "<i4"),
        ("isi_ticks", "<u4"),
    ]
)


def encode_spike_array(steps: npt.ArrayLike, neurons: npt.ArrayLike) -> bytes:
    """Encode a SpikeSourceArray's spikes (sorted here by step, then neuron).

    Args:
        steps: Step of each spike.
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
    """Poisson sources of one core: rates in Hz, start and duration in ms (None = forever).

    ``seed`` is the KISS state (x, y, z, c): y non-zero, c in 1..:data:`MARS_C_MAX`
    (sPyNNaker's ``create_mars_kiss_seeds`` makes such seeds).
    """

    n_neurons: int
    rate_hz: npt.ArrayLike
    seed: tuple[int, int, int, int]
    start_ms: npt.ArrayLike = 0.0
    duration_ms: npt.ArrayLike | None = None


def _ds_word(value: float, scale: int) -> int:
    # how the data specification writes one scalar: round(Decimal(str(value)) * scale)
    return round(Decimal(str(value)) * scale)


def _ms_to_ticks(
    ms_u3232: npt.NDArray[np.uint64], ticks_per_ms_u1616: int
) -> npt.NDArray[np.int64]:
    # (unsigned long accum) ms x ticks_per_ms + 0.5k, truncated to an integer
    product = [(int(ms) * (ticks_per_ms_u1616 << 16)) >> 32 for ms in ms_u3232]
    return np.array([(p + (1 << 31)) >> 32 for p in product], dtype=np.int64)


def _u3232(values: npt.NDArray[np.float64]) -> npt.NDArray[np.uint64]:
    return np.round(values * float(1 << 32)).astype(np.uint64)


def kiss_seed(words: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Make four random u32 words a valid KISS seed, as sPyNNaker's ``create_mars_kiss_seeds`` does.

    y = 0 becomes 13031301; c becomes ``c % 698769068 + 1``.
    """
    x, y, z, c = (int(w) & 0xFFFFFFFF for w in words)
    return x, y or 13031301, z, c % MARS_C_MAX + 1


def check_kiss_seed(seed: tuple[int, int, int, int]) -> None:
    """Check a KISS seed as the generator needs it.

    Raises:
        ValueError: a word is outside 32 bits, y is zero or c is not 1..698769068.
    """
    x, y, z, c = seed
    if not all(0 <= w <= 0xFFFFFFFF for w in seed):
        raise ValueError(f"poisson seed {seed} has a word outside 32 bits")
    if y == 0:
        raise ValueError("poisson seed y must not be zero")
    if not 1 <= c <= MARS_C_MAX:
        raise ValueError(f"poisson seed c = {c} is not 1..{MARS_C_MAX}")
    del x, z


def silent_poisson_sources(rate_hz: npt.ArrayLike, timestep_us: int) -> npt.NDArray[np.bool_]:
    """Which rates the 7.4.1 core's fast method turns into no spikes at all: between about
    10.4 and 20 spikes a step, where exp(-lambda) is 0 in its 15 fractional bits (the same
    arithmetic as `encode_poisson_params`)."""
    rate = np.asarray(rate_hz, dtype=np.float64).reshape(-1)
    seconds_per_tick = _ds_word(timestep_us / 1e6, 1 << 32)
    lam = ((_u3232(rate) >> np.uint64(17)).astype(np.int64) * seconds_per_tick) >> 32
    fast = (lam >= SLOW_CUTOFF_BITS) & (lam < FASTER_CUTOFF_BITS)
    silent = np.zeros(rate.size, dtype=bool)
    silent[fast] = fx.per_value(lambda x: fx.expk(-x), lam[fast], dtype=np.int64) == 0
    return silent


def encode_poisson_params(params: PoissonParams, timestep_us: int) -> bytes:
    """Choose each source's regime and constants as 7.4.1's core does; encode the region.

    Raises:
        ValueError: a bad seed, a negative rate or one above 65535 Hz (the core's s16.15).
    """
    check_kiss_seed(params.seed)
    n = params.n_neurons
    rate = np.broadcast_to(np.asarray(params.rate_hz, dtype=np.float64), (n,))
    if (rate < 0).any() or (rate > MAX_RATE_HZ).any():
        bad = float(rate[(rate < 0) | (rate > MAX_RATE_HZ)][0])
        raise ValueError(f"poisson rate {bad} hz is not in 0..{MAX_RATE_HZ:.0f} hz")
    seconds_per_tick = _ds_word(timestep_us / 1e6, 1 << 32)
    ticks_per_ms = _ds_word(1000.0 / timestep_us, 1 << 16)
    ticks_per_second = (1000 * ticks_per_ms) & 0xFFFFFFFF
    rate_u3232 = _u3232(rate)
    rate_k = (rate_u3232 >> np.uint64(17)).astype(np.int64)
    lam = (rate_k * seconds_per_tick) >> 32
    rec = np.zeros(n, dtype=POISSON_DTYPE)
    start = np.broadcast_to(np.asarray(params.start_ms, dtype=np.float64), (n,))
    start_ticks = _ms_to_ticks(_u3232(start), ticks_per_ms)
    rec["start_step"] = start_ticks
    if params.duration_ms is None:
        rec["end_step"] = NEVER
    else:
        duration = np.broadcast_to(np.asarray(params.duration_ms, dtype=np.float64), (n,))
        end = start_ticks + _ms_to_ticks(_u3232(duration), ticks_per_ms)
        rec["end_step"] = np.minimum(end, NEVER)
    is_slow = lam < SLOW_CUTOFF_BITS
    is_faster = lam >= FASTER_CUTOFF_BITS
    rec["regime"] = np.where(is_slow, REGIME_SLOW, np.where(is_faster, REGIME_FASTER, REGIME_FAST))
    fast = ~is_slow & ~is_faster
    rec["exp_minus_lambda"][fast] = fx.per_value(
        lambda x: fx.expk(-x) << 17, lam[fast], dtype=np.uint32
    )
    rec["sqrt_lambda"][is_faster] = [math.isqrt(int(x) << 15) for x in lam[is_faster]]
    with_rate = is_slow & (rate_u3232 > 0)
    rec["isi_ticks"][with_rate] = [
        ((ticks_per_second << 16) // int(r)) & 0xFFFFFFFF for r in rate_u3232[with_rate]
    ]
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
