"""Shared pieces of every core application's data: region numbers, fixed point, the key region.

Fixed point as the chip's C code uses it: REAL is s16.15 (``accum``, 15 fractional bits) held
in an int32; decay factors are u0.32 (``unsigned long fract``) held in a uint32. Host
conversion rounds to nearest (half to even).
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

__all__ = [
    "REGION_DATA",
    "REGION_INPUT_TYPE",
    "REGION_KEYS",
    "REGION_POP_TABLE",
    "REGION_RECORDING",
    "REGION_SYNAPSE_DYNAMICS",
    "REGION_SYNAPSE_PARAMS",
    "REGION_SYNAPTIC_MATRIX",
    "decode_keys",
    "encode_keys",
    "from_s1615",
    "to_s1615",
    "to_u032",
]

REGION_KEYS = 1
"""Keys region: ``n_neurons, n_colour_bits, has_key`` then one key per neuron (u32 each)."""
REGION_DATA = 2
"""The application's own parameters (neuron params, spike times, Poisson params, delay params)."""
REGION_INPUT_TYPE = 3
"""A neuron core's input-type parameters (conductance cores: reversal potentials)."""
REGION_SYNAPSE_PARAMS = 4
REGION_POP_TABLE = 5
REGION_SYNAPTIC_MATRIX = 6
REGION_SYNAPSE_DYNAMICS = 7
"""A plastic neuron core's STDP rule: lookup tables and weight limits (``stdp``)."""
REGION_RECORDING = 9

S1615_ONE = 1 << 15
U032_ONE = 1 << 32


def to_s1615(values: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """Convert to s16.15, rounding to nearest; values outside +-65536 are clipped."""
    raw = np.rint(np.asarray(values, dtype=np.float64) * S1615_ONE)
    return np.clip(raw, -(2**31), 2**31 - 1).astype(np.int32)


def from_s1615(raw: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Convert s16.15 integers to floats."""
    return np.asarray(raw, dtype=np.float64) / S1615_ONE


def to_u032(values: npt.ArrayLike) -> npt.NDArray[np.uint32]:
    """Convert fractions in [0, 1) to u0.32, rounding to nearest; 1.0 becomes the largest value."""
    raw = np.rint(np.asarray(values, dtype=np.float64) * U032_ONE)
    return np.clip(raw, 0, U032_ONE - 1).astype(np.uint32)


def encode_keys(keys: npt.ArrayLike, n_colour_bits: int, *, has_key: bool = True) -> bytes:
    """Encode the keys region: the base key of each neuron (colour bits zero).

    Args:
        keys: One key per neuron; neuron i sends ``keys[i] | colour``.
        n_colour_bits: Low key bits that carry the tick colour (4 in sPyNNaker).
        has_key: False for a core that never sends.
    """
    array = np.asarray(keys, dtype=np.uint32)
    return (
        struct.pack("<III", len(array), n_colour_bits, int(has_key)) + array.astype("<u4").tobytes()
    )


def decode_keys(data: bytes) -> tuple[npt.NDArray[np.uint32], int, bool]:
    """Decode the keys region into (keys, n_colour_bits, has_key).

    Raises:
        ValueError: the length does not match the neuron count.
    """
    n_neurons, n_colour_bits, has_key = struct.unpack_from("<III", data, 0)
    if len(data) != 12 + 4 * n_neurons:
        raise ValueError(f"keys region of {len(data)} bytes does not hold {n_neurons} keys")
    keys = np.frombuffer(data, dtype="<u4", offset=12, count=n_neurons).astype(np.uint32)
    return keys, n_colour_bits, bool(has_key)
