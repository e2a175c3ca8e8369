"""The results file: a run's recordings and provenance in one container, readable part by part.

A worker writes it after each run, the server serves byte ranges of it, and a job runner
decodes it back into the very :class:`~machine_models.executor.Results` the executor
returned (bit for bit: arrays keep their dtype and bytes)::

    magic "ALLOTRES" | version u16 | reserved u16 | index_n_bytes u32 | index (JSON, utf-8)
    | zeros to a multiple of 8 | part | part | ...

The index names every part, where it lies (offset from the start of the file) and how to
read it::

    {"first_step": 0, "last_step": 10000, "parts": [
        {"name": "spikes/0,0,1", "kind": "spikes", "where": [0, 0, 1],
         "dtype": "<i8", "shape": [812, 2], "offset": 4096, "n_bytes": 12992}, ...
        {"name": "core_provenance", "kind": "core_provenance", "where": [],
         "dtype": "json", "shape": [], "offset": ..., "n_bytes": ...}]}

Array parts are raw little-endian C-order bytes (``synaptic_matrix/x,y,p`` parts hold a
plastic core's matrix region after the run, u32 words); the two provenance parts are JSON
lists of ``[where, counters]`` pairs.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from machine_models.errors import ResultsFormatError
from machine_models.executor import Results
from machine_models.geometry import ChipXY
from machine_models.image import CoreXYP

__all__ = [
    "RESULTS_MAGIC",
    "RESULTS_VERSION",
    "PartEntry",
    "ResultsIndex",
    "decode_part",
    "decode_results",
    "encode_results",
    "index_bytes_needed",
    "join_results",
    "read_index",
]

RESULTS_MAGIC: Final = b"ALLOTRES"
RESULTS_VERSION: Final = 1
_HEADER = struct.Struct("<8sHHI")
_ALIGN = 8
_ARRAY_KINDS: Final = ("spikes", "v", "gsyn_exc", "gsyn_inh", "synaptic_matrix")
_JSON = "json"


@dataclass(frozen=True, slots=True)
class PartEntry:
    """Where one part of a results file lies and how to read it."""

    name: str
    kind: str
    where: tuple[int, ...]
    dtype: str
    shape: tuple[int, ...]
    offset: int
    n_bytes: int


@dataclass(frozen=True, slots=True)
class ResultsIndex:
    """The index of a results file: the steps it covers and its parts by name."""

    first_step: int
    last_step: int
    parts: Mapping[str, PartEntry]
    n_bytes: int


def _fields(results: Results) -> tuple[tuple[str, Mapping[CoreXYP, npt.NDArray[Any]]], ...]:
    return (
        ("spikes", results.spikes),
        ("v", results.v_mv),
        ("gsyn_exc", results.gsyn_exc_na),
        ("gsyn_inh", results.gsyn_inh_na),
        ("synaptic_matrix", results.synaptic_matrices),
    )


def encode_results(results: Results, *, first_step: int, last_step: int) -> bytes:
    """Serialise a run's results.

    Args:
        results: what the executor returned (or a merge of several runs).
        first_step: the first step they cover.
        last_step: the step after the last one they cover.
    """
    blobs: list[tuple[dict[str, Any], bytes]] = []
    for kind, arrays in _fields(results):
        for xyp in sorted(arrays):
            array = np.ascontiguousarray(arrays[xyp])
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            blobs.append(
                (
                    {
                        "name": f"{kind}/{xyp.x},{xyp.y},{xyp.p}",
                        "kind": kind,
                        "where": list(xyp),
                        "dtype": little.dtype.str,
                        "shape": list(little.shape),
                    },
                    little.tobytes(),
                )
            )
    for kind, table in (
        ("core_provenance", results.core_provenance),
        ("router_provenance", results.router_provenance),
    ):
        rows = [[list(where), dict(counters)] for where, counters in sorted(table.items())]
        blob = json.dumps(rows, separators=(",", ":")).encode()
        blobs.append(({"name": kind, "kind": kind, "where": [], "dtype": _JSON, "shape": []}, blob))
    # Offsets depend on the index's own length: lay the parts out after a first guess and
    # grow it until the index fits in front of them.
    reserve = 0
    while True:
        offset = _padded(_HEADER.size + reserve)
        entries = []
        for entry, blob in blobs:
            entries.append({**entry, "offset": offset, "n_bytes": len(blob)})
            offset = _padded(offset + len(blob))
        index = json.dumps(
            {"first_step": first_step, "last_step": last_step, "parts": entries},
            separators=(",", ":"),
        ).encode()
        if len(index) <= reserve:
            break
        reserve = len(index) + 64
    out = bytearray(_HEADER.pack(RESULTS_MAGIC, RESULTS_VERSION, 0, len(index)))
    out += index
    for entry, (_, blob) in zip(entries, blobs, strict=True):
        out += b"\0" * (int(entry["offset"]) - len(out))
        out += blob
    out += b"\0" * (_padded(len(out)) - len(out))
    return bytes(out)


def _padded(n_bytes: int) -> int:
    return n_bytes + (-n_bytes % _ALIGN)


def read_index(head: bytes, *, n_bytes: int | None = None) -> ResultsIndex:
    """Parse the index from the start of a results file.

    Args:
        head: at least the header and the index (the whole file will do).
        n_bytes: the size of the whole file, if known (default: ``len(head)``).

    Raises:
        ResultsFormatError: bad magic, unsupported version, truncation or a malformed index.
    """
    if len(head) < _HEADER.size:
        raise ResultsFormatError(f"{len(head)} bytes is shorter than the results header")
    magic, version, _reserved, index_bytes = _HEADER.unpack_from(head, 0)
    if magic != RESULTS_MAGIC:
        raise ResultsFormatError(f"magic {magic!r} is not {RESULTS_MAGIC!r}")
    if version != RESULTS_VERSION:
        raise ResultsFormatError(f"results version {version} is not supported")
    end = _HEADER.size + index_bytes
    if len(head) < end:
        raise ResultsFormatError(f"index needs {end} bytes, only {len(head)} given")
    total = len(head) if n_bytes is None else n_bytes
    try:
        raw = json.loads(bytes(head[_HEADER.size : end]))
        parts = {}
        for item in raw["parts"]:
            entry = PartEntry(
                name=str(item["name"]),
                kind=str(item["kind"]),
                where=tuple(int(v) for v in item["where"]),
                dtype=str(item["dtype"]),
                shape=tuple(int(v) for v in item["shape"]),
                offset=int(item["offset"]),
                n_bytes=int(item["n_bytes"]),
            )
            if entry.offset + entry.n_bytes > total:
                raise ResultsFormatError(f"part {entry.name} runs past the end of the file")
            parts[entry.name] = entry
        return ResultsIndex(int(raw["first_step"]), int(raw["last_step"]), parts, total)
    except (ValueError, KeyError, TypeError) as exc:
        raise ResultsFormatError(f"malformed results index: {exc}") from None


def index_bytes_needed(head: bytes) -> int:
    """How many bytes from the start hold the header and index (read the header first).

    Raises:
        ResultsFormatError: fewer bytes than the header given.
    """
    if len(head) < _HEADER.size:
        raise ResultsFormatError(f"{len(head)} bytes is shorter than the results header")
    return int(_HEADER.size + _HEADER.unpack_from(head, 0)[3])


def decode_part(entry: PartEntry, data: bytes) -> Any:
    """Turn one part's bytes into its array (or, for provenance, its ``{where: counters}``).

    Raises:
        ResultsFormatError: the bytes do not match the entry.
    """
    if len(data) != entry.n_bytes:
        raise ResultsFormatError(f"part {entry.name} is {len(data)} bytes, not {entry.n_bytes}")
    if entry.dtype == _JSON:
        try:
            rows = json.loads(data)
            if entry.kind == "core_provenance":
                return {CoreXYP(*where): dict(counters) for where, counters in rows}
            return {ChipXY(*where): dict(counters) for where, counters in rows}
        except (ValueError, TypeError) as exc:
            raise ResultsFormatError(f"part {entry.name} is not valid provenance: {exc}") from None
    try:
        array = np.frombuffer(data, dtype=np.dtype(entry.dtype)).reshape(entry.shape)
    except (ValueError, TypeError) as exc:
        raise ResultsFormatError(f"part {entry.name} does not match its shape: {exc}") from None
    return array.astype(array.dtype.newbyteorder("="))


def decode_results(data: bytes) -> tuple[Results, ResultsIndex]:
    """Parse a whole results file.

    Raises:
        ResultsFormatError: the file is malformed or truncated.
    """
    index = read_index(data)
    arrays: dict[str, dict[CoreXYP, Any]] = {kind: {} for kind in _ARRAY_KINDS}
    provenance: dict[str, Any] = {"core_provenance": {}, "router_provenance": {}}
    view = memoryview(data)
    for entry in index.parts.values():
        value = decode_part(entry, bytes(view[entry.offset : entry.offset + entry.n_bytes]))
        if entry.kind in arrays:
            arrays[entry.kind][CoreXYP(*entry.where)] = value
        elif entry.kind in provenance:
            provenance[entry.kind] = value
        else:
            raise ResultsFormatError(f"part {entry.name} has unknown kind {entry.kind!r}")
    results = Results(
        arrays["spikes"],
        arrays["v"],
        arrays["gsyn_exc"],
        arrays["gsyn_inh"],
        provenance["core_provenance"],
        provenance["router_provenance"],
        arrays["synaptic_matrix"],
    )
    return results, index


def join_results(parts: Sequence[Results]) -> Results:
    """Results of consecutive runs as one: recordings joined in time; provenance and plastic
    cores' synaptic matrices the last's.

    The executor's provenance counters count from the start, so the last run's are the
    totals.

    Raises:
        ValueError: no parts given.
    """
    if not parts:
        raise ValueError("no results to join")
    if len(parts) == 1:
        return parts[0]

    def joined(field: str) -> dict[CoreXYP, npt.NDArray[Any]]:
        pieces: dict[CoreXYP, list[npt.NDArray[Any]]] = {}
        for part in parts:
            for xyp, array in getattr(part, field).items():
                pieces.setdefault(xyp, []).append(array)
        return {xyp: np.concatenate(arrays) for xyp, arrays in pieces.items()}

    return Results(
        joined("spikes"),
        joined("v_mv"),
        joined("gsyn_exc_na"),
        joined("gsyn_inh_na"),
        parts[-1].core_provenance,
        parts[-1].router_provenance,
        parts[-1].synaptic_matrices,
    )
