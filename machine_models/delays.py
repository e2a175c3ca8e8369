"""The delay-extension core application (spec §3.9): region layout.

A delay extension listens to one source core's spikes and re-sends them D, 2D, ... steps
later, D being the target cores' delay slots, for at most 8 stages. Region ``REGION_DATA``
(2), u32 words: ``in_key, in_mask, in_colour_bits, n_neurons, n_stages, delay_per_stage,
out_key_base, out_colour_bits``, then ``n_stages`` bit-fields of ``ceil(n_neurons / 32)``
words: bit n of field d says that neuron n has targets at stage d + 1.

A spike from source neuron ``(key & ~in_mask) >> in_colour_bits`` arriving in step t adds
one to an 8-bit counter (saturating at 255, the rest counted as lost). In step
``t + (d + 1) * D`` a non-zero counter is re-sent as key ``out_key_base + ((d * n_neurons +
n) << out_colour_bits) | colour``, with the count as payload when above 1.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_STAGES", "DelayParams", "decode_delay_params", "encode_delay_params"]

MAX_STAGES = 8


@dataclass(frozen=True)
class DelayParams:
    """Settings of one delay-extension core."""

    in_key: int
    in_mask: int
    in_colour_bits: int
    n_neurons: int
    n_stages: int
    delay_per_stage: int
    out_key_base: int
    out_colour_bits: int
    has_targets: npt.NDArray[np.bool_]
    """Shape (n_stages, n_neurons): which neurons are re-sent at each stage."""


def encode_delay_params(params: DelayParams) -> bytes:
    """Encode the delay-extension region.

    Raises:
        ValueError: more than 8 stages or a has_targets array of the wrong shape.
    """
    if not 1 <= params.n_stages <= MAX_STAGES:
        raise ValueError(f"{params.n_stages} delay stages is not 1..{MAX_STAGES}")
    flags = np.asarray(params.has_targets, dtype=np.bool_)
    if flags.shape != (params.n_stages, params.n_neurons):
        raise ValueError(
            f"has_targets has shape {flags.shape}, not ({params.n_stages}, {params.n_neurons})"
        )
    n_words = (params.n_neurons + 31) // 32
    padded = np.zeros((params.n_stages, n_words * 32), dtype=np.bool_)
    padded[:, : params.n_neurons] = flags
    bits = np.packbits(padded.reshape(params.n_stages, n_words, 4, 8)[..., ::-1], axis=-1)
    words = bits.reshape(params.n_stages, n_words, 4).view("<u4")
    return (
        struct.pack(
            "<8I",
            params.in_key,
            params.in_mask,
            params.in_colour_bits,
            params.n_neurons,
            params.n_stages,
            params.delay_per_stage,
            params.out_key_base,
            params.out_colour_bits,
        )
        + words.tobytes()
    )


def decode_delay_params(data: bytes) -> DelayParams:
    """Decode the delay-extension region.

    Raises:
        ValueError: the length does not match the counts.
    """
    fields = struct.unpack_from("<8I", data, 0)
    n_neurons, n_stages = fields[3], fields[4]
    n_words = (n_neurons + 31) // 32
    if len(data) != 32 + 4 * n_stages * n_words:
        raise ValueError(f"delay region of {len(data)} bytes does not fit {n_stages} stages")
    words = np.frombuffer(data, "<u4", n_stages * n_words, 32).reshape(n_stages, n_words)
    bits = (words[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1
    flags = bits.reshape(n_stages, n_words * 32)[:, :n_neurons].astype(np.bool_)
    in_key, in_mask, in_cb, _, _, per_stage, out_key, out_cb = fields
    return DelayParams(
        in_key, in_mask, in_cb, n_neurons, n_stages, per_stage, out_key, out_cb, flags
    )
