"""Spike-timing-dependent plasticity on a neuron core: its region, plastic rows and lookup tables.

A neuron core with a synapse-dynamics region (``REGION_SYNAPSE_DYNAMICS``, 7) runs what
sPyNNaker 7.4.1 builds as ``*_stdp_mad_pair_additive`` or ``*_stdp_mad_pair_multiplicative``:
the spike-pair timing rule with an additive or multiplicative weight dependence, its weights
updated when a presynaptic spike reaches a row ("MAD": deferred, per row). Layouts
(little-endian words)::

    synapse dynamics region (7)
        timing_rule (1 = spike pair), weight_rule (1 = additive, 2 = multiplicative),
        backprop_delay (0/1), n_synapse_types,
        tau_plus LUT:  size u16, shift u16, size x int16 (padded to a word)
        tau_minus LUT: size u16, shift u16, size x int16 (padded to a word)
        per synapse type: min_weight, max_weight, a2_plus, a2_minus   (s16.15)

    plastic row (in the synaptic matrix, region 6; as 7.4.1's synapse_row.h)
        P | prev_time u32 | prev_trace i16, pad u16 | n weights u16 (padded)     <- P words
          | F = 0 | n | n control u16 (padded)
        control = delay << (I + T) | type << I | neuron      (the low half of a fixed word)

so a row of n synapses holds ``P = 2 + ceil(n / 2)`` plastic words and ``ceil(n / 2)`` control
words: ``row_length = P + ceil(n / 2)`` words in the population table, 3 header words more in
SDRAM. Each neuron of a plastic core keeps, in DTCM, the history of its last 15 spikes (the
chip's ``post_event_history_t``: a count, 16 times, 16 traces, the first a placeholder at
time 0), :data:`POST_HISTORY_BYTES` each.

Fixed point is the core's: traces are s4.11 in int16 (1.0 = 2048), a lookup table holds
``floor(exp(-i dt / tau) x 2048)`` for the steps until it falls below 1/2048 (7.4.1's
``get_exp_lut_array``), weights in the rule are s16.15 (the stored 16-bit weight shifted left
by the synapse type's ring-buffer shift) and return to 16 bits with the same shift. The
weight parameters are written as 7.4.1 writes them: additive ``w_min, w_max, A+, A-`` all in
weight units (times the global weight scale), multiplicative ``w_min, w_max`` in weight units
and ``A+, A-`` as they are.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from machine_models.regions import to_s1615

__all__ = [
    "MAX_POST_EVENTS",
    "POST_HISTORY_BYTES",
    "STDP_ONE",
    "ExpLut",
    "StdpParams",
    "TimingRule",
    "WeightLimits",
    "WeightRule",
    "decode_plastic_rows",
    "decode_stdp_params",
    "encode_plastic_block",
    "encode_stdp_params",
    "exp_lut",
    "plastic_row_words",
]

STDP_FIXED_POINT = 11
STDP_ONE = 1 << STDP_FIXED_POINT
"""1.0 in the traces' s4.11 fixed point."""
MAX_POST_EVENTS = 16
"""Entries of a neuron's post-synaptic history, the first a placeholder at time 0."""
POST_HISTORY_BYTES = 4 + MAX_POST_EVENTS * 4 + MAX_POST_EVENTS * 2
"""DTCM per neuron of a plastic core: ``count_minus_one``, 16 times, 16 int16 traces."""
ROW_HEADER_WORDS = 2
"""The pre-synaptic history at the head of a plastic row: ``prev_time``, ``prev_trace``."""


class TimingRule(enum.IntEnum):
    """Timing dependences the model runs."""

    SPIKE_PAIR = 1


class WeightRule(enum.IntEnum):
    """Weight dependences the model runs."""

    ADDITIVE = 1
    MULTIPLICATIVE = 2


@dataclass(frozen=True)
class ExpLut:
    """An exponential-decay lookup table: ``values[dt >> shift]``, 0 from ``len(values)`` on."""

    values: tuple[int, ...]
    shift: int = 0


