"""Image round trip, validation errors, router against a reference, LIF against float64."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machine_models import errors, lif, sources
from machine_models.executor import Executor
from machine_models.geometry import ChipXY
from machine_models.image import AppId, CoreImage, Image, RoutingEntry, route_word
from machine_models.regions import (
    REGION_DATA,
    REGION_KEYS,
    REGION_POP_TABLE,
    REGION_RECORDING,
    REGION_SYNAPSE_PARAMS,
    REGION_SYNAPTIC_MATRIX,
    encode_keys,
)
from machine_models.resources import validate
from machine_models.router import Router
from machine_models.topology import Topology

BOARD = Topology.single_board()


def lif_core(chip: ChipXY, p: int, params: lif.LifParams, key_base: int = 0x10000) -> CoreImage:
    n = params.n_neurons
    return CoreImage(
        chip,
        p,
        AppId.IF_CURR_EXP,
        {
            REGION_KEYS: encode_keys(key_base + (np.arange(n) << 4), 4),
            REGION_DATA: lif.encode_neuron_params(params, 1000),
            REGION_SYNAPSE_PARAMS: lif.encode_synapse_params(lif.SynapseParams(n, 8, 1, 4, 0, 0)),
            REGION_POP_TABLE: lif.encode_pop_table(lif.PopTable((), ())),
            REGION_SYNAPTIC_MATRIX: b"",
            REGION_RECORDING: lif.encode_recording(lif.RecordingParams(True, 1)),
        },
    )


def test_image_round_trip() -> None:
    core = lif_core(ChipXY(1, 1), 3, lif.LifParams(4))
    image = Image(1000, (core,), {ChipXY(1, 1): (RoutingEntry(1, 2, route_word((0,), (3,))),)})
    assert Image.decode(image.encode()) == image


def test_decode_rejects_bad_magic_and_truncation() -> None:
    data = Image(1000, (lif_core(ChipXY(0, 0), 1, lif.LifParams(2)),)).encode()
    with pytest.raises(errors.ImageFormatError, match="magic"):
        Image.decode(b"X" + data[1:])
    with pytest.raises(errors.ImageFormatError, match="truncated"):
        Image.decode(data[:-5])


@pytest.mark.parametrize(
    ("image", "error", "fact"),
    [
        (
            Image(1000, (lif_core(ChipXY(7, 0), 1, lif.LifParams(1)),)),
            errors.NoSuchChipError,
            "(7, 0)",
        ),
        (
            Image(1000, (lif_core(ChipXY(0, 0), 0, lif.LifParams(1)),)),
            errors.MonitorCoreError,
            "(0, 0, 0)",
        ),
        (
            Image(1000, (lif_core(ChipXY(0, 0), 18, lif.LifParams(1)),)),
            errors.NoSuchCoreError,
            "18",
        ),
        (
            Image(1000, (), {ChipXY(0, 0): (RoutingEntry(0, 0, 1 << 4),)}),
            errors.DeadLinkError,
            "link 4",
        ),
        (
            Image(1000, (), {ChipXY(0, 0): (RoutingEntry(0, 0, 0),) * 1024}),
            errors.RouterTableFullError,
            "1024",
        ),
        (
            Image(
                1000,
                (
                    lif_core(ChipXY(0, 0), 1, lif.LifParams(1)),
                    lif_core(ChipXY(0, 0), 2, lif.LifParams(1)),
                ),
            ),
            errors.OverlappingKeysError,
            "0x00010000",
        ),
    ],
)
def test_validation_errors(image: Image, error: type[Exception], fact: str) -> None:
    with pytest.raises(error) as info:
        validate(image, BOARD)
    assert fact in str(info.value)


def test_dead_chip_and_sdram() -> None:
    topo = Topology(8, 8, [ChipXY(0, 0)], dead_chips=[ChipXY(1, 0)])
    with pytest.raises(errors.DeadChipError, match=r"\(1, 0\)"):
        validate(Image(1000, (lif_core(ChipXY(1, 0), 1, lif.LifParams(1)),)), topo)
    big = CoreImage(
        ChipXY(0, 0),
        1,
        AppId.SPIKE_SOURCE_ARRAY,
        {REGION_KEYS: encode_keys([0], 0), REGION_DATA: bytes(123_469_792)},
    )
    with pytest.raises(errors.SdramExceededError, match="123469792"):
        validate(Image(1000, (big,)), BOARD)


def reference_route(tables: dict[ChipXY, list[RoutingEntry]], key: int) -> int | None:
    for entry in tables.get(ChipXY(0, 0), []):
        if key & entry.mask == entry.key:
            return entry.route
    return None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(1, (1 << 24) - 1)),
        max_size=20,
    ),
    st.lists(st.integers(0, 255), min_size=1, max_size=20),
)
def test_router_first_match_equals_reference(
    entries: list[tuple[int, int, int]], keys: list[int]
) -> None:
    table = [RoutingEntry(k & m, m, r & ~0x3F) for k, m, r in entries]
    router = Router({ChipXY(0, 0): tuple(table)}, BOARD)
    for key in keys:
        assert router.lookup(ChipXY(0, 0), key) == reference_route({ChipXY(0, 0): table}, key)


def test_local_miss_dropped_and_link_default_routed() -> None:
    tables = {ChipXY(0, 0): (RoutingEntry(0x100, 0xFF00, route_word((0,), ())),)}
    router = Router(tables, BOARD)
    miss = router.trace(0x200, ChipXY(0, 0))
    assert miss.deliveries == []
    assert miss.counters[(ChipXY(0, 0), 3)] == 1
    hit = router.trace(0x100, ChipXY(0, 0))
    # (1, 0) has no table: default routed east to (2, 0), which drops nothing local
    assert hit.counters[(ChipXY(1, 0), 2)] == 1


def test_lif_constant_current_matches_float_reference() -> None:
    params = lif.LifParams(
        1,
        v_init=-65.0,
        v_rest=-65.0,
        cm=1.0,
        tau_m=20.0,
        i_offset=0.5,
        v_thresh=100.0,
        v_reset=-65.0,
    )
    results = Executor(Image(1000, (lif_core(ChipXY(0, 0), 1, params),)), BOARD).run(50)
    v = results.v_mv[(0, 0, 1)][:, 0]
    ref = np.empty(50)
    vm = -65.0
    for t in range(50):
        ref[t] = vm
        alpha = 0.5 * 20.0 - 65.0
        vm = alpha - np.exp(-1 / 20.0) * (alpha - vm)
    assert np.max(np.abs(v - ref)) < 50 * 2**-15 * 4


def test_refractory_period_holds_v_for_t_refract_steps() -> None:
    params = lif.LifParams(
        1,
        v_init=0.0,
        v_rest=0.0,
        cm=1.0,
        tau_m=20.0,
        i_offset=5.0,
        v_thresh=1.0,
        v_reset=0.0,
        tau_refrac=3.0,
    )
    results = Executor(Image(1000, (lif_core(ChipXY(0, 0), 1, params),)), BOARD).run(30)
    steps = results.spikes[(0, 0, 1)][:, 0]
    assert np.all(np.diff(steps) >= 4)
    assert np.diff(steps)[0] == 4


def test_poisson_rate_fast_regime() -> None:
    src = CoreImage(
        ChipXY(0, 0),
        2,
        AppId.SPIKE_SOURCE_POISSON,
        {
            REGION_KEYS: encode_keys(np.arange(100) << 4, 4),
            REGION_DATA: sources.encode_poisson_params(
                sources.PoissonParams(100, 50.0, (1, 2, 3, 4)), 1000
            ),
        },
    )
    res = Executor(Image(1000, (src,)), BOARD).run(1000)
    sent = res.core_provenance[(0, 0, 2)]["spikes_sent"]
    assert abs(sent - 5000) < 5 * np.sqrt(5000)


def test_dtcm_overflow_names_the_core_and_the_bytes() -> None:
    # 600 neurons: 32 KB of ring buffer + 600 x 60 bytes of state + 2 KB > 64 KB
    n = 600
    core = lif_core(ChipXY(0, 0), 4, lif.LifParams(n))
    regions = dict(core.regions)
    regions[REGION_SYNAPSE_PARAMS] = lif.encode_synapse_params(lif.SynapseParams(n, 10, 1, 3, 0, 0))
    big = CoreImage(core.chip, core.p, core.app, regions)
    with pytest.raises(errors.DtcmExceededError) as info:
        validate(Image(1000, (big,)), BOARD)
    assert "(0, 0, 4)" in str(info.value)
    assert str(2 * 2**14 + 60 * n + 2048) in str(info.value)


def test_more_than_2_14_ring_slots_is_a_dtcm_error() -> None:
    core = lif_core(ChipXY(0, 0), 5, lif.LifParams(4))
    regions = dict(core.regions)
    regions[REGION_SYNAPSE_PARAMS] = lif.encode_synapse_params(lif.SynapseParams(4, 2, 1, 12, 0, 0))
    with pytest.raises(errors.DtcmExceededError, match=r"\(0, 0, 5\)"):
        validate(Image(1000, (CoreImage(core.chip, core.p, core.app, regions),)), BOARD)
