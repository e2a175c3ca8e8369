"""Mapping: splitting, placement, keys, routing, compression and every limit error."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machine_models.geometry import ChipXY, Link
from machine_models.image import RoutingEntry
from machine_models.router import Router
from toolchain import (
    AllToAll,
    FixedNumberPre,
    FromList,
    IFCurrExp,
    MappingConfig,
    Network,
    OneToOne,
    SpikeSourceArray,
    SpikeSourcePoisson,
    StaticSynapse,
    allocation_from_machine_info,
    map_network,
    virtual_allocation,
)
from toolchain.build import fit_tables
from toolchain.compression import compress, lookup
from toolchain.errors import (
    AllocationError,
    KeySpaceError,
    PlacementError,
    ResourceError,
    RoutingError,
    RoutingTableFullError,
)
from toolchain.keys import allocate_keys
from toolchain.routing import ldf_links, route_tree
from toolchain.splitting import VertexKind, plan_delays, split_network


def _chain(n_pops: int, size: int) -> Network:
    net = Network(dt_ms=1.0, seed=2)
    pops = [net.population(size, IFCurrExp(), f"p{i}") for i in range(n_pops)]
    for a, b in itertools.pairwise(pops):
        net.project(a, b, FixedNumberPre(3, with_replacement=True), StaticSynapse(0.1, 2.0))
    return net


def test_split_respects_max_atoms_per_core() -> None:
    net = Network(dt_ms=1.0)
    net.population(600, IFCurrExp(), "a")
    net.population(1200, SpikeSourcePoisson(rate=5.0), "p")
    config = MappingConfig(max_atoms_per_core={"IF_curr_exp": 100, "SpikeSourcePoisson": 500})
    vertices = split_network(net, config, plan_delays(net, config))
    sizes = Counter((v.population.label, v.n_atoms) for v in vertices)
    assert sizes == {("a", 100): 6, ("p", 500): 2, ("p", 200): 1}


def test_too_many_neurons_per_core_exceeds_dtcm() -> None:
    net = Network(dt_ms=1.0)
    net.population(2048, IFCurrExp(), "big")
    config = MappingConfig(max_atoms_per_core={"IF_curr_exp": 2048})
    with pytest.raises(ResourceError, match="'big' with 2048 neurons per core"):
        map_network(net, virtual_allocation(1), config)


def test_placement_uses_only_application_cores_once() -> None:
    mapped = map_network(_chain(4, 600), virtual_allocation(1))
    locations = list(mapped.locations.values())
    assert len(set(locations)) == len(locations)
    assert all(1 <= loc.p <= 17 and mapped.topology.is_live(loc.chip) for loc in locations)


def test_placement_skips_dead_chips_and_short_chips() -> None:
    topo = virtual_allocation(1, dead_chips=[ChipXY(0, 0)], cores_per_chip={ChipXY(1, 0): 3})
    mapped = map_network(_chain(8, 512), topo)
    for loc in mapped.locations.values():
        assert loc.chip != ChipXY(0, 0)
        if loc.chip == ChipXY(1, 0):
            assert loc.p in (1, 2)


def test_placement_error_names_the_cores() -> None:
    net = Network(dt_ms=1.0)
    net.population(256 * 900, SpikeSourcePoisson(rate=1.0), "huge")
    config = MappingConfig(max_atoms_per_core={"SpikeSourcePoisson": 256})
    with pytest.raises(PlacementError, match=r"needs 900 cores .* has 816"):
        map_network(net, virtual_allocation(1), config)


def test_keys_never_overlap() -> None:
    net = _chain(3, 700)
    config = MappingConfig()
    delays = plan_delays(net, config)
    vertices = split_network(net, config, delays)
    keys = allocate_keys(vertices, config, delays.n_stages)
    spans = sorted(
        (keys.core_key(v), keys.core_key(v) + (~keys.core_mask & 0xFFFFFFFF)) for v in vertices
    )
    for (_, hi), (lo, _) in itertools.pairwise(spans):
        assert hi < lo
    for v in vertices:
        assert all(k & keys.core_mask == keys.core_key(v) for k in keys.neuron_keys(v))


def test_key_space_overflow_is_an_error() -> None:
    net = Network(dt_ms=1.0)
    for i in range(40):
        net.population(1 << 22, SpikeSourcePoisson(rate=1.0), f"p{i}")
    config = MappingConfig(max_atoms_per_core={"SpikeSourcePoisson": 1 << 22}, n_colour_bits=7)
    with pytest.raises(KeySpaceError, match="but have 32"):
        allocate_keys(split_network(net, config, plan_delays(net, config)), config, {})


def test_ldf_uses_the_diagonal_and_wraps() -> None:
    topo = virtual_allocation(3)
    assert ldf_links(topo, ChipXY(0, 0), ChipXY(3, 3)) == [Link.NORTH_EAST] * 3
    assert ldf_links(topo, ChipXY(0, 0), ChipXY(3, 1)) == [Link.EAST] * 2 + [Link.NORTH_EAST]
    torus = allocation_from_machine_info(
        {"width": 12, "height": 12, "connections": [[[0, 0], "a"], [[8, 4], "b"], [[4, 8], "c"]]}
    )
    assert ldf_links(torus, ChipXY(0, 0), ChipXY(11, 0)) == [Link.WEST]


def _delivered(mapped: object, key: int, source: ChipXY) -> Counter[tuple[int, int, int]]:
    router = Router(mapped.image.tables, mapped.topology)  # type: ignore[attr-defined]
    trace = router.trace(key, source)
    return Counter(tuple(d) for d in trace.deliveries)


@pytest.mark.parametrize("n_boards", [1, 3])
def test_routes_reach_exactly_the_target_cores(n_boards: int) -> None:
    net = Network(dt_ms=1.0, seed=4)
    src = net.population(300, SpikeSourcePoisson(rate=10.0), "src")
    pops = [net.population(256, IFCurrExp(), f"t{i}") for i in range(30)]
    for i, pop in enumerate(pops):
        conn = OneToOne() if i % 3 else AllToAll()
        size = 256
        if i % 3:
            conn = FromList(tuple((j, j) for j in range(0, size, 7)))
        net.project(src, pop, conn, StaticSynapse(0.01, 1.0))
    mapped = map_network(
        net,
        virtual_allocation(n_boards),
        MappingConfig(max_atoms_per_core={"SpikeSourcePoisson": 150}),
    )
    expected = {tuple(mapped.locations[v]) for v in mapped.vertices if v.kind is VertexKind.NEURON}
    for vertex, where in mapped.cores_of(src):
        key = mapped.keys.neuron_keys(vertex)[5] | 3
        got = _delivered(mapped, key, where.chip)
        assert set(got) == expected
        assert set(got.values()) == {1}


def test_route_tree_around_a_dead_chip_on_a_torus() -> None:
    torus = allocation_from_machine_info(
        {"width": 12, "height": 12, "connections": [[[0, 0], "a"], [[8, 4], "b"], [[4, 8], "c"]]},
        dead_chips=[ChipXY(1, 0)],
    )
    tree = route_tree(torus, ChipXY(0, 0), {ChipXY(2, 0): [3], ChipXY(10, 11): [4]})
    assert ChipXY(1, 0) not in tree.chips()
    assert tree.cores == {ChipXY(2, 0): {3}, ChipXY(10, 11): {4}}


def test_unreachable_chip_is_a_routing_error() -> None:
    dead = [ChipXY(1, 0), ChipXY(1, 1), ChipXY(0, 1)]
    with pytest.raises(RoutingError, match=r"no working path from chip \(0, 0\)"):
        route_tree(virtual_allocation(1, dead_chips=dead), ChipXY(0, 0), {ChipXY(3, 3): [1]})


def test_allocation_errors() -> None:
    with pytest.raises(AllocationError, match="no allocated boards"):
        allocation_from_machine_info({"width": None, "height": None, "connections": None})
    with pytest.raises(AllocationError, match="13 x 16"):
        allocation_from_machine_info({"width": 13, "height": 16, "connections": [[[0, 0], "a"]]})
    with pytest.raises(AllocationError, match="at least 1 board"):
        virtual_allocation(0)


def test_delay_beyond_eight_stages_is_an_error() -> None:
    net = Network(dt_ms=1.0)
    a = net.population(256, IFCurrExp(), "a")
    net.project(a, a, OneToOne(), StaticSynapse(0.1, 257.0))
    with pytest.raises(ResourceError, match="delay of 257 steps, above the 8 x 32 = 256"):
        map_network(net, virtual_allocation(1))


def test_long_row_is_an_error() -> None:
    net = Network(dt_ms=1.0)
    a = net.population(1, SpikeSourceArray(spike_times=(1.0,)), "a")
    b = net.population(10, IFCurrExp(), "b")
    net.project(a, b, FromList(tuple((0, i % 10) for i in range(300))), StaticSynapse(0.01, 1.0))
    with pytest.raises(ResourceError, match="has 300 synapses to one core, above the 256"):
        map_network(net, virtual_allocation(1))


def test_full_routing_table_is_compressed_or_an_error() -> None:
    mergeable = [RoutingEntry(k << 4, 0xFFFFFFF0, 1 << (6 + k % 2)) for k in range(1100)]
    fitted = fit_tables({ChipXY(2, 3): mergeable})
    assert len(fitted[ChipXY(2, 3)]) <= 1023
    with pytest.raises(RoutingTableFullError, match=r"chip \(2, 3\) needs 1100 routing"):
        fit_tables({ChipXY(2, 3): mergeable}, is_compressing=False)
    distinct = [RoutingEntry(k << 4, 0xFFFFFFF0, k + 1) for k in range(1100)]
    with pytest.raises(RoutingTableFullError, match=r"1100 routing entries .* router has 1023"):
        fit_tables({ChipXY(2, 3): distinct})


_entry = st.builds(
    lambda key, mask, route: RoutingEntry(key & mask, mask, route),
    st.integers(0, 255),
    st.integers(0, 255).map(lambda m: m | 0xFFFFFF00),
    st.integers(1, 4),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_entry, max_size=24))
def test_compression_preserves_every_matched_key(entries: list[RoutingEntry]) -> None:
    table: list[RoutingEntry] = []
    for entry in entries:  # keep only entries disjoint from other routes: the builder's tables
        if all(e.route == entry.route or (e.key ^ entry.key) & e.mask & entry.mask for e in table):
            table.append(entry)
    small = compress(table)
    assert len(small) <= len(table)
    for key in range(256):
        before = lookup(table, key)
        if before is not None:
            assert lookup(small, key) == before
            assert lookup(small[::-1], key) == before


def test_compression_merges_a_block_of_entries() -> None:
    table = [RoutingEntry(k << 4, 0xFFFFFFF0, 1 << 7) for k in range(64)]
    assert compress(table) == [RoutingEntry(0, 0xFFFFFC00, 1 << 7)]


def test_weight_shift_follows_summed_input() -> None:
    net = Network(dt_ms=1.0)
    src = net.population(100, SpikeSourcePoisson(rate=1000.0), "s")
    a = net.population(10, IFCurrExp(), "a")
    net.project(src, a, AllToAll(), StaticSynapse(0.5, 1.0))
    mapped = map_network(net, virtual_allocation(1))
    # 100 sources x 1 spike per step x 0.5 nA = 50 nA summed, plus fluctuations
    assert mapped.shifts[(a.index, 0)] >= 6
    assert np.isfinite(mapped.shifts[(a.index, 1)])