def exp_lut(timestep_ms: float, tau_ms: float, shift: int = 0) -> ExpLut:
    """The table 7.4.1's host writes for a time constant (``get_exp_lut_array``).

    ``size = ln(2048) / (dt / tau)`` entries rounded up to an even count, each
    ``floor(exp(-(i << shift) dt / tau) x 2048)``.

    Raises:
        ValueError: the time constant or the step is not positive.
    """
    if tau_ms <= 0 or timestep_ms <= 0:
        raise ValueError(f"a time constant of {tau_ms} ms at a step of {timestep_ms} ms")
    lam = timestep_ms / float(tau_ms)
    size_f = math.log(STDP_ONE) / lam
    half, extra = divmod(size_f / (1 << shift), 2)
    size = (int(half) + (extra > 0)) * 2
    values = np.floor(np.exp((np.arange(size) << shift) * -lam) * STDP_ONE).astype(np.int64)
    if size > 0xFFFF:
        raise ValueError(f"a lookup table of {size} entries does not fit its 16-bit size")
    return ExpLut(tuple(int(v) for v in values), shift)


@dataclass(frozen=True)
class WeightLimits:
    """One synapse type's weight parameters as the core holds them (s16.15 integers)."""

    min_weight: int
    max_weight: int
    a2_plus: int
    a2_minus: int


@dataclass(frozen=True)
class StdpParams:
    """The synapse-dynamics region of a plastic core."""

    weight_rule: WeightRule
    tau_plus: ExpLut
    tau_minus: ExpLut
    limits: tuple[WeightLimits, ...]
    backprop_delay: bool = True
    timing_rule: TimingRule = TimingRule.SPIKE_PAIR

    @classmethod
    def from_pynn(
        cls,
        weight_rule: WeightRule,
        timestep_ms: float,
        *,
        tau_plus: float = 20.0,
        tau_minus: float = 20.0,
        a_plus: float = 0.01,
        a_minus: float = 0.01,
        w_min: float = 0.0,
        w_max: float = 1.0,
        weight_scale: float = 1.0,
        n_synapse_types: int = 2,
        backprop_delay: bool = True,
    ) -> StdpParams:
        """The region 7.4.1's host writes for ``SpikePairRule`` and a weight dependence.

        Args:
            weight_rule: additive or multiplicative.
            timestep_ms: the simulation step.
            tau_plus: ms. tau_minus: ms. a_plus: A+. a_minus: A-.
            w_min: nA (uS on conductance cores). w_max: likewise.
            weight_scale: the global weight scale of the core (1024 for conductance input).
            n_synapse_types: one record per synapse type, all alike.
            backprop_delay: whether post spikes are delayed by each synapse's delay.
        """
        scaled = weight_scale if weight_rule is WeightRule.ADDITIVE else 1.0
        limits = WeightLimits(
            int(to_s1615(w_min * weight_scale)),
            int(to_s1615(w_max * weight_scale)),
            int(to_s1615(a_plus * scaled)),
            int(to_s1615(a_minus * scaled)),
        )
        return cls(
            weight_rule,
            exp_lut(timestep_ms, tau_plus),
            exp_lut(timestep_ms, tau_minus),
            (limits,) * n_synapse_types,
            backprop_delay,
        )


def _encode_lut(lut: ExpLut) -> bytes:
    values = np.asarray(lut.values, dtype="<i2")
    data = struct.pack("<HH", len(lut.values), lut.shift) + values.tobytes()
    return data + b"\0" * (-len(data) % 4)


def encode_stdp_params(params: StdpParams) -> bytes:
    """Encode the synapse-dynamics region."""
    out = struct.pack(
        "<4I",
        int(params.timing_rule),
        int(params.weight_rule),
        int(params.backprop_delay),
        len(params.limits),
    )
    out += _encode_lut(params.tau_plus) + _encode_lut(params.tau_minus)
    for lim in params.limits:
        out += struct.pack("<4i", lim.min_weight, lim.max_weight, lim.a2_plus, lim.a2_minus)
    return out


