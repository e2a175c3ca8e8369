"""The neuron core applications' regions (encode/decode) and constants; the LIF records.

A neuron core holds up to 256 neurons, as sPyNNaker runs them (spec §3): a neuron model, a
synapse type and an input type. The leaky integrate-and-fire ones are here: IF_curr_exp
(current input), IF_cond_exp (conductance input, the same neuron and synapse shaping with an
input type between them), IF_curr_delta (delta synapses) and IF_curr_alpha (alpha
synapses); the Izhikevich records are in :mod:`machine_models.izhikevich` and share every
region but the neuron record. Regions (all little-endian u32 words):

* ``REGION_KEYS`` (1): see :mod:`machine_models.regions`.
* ``REGION_DATA`` (2), neuron parameters: ``n_neurons`` then one record per neuron, the
  application's own (:data:`NEURON_DTYPE` for the exponential LIF cores, 15 words;
  :data:`DELTA_DTYPE`, :data:`ALPHA_DTYPE`); REAL fields are s16.15, decays and init
  factors u0.32.
* ``REGION_INPUT_TYPE`` (3), conductance cores: ``n_neurons`` then ``e_rev_E, e_rev_I``
  (s16.15 mV) per neuron, fields in :data:`INPUT_DTYPE` order; IF_curr_delta:
  ``n_neurons`` then 1 / h (s16.15) per neuron (:data:`DELTA_INPUT_DTYPE`).
* ``REGION_SYNAPSE_PARAMS`` (4): ``n_neurons, index_bits, type_bits, delay_bits, drop_late,
  shift_exc, shift_inh``. The ring buffer has ``2**(index+type+delay bits)`` u16 slots.
* ``REGION_POP_TABLE`` (5): ``n_entries, n_addresses``, the 16-byte master population
  entries sorted by key, then the address list (u32: ``row_length - 1`` in bits 0-7,
  ``block byte offset / 16`` in bits 8-31; offset ``0xFFFFFF`` = invalid).
* ``REGION_SYNAPTIC_MATRIX`` (6): rows of ``row_length + 3`` words: ``0`` (plastic words),
  ``F`` (fixed words), ``0`` (plastic controls), then F fixed words
  ``weight << 16 | delay << (I + T) | type << I | neuron``; unused tail words are zero. A
  plastic core's rows may be plastic instead (a non-zero first word): see ``stdp``.
* ``REGION_RECORDING`` (9): ``record_spikes, v_interval, gsyn_exc_interval,
  gsyn_inh_interval`` in steps (0 = off); every neuron of the core is recorded.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from machine_models import fixedpoint as fx
from machine_models.regions import to_s1615

__all__ = [
    "ALPHA_DTYPE",
    "CONDUCTANCE_INPUT_SHIFT",
    "CONDUCTANCE_WEIGHT_SCALE",
    "DELTA_DTYPE",
    "DELTA_INPUT_DTYPE",
    "INPUT_DTYPE",
    "INVALID_ADDRESS",
    "MAX_RING_BUFFER_BITS",
    "NEURON_DTYPE",
    "LifParams",
    "MasterPopEntry",
    "PopTable",
    "RecordingParams",
    "SynapseParams",
    "alpha_constants",
    "brunel_cell",
    "decode_input_params",
    "decode_neuron_params",
    "decode_pop_table",
    "decode_recording",
    "decode_synapse_params",
    "encode_alpha_params",
    "encode_delta_input",
    "encode_delta_params",
    "encode_input_params",
    "encode_neuron_params",
    "encode_pop_table",
    "encode_recording",
    "encode_synapse_params",
    "encode_synaptic_block",
    "fill_exp_synapses",
    "per_neuron",
    "ring_buffer_shift",
    "synapse_words",
    "weights_to_u16",
]

MAX_RING_BUFFER_BITS = 14
INVALID_ADDRESS = 0xFFFFFF
SYNAPSE_TYPE_EXC = 0
SYNAPSE_TYPE_INH = 1

NEURON_DTYPE = np.dtype(
    [
        ("v", "<i4"),
        ("v_rest", "<i4"),
        ("r_membrane", "<i4"),
        ("exp_tc", "<i4"),
        ("i_offset", "<i4"),
        ("v_reset", "<i4"),
        ("v_thresh", "<i4"),
        ("t_refract", "<i4"),
        ("refract_timer", "<i4"),
        ("isyn_exc", "<i4"),
        ("isyn_inh", "<i4"),
        ("exc_decay", "<u4"),
        ("exc_init", "<u4"),
        ("inh_decay", "<u4"),
        ("inh_init", "<u4"),
    ]
)
"""One neuron's record in the neuron-parameter region (60 bytes)."""

