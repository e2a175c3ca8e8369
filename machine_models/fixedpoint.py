"""Fixed-point arithmetic as a SpiNNaker core does it (spinn_common 7.4.1, sPyNNaker maths-util).

The chip has no floating point. sPyNNaker's applications derive their constants at load time
from s16.15 words the host wrote (spec §3.7a)::

    host float  --round-->  s16.15 word  --core: kdivk, expk, expulr (truncating)-->  constant

so a model that wants the chip's bits must do the same integer steps. Every function here takes
and returns raw integers (the bits of an ``accum``, ``unsigned long fract`` ...), never floats.

* ``kdivk(a, b)``: ``(a << 15) / b`` with unsigned 64-bit division (truncates).
* ``kdivui(a, n)``: ``a / n`` on the bits (truncates).
* ``expk(x)``: e**x as s16.15, from spinn_common's table of e**n, a table of e**(-k/16) and a
  short series, each scaled step rounded its own way; the result is truncated to 15 bits.
* ``expulr(x)``: the same value as u0.32 (x <= 0).
* ``decay_s1615_to_u032(x, d)``: ``(x * d) >> 15`` truncated to 32 bits.
* ``ceil_accum(x)``: the ceiling of an s16.15 value as an integer.

The argument ranges are those sPyNNaker uses (positive time constants and steps); values from
outside them are rejected rather than wrapped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = [
    "S1615_ONE",
    "U032_MAX",
    "ceil_accum",
    "decay_s1615_to_u032",
    "expk",
    "expulr",
    "kdivk",
    "kdivui",
    "per_value",
]

S1615_ONE = 1 << 15
U032_MAX = 0xFFFFFFFF
"""``1.0ulr`` as GCC writes it: the largest u0.32 value (1.0 itself does not fit)."""
_M32 = 0xFFFFFFFF

# e**(n - 13) for n = 0..25, as 32.32 fixed point (spinn_common stdfix-exp.c)
_EXP_HI = (
    9708, 26389, 71733, 194991, 530041, 1440801, 3916503, 10646160, 28939262, 78665070,
    213833830, 581260615, 1580030169, 4294967296, 11674931555, 31735754293, 86266724208,
    234497268814, 637429664642, 1732713474316, 4710003551159, 12803117065094, 34802480465680,
    94602950235157, 257157480542844, 699026506411923,
)  # fmt: skip
# 1 - e**(-k / 16) for k = 0..15 as u0.32
_EXPM1_MID = (
    0, 260218914, 504671961, 734314346, 950043403, 1152702096, 1343082321, 1521927990,
    1689937949, 1847768698, 1996036966, 2135322113, 2266168400, 2389087112, 2504558555,
    2613033936,
)  # fmt: skip
_EXP_SERIES = (5294, 4293434720, 2081624032)
_EXP_MAX_BITS = 363408
_EXP_MIN_BITS = -340695


def kdivk(a: int, b: int) -> int:
    """``a / b`` of two non-negative s16.15 values, truncated (maths-util.h ``kdivk``)."""
    if a < 0 or b <= 0:
        raise ValueError(f"kdivk needs a >= 0 and b > 0, got {a} and {b}")
    return ((a << 15) // b) & _M32


def kdivui(a: int, n: int) -> int:
    """``a / n`` of a non-negative s16.15 value by a positive integer, truncated."""
    if a < 0 or n <= 0:
        raise ValueError(f"kdivui needs a >= 0 and n > 0, got {a} and {n}")
    return a // n


def _round64(x: int) -> int:
    # spinn_common's round64: the fraction counts as a half from INT32_MAX up
    return (x >> 32) + (1 if (x & _M32) >= 0x7FFFFFFF else 0)


def _scale64(x: int, y: int) -> int:
    return _round64((x & _M32) * y) + (x >> 32) * y


def _exp_series(x: int) -> int:
    tmp = (_EXP_SERIES[1] - ((_EXP_SERIES[2] * x) >> 32)) & _M32
    tmp = (tmp * x) >> 32
    return (tmp + _EXP_SERIES[0]) & _M32


def _expi64(n: int) -> int:
    """e**(n / 2**15) as 32.32 fixed point (spinn_common ``__expi64``)."""
    z = n >> 15
    f = n - (z << 15)
    if f == 0:
        return _EXP_HI[13 + z]
    z += 1
    f = 32768 - f
    tmp = _EXP_HI[13 + z]
    tmp -= _scale64(tmp, _EXPM1_MID[f >> 11])
    tmp -= _scale64(tmp, _exp_series((f & 0x7FF) << 17))
    return tmp


def expk(x: int) -> int:
    """e**x for an s16.15 x, as s16.15 (saturating at the ends of the range)."""
    if x > _EXP_MAX_BITS:
        return 0x7FFFFFFF
    if x < _EXP_MIN_BITS:
        return 0
    return _expi64(x) >> 17


def expulr(x: int) -> int:
    """e**x for an s16.15 x <= 0, as u0.32."""
    if x > 0:
        raise ValueError(f"expulr needs x <= 0, got {x}")
    if x < _EXP_MIN_BITS:
        return 0
    return _expi64(x) & _M32


def decay_s1615_to_u032(x: int, decay: int) -> int:
    """``x * decay`` of a non-negative s16.15 and a u0.32, as u0.32 (truncated to 32 bits)."""
    if x < 0:
        raise ValueError(f"decay_s1615_to_u032 needs x >= 0, got {x}")
    return ((x * decay) >> 15) & _M32


def ceil_accum(x: int) -> int:
    """The smallest integer >= an s16.15 value (sPyNNaker's ``lif_ceil_accum``)."""
    return (x >> 15) + (1 if x & 0x7FFF else 0)


def per_value(
    function: Callable[..., int], *columns: npt.ArrayLike, dtype: npt.DTypeLike
) -> npt.NDArray[np.generic]:
    """Apply a scalar integer function to columns of equal length, once per distinct row.

    Neurons of a population mostly share their parameters, so the integer arithmetic runs a
    handful of times, not once per neuron.
    """
    stacked = np.stack([np.asarray(c, dtype=np.int64) for c in columns], axis=1)
    rows, inverse = np.unique(stacked, axis=0, return_inverse=True)
    values = np.array([function(*(int(v) for v in row)) for row in rows], dtype=dtype)
    return values[inverse.reshape(-1)]