def decode_stdp_params(data: bytes) -> StdpParams:
    """Decode what :func:`encode_stdp_params` wrote.

    Raises:
        ValueError: an unknown rule, or a length that does not match the counts.
    """
    if len(data) < 16:
        raise ValueError(f"synapse dynamics region of {len(data)} bytes is shorter than 16")
    timing, weight, backprop, n_types = struct.unpack_from("<4I", data, 0)
    try:
        timing_rule, weight_rule = TimingRule(timing), WeightRule(weight)
    except ValueError:
        raise ValueError(f"unknown plasticity rule (timing {timing}, weight {weight})") from None
    offset = 16
    luts = []
    for _ in range(2):
        if offset + 4 > len(data):
            raise ValueError("synapse dynamics region ends inside a lookup table")
        size, shift = struct.unpack_from("<HH", data, offset)
        n_bytes = 4 + 2 * size + (-(2 * size) % 4)
        if offset + n_bytes > len(data):
            raise ValueError("synapse dynamics region ends inside a lookup table")
        values = np.frombuffer(data, "<i2", count=size, offset=offset + 4)
        luts.append(ExpLut(tuple(int(v) for v in values), shift))
        offset += n_bytes
    if len(data) != offset + 16 * n_types:
        raise ValueError(
            f"synapse dynamics region of {len(data)} bytes does not hold {n_types} weight records"
        )
    limits = tuple(
        WeightLimits(*struct.unpack_from("<4i", data, offset + 16 * i)) for i in range(n_types)
    )
    return StdpParams(weight_rule, luts[0], luts[1], limits, bool(backprop), timing_rule)


def plastic_row_words(n_synapses: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Words a plastic row of n synapses holds after its 3 header words (``row_length``)."""
    n = np.asarray(n_synapses, dtype=np.int64)
    half = (n + 1) // 2
    return ROW_HEADER_WORDS + 2 * half


def encode_plastic_block(
    row_ptr: npt.ArrayLike, weights_u16: npt.ArrayLike, controls: npt.ArrayLike, row_length: int
) -> npt.NDArray[np.uint32]:
    """Lay out plastic rows (CSR over ``row_ptr``) as one block of ``row_length + 3`` words each.

    Every row starts with a zero pre-synaptic history. Append the block's ``tobytes()`` to
    the synaptic-matrix region like a static block.

    Raises:
        ValueError: a row needs more than ``row_length`` words, or ``row_length`` is not 1..256.
    """
    ptr = np.asarray(row_ptr, dtype=np.int64)
    w = np.asarray(weights_u16, dtype=np.uint16)
    ctl = np.asarray(controls, dtype=np.uint16)
    counts = np.diff(ptr)
    if not 1 <= row_length <= 256:
        raise ValueError(f"row length {row_length} is not 1..256")
    needed = plastic_row_words(counts)
    if needed.size and int(needed.max()) > row_length:
        raise ValueError(
            f"a plastic row of {int(counts[needed.argmax()])} synapses needs "
            f"{int(needed.max())} words, above row length {row_length}"
        )
    n_rows = counts.size
    stride = row_length + 3
    block = np.zeros(n_rows * stride, dtype=np.uint32)
    halves = block.view(np.uint16)
    for r in range(n_rows):
        n = int(counts[r])
        half = (n + 1) // 2
        p_words = ROW_HEADER_WORDS + half
        base = r * stride
        block[base] = p_words
        first_weight = 2 * (base + 1 + ROW_HEADER_WORDS)
        halves[first_weight : first_weight + n] = w[ptr[r] : ptr[r] + n]
        fixed = base + 1 + p_words
        block[fixed] = 0
        block[fixed + 1] = n
        first_control = 2 * (fixed + 2)
        halves[first_control : first_control + n] = ctl[ptr[r] : ptr[r] + n]
    return block


def decode_plastic_rows(
    matrix: npt.ArrayLike, offset_bytes: int, row_length: int, n_rows: int
) -> list[tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint16]]]:
    """The (weights, controls) of each plastic row of a block, as the core holds them now.

    Raises:
        ValueError: a row's header points outside its ``row_length + 3`` words.
    """
    words = np.ascontiguousarray(np.asarray(matrix, dtype=np.uint32))
    halves = words.view(np.uint16)
    stride = row_length + 3
    out = []
    for r in range(n_rows):
        base = offset_bytes // 4 + r * stride
        p_words = int(words[base])
        fixed = base + 1 + p_words
        if fixed + 2 > base + stride:
            raise ValueError(f"plastic row {r} has {p_words} plastic words, above its length")
        n_fixed, n = int(words[fixed]), int(words[fixed + 1])
        first_weight = 2 * (base + 1 + ROW_HEADER_WORDS)
        first_control = 2 * (fixed + 2 + n_fixed)
        if first_control + n > 2 * (base + stride) or first_weight + n > 2 * fixed:
            raise ValueError(f"plastic row {r} of {n} synapses overruns its length")
        out.append(
            (
                halves[first_weight : first_weight + n].copy(),
                halves[first_control : first_control + n].copy(),
            )
        )
    return out