_LIF_NEURON = NEURON_DTYPE.descr[:9]
DELTA_DTYPE = np.dtype([*_LIF_NEURON, ("isyn_exc", "<i4"), ("isyn_inh", "<i4")])
"""An IF_curr_delta neuron's record (44 bytes): the LIF neuron and its two summed inputs."""
ALPHA_DTYPE = np.dtype(
    [
        *_LIF_NEURON,
        *(
            (f"{prefix}_{name}", kind)
            for prefix in ("exc", "inh")
            for name, kind in (("lin", "<i4"), ("exp", "<i4"), ("q", "<i4"), ("k", "<i4"))
        ),
        ("exc_decay", "<u4"),
        ("inh_decay", "<u4"),
    ]
)
"""An IF_curr_alpha neuron's record (76 bytes): the LIF neuron and, per synapse type, the
alpha synapse's linear term, exponential term, last input (s16.15), h / tau**2 (s16.15) and
its decay (u0.32)."""
DELTA_INPUT_DTYPE = np.dtype([("input_scale", "<i4")])
"""One neuron's record in an IF_curr_delta core's input-type region: 1 / h (s16.15)."""

INPUT_DTYPE = np.dtype([("e_rev_e", "<i4"), ("e_rev_i", "<i4")])
"""One neuron's record in a conductance core's input-type region (8 bytes, s16.15 mV)."""
CONDUCTANCE_WEIGHT_SCALE = 1024.0
"""A conductance core's host scales weights (uS) by 1024 (7.4.1's global weight scale)..."""
CONDUCTANCE_INPUT_SHIFT = 10
"""...and the core shifts its synaptic input right by 10 bits, giving uS again."""


@dataclass(frozen=True)
class LifParams:
    """PyNN parameters of the neurons of one core (arrays or scalars; ms, mV, nF, nA)."""

    n_neurons: int
    v_init: npt.ArrayLike = -65.0
    v_rest: npt.ArrayLike = -65.0
    cm: npt.ArrayLike = 1.0
    tau_m: npt.ArrayLike = 20.0
    i_offset: npt.ArrayLike = 0.0
    v_reset: npt.ArrayLike = -65.0
    v_thresh: npt.ArrayLike = -50.0
    tau_refrac: npt.ArrayLike = 0.1
    tau_syn_e: npt.ArrayLike = 5.0
    tau_syn_i: npt.ArrayLike = 5.0
    isyn_exc: npt.ArrayLike = 0.0
    isyn_inh: npt.ArrayLike = 0.0


def brunel_cell(n_neurons: int, v_init: npt.ArrayLike) -> LifParams:
    """Neurons of Brunel (2000) model A, the benchmark specification's cell, for one core."""
    return LifParams(
        n_neurons,
        v_init=v_init,
        v_rest=0.0,
        cm=0.25,
        tau_m=20.0,
        v_reset=10.0,
        v_thresh=20.0,
        tau_refrac=2.0,
        tau_syn_e=0.5,
        tau_syn_i=0.5,
    )


def per_neuron(value: npt.ArrayLike, n: int) -> npt.NDArray[np.float64]:
    """A parameter (one value or one per neuron) as ``n`` float64 values."""
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()


def fill_exp_synapses(
    rec: npt.NDArray[np.void], tau_syn_e: npt.ArrayLike, tau_syn_i: npt.ArrayLike, h: int
) -> None:
    """Write the exponential synapses' words of every neuron of ``rec`` (spec 3.6): per type
    d = expulr(-kdivk(h, tau)) in ``*_decay`` and the init factor in ``*_init``, from the
    s16.15 step ``h`` and tau as the core derives them."""
    n = rec.size
    for prefix, tau in (("exc", tau_syn_e), ("inh", tau_syn_i)):
        tau_bits = to_s1615(per_neuron(tau, n))
        rec[f"{prefix}_decay"] = fx.per_value(
            lambda t: fx.expulr(-fx.kdivk(h, t)), tau_bits, dtype=np.uint32
        )
        rec[f"{prefix}_init"] = fx.per_value(
            lambda t: exp_init_factor(h, t), tau_bits, dtype=np.uint32
        )


