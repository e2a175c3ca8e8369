"""Chip resource limits and the validation of an image against an allocation.

Limits (spec §1.1, §2.1, §3.5): 123,469,792 usable SDRAM bytes per chip, 64 KB of DTCM per
core (ring buffers plus neuron state), 1,023 router entries per chip, core 0 is the monitor.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

from machine_models import lif, neuron_apps, stdp
from machine_models.errors import (
    DeadChipError,
    DeadLinkError,
    DtcmExceededError,
    MonitorCoreError,
    NoSuchChipError,
    NoSuchCoreError,
    OverlappingKeysError,
    RegionError,
    RouterTableFullError,
    SdramExceededError,
)
from machine_models.geometry import ChipXY, Link
from machine_models.image import AppId, CoreImage, Image
from machine_models.regions import (
    REGION_DATA,
    REGION_KEYS,
    REGION_SYNAPSE_DYNAMICS,
    REGION_SYNAPSE_PARAMS,
    decode_keys,
)
from machine_models.topology import Topology

__all__ = [
    "DTCM_BYTES",
    "MAX_ROUTER_ENTRIES",
    "MONITOR_CORE",
    "SDRAM_USABLE_BYTES",
    "dtcm_bytes",
    "validate",
]

SDRAM_USABLE_BYTES = 123_469_792
DTCM_BYTES = 64 * 1024
MAX_ROUTER_ENTRIES = 1023
MONITOR_CORE = 0
NEURON_APPS = frozenset(neuron_apps.NEURON_APPS)
"""The applications that run neurons (ring buffers, neuron state in DTCM)."""
DTCM_OVERHEAD_BYTES = 2048
"""DTCM the application itself uses whatever the data (stack, queues, DMA buffers)."""


def dtcm_bytes(core: CoreImage) -> int:
    """DTCM a neuron core needs: ring buffers, neuron state and a fixed overhead; 0 otherwise.

    Raises:
        RegionError: the synapse parameters cannot be decoded.
    """
    if core.app not in NEURON_APPS:
        return 0
    try:
        sp = lif.decode_synapse_params(core.regions[REGION_SYNAPSE_PARAMS])
    except (KeyError, ValueError) as exc:
        raise RegionError(
            core.chip.x, core.chip.y, core.p, f"bad synapse parameters: {exc}"
        ) from None
    ring = 2 * (1 << sp.ring_buffer_bits)
    per_neuron = neuron_apps.NEURON_APPS[core.app].dtcm_bytes_per_neuron
    state = per_neuron * sp.n_neurons
    return ring + state + DTCM_OVERHEAD_BYTES + plasticity_dtcm_bytes(core, sp.n_neurons)


def plasticity_dtcm_bytes(core: CoreImage, n_neurons: int) -> int:
    """DTCM a plastic core adds: each neuron's post-synaptic history, the lookup tables and
    the weight records (0 for a static core).

    Raises:
        RegionError: the synapse-dynamics region cannot be decoded.
    """
    data = core.regions.get(REGION_SYNAPSE_DYNAMICS)
    if data is None:
        return 0
    try:
        params = stdp.decode_stdp_params(data)
    except ValueError as exc:
        raise RegionError(core.chip.x, core.chip.y, core.p, str(exc)) from None
    luts = sum(4 + 2 * len(lut.values) for lut in (params.tau_plus, params.tau_minus))
    return stdp.POST_HISTORY_BYTES * n_neurons + luts + 16 * len(params.limits)


def _sent_keys(core: CoreImage) -> list[tuple[int, int]]:
    """(first key, key count) of every key range the core sends."""
    if core.app == AppId.DELAY_EXTENSION:
        from machine_models.delays import decode_delay_params

        p = decode_delay_params(core.regions[REGION_DATA])
        span = p.n_stages * p.n_neurons << p.out_colour_bits
        return [(p.out_key_base, span)]
    keys, cb, has_key = decode_keys(core.regions[REGION_KEYS])
    if not has_key:
        return []
    return [(int(k), 1 << cb) for k in keys]


def validate(image: Image, topology: Topology) -> None:
    """Check that an image fits the allocation's chips; raise on the first problem.

    Raises:
        NoSuchChipError, DeadChipError, MonitorCoreError, NoSuchCoreError: a core is placed
            where no application can run.
        DtcmExceededError: a core's ring buffers and state exceed 64 KB (or 2**14 slots).
        SdramExceededError: a chip's regions exceed the usable SDRAM.
        RouterTableFullError: a table has more than 1,023 entries.
        DeadLinkError: a routing entry uses a dead or missing link.
        OverlappingKeysError: two cores send the same key.
    """
    sdram: dict[ChipXY, int] = defaultdict(int)
    for core in image.cores:
        x, y, p = core.xyp
        chip = core.chip
        if not topology.is_on_boards(chip):
            raise NoSuchChipError(x, y)
        if not topology.is_live(chip):
            raise DeadChipError(x, y)
        if p == MONITOR_CORE:
            raise MonitorCoreError(x, y)
        if not 0 < p < topology.n_cores(chip):
            raise NoSuchCoreError(x, y, p, topology.n_cores(chip))
        need = dtcm_bytes(core)
        if need > DTCM_BYTES:
            raise DtcmExceededError(x, y, p, need, DTCM_BYTES)
        if core.app in NEURON_APPS:
            sp = lif.decode_synapse_params(core.regions[REGION_SYNAPSE_PARAMS])
            if sp.ring_buffer_bits > lif.MAX_RING_BUFFER_BITS:
                raise DtcmExceededError(
                    x, y, p, 2 * (1 << sp.ring_buffer_bits), 2 * (1 << lif.MAX_RING_BUFFER_BITS)
                )
        sdram[chip] += core.sdram_bytes
    for chip, used in sorted(sdram.items()):
        if used > SDRAM_USABLE_BYTES:
            raise SdramExceededError(chip.x, chip.y, used, SDRAM_USABLE_BYTES)
    for chip, entries in sorted(image.tables.items()):
        if not topology.is_on_boards(chip):
            raise NoSuchChipError(chip.x, chip.y)
        if not topology.is_live(chip):
            raise DeadChipError(chip.x, chip.y)
        if len(entries) > MAX_ROUTER_ENTRIES:
            raise RouterTableFullError(chip.x, chip.y, len(entries), MAX_ROUTER_ENTRIES)
        for index, entry in enumerate(entries):
            for link in Link:
                if entry.route >> int(link) & 1 and topology.neighbour(chip, link) is None:
                    raise DeadLinkError(chip.x, chip.y, int(link), index)
    ranges = []
    for core in image.cores:
        try:
            for first, count in _sent_keys(core):
                ranges.append((first, first + count, core.xyp))
        except (KeyError, ValueError) as exc:
            raise RegionError(core.chip.x, core.chip.y, core.p, f"bad key region: {exc}") from None
    ranges.sort()
    for (_, end, owner), (start, _, other) in itertools.pairwise(ranges):
        if start < end:
            raise OverlappingKeysError(owner, other, start)
