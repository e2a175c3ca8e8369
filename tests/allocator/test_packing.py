"""Tests of triad packing: reference shapes, faults, single boards, and invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.config import default_config
from allocator.machine import Machine
from allocator.packing import AllocationConflictError, MachineAllocator, TriadRect
from allocator.requests import JobRequest
from machine_models.geometry import BoardCFB, BoardXYZ, Link, TriadXY

DEFAULT = default_config().machines[0]


def _machine(
    w: int,
    h: int,
    dead: set[BoardXYZ] | None = None,
    dead_links: set[tuple[BoardXYZ, Link]] | None = None,
) -> Machine:
    boards = [BoardXYZ(x, y, z) for x in range(w) for y in range(h) for z in range(3)]
    layout = {b: BoardCFB(i // 120, (i // 24) % 5, i % 24) for i, b in enumerate(boards)}
    return Machine.with_standard_ips(
        "m", {"default"}, w, h, layout, dead or set(), dead_links or set()
    )


@pytest.mark.parametrize(
    ("n", "ratio", "shape"),
    [
        (4, 0.0, (2, 1)),
        (7, 0.0, (3, 1)),
        (12, 0.0, (2, 2)),
        (24, 0.0, (4, 2)),
        (48, 0.0, (4, 4)),
        (100, 0.0, (17, 2)),
        (100, 0.333, (9, 4)),
        (100, 1.0, (6, 6)),
    ],
)
def test_reference_shapes(n: int, ratio: float, shape: tuple[int, int]) -> None:
    allocation = MachineAllocator(DEFAULT).allocate(JobRequest.from_args((n,), min_ratio=ratio), 1)
    assert allocation is not None
    assert (allocation.rectangle.width, allocation.rectangle.height) == shape
    assert len(allocation.boards) == 3 * shape[0] * shape[1]


def test_chip_sizes() -> None:
    allocator = MachineAllocator(DEFAULT)
    one = allocator.allocate(JobRequest.from_args(()), 1)
    triad = allocator.allocate(JobRequest.from_args((1, 1)), 2)
    assert one is not None
    assert triad is not None
    assert (one.width_chips, one.height_chips) == (8, 8)
    assert (triad.width_chips, triad.height_chips) == (16, 16)
    torus = MachineAllocator(DEFAULT).allocate(
        JobRequest.from_args((20, 20), require_torus=True), 3
    )
    assert torus is not None
    assert (torus.width_chips, torus.height_chips, torus.wraps_x, torus.wraps_y) == (
        240,
        240,
        True,
        True,
    )
    assert not torus.peripheral_links


def test_single_boards_share_a_triad() -> None:
    allocator = MachineAllocator(DEFAULT)
    boards = [allocator.allocate(JobRequest.from_args(()), i) for i in range(1, 5)]
    assert all(b is not None for b in boards)
    triads = [TriadXY(b.rectangle.x, b.rectangle.y) for b in boards if b]
    assert len(set(triads[:3])) == 1
    assert triads[3] != triads[0]
    allocator.free(1)
    again = allocator.allocate(JobRequest.from_args(()), 9)
    assert again is not None
    assert TriadXY(again.rectangle.x, again.rectangle.y) == triads[0]


def test_specific_board() -> None:
    allocator = MachineAllocator(DEFAULT)
    request = JobRequest.from_args((3, 4, 2))
    allocation = allocator.allocate(request, 1)
    assert allocation is not None
    assert allocation.boards == {BoardXYZ(3, 4, 2)}
    assert allocator.allocate(request, 2) is None
    assert allocator.allocate(JobRequest.from_args((3, 4, 1)), 3) is not None
    assert allocator.allocate(JobRequest.from_args((3, 4, 2)), 4, avoid=frozenset()) is None


def test_fits_ever() -> None:
    dead = {BoardXYZ(0, 0, 0)}
    allocator = MachineAllocator(_machine(2, 2, dead))
    assert not allocator.fits_ever(JobRequest.from_args((0, 0, 0)))
    assert allocator.fits_ever(JobRequest.from_args((0, 0, 1)))
    assert not allocator.fits_ever(JobRequest.from_args((9, 0, 1)))
    assert not allocator.fits_ever(JobRequest.from_args((3, 1)))
    assert not allocator.fits_ever(JobRequest.from_args((0,)))
    assert allocator.fits_ever(JobRequest.from_args((1, 1)))  # other corners are alive
    assert not allocator.fits_ever(JobRequest.from_args((2, 2)))  # root board (0, 0, 0) dead
    assert not allocator.fits_ever(JobRequest.from_args((12,), max_dead_boards=0))
    assert not allocator.fits_ever(JobRequest.from_args((1, 1), tags=["gpu"]))
    assert not allocator.fits_ever(JobRequest.from_args((1, 1), machine="other"))
    assert not allocator.fits_ever(JobRequest.from_args((1, 1), require_torus=True))


def test_dead_board_excluded_and_unreachable_counted() -> None:
    allocator = MachineAllocator(_machine(2, 2, {BoardXYZ(0, 0, 1)}))
    allocation = allocator.allocate(JobRequest.from_args((1, 1)), 1)
    assert allocation is not None
    assert allocation.rectangle == TriadRect(0, 0, 1, 1)
    assert allocation.boards == {BoardXYZ(0, 0, 0), BoardXYZ(0, 0, 2)}
    strict = allocator.allocate(JobRequest.from_args((1, 1), max_dead_boards=0), 2)
    assert strict is not None
    assert strict.rectangle != TriadRect(0, 0, 1, 1)


def test_dead_links_limit() -> None:
    links = {(BoardXYZ(0, 0, 0), Link.NORTH_EAST)}
    allocator = MachineAllocator(_machine(1, 2, dead_links=links))
    request = JobRequest.from_args((1, 1), max_dead_links=0)
    allocation = allocator.allocate(request, 1)
    assert allocation is not None
    assert allocation.rectangle == TriadRect(0, 1, 1, 1)
    assert allocator.allocate(request, 2) is None


def test_out_of_service_link_counts_as_a_dead_link_until_back() -> None:
    allocator = MachineAllocator(_machine(1, 2))
    request = JobRequest.from_args((1, 1), max_dead_links=0)
    # Named from the far end: the link is the same one in both directions.
    far = (BoardXYZ(0, 0, 0), Link.NORTH_EAST)
    allocator.set_out_of_service_links({far})
    assert allocator.out_of_service_links >= {far}
    assert len(allocator.out_of_service_links) == 2
    allocation = allocator.allocate(request, 1)
    assert allocation is not None
    assert allocation.rectangle == TriadRect(0, 1, 1, 1)
    assert allocator.allocate(request, 2) is None
    assert allocator.fits_ever(request)
    allocator.set_out_of_service_links(())
    again = allocator.allocate(request, 2)
    assert again is not None
    assert again.rectangle == TriadRect(0, 0, 1, 1)


def test_out_of_service_link_cuts_off_a_board_like_a_dead_link() -> None:
    allocator = MachineAllocator(_machine(1, 1))
    # Board (0, 0, 1) reached only through the links it has to its triad neighbours.
    cut = {(BoardXYZ(0, 0, 1), link) for link in Link}
    allocator.set_out_of_service_links(cut)
    allocation = allocator.allocate(JobRequest.from_args((1, 1), max_dead_boards=1), 1)
    assert allocation is not None
    assert BoardXYZ(0, 0, 1) not in allocation.boards


def test_out_of_service_never_allocated() -> None:
    allocator = MachineAllocator(_machine(1, 1))
    allocator.set_out_of_service({BoardXYZ(0, 0, 0), BoardXYZ(0, 0, 1)})
    assert allocator.n_free_boards == 1
    allocation = allocator.allocate(JobRequest.from_args(()), 1)
    assert allocation is not None
    assert allocation.boards == {BoardXYZ(0, 0, 2)}
    assert allocator.allocate(JobRequest.from_args(()), 2) is None


def test_conflicts() -> None:
    allocator = MachineAllocator(_machine(2, 2))
    allocator.allocate(JobRequest.from_args((1, 1)), 7)
    with pytest.raises(AllocationConflictError, match="job 7 already holds"):
        allocator.allocate(JobRequest.from_args(()), 7)
    with pytest.raises(
        AllocationConflictError, match=r"board \(0, 0, 0\) of job 8 is held by job 7"
    ):
        allocator.restore(8, {BoardXYZ(0, 0, 0)})


requests_st = st.one_of(
    st.just(JobRequest.from_args(())),
    st.builds(lambda n: JobRequest.from_args((n,)), st.integers(1, 30)),
    st.builds(lambda w, h: JobRequest.from_args((w, h)), st.integers(1, 4), st.integers(1, 3)),
    st.builds(
        lambda x, y, z: JobRequest.from_args((x, y, z)),
        st.integers(0, 3),
        st.integers(0, 2),
        st.integers(0, 2),
    ),
)
ops_st = st.lists(st.tuples(st.booleans(), requests_st, st.integers(0, 30)), max_size=30)
DEAD = {BoardXYZ(1, 1, 1), BoardXYZ(3, 0, 0)}


@settings(max_examples=60, deadline=None)
@given(ops=ops_st, oos=st.sets(st.sampled_from([BoardXYZ(0, 0, 1), BoardXYZ(2, 2, 2)])))
def test_invariants(ops: list[tuple[bool, JobRequest, int]], oos: set[BoardXYZ]) -> None:
    machine = _machine(4, 3, DEAD)
    allocator = MachineAllocator(machine)
    allocator.set_out_of_service(oos)
    live: dict[int, frozenset[BoardXYZ]] = {}
    for job_id, (is_alloc, request, victim) in enumerate(ops, start=1):
        if is_alloc:
            allocation = allocator.allocate(request, job_id)
            if allocation is not None:
                assert allocator.fits_ever(request)
                assert allocation.boards
                assert not allocation.boards & (DEAD | oos)
                assert all(machine.is_live(b) for b in allocation.boards)
                for other in live.values():
                    assert not other & allocation.boards
                live[job_id] = allocation.boards
        elif live:
            key = sorted(live)[victim % len(live)]
            assert allocator.free(key) == live.pop(key)
        assert allocator.n_allocated_boards == sum(len(b) for b in live.values())
    # restore reproduces occupancy
    copy = MachineAllocator(machine)
    copy.set_out_of_service(oos)
    for job_id in live:
        allocation = allocator.allocation(job_id)
        assert allocation is not None
        rect = None if allocation.is_single_board else allocation.rectangle
        copy.restore(job_id, live[job_id], rect)
    assert (copy.busy_triads() == allocator.busy_triads()).all()
    for job_id in list(live):
        allocator.free(job_id)
    assert not allocator.busy_triads().any()
    assert allocator.n_free_boards == len(machine.live_boards - oos)


@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3), st.data())
def test_free_positions_equal_a_slow_scan_in_y_then_x_order(
    n_w: int, n_h: int, w: int, h: int, data: st.DataObject
) -> None:
    cells = data.draw(st.lists(st.booleans(), min_size=n_w * n_h, max_size=n_w * n_h))
    blocked = np.array(cells, dtype=bool).reshape(n_w, n_h)
    slow = [
        (x, y)
        for y in range(n_h - h + 1)
        for x in range(n_w - w + 1)
        if not blocked[x : x + w, y : y + h].any()
    ]
    assert list(MachineAllocator._free_positions(blocked, w, h)) == slow
