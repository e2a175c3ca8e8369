"""Runs a job's image on its allocation for N timesteps, deterministically and fast.

Loading decodes every core's regions once into flat arrays (all neurons of all cores in one
array per state variable, all synaptic rows in one word array). The routing tables are static,
so each source key is traced through the routers once (:meth:`Router.trace`) and looked up in
each receiving core's master population table once; a spike then costs a walk over a
precomputed list of rows. Router and per-core packet counters are exact: the kernels count
packets per key, and the per-key counts of the trace are multiplied in after the run. Every
packet sent in a step is handled in that step, so no spike is ever late.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from machine_models import delays, kernels, lif, sources, threads
from machine_models.errors import ExecutionError, RegionError
from machine_models.geometry import ChipXY
from machine_models.image import AppId, CoreImage, CoreXYP, Image
from machine_models.regions import (
    REGION_DATA,
    REGION_KEYS,
    REGION_POP_TABLE,
    REGION_RECORDING,
    REGION_SYNAPSE_PARAMS,
    REGION_SYNAPTIC_MATRIX,
    decode_keys,
)
from machine_models.router import COUNTER_NAMES, Router
from machine_models.topology import Topology

__all__ = ["Executor", "Results"]

_I64 = np.int64
_I32 = np.int32
MAX_GROUPS = 64
"""Most groups the cores are split into for the threads (one group per thread up to this)."""
GROUPS_PER_THREAD = 4
"""Groups per thread: threads take groups as they finish one, so a thread that the OS
pauses holds up the others for one group, not for all of its share."""
PARALLEL_MIN_WORK = 100_000
"""Fewest neuron and source updates per window for which a run uses more than one thread:
below it, waking the threads twice a window costs more than they save."""
MAX_WINDOW_STEPS = 16
"""Most steps the cores advance between two exchanges of packets (bounds buffer sizes)."""


@dataclass(frozen=True)
class Results:
    """What a run produced.

    Attributes:
        spikes: Per neuron core, an (n, 2) array of (step, neuron) rows in time order.
        v_mv: Per core recording v, an array (samples, neurons) in mV.
        gsyn_exc_na: Per core recording gsyn_exc, (samples, neurons) in nA.
        gsyn_inh_na: Per core recording gsyn_inh, (samples, neurons) in nA.
        core_provenance: Per core, named counters.
        router_provenance: Per chip, the counters of :data:`COUNTER_NAMES`.
    """

    spikes: Mapping[CoreXYP, npt.NDArray[np.int64]]
    v_mv: Mapping[CoreXYP, npt.NDArray[np.float64]]
    gsyn_exc_na: Mapping[CoreXYP, npt.NDArray[np.float64]]
    gsyn_inh_na: Mapping[CoreXYP, npt.NDArray[np.float64]]
    core_provenance: Mapping[CoreXYP, Mapping[str, int]]
    router_provenance: Mapping[ChipXY, Mapping[str, int]]


def _region(core: CoreImage, region_id: int) -> bytes:
    try:
        return core.regions[region_id]
    except KeyError:
        raise RegionError(
            core.chip.x, core.chip.y, core.p, f"region {region_id} is missing"
        ) from None


def _spread(
    work: npt.NDArray[np.float64], n_groups: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Deal items to groups, largest first to the least loaded (ties to the lowest group).

    Returns:
        CSR pointers (n_groups + 1) and the items of each group in increasing order.
    """
    totals = [0.0] * n_groups
    members: list[list[int]] = [[] for _ in range(n_groups)]
    for item in np.argsort(-np.asarray(work, np.float64), kind="stable"):
        g = totals.index(min(totals))
        totals[g] += float(work[item])
        members[g].append(int(item))
    ptr = np.cumsum([0] + [len(m) for m in members]).astype(_I64)
    items = np.array([i for m in members for i in sorted(m)], dtype=_I64)
    return ptr, items