def encode_neuron_params(params: LifParams, timestep_us: int) -> bytes:
    """Derive the load-time constants as the core does (spec §3.6, §3.7, §3.7a); encode the region.

    The host writes every parameter and the step h as s16.15 (rounded); the core then computes,
    truncating at each step (:mod:`machine_models.fixedpoint`): R = kdivk(tau_m, cm),
    exp_TC = expk(-kdivk(h, tau_m)), T_refract = ceil(kdivk(tau_refrac, h)); per synapse type
    d = expulr(-kdivk(h, tau)) and g = kdivk(tau, h) x (1.0ulr - d). The region holds the
    results, so a reader needs no arithmetic of its own.
    """
    n = params.n_neurons
    h = int(to_s1615(timestep_us / 1000.0))
    rec = _lif_neuron(params, h, NEURON_DTYPE)
    rec["isyn_exc"] = to_s1615(per_neuron(params.isyn_exc, n))
    rec["isyn_inh"] = to_s1615(per_neuron(params.isyn_inh, n))
    fill_exp_synapses(rec, params.tau_syn_e, params.tau_syn_i, h)
    return struct.pack("<I", n) + rec.tobytes()


def _lif_neuron(params: LifParams, h: int, dtype: np.dtype[np.void]) -> npt.NDArray[np.void]:
    """The LIF neuron's words of a record of ``dtype`` (synapse fields left zero)."""
    n = params.n_neurons
    rec = np.zeros(n, dtype=dtype)
    tau_m = to_s1615(per_neuron(params.tau_m, n)).astype(np.int64)
    rec["v"] = to_s1615(per_neuron(params.v_init, n))
    rec["v_rest"] = to_s1615(per_neuron(params.v_rest, n))
    rec["r_membrane"] = fx.per_value(
        fx.kdivk, tau_m, to_s1615(per_neuron(params.cm, n)), dtype=np.int32
    )
    rec["exp_tc"] = fx.per_value(lambda tau: fx.expk(-fx.kdivk(h, tau)), tau_m, dtype=np.int32)
    rec["i_offset"] = to_s1615(per_neuron(params.i_offset, n))
    rec["v_reset"] = to_s1615(per_neuron(params.v_reset, n))
    rec["v_thresh"] = to_s1615(per_neuron(params.v_thresh, n))
    rec["t_refract"] = fx.per_value(
        lambda ref: fx.ceil_accum(fx.kdivk(ref, h)),
        to_s1615(per_neuron(params.tau_refrac, n)),
        dtype=np.int32,
    )
    return rec


def encode_delta_params(params: LifParams, timestep_us: int) -> bytes:
    """Encode an IF_curr_delta core's neuron region (:data:`DELTA_DTYPE`).

    The LIF words are derived as :func:`encode_neuron_params` derives them; ``tau_syn_*``
    do not exist for delta synapses and are ignored.
    """
    h = int(to_s1615(timestep_us / 1000.0))
    rec = _lif_neuron(params, h, DELTA_DTYPE)
    rec["isyn_exc"] = to_s1615(per_neuron(params.isyn_exc, params.n_neurons))
    rec["isyn_inh"] = to_s1615(per_neuron(params.isyn_inh, params.n_neurons))
    return struct.pack("<I", params.n_neurons) + rec.tobytes()


def encode_delta_input(n_neurons: int, timestep_us: int) -> bytes:
    """Encode an IF_curr_delta core's input-type region: 1 / h as the core computes it.

    7.4.1's ``input_type_delta.h`` takes ``kdivk(1.0, kdivui(h, 1))``: a summed input of
    w nA becomes a current of w / h nA for one step, which moves V by about w / C_m mV.
    """
    h = int(to_s1615(timestep_us / 1000.0))
    rec = np.full(n_neurons, fx.kdivk(fx.S1615_ONE, h), dtype=DELTA_INPUT_DTYPE)
    return struct.pack("<I", n_neurons) + rec.tobytes()


