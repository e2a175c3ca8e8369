"""Loading an image's cores into the executor's flat arrays: one loader per core application.

The executor walks the cores in image order and hands each to the loader of its application
(:data:`LOADERS`). A loader decodes the core's regions with the application's own decoders
and appends the core to flat arrays shared by every core of that application::

    neuron cores     LifLoader        neurons of all cores in one array per field, ring buffers
                                      (every neuron application shares one loader)
    spike arrays     ArrayLoader      every (step, neuron) of all cores, sorted per core
    Poisson sources  PoissonLoader    sources of all cores, a KISS state per core
    delay extensions DelayLoader      counters of all cores

Every core that sends registers its keys with :class:`Emitters` (the keys of one core are
contiguous and in neuron order); ``finish`` returns the kernels' named tuple of arrays.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from machine_models import delays, kernels, lif, neuron_apps, sources, stdp
from machine_models.errors import RegionError
from machine_models.image import AppId, CoreImage
from machine_models.regions import (
    REGION_DATA,
    REGION_INPUT_TYPE,
    REGION_KEYS,
    REGION_POP_TABLE,
    REGION_RECORDING,
    REGION_SYNAPSE_DYNAMICS,
    REGION_SYNAPSE_PARAMS,
    REGION_SYNAPTIC_MATRIX,
    decode_keys,
)

__all__ = [
    "LOADERS",
    "ArrayLoader",
    "DelayLoader",
    "Emitters",
    "LifLoader",
    "PoissonLoader",
    "region",
]

_I64 = np.int64


def region(core: CoreImage, region_id: int) -> bytes:
    """A region of a core.

    Raises:
        RegionError: the core has no such region.
    """
    try:
        return core.regions[region_id]
    except KeyError:
        raise RegionError(
            core.chip.x, core.chip.y, core.p, f"region {region_id} is missing"
        ) from None


@dataclass
class Emitters:
    """Every key the job's cores send: the base key, its colour bits and its core."""

    keys: list[int] = field(default_factory=list)
    colour_bits: list[int] = field(default_factory=list)
    core: list[int] = field(default_factory=list)

    def add(self, keys: npt.ArrayLike, colour_bits: int, core_index: int) -> int:
        """Register a core's keys (in neuron order); return the index of the first."""
        first = len(self.keys)
        values = [int(k) for k in np.asarray(keys).reshape(-1)]
        self.keys.extend(values)
        self.colour_bits.extend([colour_bits] * len(values))
        self.core.extend([core_index] * len(values))
        return first

    def add_key_region(self, core: CoreImage, core_index: int) -> int:
        """Register the keys of a core's key region; -1 when it has no key (it sends nothing)."""
        keys, colour_bits, has_key = decode_keys(region(core, REGION_KEYS))
        if not has_key:
            return -1
        return self.add(keys, colour_bits, core_index)


