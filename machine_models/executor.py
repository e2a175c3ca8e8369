"""Runs a job's image on its allocation for N timesteps, deterministically and fast.

Loading hands every core to its application's loader (:mod:`machine_models.loading`), which
decodes its regions once into flat arrays (all neurons of all cores in one array per state
variable, all synaptic rows in one word array), passed to the kernels as named tuples of arrays
(:class:`kernels.LifCores`, ``PoissonCores``, ...). The routing tables are static,
so each source key is traced through the routers once (:meth:`Router.trace`) and looked up in
each receiving core's master population table once; a spike then costs a walk over a
precomputed list of rows. Router and per-core packet counters are exact: the kernels count
packets per key, and the per-key counts of the trace are multiplied in after the run. Every
packet sent in a step is handled in that step, so no spike is ever late. The run goes in
chunks whose thread count :class:`threads.ThreadPolicy` picks from measured times; each thread
count has its own grouping of the cores (one thread walks as few groups as a one-thread run).
Plastic cores (``stdp``) update their rows in place as packets reach them and keep a log of
each neuron's spikes long enough for the chip's 15-event history to be read a window behind;
their matrices come back in :attr:`Results.synaptic_matrices`.

The slow, obvious oracle this must equal lives in the tests (``tests/machine_models/reference.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from machine_models import delays, kernels, lif, loading, threads
from machine_models.errors import ExecutionError
from machine_models.geometry import ChipXY
from machine_models.image import AppId, CoreImage, CoreXYP, Image
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
        synaptic_matrices: Per plastic core, its synaptic-matrix region as the run left it
            (u32 words; the weights the rule learned, read with ``stdp.decode_plastic_rows``).
    """

    spikes: Mapping[CoreXYP, npt.NDArray[np.int64]]
    v_mv: Mapping[CoreXYP, npt.NDArray[np.float64]]
    gsyn_exc_na: Mapping[CoreXYP, npt.NDArray[np.float64]]
    gsyn_inh_na: Mapping[CoreXYP, npt.NDArray[np.float64]]
    core_provenance: Mapping[CoreXYP, Mapping[str, int]]
    router_provenance: Mapping[ChipXY, Mapping[str, int]]
    synaptic_matrices: Mapping[CoreXYP, npt.NDArray[np.uint32]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Layout:
    """The cores grouped for a thread count: emitting cores (CSR ``a_ptr``, ``a_items``) and
    the fan-out split by the groups of receiving cores."""

    a_ptr: npt.NDArray[np.int64]
    a_items: npt.NDArray[np.int64]
    fanout: kernels.Fanout


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
        """Hand every core to its application's loader; build the fan-out of every key."""
        self._cores: list[CoreImage] = list(self.image.cores)
        core_index = {c.xyp: i for i, c in enumerate(self._cores)}
        emitters = loading.Emitters()
        shared = {cls: cls() for cls in set(loading.LOADERS.values())}
        self._loaders: dict[AppId, loading.Loader] = {
            app: shared[cls] for app, cls in loading.LOADERS.items()
        }
        for ci, core in enumerate(self._cores):
            loading.load_core(self._loaders[core.app], ci, core, emitters)
        lif_loader = self._lif_loader
        delay_loader = self._delay_loader
        self._lif_of_core = {ci: i for i, ci in enumerate(lif_loader.cores)}
        self._de_of_core = {ci: i for i, ci in enumerate(delay_loader.cores)}
        self._emit_keys = np.array(emitters.keys, dtype=np.uint32)
        self._emit_core = np.array(emitters.core, dtype=np.int64)
        self._n_emitters = len(emitters.keys)
        syn = lif_loader.synaptic_words

        # colour bits matter only if some table or population entry looks at them
        max_cb = max(emitters.colour_bits, default=0)
        colour_mask = (1 << max_cb) - 1
        mask_or = 0
        for entries in self.image.tables.values():
            for entry in entries:
                mask_or |= entry.mask
        for table in lif_loader.pop_tables.values():
            for pe in table.entries:
                mask_or |= pe.mask
        self._nvar = 1 if mask_or & colour_mask == 0 else 1 << max_cb
        self._fan = self._build_fanout(
            emitters.colour_bits,
            core_index,
            lif_loader.pop_tables,
            lif_loader.syn_base,
            syn,
            delay_loader.params,
        )
        self.n_synapses = int(sum(int(np.count_nonzero(m)) for m in lif_loader.matrices))
        self._syn = self._packed_syn
        del self._packed_syn
        self._lif = lif_loader.finish()
        self._st = lif_loader.finish_stdp()
        self._po = self._poisson_loader.finish()
        self._de = delay_loader.finish()
        self._packets = np.zeros(self._n_emitters * self._nvar, dtype=np.int64)
        self._spikes_sent = np.zeros_like(self._packets)

    @property
    def _lif_loader(self) -> loading.LifLoader:
        loader = self._loaders[AppId.IF_CURR_EXP]
        assert isinstance(loader, loading.LifLoader)
        return loader

    @property
    def _delay_loader(self) -> loading.DelayLoader:
        loader = self._loaders[AppId.DELAY_EXTENSION]
        assert isinstance(loader, loading.DelayLoader)
        return loader

    @property
    def _poisson_loader(self) -> loading.PoissonLoader:
        loader = self._loaders[AppId.SPIKE_SOURCE_POISSON]
        assert isinstance(loader, loading.PoissonLoader)
        return loader

    @property
    def _array_loader(self) -> loading.ArrayLoader:
        loader = self._loaders[AppId.SPIKE_SOURCE_ARRAY]
        assert isinstance(loader, loading.ArrayLoader)
        return loader

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
        plastic = self._lif_loader.plasticity
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
                        for row_kind, start, length in rows:
                            if row_kind == kernels.FAN_PLASTIC and ti not in plastic:
                                continue
                            kind.append(row_kind)
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
                        kind.append(kernels.FAN_DELAY)
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
        is_row = kinds == kernels.FAN_ROW
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
    ) -> list[tuple[int, int, int]] | None:
        """(kind, start, count) of every row a key selects, or None on a lookup miss.

        A static row is one ``FAN_ROW`` entry (its fixed words); a plastic row (a non-zero
        plastic size in its first word) is a ``FAN_PLASTIC`` entry (its first word, its
        plastic synapses) and, when it has fixed synapses too, a ``FAN_ROW`` entry after it,
        in the order 7.4.1's ``process_synaptic_row`` walks them.
        """
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
                n_plastic_words = int(syn[word])
                if n_plastic_words == 0:
                    rows.append((kernels.FAN_ROW, word + 3, int(syn[word + 1])))
                    continue
                fixed = word + 1 + n_plastic_words
                if fixed + 2 > min(base + syn.size, word + row_length + 3):
                    continue
                rows.append((kernels.FAN_PLASTIC, word, int(syn[fixed + 1])))
                if int(syn[fixed]):
                    rows.append((kernels.FAN_ROW, fixed + 2, int(syn[fixed])))
            return rows
        return None

    # ------------------------------------------------------------------ running
    def _plan(self) -> None:
        """List the emitting cores, find how far cores may run without exchanging, and group
        the cores for one thread and for the threads numba has now (:meth:`_layout`)."""
        arrays, poisson = self._array_loader, self._poisson_loader
        delay, neuron = self._delay_loader, self._lif_loader
        n_lif, n_po, n_de, n_ssa = (
            len(neuron.cores),
            len(poisson.cores),
            len(delay.cores),
            len(arrays.cores),
        )
        # emitting cores in delivery order: arrays, Poisson sources, delay extensions, neurons
        self._senders = (arrays, poisson, delay, neuron)
        kinds = np.repeat(
            np.array([loader.kind for loader in self._senders]), [n_ssa, n_po, n_de, n_lif]
        ).astype(_I64)
        index = np.concatenate([np.arange(k) for k in (n_ssa, n_po, n_de, n_lif)]).astype(_I64)
        lif_p = self._lif.table
        emit = np.concatenate(
            [arrays.first, poisson.first, delay.first, lif_p[:, kernels.LIF_EMIT]]
        ).astype(_I64)
        de_p = self._de.table
        de_keys = de_p[:, kernels.DE_NN] * de_p[:, kernels.DE_STAGES]
        self._capacity = np.concatenate(
            [np.zeros(n_ssa, _I64), poisson.n_sources, de_keys, lif_p[:, kernels.LIF_NN]]
        ).astype(_I64)
        seg = np.concatenate([[0], np.cumsum(self._capacity)]).astype(_I64)
        self._src = np.stack([kinds, index, emit, seg[:-1]], axis=1).astype(_I64)
        self._stride = max(1, int(seg[-1]))
        self._work = np.concatenate(
            [
                np.ones(n_ssa),
                2.0 * np.asarray(poisson.n_sources, np.float64),
                0.2 * de_keys,
                1.0 * lif_p[:, kernels.LIF_NN],
            ]
        )
        self._work_per_step = float(self._work.sum())
        fan = self._fan
        kind, core = fan["kind"], fan["core"]
        # cores may run apart for as many steps as the shortest synapse or delay stage
        shortest = int(kernels.min_row_delay(self._syn, kind, core, fan["a"], fan["b"], lif_p))
        if n_de:
            shortest = min(shortest, int(de_p[:, kernels.DE_DPS].min()))
        longest = self._max_window_steps
        if self._st.post_count.size:
            shortest = min(
                shortest,
                int(kernels.min_plastic_delay(self._st.words, kind, core, fan["a"], lif_p)),
            )
            # a neuron's history keeps the chip's events plus those of one window ahead
            longest = min(longest, kernels.POST_SLOTS - kernels.CHIP_POST_EVENTS - 1)
        self._window = max(1, min(shortest, longest))
        self._ssa = arrays.finish(self._window)
        self._layouts: dict[int, _Layout] = {}
        for n_threads in sorted({1, int(numba.get_num_threads())}):
            self._layout(n_threads)

    def _layout(self, n_threads: int) -> _Layout:
        """The grouping of the cores that chunks on ``n_threads`` threads run (built once).

        Each thread count has its own: a chunk on one thread walks as few groups as a run
        with one thread only would, instead of the many that keep n threads busy (every
        group walks every packet that reaches it, so more groups cost a single thread more).
        """
        layout = self._layouts.get(n_threads)
        if layout is None:
            n_groups = max(1, min(GROUPS_PER_THREAD * n_threads, MAX_GROUPS))
            layout = self._layouts[n_threads] = self._group(n_groups)
        return layout

    def _group(self, n_groups: int) -> _Layout:
        """Group the cores into ``n_groups`` for the threads.

        Emitting cores are spread over the groups by their work per step, receiving cores
        (neuron and delay-extension cores) by the synaptic words that reach them; the fan-out
        is split so that each group walks only the rows of its own receiving cores. Grouping
        changes only which thread does what, never a result.
        """
        n_lif, n_de = len(self._lif_loader.cores), len(self._delay_loader.cores)
        kinds = self._src[:, kernels.SRC_KIND]
        emit = self._src[:, kernels.SRC_EMIT]
        a_ptr, a_items = _spread(self._work, n_groups)
        fan = self._fan
        ptr, kind, core = fan["ptr"], fan["kind"], fan["core"]
        n_rows = ptr.size - 1
        row = np.repeat(np.arange(n_rows, dtype=_I64), np.diff(ptr))
        # receiving cores: neuron cores 0 .. n_lif - 1, then delay extensions
        receiver = np.where(kind == kernels.FAN_DELAY, n_lif + core, core)
        words = fan["b"].astype(np.float64) + 2.0
        load = np.bincount(receiver, weights=words, minlength=n_lif + n_de).astype(np.float64)
        b_ptr, b_items = _spread(load, n_groups)
        group_of = np.zeros(n_lif + n_de, _I64)
        for g in range(n_groups):
            group_of[b_items[b_ptr[g] : b_ptr[g + 1]]] = g
        group = group_of[receiver]
        # an empty row changes nothing on its core: it is not walked at all
        order = np.lexsort((row, group))
        order = order[
            (kind[order] != kernels.FAN_ROW) | (np.asarray(fan["b"], np.int64)[order] > 0)
        ]
        row_kept, group_kept = row[order], group[order]
        counts = np.bincount(group_kept * n_rows + row_kept, minlength=n_groups * n_rows)
        g_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(_I64)
        g_fan = {k: np.ascontiguousarray(fan[k][order]) for k in ("kind", "core", "a", "b")}
        # which emitting core reaches which group
        q_of_core = np.full(len(self._cores), -1, _I64)
        q_of_core[[ci for loader in self._senders for ci in loader.cores]] = np.arange(kinds.size)
        q_of_row = q_of_core[np.repeat(self._emit_core, self._nvar)]
        # REACH_NONE, REACH_ROWS, or the one neuron core that the keys of the emitting core
        # reach in the group, each through one one-synapse row or none (one-to-one payloads,
        # delivered directly)
        reach = np.full((kinds.size, n_groups), kernels.REACH_NONE, _I64)
        reach[q_of_row[row_kept], group_kept] = kernels.REACH_ROWS
        g_kind, g_core, g_len = g_fan["kind"], g_fan["core"], g_fan["b"]
        capacity = self._capacity
        for qp in np.flatnonzero(kinds == kernels.KIND_POISSON).tolist():
            lo = int(emit[qp]) * self._nvar
            hi = (int(emit[qp]) + int(capacity[qp])) * self._nvar
            for grp in np.flatnonzero(reach[qp] == kernels.REACH_ROWS).tolist():
                first = g_ptr[grp * n_rows + lo : grp * n_rows + hi]
                n_entries = g_ptr[grp * n_rows + lo + 1 : grp * n_rows + hi + 1] - first
                if np.any(n_entries > 1):
                    continue
                first = first[n_entries == 1]
                if np.all(g_kind[first] == kernels.FAN_ROW) and np.all(g_len[first] == 1):
                    targets = np.unique(g_core[first])
                    if targets.size == 1:
                        reach[qp, grp] = int(targets[0])
        de_parts = [
            [int(r) - n_lif for r in b_items[b_ptr[g] : b_ptr[g + 1]] if r >= n_lif]
            for g in range(n_groups)
        ]
        de_ptr = np.cumsum([0] + [len(part) for part in de_parts]).astype(_I64)
        de_items = np.array([c for part in de_parts for c in part], dtype=_I64)
        fanout = kernels.Fanout(
            reach,
            g_ptr,
            g_fan["kind"],
            g_fan["core"],
            g_fan["a"],
            g_fan["b"],
            self._syn,
            de_ptr,
            de_items,
        )
        return _Layout(a_ptr, a_items, fanout)

    def adopt_state(self, previous: Executor) -> None:
        """Continue where ``previous`` stopped, with this executor's parameters.

        A run that changes parameters between two runs (a Poisson rate, a neuron's
        offset current) loads a new image of the same network and takes over the state
        the chips would keep: time, membrane potentials, synaptic currents, refractory
        timers, ring buffers, spikes waiting in delay extensions, random generators
        and counters. Parameters come from this executor's image.

        Raises:
            ExecutionError: the two images do not lay the network out the same way (another
                timestep, a core placed elsewhere or running another application, state of
                another size); the message names the first difference.
        """
        self._check_same_layout(previous)
        mine_lif, their_lif = self._lif, previous._lif
        pairs: list[tuple[str, npt.NDArray[Any], npt.NDArray[Any]]] = [
            ("ring buffers", mine_lif.ring, their_lif.ring),
            ("saturation counters", mine_lif.sat, their_lif.sat),
            ("packet counters", self._packets, previous._packets),
            ("spike counters", self._spikes_sent, previous._spikes_sent),
            ("poisson generators", self._po.state, previous._po.state),
            ("poisson timers", self._po.time_to_spike, previous._po.time_to_spike),
            ("delay buffers", self._de.counter, previous._de.counter),
            ("delay losses", self._de.lost, previous._de.lost),
            ("plastic rows", self._st.words, previous._st.words),
            ("post-synaptic histories", self._st.post_time, previous._st.post_time),
            ("post-synaptic traces", self._st.post_trace, previous._st.post_trace),
            ("post-synaptic counts", self._st.post_count, previous._st.post_count),
            ("plastic saturations", self._st.sat, previous._st.sat),
        ]
        pairs += [
            (f"neuron {name}", getattr(mine_lif, name), getattr(their_lif, name))
            for name in kernels.NEURON_STATE_FIELDS
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
        ssa = self._ssa
        ends = ssa.table[:, kernels.SSA_HI]
        for c in range(ends.size):
            lo, hi = (int(ends[c - 1]) if c else 0), int(ends[c])
            offset = np.searchsorted(ssa.steps[lo:hi], self.step, side="left")
            ssa.cursor[c] = lo + int(offset)

    def _check_same_layout(self, previous: Executor) -> None:
        """The timestep and each core's place and application must be the running ones."""
        theirs, mine = previous.image.timestep_us, self.image.timestep_us
        if theirs != mine:
            raise ExecutionError(
                f"cannot continue a run on another layout: the timestep is {theirs} us,"
                f" not {mine} us"
            )
        running = {core.xyp: core.app for core in previous.image.cores}
        loaded = {core.xyp: core.app for core in self.image.cores}
        for xyp in sorted(running.keys() | loaded.keys()):
            was, now = running.get(xyp), loaded.get(xyp)
            if was == now:
                continue
            where = f"core ({xyp.x}, {xyp.y}, {xyp.p})"
            before = "is idle" if was is None else f"runs {was.name}"
            after = "leaves it idle" if now is None else f"places {now.name} on it"
            what = f"{where} {before} but the new image {after}"
            raise ExecutionError(f"cannot continue a run on another layout: {what}")
        # The same cores running the same applications; each must hold as many of its
        # neurons, sources and delay stages (totals alone could hide neurons moved between
        # cores, whose state would then land on other neurons).
        for what, loader, table, columns in (
            ("neurons", "_lif_loader", "_lif", (kernels.LIF_NB, kernels.LIF_NN)),
            ("Poisson sources", "_poisson_loader", "_po", (kernels.PO_NB, kernels.PO_NN)),
            ("delay stages", "_delay_loader", "_de", (kernels.DE_NN, kernels.DE_STAGES)),
        ):
            theirs_t = getattr(previous, table).table[:, columns]
            mine_t = getattr(self, table).table[:, columns]
            if theirs_t.shape != mine_t.shape or np.array_equal(theirs_t, mine_t):
                continue  # another shape is another layout, named by the state's sizes
            row = int(np.nonzero((theirs_t != mine_t).any(axis=1))[0][0])
            xyp = self._cores[getattr(self, loader).cores[row]].xyp
            raise ExecutionError(
                f"cannot continue a run on another layout: core ({xyp.x}, {xyp.y}, {xyp.p})"
                f" holds other {what} (base and count {theirs_t[row].tolist()}, now"
                f" {mine_t[row].tolist()})"
            )

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
        lif_p = self._lif.table
        n_lif_cores = lif_p.shape[0]

        def sample_layout(interval_column: int) -> tuple[npt.NDArray[np.int64], ...]:
            """First sample index and offset of each core's samples of one variable."""
            first = np.zeros(n_lif_cores, np.int64)
            offs = np.zeros(n_lif_cores + 1, np.int64)
            for c in range(n_lif_cores):
                iv = int(lif_p[c, interval_column])
                count = 0
                if iv > 0:
                    first[c] = -(-t0 // iv)
                    count = int(-(-t1 // iv) - first[c]) * int(lif_p[c, kernels.LIF_NN])
                offs[c + 1] = offs[c] + count
            return first, offs

        layouts = {
            name: sample_layout(column)
            for name, column in (
                ("v", kernels.LIF_VIV),
                ("gsyn_exc", kernels.LIF_GEIV),
                ("gsyn_inh", kernels.LIF_GIIV),
            )
        }
        for (first_col, off_col), name in (
            ((kernels.LIF_VFIRST, kernels.LIF_VOFF), "v"),
            ((kernels.LIF_GEFIRST, kernels.LIF_GEOFF), "gsyn_exc"),
            ((kernels.LIF_GIFIRST, kernels.LIF_GIOFF), "gsyn_inh"),
        ):
            lif_p[:, first_col] = layouts[name][0]
            lif_p[:, off_col] = layouts[name][1][:-1]
        n_lif = self._lif.v.size
        window = self._window
        cap = max(1024, 4 * n_lif + n_lif * max(1, n_steps) // 50, 2 * n_lif * window)
        rec = kernels.Recording(
            np.zeros(cap, _I64),
            np.zeros(cap, _I64),
            np.zeros(1, _I64),
            *(np.zeros(int(layouts[name][1][-1]), np.int32) for name in layouts),
        )
        emit = kernels.Emitters(
            self._src,
            self._layouts[1].a_ptr,
            self._layouts[1].a_items,
            np.zeros((window, self._src.shape[0]), _I64),
            np.zeros(window * self._stride, _I64),
            np.zeros(window * self._stride, _I64),
            self._packets,
            self._spikes_sent,
        )
        chunks_t: list[npt.NDArray[np.int64]] = []
        chunks_n: list[npt.NDArray[np.int64]] = []
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
                layout = self._layout(use)
                emit = emit._replace(a_ptr=layout.a_ptr, a_items=layout.a_items)
                stop = min(t1, t + n_windows * window)
                started = time.perf_counter()
                reached = kernels.run_windows(
                    t,
                    stop,
                    window,
                    self._nvar,
                    emit,
                    layout.fanout,
                    self._lif,
                    rec,
                    self._ssa,
                    self._po,
                    self._de,
                    self._st if self._st.post_count.size else None,
                )
                if policy is not None:
                    policy.record(use, reached - t, time.perf_counter() - started)
                t = reached
                n = int(rec.count[0])
                chunks_t.append(rec.spike_t[:n].copy())
                chunks_n.append(rec.spike_n[:n].copy())
                rec.count[0] = 0
        finally:
            numba.set_parallel_chunksize(chunk)
            numba.set_num_threads(n_threads)
        self.step = t1
        return self._results(
            np.concatenate(chunks_t) if chunks_t else np.zeros(0, _I64),
            np.concatenate(chunks_n) if chunks_n else np.zeros(0, _I64),
            {name: (buf, *layouts[name]) for name, buf in zip(layouts, rec[3:], strict=True)},
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
        samples: Mapping[str, tuple[npt.NDArray[Any], ...]],
        t1: int,
    ) -> Results:
        """Results of a run: spikes and samples per core, counters since the load.

        ``samples`` maps v, gsyn_exc and gsyn_inh to (buffer, first sample index per core,
        offset per core) as the kernels filled them.
        """
        lif_p = self._lif.table
        spikes: dict[CoreXYP, npt.NDArray[np.int64]] = {}
        recordings: dict[str, dict[CoreXYP, npt.NDArray[np.float64]]] = {k: {} for k in samples}
        order = np.argsort(spike_n, kind="stable")
        sorted_n = spike_n[order]
        intervals = {
            "v": kernels.LIF_VIV,
            "gsyn_exc": kernels.LIF_GEIV,
            "gsyn_inh": kernels.LIF_GIIV,
        }
        for ci, li in self._lif_of_core.items():
            xyp = self._cores[ci].xyp
            nb, nn = int(lif_p[li, kernels.LIF_NB]), int(lif_p[li, kernels.LIF_NN])
            if lif_p[li, kernels.LIF_REC]:
                lo, hi = np.searchsorted(sorted_n, [nb, nb + nn])
                sel = np.sort(order[lo:hi], kind="stable")
                spikes[xyp] = np.stack([spike_t[sel], spike_n[sel] - nb], axis=1)
            for name, (buf, first, offs) in samples.items():
                iv = int(lif_p[li, intervals[name]])
                if iv > 0:
                    count = -(-t1 // iv) - int(first[li])
                    raw = buf[int(offs[li]) : int(offs[li]) + count * nn].reshape(count, nn)
                    recordings[name][xyp] = raw.astype(np.float64) / 32768.0
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
        loader = self._lif_loader
        plastic = loader.plasticity
        matrices = {
            self._cores[ci].xyp: self._st.words[
                loader.syn_base[ci] : loader.syn_base[ci]
                + loader.matrices[self._lif_of_core[ci]].size
            ].copy()
            for ci in plastic
        }
        for ci, core in enumerate(self._cores):
            prov = {
                "packets_sent": int(sent_packets[ci]),
                "spikes_sent": int(sent_spikes[ci]),
                "packets_received": int(received[ci]),
                "invalid_master_pop_hits": int(misses[ci]),
            }
            if ci in self._lif_of_core:
                prov["ring_buffer_saturations"] = int(self._lif.sat[self._lif_of_core[ci]])
                prov["late_spikes"] = 0
                if ci in plastic:
                    prov["plastic_saturations"] = int(self._st.sat[self._lif_of_core[ci]])
            if ci in self._de_of_core:
                prov["spikes_lost_to_saturation"] = int(self._de.lost[self._de_of_core[ci]])
            core_prov[core.xyp] = prov
        router_prov = {
            chip: {name: int(router[i * n_counters + j]) for j, name in enumerate(COUNTER_NAMES)}
            for i, chip in enumerate(self._chips)
        }
        return Results(
            spikes,
            recordings["v"],
            recordings["gsyn_exc"],
            recordings["gsyn_inh"],
            core_prov,
            router_prov,
            matrices,
        )