def alpha_constants(h: int, tau: int) -> tuple[int, int]:
    """An alpha synapse's (h / tau**2, decay) as 7.4.1's ``synapse_types_alpha_impl.h`` makes
    them from s16.15 words.

    ``tau * tau`` is a truncating accum multiply; ``kdivk(h, tau**2)`` is stored in a
    ``decay_t`` (u0.32) and read back as an accum, which keeps only its fraction: a step
    as long as tau**2 or longer gives 0, as on the chip. The decay is ``expulr(-h / tau)``.
    """
    k = fx.kdivk(h, (tau * tau) >> 15) & 0x7FFF
    return k, fx.expulr(-fx.kdivk(h, tau))


def encode_alpha_params(params: LifParams, timestep_us: int) -> bytes:
    """Encode an IF_curr_alpha core's neuron region (:data:`ALPHA_DTYPE`), the synapses
    starting empty."""
    n = params.n_neurons
    h = int(to_s1615(timestep_us / 1000.0))
    rec = _lif_neuron(params, h, ALPHA_DTYPE)
    for prefix, tau in (("exc", params.tau_syn_e), ("inh", params.tau_syn_i)):
        tau_bits = to_s1615(per_neuron(tau, n))
        rec[f"{prefix}_k"] = fx.per_value(
            lambda t: alpha_constants(h, t)[0], tau_bits, dtype=np.int32
        )
        rec[f"{prefix}_decay"] = fx.per_value(
            lambda t: alpha_constants(h, t)[1], tau_bits, dtype=np.uint32
        )
    return struct.pack("<I", n) + rec.tobytes()


def exp_init_factor(h: int, tau: int) -> int:
    """The init factor of an exponential synapse: kdivk(tau, h) x (1.0ulr - expulr(-h / tau))."""
    decay = fx.expulr(-fx.kdivk(h, tau))
    return fx.decay_s1615_to_u032(fx.kdivk(tau, h), fx.U032_MAX - decay)


def decode_neuron_params(
    data: bytes, dtype: np.dtype[np.void] = NEURON_DTYPE
) -> npt.NDArray[np.void]:
    """Decode a neuron region into a structured array of ``dtype`` (the application's record).

    Raises:
        ValueError: the length does not match the neuron count.
    """
    n = struct.unpack_from("<I", data, 0)[0] if len(data) >= 4 else 0
    if len(data) != 4 + n * dtype.itemsize:
        raise ValueError(f"neuron region of {len(data)} bytes does not hold {n} neurons")
    return np.frombuffer(data, dtype=dtype, offset=4, count=n).copy()


def encode_input_params(n_neurons: int, e_rev_e: npt.ArrayLike, e_rev_i: npt.ArrayLike) -> bytes:
    """Encode a conductance core's input-type region: reversal potentials (mV) as s16.15."""
    rec = np.zeros(n_neurons, dtype=INPUT_DTYPE)
    rec["e_rev_e"] = to_s1615(per_neuron(e_rev_e, n_neurons))
    rec["e_rev_i"] = to_s1615(per_neuron(e_rev_i, n_neurons))
    return struct.pack("<I", n_neurons) + rec.tobytes()


def decode_input_params(
    data: bytes, n_neurons: int, dtype: np.dtype[np.void] = INPUT_DTYPE
) -> npt.NDArray[np.void]:
    """Decode an input-type region into a structured array of ``dtype`` (:data:`INPUT_DTYPE`
    for conductance cores, :data:`DELTA_INPUT_DTYPE` for delta ones).

    Raises:
        ValueError: the region does not hold ``n_neurons`` neurons.
    """
    n = struct.unpack_from("<I", data, 0)[0] if len(data) >= 4 else -1
    if n != n_neurons or len(data) != 4 + n * dtype.itemsize:
        raise ValueError(
            f"input type region of {len(data)} bytes does not hold {n_neurons} neurons"
        )
    return np.frombuffer(data, dtype=dtype, offset=4, count=n).copy()


@dataclass(frozen=True)
class SynapseParams:
    """Synapse-processing settings of one neuron core (spec §3.4, §3.5)."""

    n_neurons: int
    index_bits: int
    type_bits: int
    delay_bits: int
    shift_exc: int
    shift_inh: int
    drop_late: bool = False

    @property
    def ring_buffer_bits(self) -> int:
        """log2 of the number of 16-bit ring-buffer slots."""
        return self.index_bits + self.type_bits + self.delay_bits

    @property
    def n_delay_slots(self) -> int:
        """Delay steps the ring buffer holds (D)."""
        return 1 << self.delay_bits