class LifLoader:
    """Neuron cores (every application of ``neuron_apps``): neuron state, synapse settings,
    population tables, matrices."""

    kind = kernels.KIND_LIF

    def __init__(self) -> None:
        self.cores: list[int] = []
        self.rows: list[list[int]] = []
        self.records: list[npt.NDArray[np.void]] = []
        self.inputs: list[npt.NDArray[np.void] | None] = []
        self.pop_tables: dict[int, lif.PopTable] = {}
        self.matrices: list[npt.NDArray[np.uint32]] = []
        self.syn_base: dict[int, int] = {}
        self.plasticity: dict[int, stdp.StdpParams] = {}
        """The STDP rule of each plastic core (by core index)."""
        self._n_neurons = self._n_ring = self._n_syn = 0

    def add(self, core_index: int, core: CoreImage, emitters: Emitters) -> int:
        """Decode a neuron core; return its index among the neuron cores."""
        first = emitters.add_key_region(core, core_index)
        app = neuron_apps.NEURON_APPS[core.app]
        records = lif.decode_neuron_params(region(core, REGION_DATA), app.record)
        sp = lif.decode_synapse_params(region(core, REGION_SYNAPSE_PARAMS))
        rec = lif.decode_recording(region(core, REGION_RECORDING))
        inputs = (
            lif.decode_input_params(region(core, REGION_INPUT_TYPE), records.size, app.input_record)
            if app.input_record is not None
            else None
        )
        self.pop_tables[core_index] = lif.decode_pop_table(region(core, REGION_POP_TABLE))
        if REGION_SYNAPSE_DYNAMICS in core.regions:
            params = stdp.decode_stdp_params(core.regions[REGION_SYNAPSE_DYNAMICS])
            if len(params.limits) < 1 << sp.type_bits:
                raise ValueError(
                    f"synapse dynamics region has {len(params.limits)} weight records "
                    f"for {1 << sp.type_bits} synapse types"
                )
            self.plasticity[core_index] = params
        matrix = np.frombuffer(region(core, REGION_SYNAPTIC_MATRIX), "<u4").astype(np.uint32)
        row = [0] * kernels.LIF_COLUMNS
        for column, value in (
            (kernels.LIF_NB, self._n_neurons),
            (kernels.LIF_NN, records.size),
            (kernels.LIF_IB, sp.index_bits),
            (kernels.LIF_TB, sp.type_bits),
            (kernels.LIF_DB, sp.delay_bits),
            (kernels.LIF_IT, sp.index_bits + sp.type_bits),
            (kernels.LIF_SHE, sp.shift_exc),
            (kernels.LIF_SHI, sp.shift_inh),
            (kernels.LIF_RB, self._n_ring),
            (kernels.LIF_RM, (1 << sp.ring_buffer_bits) - 1),
            (kernels.LIF_EMIT, first),
            (kernels.LIF_REC, int(rec.record_spikes)),
            (kernels.LIF_VIV, rec.v_interval_steps),
            (kernels.LIF_GEIV, rec.gsyn_exc_interval_steps),
            (kernels.LIF_GIIV, rec.gsyn_inh_interval_steps),
            (kernels.LIF_INPUT, app.input_kind),
            (kernels.LIF_KIND, app.kind),
        ):
            row[column] = int(value)
        self.rows.append(row)
        self.records.append(records)
        self.inputs.append(inputs)
        self.syn_base[core_index] = self._n_syn
        self.matrices.append(matrix)
        self._n_syn += matrix.size
        self._n_neurons += records.size
        self._n_ring += 1 << sp.ring_buffer_bits
        self.cores.append(core_index)
        return len(self.cores) - 1

    @property
    def synaptic_words(self) -> npt.NDArray[np.uint32]:
        """Every core's synaptic matrix, one after another (``syn_base`` gives each start)."""
        return np.concatenate(self.matrices) if self.matrices else np.zeros(0, np.uint32)

    def finish_stdp(self) -> kernels.StdpCores:
        """The plastic cores' arrays: rules, lookup tables, histories, and the matrices to update.

        ``words`` is every neuron core's matrix as :attr:`synaptic_words` lays them out (so a
        plastic row's first word has the same index in both), empty when no core is plastic.
        """
        table = np.zeros((len(self.cores), kernels.ST_COLUMNS), _I64)
        luts: list[int] = []
        limits: list[tuple[int, int, int, int]] = []
        n_post = 0
        for li, ci in enumerate(self.cores):
            params = self.plasticity.get(ci)
            if params is None:
                continue
            row = table[li]
            row[kernels.ST_PLASTIC] = 1
            row[kernels.ST_RULE] = int(params.weight_rule)
            row[kernels.ST_BACKPROP] = int(params.backprop_delay)
            row[kernels.ST_POST] = n_post
            n_post += int(self.rows[li][kernels.LIF_NN])
            for off, size, shift, lut in (
                (kernels.ST_LP_OFF, kernels.ST_LP_SIZE, kernels.ST_LP_SHIFT, params.tau_plus),
                (kernels.ST_LM_OFF, kernels.ST_LM_SIZE, kernels.ST_LM_SHIFT, params.tau_minus),
            ):
                row[off], row[size], row[shift] = len(luts), len(lut.values), lut.shift
                luts.extend(lut.values)
            row[kernels.ST_LIMITS] = len(limits)
            limits.extend(
                (lim.min_weight, lim.max_weight, lim.a2_plus, lim.a2_minus) for lim in params.limits
            )
        words = self.synaptic_words.copy() if self.plasticity else np.zeros(0, np.uint32)
        return kernels.StdpCores(
            table,
            np.array(luts, dtype=_I64),
            np.array(limits, dtype=_I64).reshape(-1, 4),
            words,
            np.zeros((n_post, kernels.POST_SLOTS), _I64),
            np.zeros((n_post, kernels.POST_SLOTS), _I64),
            np.zeros(n_post, _I64),
            np.zeros(len(self.cores), _I64),
        )

    def finish(self) -> kernels.LifCores:
        """The neuron cores' arrays (the recording columns of the table are set per run)."""
        columns = {name: np.zeros(self._n_neurons, np.int32) for name in kernels.NEURON_FIELDS}
        for name in ("exc_decay", "exc_init", "inh_decay", "inh_init"):
            columns[name] = np.zeros(self._n_neurons, np.uint32)
        first = 0
        for records, inputs in zip(self.records, self.inputs, strict=True):
            parts = [records] if inputs is None else [records, inputs]
            for part in parts:
                for name in part.dtype.names or ():
                    columns[name][first : first + records.size] = part[name]
            first += records.size
        table = np.array(self.rows, dtype=_I64).reshape(-1, kernels.LIF_COLUMNS)
        return kernels.LifCores(
            table,
            np.zeros(self._n_ring, np.uint16),
            np.zeros(len(self.cores), _I64),
            np.zeros(self._n_neurons, np.uint8),
            *(columns[name] for name in kernels.NEURON_FIELDS),
        )