class Executor:
    """Loads an image on an allocation and advances it.

    Args:
        image: The job's load (validate it first with :func:`machine_models.validate`).
        topology: The allocation the image was built for.
        max_window_steps: Most steps the cores advance between exchanges of packets (they
            never advance further than the shortest synaptic or delay-stage delay). Any
            value gives the same results; larger ones run faster.

    Raises:
        RegionError: a region is missing or does not follow its layout.
    """

    def __init__(
        self, image: Image, topology: Topology, *, max_window_steps: int = MAX_WINDOW_STEPS
    ) -> None:
        if max_window_steps < 1:
            raise ExecutionError(f"max_window_steps must be at least 1, not {max_window_steps}")
        self._max_window_steps = max_window_steps
        self.image = image
        self.topology = topology
        self.router = Router(image.tables, topology)
        self.step = 0
        self._thread_policy: threads.ThreadPolicy | None = None
        self._load()
        self._plan()

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        emit_keys: list[int] = []
        emit_cb: list[int] = []
        emit_core: list[int] = []
        self._cores: list[CoreImage] = list(self.image.cores)
        core_index = {c.xyp: i for i, c in enumerate(self._cores)}
        lif_cols: dict[str, list[int]] = {
            k: []
            for k in (
                "nb",
                "nn",
                "ib",
                "tb",
                "db",
                "it",
                "she",
                "shi",
                "rb",
                "rm",
                "emit",
                "rec",
                "viv",
                "geiv",
                "giiv",
            )
        }
        neuron_recs = []
        syn_parts: list[npt.NDArray[np.uint32]] = []
        syn_base: dict[int, int] = {}
        pop_tables: dict[int, lif.PopTable] = {}
        self._lif_of_core: dict[int, int] = {}
        self._de_of_core: dict[int, int] = {}
        self._core_of_src: dict[tuple[int, int], int] = {}
        n_syn = n_neurons = n_ring = 0
        ssa: dict[str, list[int]] = {"emit": [], "lo": [], "hi": []}
        ssa_steps: list[npt.NDArray[np.uint32]] = []
        ssa_neurons: list[npt.NDArray[np.uint32]] = []
        n_ssa = 0
        po: dict[str, list[int]] = {"emit": [], "nb": [], "nn": []}
        po_recs = []
        po_seeds = []
        n_po = 0
        de: dict[str, list[int]] = {k: [] for k in ("emit", "nn", "stages", "dps", "slots", "cb")}
        de_params: list[delays.DelayParams] = []
        n_counter = 0
        for ci, core in enumerate(self._cores):
            x, y, p = core.xyp
            try:
                if core.app == AppId.DELAY_EXTENSION:
                    params = delays.decode_delay_params(_region(core, REGION_DATA))
                    self._de_of_core[ci] = len(de_params)
                    de_params.append(params)
                    de["emit"].append(len(emit_keys))
                    for d in range(params.n_stages):
                        for n in range(params.n_neurons):
                            emit_keys.append(
                                params.out_key_base
                                + ((d * params.n_neurons + n) << params.out_colour_bits)
                            )
                            emit_cb.append(params.out_colour_bits)
                            emit_core.append(ci)
                    slots = 1
                    while slots <= params.n_stages * params.delay_per_stage:
                        slots <<= 1
                    de["nn"].append(params.n_neurons)
                    de["stages"].append(params.n_stages)
                    de["dps"].append(params.delay_per_stage)
                    de["slots"].append(slots)
                    de["cb"].append(n_counter)
                    n_counter += slots * params.n_neurons
                    continue
                keys, cb, has_key = decode_keys(_region(core, REGION_KEYS))
                first_emitter = len(emit_keys)
                emit_keys.extend(int(k) for k in keys)
                emit_cb.extend([cb] * keys.size)
                emit_core.extend([ci] * keys.size)
                if core.app == AppId.IF_CURR_EXP:
                    recs = lif.decode_neuron_params(_region(core, REGION_DATA))
                    sp = lif.decode_synapse_params(_region(core, REGION_SYNAPSE_PARAMS))
                    rec = lif.decode_recording(_region(core, REGION_RECORDING))
                    pop_tables[ci] = lif.decode_pop_table(_region(core, REGION_POP_TABLE))
                    matrix = np.frombuffer(_region(core, REGION_SYNAPTIC_MATRIX), "<u4").astype(
                        np.uint32
                    )
                    self._lif_of_core[ci] = len(lif_cols["nb"])
                    ring_size = 1 << sp.ring_buffer_bits
                    for name, value in (
                        ("nb", n_neurons),
                        ("nn", recs.size),
                        ("ib", sp.index_bits),
                        ("tb", sp.type_bits),
                        ("db", sp.delay_bits),
                        ("it", sp.index_bits + sp.type_bits),
                        ("she", sp.shift_exc),
                        ("shi", sp.shift_inh),
                        ("rb", n_ring),
                        ("rm", ring_size - 1),
                        ("emit", first_emitter if has_key else -1),
                        ("rec", rec.record_spikes),
                        ("viv", rec.v_interval_steps),
                        ("geiv", rec.gsyn_exc_interval_steps),
                        ("giiv", rec.gsyn_inh_interval_steps),
                    ):
                        lif_cols[name].append(int(value))
                    neuron_recs.append(recs)
                    syn_base[ci] = n_syn
                    syn_parts.append(matrix)
                    n_syn += matrix.size
                    n_neurons += recs.size
                    n_ring += ring_size
                elif core.app == AppId.SPIKE_SOURCE_ARRAY:
                    steps, neurons = sources.decode_spike_array(_region(core, REGION_DATA))
                    self._core_of_src[(kernels.KIND_SSA, len(ssa["emit"]))] = ci
                    ssa["emit"].append(first_emitter)
                    ssa["lo"].append(n_ssa)
                    n_ssa += steps.size
                    ssa["hi"].append(n_ssa)
                    ssa_steps.append(steps)
                    ssa_neurons.append(neurons)
                elif core.app == AppId.SPIKE_SOURCE_POISSON:
                    seed, recs_p = sources.decode_poisson_params(_region(core, REGION_DATA))
                    self._core_of_src[(kernels.KIND_POISSON, len(po["emit"]))] = ci
                    po["emit"].append(first_emitter)
                    po["nb"].append(n_po)
                    po["nn"].append(recs_p.size)
                    n_po += recs_p.size
                    po_recs.append(recs_p)
                    po_seeds.append(seed)
            except (ValueError, struct.error) as exc:
                raise RegionError(x, y, p, str(exc)) from None
        self._emit_keys = np.array(emit_keys, dtype=np.uint32)
        self._emit_core = np.array(emit_core, dtype=np.int64)
        self._n_emitters = len(emit_keys)
        syn = np.concatenate(syn_parts) if syn_parts else np.zeros(0, np.uint32)

        # colour bits matter only if some table or population entry looks at them
        max_cb = max(emit_cb, default=0)
        colour_mask = (1 << max_cb) - 1
        mask_or = 0
        for entries in self.image.tables.values():
            for entry in entries:
                mask_or |= entry.mask
        for table in pop_tables.values():
            for pe in table.entries:
                mask_or |= pe.mask
        self._nvar = 1 if mask_or & colour_mask == 0 else 1 << max_cb
        fan = self._build_fanout(emit_cb, core_index, pop_tables, syn_base, syn, de_params)

        self.n_synapses = int(sum(int(np.count_nonzero(m)) for m in syn_parts))
        nr = np.concatenate(neuron_recs) if neuron_recs else np.zeros(0, lif.NEURON_DTYPE)
        self._state = {
            name: np.ascontiguousarray(nr[name]) for name in lif.NEURON_DTYPE.names or ()
        }
        self._lif = {k: np.array(v, dtype=np.int64) for k, v in lif_cols.items()}
        self._ring = np.zeros(n_ring, dtype=np.uint16)
        self._sat = np.zeros(len(lif_cols["nb"]), dtype=np.int64)
        self._syn = self._packed_syn
        del self._packed_syn
        self._fan = fan
        self._packets = np.zeros(self._n_emitters * self._nvar, dtype=np.int64)
        self._spikes_sent = np.zeros_like(self._packets)
        self._ssa = {k: np.array(v, dtype=np.int64) for k, v in ssa.items()}
        self._ssa_cursor = self._ssa["lo"].copy()
        self._ssa_steps = (
            np.concatenate(ssa_steps) if ssa_steps else np.zeros(0, np.uint32)
        ).astype(np.int64)
        self._ssa_neurons = (
            np.concatenate(ssa_neurons) if ssa_neurons else np.zeros(0, np.uint32)
        ).astype(np.int64)
        self._po = {k: np.array(v, dtype=np.int64) for k, v in po.items()}
        prec = np.concatenate(po_recs) if po_recs else np.zeros(0, sources.POISSON_DTYPE)
        self._po_rec = {
            name: prec[name].astype(np.int64) for name in sources.POISSON_DTYPE.names or ()
        }
        self._po_state = np.array(po_seeds, dtype=np.uint64).reshape(-1, 4)
        # every slow source draws its first time to spike at load, in order, as the core does
        # when it reads its rates (a source of rate 0 too: its interval is 0)
        self._po_rec["time_to_spike"] = np.zeros(prec.size, np.int64)
        for c in range(len(po_seeds)):
            for g in range(po["nb"][c], po["nb"][c] + po["nn"][c]):
                if self._po_rec["regime"][g] == sources.REGIME_SLOW:
                    self._po_rec["time_to_spike"][g] = kernels.draw_time_to_spike(
                        self._po_state, c, int(self._po_rec["isi_ticks"][g])
                    )
        self._de = {k: np.array(v, dtype=np.int64) for k, v in de.items()}
        self._de_counter = np.zeros(n_counter, dtype=np.uint8)
        self._de_lost = np.zeros(len(de_params), dtype=np.int64)
        for ci, li in self._lif_of_core.items():
            self._core_of_src[(kernels.KIND_LIF, li)] = ci
        for ci, di in self._de_of_core.items():
            self._core_of_src[(kernels.KIND_DELAY, di)] = ci
        lc = self._lif
        self._lif_table = np.zeros((lc["nb"].size, kernels.LIF_COLUMNS), _I64)
        for column, name in (
            (kernels.LIF_NB, "nb"),
            (kernels.LIF_NN, "nn"),
            (kernels.LIF_IB, "ib"),
            (kernels.LIF_TB, "tb"),
            (kernels.LIF_DB, "db"),
            (kernels.LIF_IT, "it"),
            (kernels.LIF_SHE, "she"),
            (kernels.LIF_SHI, "shi"),
            (kernels.LIF_RB, "rb"),
            (kernels.LIF_RM, "rm"),
            (kernels.LIF_EMIT, "emit"),
            (kernels.LIF_REC, "rec"),
            (kernels.LIF_VIV, "viv"),
            (kernels.LIF_GEIV, "geiv"),
            (kernels.LIF_GIIV, "giiv"),
        ):
            self._lif_table[:, column] = lc[name]
        # the steps in which every source of a core is active in the fast regime: its
        # kernel then draws without a branch per source (same draws, same order)
        # (and, when they share one rate, compares every draw with a constant)
        fast_from = np.zeros(self._po["nb"].size, _I64)
        fast_to = np.zeros(self._po["nb"].size, _I64)
        limit = np.full(self._po["nb"].size, -1, _I64)
        for c in range(self._po["nb"].size):
            lo = int(self._po["nb"][c])
            hi = lo + int(self._po["nn"][c])
            eml = self._po_rec["exp_minus_lambda"][lo:hi]
            if (
                hi > lo
                and bool(np.all(self._po_rec["regime"][lo:hi] == sources.REGIME_FAST))
                and bool(np.all(eml > 0))
            ):
                fast_from[c] = int(self._po_rec["start_step"][lo:hi].max())
                fast_to[c] = max(fast_from[c], int(self._po_rec["end_step"][lo:hi].min()))
                if bool(np.all(eml == eml[0])):
                    limit[c] = int(eml[0])
        self._po_table = np.stack(
            [self._po["nb"], self._po["nn"], fast_from, fast_to, limit], axis=1
        ).astype(_I64)
        self._po_table = self._po_table.reshape(-1, kernels.PO_COLUMNS)
        de_t = self._de
        self._de_table = (
            np.stack(
                [de_t["nn"], de_t["stages"], de_t["dps"], de_t["slots"], de_t["cb"]],
                axis=1,
            )
            .astype(_I64)
            .reshape(-1, kernels.DE_COLUMNS)
        )
        self._ssa_table = self._ssa["hi"].astype(_I64).reshape(-1, kernels.SSA_COLUMNS)

    def _build_fanout(
        self,
        emit_cb: list[int],
        core_index: Mapping[CoreXYP, int],
        pop_tables: Mapping[int, lif.PopTable],
        syn_base: Mapping[int, int],
        syn: npt.NDArray[np.uint32],
        de_params: list[delays.DelayParams],
    ) -> dict[str, npt.NDArray[np.generic]]:
        nvar = self._nvar
        ptr = [0]
        kind: list[int] = []
        dcore: list[int] = []
        da: list[int] = []
        db: list[int] = []
        n_cores = len(self._cores)
        n_counters = len(COUNTER_NAMES)
        self._chips = sorted(
            {c.chip for c in self._cores} | set(self.image.tables) | set(self.topology.chips())
        )
        chip_index = {chip: i for i, chip in enumerate(self._chips)}
        # per (emitter variant): router counter increments, per-core received and misses
        rc_rows: list[int] = []
        rc_cols: list[int] = []
        rc_vals: list[int] = []
        recv_rows: list[int] = []
        recv_cols: list[int] = []
        miss_rows: list[int] = []
        miss_cols: list[int] = []
        for e in range(self._n_emitters):
            ci = int(self._emit_core[e])
            source = self._cores[ci].chip
            for var in range(nvar):
                row = e * nvar + var
                key = int(self._emit_keys[e]) | (var & ((1 << emit_cb[e]) - 1))
                trace = self.router.trace(key, source)
                for (chip, counter), count in trace.counters.items():
                    rc_rows.append(row)
                    rc_cols.append(chip_index[chip] * n_counters + counter)
                    rc_vals.append(count)
                for target in trace.deliveries:
                    ti = core_index.get(target)
                    if ti is None:
                        continue
                    recv_rows.append(row)
                    recv_cols.append(ti)
                    if ti in pop_tables:
                        rows = self._rows_for(key, pop_tables[ti], syn_base[ti], syn)
                        if rows is None:
                            miss_rows.append(row)
                            miss_cols.append(ti)
                            continue
                        for start, length in rows:
                            kind.append(0)
                            dcore.append(self._lif_of_core[ti])
                            da.append(start)
                            db.append(length)
                    elif ti in self._de_of_core:
                        params = de_params[self._de_of_core[ti]]
                        if key & params.in_mask != params.in_key:
                            miss_rows.append(row)
                            miss_cols.append(ti)
                            continue
                        neuron = (key & ~params.in_mask & 0xFFFFFFFF) >> params.in_colour_bits
                        if neuron >= params.n_neurons:
                            miss_rows.append(row)
                            miss_cols.append(ti)
                            continue
                        kind.append(1)
                        dcore.append(self._de_of_core[ti])
                        da.append(neuron)
                        db.append(0)
                ptr.append(len(kind))
        self._rc = (np.array(rc_rows, _I64), np.array(rc_cols, _I64), np.array(rc_vals, _I64))
        self._recv = (np.array(recv_rows, _I64), np.array(recv_cols, _I64))
        self._miss = (np.array(miss_rows, _I64), np.array(miss_cols, _I64))
        self._n_cores = n_cores
        kinds = np.array(kind, dtype=np.int8)
        starts = np.array(da, dtype=np.int64)
        lengths = np.array(db, dtype=np.int64)
        self._packed_syn = self._pack_rows(kinds, starts, lengths, syn)
        return {
            "ptr": np.array(ptr, dtype=np.int64),
            "kind": kinds,
            "core": np.array(dcore, dtype=np.int64),
            "a": starts,
            "b": lengths,
        }

    @staticmethod
    def _pack_rows(
        kinds: npt.NDArray[np.int8],
        starts: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        syn: npt.NDArray[np.uint32],
    ) -> npt.NDArray[np.uint32]:
        """Copy the fixed words of every row in use, in order of first use, without headers.

        A spike then reads its rows one after another instead of jumping between the cores'
        matrices; rows no key reaches are left out. ``starts`` is rewritten in place to point
        into the packed array (a row used twice is stored once).
        """
        is_row = kinds == 0
        row_starts = starts[is_row]
        uniq, first, inverse = np.unique(row_starts, return_index=True, return_inverse=True)
        by_first_use = np.argsort(first, kind="stable")
        rank = np.empty_like(by_first_use)
        rank[by_first_use] = np.arange(by_first_use.size)
        used_lengths = lengths[is_row][first[by_first_use]]
        new_starts = np.concatenate([[0], np.cumsum(used_lengths)]).astype(np.int64)
        packed = np.zeros(int(new_starts[-1]), dtype=np.uint32)
        kernels.pack_rows(syn, uniq[by_first_use], used_lengths, packed)
        starts[is_row] = new_starts[rank[inverse.reshape(-1)]]
        return packed

    @staticmethod
    def _rows_for(
        key: int, table: lif.PopTable, base: int, syn: npt.NDArray[np.uint32]
    ) -> list[tuple[int, int]] | None:
        """Fixed-word (start, count) of every row a key selects, or None on a lookup miss."""
        for entry in table.entries:
            if key & entry.mask != entry.key:
                continue
            src_core = (key >> entry.mask_shift) & entry.core_mask
            local = key & ~(entry.mask | (entry.core_mask << entry.mask_shift)) & 0xFFFFFFFF
            neuron = (local >> entry.n_colour_bits) + src_core * entry.n_neurons
            rows = []
            for offset, row_length in table.addresses[entry.start : entry.start + entry.count]:
                if offset < 0:
                    continue
                word = base + offset // 4 + neuron * (row_length + 3)
                if word + 3 > base + syn.size:
                    continue
                n_fixed = int(syn[word + 1])
                rows.append((word + 3, n_fixed))
            return rows
        return None

    # ------------------------------------------------------------------ running
    def _plan(self) -> None:
        """Group the cores for the threads and find how far cores may run without exchanging.

        Emitting cores are spread over the groups by their work per step, receiving cores
        (neuron and delay-extension cores) by the synaptic words that reach them; the fan-out
        is split so that each group walks only the rows of its own receiving cores. Grouping
        changes only which thread does what, never a result.
        """
        n_groups = max(1, min(GROUPS_PER_THREAD * int(numba.get_num_threads()), MAX_GROUPS))
        lc = self._lif
        n_lif, n_po, n_de, n_ssa = (
            lc["nb"].size,
            self._po["nb"].size,
            self._de["nn"].size,
            (self._ssa["emit"].size),
        )
        # emitting cores in delivery order: arrays, Poisson sources, delay extensions, neurons
        kinds = np.repeat(
            np.array(
                [kernels.KIND_SSA, kernels.KIND_POISSON, kernels.KIND_DELAY, kernels.KIND_LIF]
            ),
            [n_ssa, n_po, n_de, n_lif],
        )
        index = np.concatenate([np.arange(k) for k in (n_ssa, n_po, n_de, n_lif)]).astype(_I64)
        emit = np.concatenate(
            [self._ssa["emit"], self._po["emit"], self._de["emit"], lc["emit"]]
        ).astype(_I64)
        capacity = np.concatenate(
            [np.zeros(n_ssa, _I64), self._po["nn"], self._de["nn"] * self._de["stages"], lc["nn"]]
        ).astype(_I64)
        seg = np.concatenate([[0], np.cumsum(capacity)]).astype(_I64)
        self._src = np.stack([kinds, index, emit, seg[:-1]], axis=1).astype(_I64)
        self._stride = max(1, int(seg[-1]))
        work = np.concatenate(
            [
                np.ones(n_ssa),
                2.0 * self._po["nn"],
                0.2 * self._de["nn"] * self._de["stages"],
                1.0 * lc["nn"],
            ]
        )
        self._a_ptr, self._a_items = _spread(work, n_groups)
        self._work_per_step = float(work.sum())

        fan = self._fan
        ptr, kind, core = fan["ptr"], fan["kind"], fan["core"]
        n_rows = ptr.size - 1
        row = np.repeat(np.arange(n_rows, dtype=_I64), np.diff(ptr))
        # receiving cores: neuron cores 0 .. n_lif - 1, then delay extensions
        receiver = np.where(kind == 0, core, n_lif + core)
        words = fan["b"].astype(np.float64) + 2.0
        load = np.bincount(receiver, weights=words, minlength=n_lif + n_de).astype(np.float64)
        b_ptr, b_items = _spread(load, n_groups)
        group_of = np.zeros(n_lif + n_de, _I64)
        for g in range(n_groups):
            group_of[b_items[b_ptr[g] : b_ptr[g + 1]]] = g
        group = group_of[receiver]
        # an empty row changes nothing on its core: it is not walked at all
        order = np.lexsort((row, group))
        order = order[(kind[order] != 0) | (np.asarray(fan["b"], np.int64)[order] > 0)]
        row_kept, group_kept = row[order], group[order]
        counts = np.bincount(group_kept * n_rows + row_kept, minlength=n_groups * n_rows)
        self._g_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(_I64)
        self._g_fan = {k: np.ascontiguousarray(fan[k][order]) for k in ("kind", "core", "a", "b")}
        # which emitting core reaches which group
        q_of_core = np.full(len(self._cores), -1, _I64)
        for q in range(kinds.size):
            ci = self._core_of_src[(int(kinds[q]), int(index[q]))]
            q_of_core[ci] = q
        q_of_row = q_of_core[np.repeat(self._emit_core, self._nvar)]
        # REACH_NONE, REACH_ROWS, or the one neuron core that the keys of the emitting core
        # reach in the group, each through one one-synapse row or none (one-to-one payloads,
        # delivered directly)
        self._reach = np.full((kinds.size, n_groups), kernels.REACH_NONE, _I64)
        self._reach[q_of_row[row_kept], group_kept] = kernels.REACH_ROWS
        g_kind, g_core, g_len = self._g_fan["kind"], self._g_fan["core"], self._g_fan["b"]
        for qp in np.flatnonzero(kinds == kernels.KIND_POISSON).tolist():
            lo = int(emit[qp]) * self._nvar
            hi = (int(emit[qp]) + int(capacity[qp])) * self._nvar
            for grp in np.flatnonzero(self._reach[qp] == kernels.REACH_ROWS).tolist():
                first = self._g_ptr[grp * n_rows + lo : grp * n_rows + hi]
                n_entries = self._g_ptr[grp * n_rows + lo + 1 : grp * n_rows + hi + 1] - first
                if np.any(n_entries > 1):
                    continue
                first = first[n_entries == 1]
                if np.all(g_kind[first] == 0) and np.all(g_len[first] == 1):
                    targets = np.unique(g_core[first])
                    if targets.size == 1:
                        self._reach[qp, grp] = int(targets[0])
        de_parts = [
            [int(r) - n_lif for r in b_items[b_ptr[g] : b_ptr[g + 1]] if r >= n_lif]
            for g in range(n_groups)
        ]
        self._b_ptr = np.cumsum([0] + [len(part) for part in de_parts]).astype(_I64)
        self._b_items = np.array([c for part in de_parts for c in part], dtype=_I64)
        # cores may run apart for as many steps as the shortest synapse or delay stage
        shortest = int(
            kernels.min_row_delay(self._syn, kind, core, fan["a"], fan["b"], self._lif_table)
        )
        if n_de:
            shortest = min(shortest, int(self._de["dps"].min()))
        self._window = max(1, min(shortest, self._max_window_steps))

    def adopt_state(self, previous: Executor) -> None:
        """Continue where ``previous`` stopped, with this executor's parameters.

        A run that changes parameters between two runs (a Poisson rate, a neuron's
        offset current) loads a new image of the same network and takes over the state
        the chips would keep: time, membrane potentials, synaptic currents, refractory
        timers, ring buffers, spikes waiting in delay extensions, random generators
        and counters. Parameters come from this executor's image.

        Raises:
            ExecutionError: the two images do not lay the network out the same way.
        """
        pairs: list[tuple[str, npt.NDArray[Any], npt.NDArray[Any]]] = [
            ("ring buffers", self._ring, previous._ring),
            ("saturation counters", self._sat, previous._sat),
            ("packet counters", self._packets, previous._packets),
            ("spike counters", self._spikes_sent, previous._spikes_sent),
            ("poisson generators", self._po_state, previous._po_state),
            ("poisson timers", self._po_rec["time_to_spike"], previous._po_rec["time_to_spike"]),
            ("delay buffers", self._de_counter, previous._de_counter),
            ("delay losses", self._de_lost, previous._de_lost),
        ]
        pairs += [
            (f"neuron {name}", self._state[name], previous._state[name])
            for name in ("v", "refract_timer", "isyn_exc", "isyn_inh")
            if name in self._state or name in previous._state
        ]
        for what, mine, theirs in pairs:
            if mine.shape != theirs.shape:
                raise ExecutionError(
                    f"cannot continue a run on another layout: {what} differ in size "
                    f"({theirs.shape} vs {mine.shape})"
                )
        for _, mine, theirs in pairs:
            mine[...] = theirs
        self.step = previous.step
        # spike arrays may have changed: each source resumes at its first spike not yet sent
        for c in range(self._ssa["lo"].size):
            lo, hi = int(self._ssa["lo"][c]), int(self._ssa["hi"][c])
            offset = np.searchsorted(self._ssa_steps[lo:hi], self.step, side="left")
            self._ssa_cursor[c] = lo + int(offset)

    @property
    def window_steps(self) -> int:
        """Steps the cores advance between two exchanges of packets."""
        return self._window

    def run(self, n_steps: int) -> Results:
        """Advance every core by ``n_steps`` timesteps and return what was recorded.

        Raises:
            ExecutionError: ``n_steps`` is negative.
        """
        if n_steps < 0:
            raise ExecutionError(f"cannot run for {n_steps} steps")
        t0, t1 = self.step, self.step + n_steps
        lc = self._lif
        n_lif_cores = lc["nb"].size

        def sample_layout(
            intervals: npt.NDArray[np.int64],
        ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
            first = np.zeros(n_lif_cores, np.int64)
            offs = np.zeros(n_lif_cores, np.int64)
            total = 0
            for c in range(n_lif_cores):
                iv = int(intervals[c])
                if iv > 0:
                    first[c] = -(-t0 // iv)
                    count = -(-t1 // iv) - first[c]
                    offs[c] = total
                    total += int(count * lc["nn"][c])
            return first, offs, total

        vfirst, voff, vtotal = sample_layout(lc["viv"])
        gefirst, geoff, getotal = sample_layout(lc["geiv"])
        gifirst, gioff, gitotal = sample_layout(lc["giiv"])
        lif_p = self._lif_table.copy()
        for column, values in (
            (kernels.LIF_VOFF, voff),
            (kernels.LIF_VFIRST, vfirst),
            (kernels.LIF_GEOFF, geoff),
            (kernels.LIF_GEFIRST, gefirst),
            (kernels.LIF_GIOFF, gioff),
            (kernels.LIF_GIFIRST, gifirst),
        ):
            lif_p[:, column] = values
        v_buf = np.zeros(vtotal, np.int32)
        ge_buf = np.zeros(getotal, np.int32)
        gi_buf = np.zeros(gitotal, np.int32)
        st = self._state
        n_lif = st["v"].size if st else 0
        window = self._window
        cap = max(1024, 4 * n_lif + n_lif * max(1, n_steps) // 50, 2 * n_lif * window)
        rec_t = np.zeros(cap, np.int64)
        rec_n = np.zeros(cap, np.int64)
        rec_count = np.zeros(1, np.int64)
        chunks_t: list[npt.NDArray[np.int64]] = []
        chunks_n: list[npt.NDArray[np.int64]] = []
        n_src = self._src.shape[0]
        em_n = np.zeros((window, n_src), _I64)
        em_j = np.zeros(window * self._stride, _I64)
        em_k = np.zeros(window * self._stride, _I64)
        n_ssa = self._ssa["emit"].size
        ssa_lo = np.zeros((window, n_ssa), _I64)
        ssa_hi = np.zeros((window, n_ssa), _I64)
        spk = np.zeros(n_lif, np.uint8)
        fan = self._g_fan
        t = t0
        chunk = numba.set_parallel_chunksize(1)
        n_threads = numba.get_num_threads()
        policy = self._policy_for(n_threads)
        try:
            while t < t1:
                use, n_windows = (
                    policy.next_chunk() if policy is not None else (1, threads.CHUNK_WINDOWS)
                )
                numba.set_num_threads(use)
                stop = min(t1, t + n_windows * window)
                started = time.perf_counter()
                reached = kernels.run_windows(
                    t,
                    stop,
                    window,
                    self._nvar,
                    self._src,
                    self._a_ptr,
                    self._a_items,
                    em_n,
                    em_j,
                    em_k,
                    self._packets,
                    self._spikes_sent,
                    self._reach,
                    self._g_ptr,
                    fan["kind"],
                    fan["core"],
                    fan["a"],
                    fan["b"],
                    self._syn,
                    self._b_ptr,
                    self._b_items,
                    lif_p,
                    self._sat,
                    self._ring,
                    spk,
                    st.get("v", np.zeros(0, _I32)),
                    st.get("v_rest", np.zeros(0, _I32)),
                    st.get("r_membrane", np.zeros(0, _I32)),
                    st.get("exp_tc", np.zeros(0, _I32)),
                    st.get("i_offset", np.zeros(0, _I32)),
                    st.get("v_reset", np.zeros(0, _I32)),
                    st.get("v_thresh", np.zeros(0, _I32)),
                    st.get("t_refract", np.zeros(0, _I32)),
                    st.get("refract_timer", np.zeros(0, _I32)),
                    st.get("isyn_exc", np.zeros(0, _I32)),
                    st.get("isyn_inh", np.zeros(0, _I32)),
                    st.get("exc_decay", np.zeros(0, np.uint32)),
                    st.get("exc_init", np.zeros(0, np.uint32)),
                    st.get("inh_decay", np.zeros(0, np.uint32)),
                    st.get("inh_init", np.zeros(0, np.uint32)),
                    rec_t,
                    rec_n,
                    rec_count,
                    v_buf,
                    ge_buf,
                    gi_buf,
                    self._ssa_table,
                    self._ssa_cursor,
                    ssa_lo,
                    ssa_hi,
                    self._ssa_steps,
                    self._ssa_neurons,
                    self._po_table,
                    self._po_state,
                    self._po_rec["start_step"],
                    self._po_rec["end_step"],
                    self._po_rec["regime"],
                    self._po_rec["exp_minus_lambda"],
                    self._po_rec["sqrt_lambda"],
                    self._po_rec["isi_ticks"],
                    self._po_rec["time_to_spike"],
                    self._de_table,
                    self._de_counter,
                    self._de_lost,
                )
                if policy is not None:
                    policy.record(use, reached - t, time.perf_counter() - started)
                t = reached
                n = int(rec_count[0])
                chunks_t.append(rec_t[:n].copy())
                chunks_n.append(rec_n[:n].copy())
                rec_count[0] = 0
        finally:
            numba.set_parallel_chunksize(chunk)
            numba.set_num_threads(n_threads)
        self.step = t1
        return self._results(
            np.concatenate(chunks_t) if chunks_t else np.zeros(0, _I64),
            np.concatenate(chunks_n) if chunks_n else np.zeros(0, _I64),
            (v_buf, voff, vfirst),
            (ge_buf, geoff, gefirst),
            (gi_buf, gioff, gifirst),
            t0,
            t1,
        )

    def _policy_for(self, n_threads: int) -> threads.ThreadPolicy | None:
        """The thread policy of this executor's runs; None when one thread is the only choice.

        A network with too little work per window runs on one thread: waking the others
        twice a window would cost more than they save.
        """
        if n_threads <= 1 or self._work_per_step * self._window < PARALLEL_MIN_WORK:
            return None
        if self._thread_policy is None or self._thread_policy.n_threads != n_threads:
            self._thread_policy = threads.ThreadPolicy(n_threads)
        return self._thread_policy

    @property
    def seconds_per_step(self) -> dict[int, float]:
        """What the thread policy measured: seconds per step by thread count (empty if none)."""
        return {} if self._thread_policy is None else self._thread_policy.seconds_per_step

    def _results(
        self,
        spike_t: npt.NDArray[np.int64],
        spike_n: npt.NDArray[np.int64],
        v_rec: tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.int64]],
        ge_rec: tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.int64]],
        gi_rec: tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.int64]],
        t0: int,
        t1: int,
    ) -> Results:
        lc = self._lif
        spikes: dict[CoreXYP, npt.NDArray[np.int64]] = {}
        recordings: list[dict[CoreXYP, npt.NDArray[np.float64]]] = [{}, {}, {}]
        order = np.argsort(spike_n, kind="stable")
        sorted_n = spike_n[order]
        for ci, li in self._lif_of_core.items():
            xyp = self._cores[ci].xyp
            nb, nn = int(lc["nb"][li]), int(lc["nn"][li])
            if lc["rec"][li]:
                lo, hi = np.searchsorted(sorted_n, [nb, nb + nn])
                sel = np.sort(order[lo:hi], kind="stable")
                spikes[xyp] = np.stack([spike_t[sel], spike_n[sel] - nb], axis=1)
            for out, (buf, offs, first), key in zip(
                recordings, (v_rec, ge_rec, gi_rec), ("viv", "geiv", "giiv"), strict=True
            ):
                iv = int(lc[key][li])
                if iv > 0:
                    count = -(-t1 // iv) - int(first[li])
                    raw = buf[int(offs[li]) : int(offs[li]) + count * nn].reshape(count, nn)
                    out[xyp] = raw.astype(np.float64) / 32768.0
        n_counters = len(COUNTER_NAMES)
        packets = self._packets
        spikes_in = self._spikes_sent
        router = np.zeros(len(self._chips) * n_counters, np.int64)
        rows, cols, vals = self._rc
        np.add.at(router, cols, vals * packets[rows])
        received = np.zeros(self._n_cores, np.int64)
        np.add.at(received, self._recv[1], packets[self._recv[0]])
        misses = np.zeros(self._n_cores, np.int64)
        np.add.at(misses, self._miss[1], spikes_in[self._miss[0]])
        sent_packets = np.zeros(self._n_cores, np.int64)
        sent_spikes = np.zeros(self._n_cores, np.int64)
        owner = np.repeat(self._emit_core, self._nvar)
        np.add.at(sent_packets, owner, packets)
        np.add.at(sent_spikes, owner, spikes_in)
        core_prov: dict[CoreXYP, dict[str, int]] = {}
        for ci, core in enumerate(self._cores):
            prov = {
                "packets_sent": int(sent_packets[ci]),
                "spikes_sent": int(sent_spikes[ci]),
                "packets_received": int(received[ci]),
                "invalid_master_pop_hits": int(misses[ci]),
            }
            if ci in self._lif_of_core:
                prov["ring_buffer_saturations"] = int(self._sat[self._lif_of_core[ci]])
                prov["late_spikes"] = 0
            if ci in self._de_of_core:
                prov["spikes_lost_to_saturation"] = int(self._de_lost[self._de_of_core[ci]])
            core_prov[core.xyp] = prov
        router_prov = {
            chip: {name: int(router[i * n_counters + j]) for j, name in enumerate(COUNTER_NAMES)}
            for i, chip in enumerate(self._chips)
        }
        return Results(spikes, recordings[0], recordings[1], recordings[2], core_prov, router_prov)
