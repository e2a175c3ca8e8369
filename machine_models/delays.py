"""The delay-extension core application (spec §3.9): region layout.

A delay extension listens to one source core's spikes and re-sends them D, 2D, ... steps
later, D being the target cores' delay slots, for at most 8 stages. Region ``REGION_DATA``
(2), u32 words: ``in_key, in_mask, in_colour_bits, n_neurons, n_stages, delay_per_stage,
out_key_base, out_colour_bits``.

A spike from source neuron ``(key & ~in_mask) >> in_colour_bits`` arriving in step t adds
one to an 8-bit counter (saturating at 255, the rest counted as lost). In step
``t + (d + 1) * D`` a non-zero counter is re-sent as key ``out_key_base + ((d * n_neurons +
n) << out_colour_bits) | colour``, with the count as payload when above 1, at every stage
whether or not any synapse waits for it there: 7.4.1's extension has no per-stage
"has targets" bit-field, so its packet and router counts include those sends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


def encode_delay_params(params: DelayParams) -> bytes:
    """Encode the delay-extension region.

    Raises:
        ValueError: not 1 to 8 stages.
    """
    if not 1 <= params.n_stages <= MAX_STAGES:
        raise ValueError(f"{params.n_stages} delay stages is not 1..{MAX_STAGES}")
    return struct.pack(
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


def decode_delay_params(data: bytes) -> DelayParams:
    """Decode the delay-extension region.

    Raises:
        ValueError: the region is not 8 words.
    """
    if len(data) != 32:
        raise ValueError(f"delay region is {len(data)} bytes, not 32")
    return DelayParams(*struct.unpack("<8I", data))
