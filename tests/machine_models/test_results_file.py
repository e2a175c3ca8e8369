"""The results file: what the executor returned, written and read back bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from machine_models.errors import ResultsFormatError
from machine_models.executor import Results
from machine_models.geometry import ChipXY
from machine_models.image import CoreXYP
from machine_models.results_file import (
    decode_part,
    decode_results,
    encode_results,
    join_results,
    read_index,
)

A = CoreXYP(0, 0, 1)
B = CoreXYP(1, 0, 3)


def _results(first: int, n: int) -> Results:
    rng = np.random.default_rng(first)
    steps = np.arange(first, first + n, dtype=np.int64)
    return Results(
        spikes={A: np.stack([steps, steps % 7], axis=1), B: np.zeros((0, 2), np.int64)},
        v_mv={A: rng.normal(size=(n, 3))},
        gsyn_exc_na={A: rng.normal(size=(n, 3))},
        gsyn_inh_na={},
        core_provenance={A: {"packets_sent": first + n}, B: {"packets_sent": 0}},
        router_provenance={ChipXY(0, 0): {"dropped": 1}},
    )


def _assert_equal(a: Results, b: Results) -> None:
    for field in ("spikes", "v_mv", "gsyn_exc_na", "gsyn_inh_na"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype
            assert x[key].shape == y[key].shape
            assert x[key].tobytes() == y[key].tobytes()
    assert a.core_provenance == b.core_provenance
    assert a.router_provenance == b.router_provenance


def test_round_trip_is_bit_for_bit() -> None:
    results = _results(0, 50)
    decoded, index = decode_results(encode_results(results, first_step=0, last_step=50))
    _assert_equal(decoded, results)
    assert (index.first_step, index.last_step) == (0, 50)
    assert set(index.parts) == {
        "spikes/0,0,1",
        "spikes/1,0,3",
        "v/0,0,1",
        "gsyn_exc/0,0,1",
        "core_provenance",
        "router_provenance",
    }


def test_one_part_reads_alone_from_its_range() -> None:
    data = encode_results(_results(0, 20), first_step=0, last_step=20)
    index = read_index(data)
    entry = index.parts["v/0,0,1"]
    assert entry.offset % 8 == 0
    v = decode_part(entry, data[entry.offset : entry.offset + entry.n_bytes])
    assert v.tobytes() == _results(0, 20).v_mv[A].tobytes()
    provenance = index.parts["core_provenance"]
    counters = decode_part(
        provenance, data[provenance.offset : provenance.offset + provenance.n_bytes]
    )
    assert counters == {A: {"packets_sent": 20}, B: {"packets_sent": 0}}


def test_joined_runs_are_one_run() -> None:
    joined = join_results([_results(0, 10), _results(10, 5)])
    assert joined.spikes[A][:, 0].tolist() == list(range(15))
    assert joined.v_mv[A].shape == (15, 3)
    assert joined.core_provenance == {A: {"packets_sent": 15}, B: {"packets_sent": 0}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"short", "shorter than the results header"),
        (b"NOTRESUL" + bytes(8), "magic"),
    ],
)
def test_malformed_files_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ResultsFormatError, match=message):
        decode_results(data)


def test_a_truncated_file_is_refused() -> None:
    data = encode_results(_results(0, 20), first_step=0, last_step=20)
    with pytest.raises(ResultsFormatError, match="runs past the end of the file"):
        decode_results(data[: len(data) // 2])