def encode_synapse_params(params: SynapseParams) -> bytes:
    """Encode the synapse-parameter region."""
    return struct.pack(
        "<7I",
        params.n_neurons,
        params.index_bits,
        params.type_bits,
        params.delay_bits,
        int(params.drop_late),
        params.shift_exc,
        params.shift_inh,
    )


def decode_synapse_params(data: bytes) -> SynapseParams:
    """Decode the synapse-parameter region.

    Raises:
        ValueError: the region is not 28 bytes.
    """
    if len(data) != 28:
        raise ValueError(f"synapse parameter region is {len(data)} bytes, not 28")
    n, ib, tb, db, drop, se, si = struct.unpack("<7I", data)
    return SynapseParams(n, ib, tb, db, se, si, bool(drop))


def ring_buffer_shift(max_summed_weight_na: float) -> int:
    """The weight shift s for a synapse type (spec §3.5): ceil(log2 W), +1 at a power of 2, >= 0."""
    if max_summed_weight_na <= 0:
        return 0
    log_w = math.log2(max_summed_weight_na)
    shift = math.ceil(log_w)
    if shift == log_w:
        shift += 1
    return max(shift, 0)


def weights_to_u16(weights_na: npt.ArrayLike, shift: int) -> npt.NDArray[np.uint32]:
    """Stored weights: round(|w| * 2**(15 - shift)) & 0xFFFF, wrapping as 7.4.1's host does.

    The shift of :func:`ring_buffer_shift` keeps every weight below 2**16 steps; a weight
    above that (a shift forced too small) wraps, as ``synapse_dynamics_static.py`` writes it.
    """
    raw = np.rint(np.abs(np.asarray(weights_na, dtype=np.float64)) * 2.0 ** (15 - shift))
    return (raw.astype(np.uint64) & np.uint64(0xFFFF)).astype(np.uint32)


def synapse_words(
    weights_u16: npt.ArrayLike,
    delays: npt.ArrayLike,
    types: npt.ArrayLike,
    neurons: npt.ArrayLike,
    index_bits: int,
    type_bits: int,
) -> npt.NDArray[np.uint32]:
    """Fixed synapse words ``weight << 16 | delay << (I+T) | type << I | neuron``.

    A delay equal to the core's slot count is stored as 0 by the masking the chip does.
    """
    w = np.asarray(weights_u16, dtype=np.uint32)
    shift = index_bits + type_bits
    delay_mask = (1 << (16 - shift)) - 1
    d = np.asarray(delays, dtype=np.uint32) & np.uint32(delay_mask)
    words: npt.NDArray[np.uint32] = (
        (w << np.uint32(16))
        | (d << np.uint32(shift))
        | (np.asarray(types, dtype=np.uint32) << np.uint32(index_bits))
        | np.asarray(neurons, dtype=np.uint32)
    ).astype(np.uint32)
    return words


def encode_synaptic_block(
    row_ptr: npt.ArrayLike, words: npt.ArrayLike, row_length: int
) -> npt.NDArray[np.uint32]:
    """Lay out rows (CSR: row i is ``words[row_ptr[i]:row_ptr[i+1]]``) as one block.

    Every row takes ``row_length + 3`` words (spec §3.4): header ``0, F, 0`` then the F fixed
    words, zero padded. Append the block's ``tobytes()`` to the synaptic-matrix region; its
    byte offset there (a multiple of 16) goes into the address list.

    Raises:
        ValueError: a row is longer than ``row_length`` or ``row_length`` is not 1..256.
    """
    ptr = np.asarray(row_ptr, dtype=np.int64)
    w = np.asarray(words, dtype=np.uint32)
    counts = np.diff(ptr)
    if not 1 <= row_length <= 256:
        raise ValueError(f"row length {row_length} is not 1..256")
    if counts.size and int(counts.max()) > row_length:
        raise ValueError(f"a row of {int(counts.max())} synapses exceeds row length {row_length}")
    n_rows = counts.size
    block = np.zeros((n_rows, row_length + 3), dtype=np.uint32)
    block[:, 1] = counts
    col = np.arange(w.size, dtype=np.int64) - np.repeat(ptr[:-1], counts)
    rows = np.repeat(np.arange(n_rows), counts)
    block[rows, 3 + col] = w
    return block.reshape(-1)