class ArrayLoader:
    """SpikeSourceArray cores: the sorted (step, neuron) of every spike."""

    kind = kernels.KIND_SSA

    def __init__(self) -> None:
        self.cores: list[int] = []
        self.first: list[int] = []
        self._hi: list[int] = []
        self._steps: list[npt.NDArray[np.uint32]] = []
        self._neurons: list[npt.NDArray[np.uint32]] = []
        self._count = 0

    def add(self, core_index: int, core: CoreImage, emitters: Emitters) -> int:
        """Decode a spike-array core; return its index among them."""
        self.first.append(emitters.add_key_region(core, core_index))
        steps, neurons = sources.decode_spike_array(region(core, REGION_DATA))
        self._steps.append(steps)
        self._neurons.append(neurons)
        self._count += steps.size
        self._hi.append(self._count)
        self.cores.append(core_index)
        return len(self.cores) - 1

    def finish(self, window: int) -> kernels.SourceArrays:
        """The spike arrays' arrays, with room for ``window`` steps of visited ranges."""
        hi = np.array(self._hi, dtype=_I64)
        lo = np.concatenate([[0], hi[:-1]]).astype(_I64) if hi.size else hi.copy()
        steps = np.concatenate(self._steps) if self._steps else np.zeros(0, np.uint32)
        neurons = np.concatenate(self._neurons) if self._neurons else np.zeros(0, np.uint32)
        n = len(self.cores)
        return kernels.SourceArrays(
            hi.reshape(-1, kernels.SSA_COLUMNS),
            lo,
            np.zeros((window, n), _I64),
            np.zeros((window, n), _I64),
            steps.astype(_I64),
            neurons.astype(_I64),
        )


