"""Routing at run time: across boards, around the torus, loops, dead links, missed lookups."""

from __future__ import annotations

import numpy as np

from machine_models import Executor, Topology, lif, validate
from machine_models.geometry import ChipXY, Link
from machine_models.image import Image, RoutingEntry, route_word
from machine_models.router import DEFAULT_ROUTED, DROPPED_DEAD_LINK, DROPPED_LOOP, Router
from tests.machine_models.networks import ARRAY_BASE, LIF_BASE, array_core, neuron_core

THREE_BOARDS = Topology(12, 12, [ChipXY(0, 0), ChipXY(4, 8), ChipXY(8, 4)])
ONE_SPIKE_ROW = lif.encode_synaptic_block(
    np.array([0, 1]), lif.synapse_words([5000], [1], [0], [0], 8, 1), 1
)
POP = lif.PopTable((lif.MasterPopEntry(ARRAY_BASE, 0xFFFFF000, 0, 1, 4, 0, 0, 0),), ((0, 1),))


def receiver(chip: ChipXY) -> Image:
    """An array on (0, 0) core 1 sending one spike at step 0; a neuron core on ``chip``."""
    neurons = neuron_core(
        chip,
        1,
        lif.LifParams(1),
        key_base=LIF_BASE,
        pop_table=POP,
        matrix=ONE_SPIKE_ROW,
        recording=lif.RecordingParams(False, 0, 1, 0),
    )
    return Image(1000, (neurons, array_core(ChipXY(0, 0), 1, [0], [0], 1, ARRAY_BASE)))


def test_spike_crosses_boards_through_the_wrap_around_link() -> None:
    # (0, 0) west wraps to (11, 0), a chip of the board whose Ethernet chip is (8, 4)
    assert THREE_BOARDS.neighbour(ChipXY(0, 0), Link.WEST) == ChipXY(11, 0)
    image = receiver(ChipXY(11, 0))
    tables = {
        ChipXY(0, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((Link.WEST,), ())),),
        ChipXY(11, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((), (1,))),),
    }
    image = Image(1000, image.cores, tables)
    validate(image, THREE_BOARDS)
    res = Executor(image, THREE_BOARDS).run(4)
    assert res.gsyn_exc_na[(11, 0, 1)][1, 0] > 0
    assert res.core_provenance[(11, 0, 1)]["packets_received"] == 1
    assert res.router_provenance[ChipXY(0, 0)]["local_mc"] == 1
    assert res.router_provenance[ChipXY(11, 0)]["external_mc"] == 1


def test_default_routing_carries_a_packet_straight_across_chips_without_entries() -> None:
    # east from (0, 0); (1, 0) and (2, 0) have no entry and pass it on east to (3, 0)
    image = receiver(ChipXY(3, 0))
    tables = {
        ChipXY(0, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((Link.EAST,), ())),),
        ChipXY(3, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((), (1,))),),
    }
    res = Executor(Image(1000, image.cores, tables), THREE_BOARDS).run(3)
    assert res.gsyn_exc_na[(3, 0, 1)][1, 0] > 0
    assert res.router_provenance[ChipXY(1, 0)]["default_routed"] == 1
    assert res.router_provenance[ChipXY(2, 0)]["default_routed"] == 1


def test_routing_loop_is_dropped_and_counted() -> None:
    # (0, 0) -> east -> (1, 0) -> west -> (0, 0) -> ... forever on hardware
    tables = {
        ChipXY(0, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((Link.EAST,), ())),),
        ChipXY(1, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((Link.WEST,), ())),),
    }
    trace = Router(tables, THREE_BOARDS).trace(ARRAY_BASE, ChipXY(0, 0))
    assert sum(n for (_, counter), n in trace.counters.items() if counter == DROPPED_LOOP) == 1
    image = Image(1000, (array_core(ChipXY(0, 0), 1, [0, 1], [0, 0], 1, ARRAY_BASE),), tables)
    res = Executor(image, THREE_BOARDS).run(3)
    dropped = sum(p["dropped_loop"] for p in res.router_provenance.values())
    assert dropped == 2


def test_default_route_onto_a_dead_link_is_dropped_at_run_time() -> None:
    topology = Topology(
        12,
        12,
        [ChipXY(0, 0), ChipXY(4, 8), ChipXY(8, 4)],
        dead_links=[(ChipXY(1, 0), Link.EAST)],
    )
    tables = {ChipXY(0, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((Link.EAST,), ())),)}
    trace = Router(tables, topology).trace(ARRAY_BASE, ChipXY(0, 0))
    assert trace.counters[(ChipXY(1, 0), DEFAULT_ROUTED)] == 1
    assert trace.counters[(ChipXY(1, 0), DROPPED_DEAD_LINK)] == 1
    image = Image(1000, (array_core(ChipXY(0, 0), 1, [0, 0, 2], [0, 0, 0], 1, ARRAY_BASE),), tables)
    validate(image, topology)
    res = Executor(image, topology).run(4)
    assert res.router_provenance[ChipXY(1, 0)]["dropped_dead_link"] == 3


def test_off_the_edge_of_a_single_board_is_a_dead_link() -> None:
    board = Topology.single_board()
    tables = {ChipXY(0, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((Link.EAST,), ())),)}
    trace = Router(tables, board).trace(ARRAY_BASE, ChipXY(0, 0))
    # default routed east along y = 0 until the board's edge at x = 4
    assert trace.counters[(ChipXY(4, 0), DROPPED_DEAD_LINK)] == 1


def test_missed_population_table_lookup_is_counted() -> None:
    image = receiver(ChipXY(0, 0))
    neurons = neuron_core(
        ChipXY(0, 0),
        2,
        lif.LifParams(1),
        key_base=LIF_BASE,
        pop_table=lif.PopTable((lif.MasterPopEntry(0x5000, 0xFFFFF000, 0, 1, 4),), ((0, 1),)),
        matrix=ONE_SPIKE_ROW,
    )
    tables = {ChipXY(0, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((), (2,))),)}
    res = Executor(Image(1000, (image.cores[1], neurons), tables), THREE_BOARDS).run(2)
    assert res.core_provenance[(0, 0, 2)]["invalid_master_pop_hits"] == 1
    assert res.core_provenance[(0, 0, 2)]["packets_received"] == 1