@dataclass(frozen=True)
class MasterPopEntry:
    """One master population table entry (spec §3.3)."""

    key: int
    mask: int
    start: int
    count: int
    n_colour_bits: int = 0
    core_mask: int = 0
    mask_shift: int = 0
    n_neurons: int = 0


@dataclass(frozen=True)
class PopTable:
    """The master population table and address list of one neuron core."""

    entries: tuple[MasterPopEntry, ...]
    addresses: tuple[tuple[int, int], ...]
    """(block byte offset or -1 for invalid, row length) per address-list entry."""


def encode_pop_table(table: PopTable) -> bytes:
    """Encode the master population table (sorted by key) and the address list.

    Raises:
        ValueError: an offset is not a multiple of 16, a field overflows, or a row length is
            not 1..256.
    """
    out = bytearray(struct.pack("<II", len(table.entries), len(table.addresses)))
    for e in sorted(table.entries, key=lambda e: e.key):
        if (
            e.start >= 1 << 13
            or e.n_colour_bits >= 1 << 3
            or e.count >= 1 << 16
            or e.core_mask >= 1 << 8
            or e.mask_shift >= 1 << 8
            or e.n_neurons >= 1 << 16
        ):
            raise ValueError(f"master population entry for key {e.key:#x} overflows its fields")
        out += struct.pack(
            "<IIII",
            e.key,
            e.mask,
            e.start | e.n_colour_bits << 13 | e.count << 16,
            e.core_mask | e.mask_shift << 8 | e.n_neurons << 16,
        )
    return bytes(out) + _encode_addresses(table.addresses)


def _encode_addresses(addresses: tuple[tuple[int, int], ...]) -> bytes:
    words = []
    for offset, row_length in addresses:
        if offset < 0:
            words.append(INVALID_ADDRESS << 8)
            continue
        if offset % 16 or not 1 <= row_length <= 256:
            raise ValueError(f"address {offset} with row length {row_length} cannot be encoded")
        words.append((offset // 16) << 8 | (row_length - 1))
    return struct.pack(f"<{len(words)}I", *words)


def decode_pop_table(data: bytes) -> PopTable:
    """Decode what :func:`encode_pop_table` wrote.

    Raises:
        ValueError: the length does not match the counts.
    """
    n_entries, n_addresses = struct.unpack_from("<II", data, 0)
    if len(data) != 8 + 16 * n_entries + 4 * n_addresses:
        raise ValueError(
            f"population table of {len(data)} bytes does not hold {n_entries} entries "
            f"and {n_addresses} addresses"
        )
    words = struct.unpack_from(f"<{4 * n_entries + n_addresses}I", data, 8)
    entries = []
    for i in range(n_entries):
        key, mask, w2, w3 = words[4 * i : 4 * i + 4]
        entries.append(
            MasterPopEntry(
                key,
                mask,
                w2 & 0x1FFF,
                w2 >> 16,
                (w2 >> 13) & 7,
                w3 & 0xFF,
                (w3 >> 8) & 0xFF,
                w3 >> 16,
            )
        )
    addresses = []
    for word in words[4 * n_entries :]:
        block = word >> 8
        addresses.append((-1 if block == INVALID_ADDRESS else block * 16, (word & 0xFF) + 1))
    return PopTable(tuple(entries), tuple(addresses))


def encode_recording(params: RecordingParams) -> bytes:
    """Encode the recording region."""
    return struct.pack(
        "<4I",
        int(params.record_spikes),
        params.v_interval_steps,
        params.gsyn_exc_interval_steps,
        params.gsyn_inh_interval_steps,
    )


@dataclass(frozen=True)
class RecordingParams:
    """What a neuron core records, with sampling intervals in steps (0 = off)."""

    record_spikes: bool = True
    v_interval_steps: int = 0
    gsyn_exc_interval_steps: int = 0
    gsyn_inh_interval_steps: int = 0


def decode_recording(data: bytes) -> RecordingParams:
    """Decode the recording region.

    Raises:
        ValueError: the region is not 16 bytes.
    """
    if len(data) != 16:
        raise ValueError(f"recording region is {len(data)} bytes, not 16")
    spikes, v, ge, gi = struct.unpack("<4I", data)
    return RecordingParams(bool(spikes), v, ge, gi)