class PoissonLoader:
    """SpikeSourcePoisson cores: their sources and KISS generators."""

    kind = kernels.KIND_POISSON

    def __init__(self) -> None:
        self.cores: list[int] = []
        self.first: list[int] = []
        self.n_sources: list[int] = []
        self._records: list[npt.NDArray[np.void]] = []
        self._seeds: list[tuple[int, int, int, int]] = []

    def add(self, core_index: int, core: CoreImage, emitters: Emitters) -> int:
        """Decode a Poisson core; return its index among them."""
        self.first.append(emitters.add_key_region(core, core_index))
        seed, records = sources.decode_poisson_params(region(core, REGION_DATA))
        self._records.append(records)
        self._seeds.append(seed)
        self.n_sources.append(records.size)
        self.cores.append(core_index)
        return len(self.cores) - 1

    def finish(self) -> kernels.PoissonCores:
        """The Poisson cores' arrays, each slow source's first time to spike drawn.

        Every slow source draws it at load, in order, as the core does when it reads its rates
        (one of rate 0 too: its interval is 0). The table marks the steps in which every
        source of a core is active in the fast regime with exp(-lambda) > 0: its kernel then
        draws without a branch per source (same draws, same order), and compares every draw
        with one constant when the sources share a rate.
        """
        records = (
            np.concatenate(self._records) if self._records else np.zeros(0, sources.POISSON_DTYPE)
        )
        fields = {name: records[name].astype(_I64) for name in records.dtype.names or ()}
        state = np.array(self._seeds, dtype=np.uint64).reshape(-1, 4)
        starts = np.concatenate([[0], np.cumsum(self.n_sources)]).astype(_I64)
        tts = np.zeros(records.size, _I64)
        table = np.zeros((len(self.cores), kernels.PO_COLUMNS), _I64)
        for c in range(len(self.cores)):
            lo, hi = int(starts[c]), int(starts[c + 1])
            table[c, kernels.PO_NB] = lo
            table[c, kernels.PO_NN] = hi - lo
            table[c, kernels.PO_LIMIT] = -1
            for g in range(lo, hi):
                if fields["regime"][g] == sources.REGIME_SLOW:
                    tts[g] = kernels.draw_time_to_spike(state, c, int(fields["isi_ticks"][g]))
            eml = fields["exp_minus_lambda"][lo:hi]
            if (
                hi > lo
                and bool(np.all(fields["regime"][lo:hi] == sources.REGIME_FAST))
                and bool(np.all(eml > 0))
            ):
                fast_from = int(fields["start_step"][lo:hi].max())
                table[c, kernels.PO_FAST_FROM] = fast_from
                table[c, kernels.PO_FAST_TO] = max(fast_from, int(fields["end_step"][lo:hi].min()))
                if bool(np.all(eml == eml[0])):
                    table[c, kernels.PO_LIMIT] = int(eml[0])
        return kernels.PoissonCores(
            table,
            state,
            fields["start_step"],
            fields["end_step"],
            fields["regime"],
            fields["exp_minus_lambda"],
            fields["sqrt_lambda"],
            fields["isi_ticks"],
            tts,
        )


class DelayLoader:
    """Delay-extension cores: their settings and 8-bit counters."""

    kind = kernels.KIND_DELAY

    def __init__(self) -> None:
        self.cores: list[int] = []
        self.first: list[int] = []
        self.params: list[delays.DelayParams] = []
        self.rows: list[list[int]] = []
        self._n_counters = 0

    def add(self, core_index: int, core: CoreImage, emitters: Emitters) -> int:
        """Decode a delay extension; return its index among them.

        Its keys are one per (stage, neuron): ``out_key_base + (stage * n + neuron) << cb``.
        """
        p = delays.decode_delay_params(region(core, REGION_DATA))
        n_keys = p.n_stages * p.n_neurons
        self.first.append(
            emitters.add(
                p.out_key_base + (np.arange(n_keys, dtype=_I64) << p.out_colour_bits),
                p.out_colour_bits,
                core_index,
            )
        )
        # a counter lives until its last stage has re-sent it: slots, a power of 2, above that
        slots = 1
        while slots <= p.n_stages * p.delay_per_stage:
            slots <<= 1
        row = [0] * kernels.DE_COLUMNS
        row[kernels.DE_NN] = p.n_neurons
        row[kernels.DE_STAGES] = p.n_stages
        row[kernels.DE_DPS] = p.delay_per_stage
        row[kernels.DE_SLOTS] = slots
        row[kernels.DE_CB] = self._n_counters
        self._n_counters += slots * p.n_neurons
        self.rows.append(row)
        self.params.append(p)
        self.cores.append(core_index)
        return len(self.cores) - 1

    def finish(self) -> kernels.DelayCores:
        """The delay extensions' arrays."""
        return kernels.DelayCores(
            np.array(self.rows, dtype=_I64).reshape(-1, kernels.DE_COLUMNS),
            np.zeros(self._n_counters, np.uint8),
            np.zeros(len(self.cores), _I64),
        )


Loader = LifLoader | ArrayLoader | PoissonLoader | DelayLoader
LOADERS: dict[AppId, type[Loader]] = {
    **dict.fromkeys(neuron_apps.NEURON_APPS, LifLoader),
    AppId.SPIKE_SOURCE_ARRAY: ArrayLoader,
    AppId.SPIKE_SOURCE_POISSON: PoissonLoader,
    AppId.DELAY_EXTENSION: DelayLoader,
}
"""The loader of each application (one loader object serves every application it is named for)."""


def load_core(loader: Loader, core_index: int, core: CoreImage, emitters: Emitters) -> int:
    """Hand a core to its loader, turning a malformed region into a :class:`RegionError`."""
    try:
        return loader.add(core_index, core, emitters)
    except (ValueError, struct.error) as exc:
        raise RegionError(core.chip.x, core.chip.y, core.p, str(exc)) from None
