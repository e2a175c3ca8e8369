"""A slow, obvious, step-by-step executor: the oracle the fast one is held against.

It reads every core's regions with the applications' own decoders and then, each step, does
what the chip does in the plainest way: every core computes its step (one neuron, one source
at a time, on Python integers), then every packet of the step goes through the routers
(``Router.trace`` per packet) and is handled by each core it reaches, spike by spike, synapse
by synapse. No flattening, no windows, no threads, no precomputed fan-out.

Delivery order (it decides which addition saturates a ring-buffer slot first): the packets of
a step in the order of their senders (spike arrays, Poisson sources, delay extensions, neuron
cores; image order within each kind), each sender's packets in neuron order.

A plastic core keeps each neuron's post-synaptic history as the chip's 16-entry array
(a placeholder at time 0, then the last 15 spikes, the oldest shuffled out) and walks its
window as ``post_events_get_window_delayed`` does; the fast executor keeps a longer log
instead, so the two are written differently on purpose.

The faster Poisson regime (lambda >= 20 per step) uses float64 functions that this module
does not repeat: an image with such a source is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from machine_models import delays, lif, neuron_apps, sources, stdp
from machine_models.executor import Results
from machine_models.geometry import ChipXY
from machine_models.image import AppId, CoreImage, CoreXYP, Image
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
from machine_models.router import COUNTER_NAMES, Router
from machine_models.topology import Topology

M32 = 0xFFFFFFFF
SEND_ORDER = (
    (AppId.SPIKE_SOURCE_ARRAY,),
    (AppId.SPIKE_SOURCE_POISSON,),
    (AppId.DELAY_EXTENSION,),
    tuple(neuron_apps.NEURON_APPS),
)
"""Cores send in this order of applications (neuron cores of every kind in image order)."""
ONE = 1 << 15


def mul(a: int, b: int) -> int:
    """GCC's accum multiply: the product's bits >> 15 (floor)."""
    return (a * b) >> 15


def s32(x: int) -> int:
    """A value as an int32 field holds it (wrapping)."""
    return ((x + (1 << 31)) & M32) - (1 << 31)


class Kiss:
    """7.4.1's ``rng()``: an LCG, a xorshift and a multiply-with-carry, output x + y + z."""

    def __init__(self, seed: tuple[int, int, int, int]) -> None:
        self.x, self.y, self.z, self.c = seed

    def __call__(self) -> int:
        self.x = (314527869 * self.x + 1234567) & M32
        self.y ^= (self.y << 5) & M32
        self.y ^= self.y >> 7
        self.y ^= (self.y << 22) & M32
        t = 4294584393 * self.z + self.c
        self.c, self.z = t >> 32, t & M32
        return (self.x + self.y + self.z) & M32

    def state(self) -> list[int]:
        """The four words of the generator."""
        return [self.x, self.y, self.z, self.c]


def exponential_variate(rng: Kiss) -> int:
    """von Neumann's exponential variate, as s16.15 bits (``n_steps_until_next``)."""
    whole = 0
    while True:
        u = rng()
        u0 = u
        while True:
            ustar = rng()
            if u < ustar:
                return (whole << 15) + (u0 >> 17)
            u = rng()
            if u >= ustar:
                break
        whole += 1


def time_to_spike(rng: Kiss, isi: int) -> int:
    """round(E x 1000) x isi (mod 2**32): a slow source's next interval in ticks x 1000."""
    scaled = exponential_variate(rng) * 1000
    return (((scaled >> 15) + ((scaled >> 14) & 1)) * isi) & M32


def fast_count(rng: Kiss, exp_minus_lambda: int) -> int:
    """Knuth's method as the core does it: u0.32 products from 0xFFFFFFFF."""
    if exp_minus_lambda == 0:
        return 0
    p, draws = M32, 0
    while True:
        draws += 1
        p = (p * rng()) >> 32
        if p <= exp_minus_lambda:
            return draws - 1


@dataclass
class PoissonCore:
    """A SpikeSourcePoisson core: its sources and generator."""

    records: npt.NDArray[np.void]
    rng: Kiss
    time_to_spike: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for r in self.records:
            if r["regime"] == sources.REGIME_FASTER:
                raise NotImplementedError("the reference has no faster Poisson regime")
        self.time_to_spike = [
            time_to_spike(self.rng, int(r["isi_ticks"]))
            if r["regime"] == sources.REGIME_SLOW
            else 0
            for r in self.records
        ]

    def step(self, t: int) -> list[tuple[int, int]]:
        """(neuron, count) of every packet of step t."""
        out = []
        for i, r in enumerate(self.records):
            if not int(r["start_step"]) <= t < int(r["end_step"]):
                continue
            k = 0
            if r["regime"] == sources.REGIME_FAST:
                k = fast_count(self.rng, int(r["exp_minus_lambda"]))
            elif int(r["isi_ticks"]) != 0:
                while self.time_to_spike[i] < 1000:
                    k += 1
                    more = time_to_spike(self.rng, int(r["isi_ticks"]))
                    self.time_to_spike[i] = (self.time_to_spike[i] + more) & M32
                self.time_to_spike[i] -= 1000
            if k:
                out.append((i, k))
        return out


def i16(x: int) -> int:
    """The int16_t of the low 16 bits."""
    x &= 0xFFFF
    return x - 0x10000 if x & 0x8000 else x


def i32(x: int) -> int:
    """The int32_t of the low 32 bits."""
    x &= M32
    return x - (1 << 32) if x & 0x80000000 else x


def mul16(a: int, b: int) -> int:
    """STDP_FIXED_MUL_16X16: the signed low halves multiplied, then >> 11."""
    return (i16(a) * i16(b)) >> 11


def decay(lut: stdp.ExpLut, dt: int) -> int:
    """maths_lut_exponential_decay on a uint32 interval."""
    i = (dt & M32) >> lut.shift
    return lut.values[i] if i < len(lut.values) else 0


def mul_fixed(a: int, stdp_fixed: int) -> int:
    """mul_accum_fixed: accum x kbits(fixed << 4), truncating."""
    return i32((a * i32(stdp_fixed << 4)) >> 15)


def potentiate(rule: stdp.StdpParams, lim: stdp.WeightLimits, w: int, amount: int) -> int:
    """weight_one_term_apply_potentiation on an s16.15 weight."""
    if rule.weight_rule is stdp.WeightRule.ADDITIVE:
        return min(i32(w + mul_fixed(lim.a2_plus, amount)), lim.max_weight)
    scale = i32(((lim.max_weight - w) * lim.a2_plus) >> 15)
    return i32(w + mul_fixed(scale, amount))


def depress(rule: stdp.StdpParams, lim: stdp.WeightLimits, w: int, amount: int) -> int:
    """weight_one_term_apply_depression on an s16.15 weight."""
    if rule.weight_rule is stdp.WeightRule.ADDITIVE:
        return max(i32(w - mul_fixed(lim.a2_minus, amount)), lim.min_weight)
    scale = i32(((w - lim.min_weight) * lim.a2_minus) >> 15)
    return i32(w - mul_fixed(scale, amount))


@dataclass
class PostHistory:
    """One neuron's ``post_event_history_t``: times and traces, entry 0 the placeholder."""

    times: list[int] = field(default_factory=lambda: [0])
    traces: list[int] = field(default_factory=lambda: [0])

    def add(self, t: int, tau_minus: stdp.ExpLut) -> None:
        """timing_add_post_spike, then post_events_add (shuffling out the oldest when full)."""
        trace = i16(i16(mul16(self.traces[-1], decay(tau_minus, t - self.times[-1]))) + 2048)
        if len(self.times) == stdp.MAX_POST_EVENTS:
            del self.times[1], self.traces[1]
        self.times.append(t)
        self.traces.append(trace)

    def window(self, begin: int, end: int) -> tuple[int, int, bool, list[tuple[int, int]]]:
        """post_events_get_window_delayed: (prev time, prev trace, prev valid, events)."""
        i = len(self.times) - 1
        while i > 0 and self.times[i] > begin:
            i -= 1
        events = [
            (self.times[e], self.traces[e])
            for e in range(i + 1, len(self.times))
            if self.times[e] <= end
        ]
        return self.times[i], self.traces[i], i > 0, events


@dataclass
class NeuronCore:
    """A neuron core (any of ``neuron_apps``): neurons, ring buffers, synaptic rows,
    recordings."""

    neurons: list[dict[str, int]]
    synapse: lif.SynapseParams
    table: lif.PopTable
    matrix: npt.NDArray[np.uint32]
    recording: lif.RecordingParams
    app: neuron_apps.NeuronApp
    plasticity: stdp.StdpParams | None = None
    ring: dict[int, int] = field(default_factory=dict)
    saturations: int = 0
    plastic_saturations: int = 0
    history: list[PostHistory] = field(default_factory=list)
    spikes: list[tuple[int, int]] = field(default_factory=list)
    samples: dict[str, list[list[float]]] = field(
        default_factory=lambda: {"v": [], "gsyn_exc": [], "gsyn_inh": []}
    )

    def slot(self, step: int, syn_type: int, neuron: int) -> int:
        """The ring-buffer slot a synapse of this type and target feeds at ``step``."""
        sp = self.synapse
        delay_slot = step % sp.n_delay_slots
        return (delay_slot << (sp.index_bits + sp.type_bits)) | (syn_type << sp.index_bits) | neuron

    def add(self, t: int, word: int) -> None:
        """One spike through one fixed synapse word, sent in step t."""
        sp = self.synapse
        shift = sp.index_bits + sp.type_bits
        delay = (word >> shift) & ((1 << (16 - shift)) - 1)
        delay = delay or sp.n_delay_slots  # a stored 0 is the largest delay
        syn_type = (word >> sp.index_bits) & ((1 << sp.type_bits) - 1)
        neuron = word & ((1 << sp.index_bits) - 1)
        slot = self.slot(t + delay, syn_type, neuron)
        total = self.ring.get(slot, 0) + (word >> 16)
        if total > 0xFFFF:
            total = 0xFFFF
            self.saturations += 1
        self.ring[slot] = total

    def plastic_row(self, t: int, first: int) -> None:
        """One spike through the plastic row at word ``first``, sent in step t."""
        rule = self.plasticity
        assert rule is not None
        sp = self.synapse
        m = self.matrix
        halves = m.view(np.uint16)
        hdr = first + 1
        last_pre, last_trace = int(m[hdr]), i16(int(m[hdr + 1]))
        new_trace = i16(mul16(last_trace, decay(rule.tau_plus, t - last_pre)) + 2048)
        m[hdr] = t
        m[hdr + 1] = (int(m[hdr + 1]) & 0xFFFF0000) | (new_trace & 0xFFFF)
        fixed = hdr + int(m[first])
        n_fixed, n = int(m[fixed]), int(m[fixed + 1])
        it = sp.index_bits + sp.type_bits
        for i in range(n):
            control = int(halves[2 * (fixed + 2 + n_fixed) + i])
            weight_at = 2 * (hdr + 2) + i
            delay = (control >> it) & ((1 << sp.delay_bits) - 1)
            syn_type = (control >> sp.index_bits) & ((1 << sp.type_bits) - 1)
            neuron = control & ((1 << sp.index_bits) - 1)
            shift = sp.shift_exc if syn_type == 0 else sp.shift_inh
            lim = rule.limits[syn_type]
            pd = delay if rule.backprop_delay else 0
            w = i32(int(halves[weight_at]) << shift)
            prev_time, prev_trace, valid, events = self.history[neuron].window(
                max(last_pre - pd, 0), max(t - pd, 0)
            )
            for post_time, post_trace in events:
                since = (post_time + pd - last_pre) & M32
                if since > 0:
                    w = potentiate(rule, lim, w, mul16(last_trace, decay(rule.tau_plus, since)))
                prev_time, prev_trace, valid = post_time, post_trace, True
            if valid:
                dt = t - (prev_time + pd)
                w = depress(rule, lim, w, mul16(prev_trace, decay(rule.tau_minus, dt)))
            w16 = (w >> shift if w >= 0 else -((-w) >> shift)) & 0xFFFF
            slot = self.slot(t + delay, syn_type, neuron)
            total = self.ring.get(slot, 0) + w16
            if total > 0xFFFF:
                total = 0xFFFF
                self.plastic_saturations += 1
            self.ring[slot] = total
            halves[weight_at] = w16

    def rows(self, key: int) -> list[tuple[str, object]] | None:
        """Every row a key selects: ("fixed", its words) or ("plastic", its first word);
        None when no entry matches. A plastic row's fixed synapses follow it."""
        for entry in self.table.entries:
            if key & entry.mask != entry.key:
                continue
            core = (key >> entry.mask_shift) & entry.core_mask
            local = key & ~(entry.mask | (entry.core_mask << entry.mask_shift)) & M32
            neuron = (local >> entry.n_colour_bits) + core * entry.n_neurons
            rows = []
            for offset, row_length in self.table.addresses[entry.start : entry.start + entry.count]:
                if offset < 0:
                    continue
                first = offset // 4 + neuron * (row_length + 3)
                if first + 3 > self.matrix.size:
                    continue
                fixed = first + 1 + int(self.matrix[first])
                if self.matrix[first] and self.plasticity is not None:
                    rows.append(("plastic", first))
                n_fixed = int(self.matrix[fixed])
                words = [int(w) for w in self.matrix[fixed + 2 : fixed + 2 + n_fixed]]
                if words:
                    rows.append(("fixed", words))
            return rows
        return None

    def step(self, t: int) -> list[tuple[int, int]]:
        """Transfer, record, update every neuron; (neuron, 1) of every spike."""
        rec = self.recording
        kind = self.app.kind
        for n, nrn in enumerate(self.neurons):
            for syn_type, prefix, shift in (
                (0, "exc", self.synapse.shift_exc),
                (1, "inh", self.synapse.shift_inh),
            ):
                value = self.ring.pop(self.slot(t, syn_type, n), 0)
                self.transfer(nrn, prefix, value << shift)
        for key, interval in (
            ("v", rec.v_interval_steps),
            ("gsyn_exc", rec.gsyn_exc_interval_steps),
            ("gsyn_inh", rec.gsyn_inh_interval_steps),
        ):
            if interval and t % interval == 0:
                self.samples[key].append(
                    [self.recorded(nrn, key) / 32768.0 for nrn in self.neurons]
                )
        fired = []
        for n, nrn in enumerate(self.neurons):
            current = self.current(nrn)
            if kind == neuron_apps.NEURON_IZH_EXP:
                self.izhikevich(nrn, current)
            elif nrn["refract_timer"] <= 0:
                alpha = ((current * nrn["r_membrane"]) >> 15) + nrn["v_rest"]
                nrn["v"] = alpha - ((nrn["exp_tc"] * (alpha - nrn["v"])) >> 15)
            else:
                nrn["refract_timer"] -= 1
            if nrn["v"] >= nrn["v_thresh"]:
                if kind == neuron_apps.NEURON_IZH_EXP:
                    nrn["v"] = nrn["c"]
                    nrn["u"] = s32(nrn["u"] + nrn["d"])
                    nrn["this_h"] = mul(nrn["reset_h"], 60620)
                else:
                    nrn["v"] = nrn["v_reset"]
                    nrn["refract_timer"] = nrn["t_refract"]
                fired.append((n, 1))
                if self.plasticity is not None:
                    self.history[n].add(t, self.plasticity.tau_minus)
                if rec.record_spikes:
                    self.spikes.append((t, n))
            self.shape(nrn)
        return fired

    def transfer(self, nrn: dict[str, int], prefix: str, x: int) -> None:
        """Add one step's input x (s16.15) of one synapse type to a neuron's synapse."""
        kind = self.app.kind
        if kind == neuron_apps.NEURON_LIF_DELTA:
            nrn[f"isyn_{prefix}"] += x
        elif kind == neuron_apps.NEURON_LIF_ALPHA:
            if x > 0:
                nrn[f"{prefix}_q"] = x
                e = ((nrn[f"{prefix}_exp"] * nrn[f"{prefix}_decay"]) >> 32) + ONE
                nrn[f"{prefix}_exp"] = e
                keep = ONE - (ONE << 15) // e
                nrn[f"{prefix}_lin"] = s32(
                    mul(nrn[f"{prefix}_lin"] + mul(x, nrn[f"{prefix}_k"]), keep)
                )
        else:
            nrn[f"isyn_{prefix}"] += (x * nrn[f"{prefix}_init"]) >> 32

    def synaptic(self, nrn: dict[str, int], prefix: str) -> int:
        """A synapse type's value (before the input type)."""
        if self.app.kind == neuron_apps.NEURON_LIF_ALPHA:
            return mul(nrn[f"{prefix}_lin"], nrn[f"{prefix}_exp"])
        return nrn[f"isyn_{prefix}"]

    def recorded(self, nrn: dict[str, int], key: str) -> int:
        """What the core records as ``key``: V, or a synaptic value after the input type's
        scaling (a conductance core's value >> 10, in uS)."""
        if key == "v":
            return nrn["v"]
        value = self.synaptic(nrn, key[5:])
        return value >> 10 if self.app.input_kind == neuron_apps.INPUT_CONDUCTANCE else value

    def current(self, nrn: dict[str, int]) -> int:
        """The neuron's input current this step (nA, s16.15)."""
        exc, inh = self.synaptic(nrn, "exc"), self.synaptic(nrn, "inh")
        if self.app.input_kind == neuron_apps.INPUT_CONDUCTANCE:
            exc = mul(exc >> 10, nrn["e_rev_e"] - nrn["v"])
            inh = mul(-(inh >> 10), nrn["e_rev_i"] - nrn["v"])
        elif self.app.input_kind == neuron_apps.INPUT_DELTA:
            exc = mul(exc, nrn["input_scale"])
            inh = mul(inh, nrn["input_scale"])
        return exc - inh + nrn["i_offset"]

    @staticmethod
    def izhikevich(nrn: dict[str, int], current: int) -> None:
        """One midpoint step of Izhikevich's equations, as neuron_model_izh_impl.h takes it."""
        v, u, h, a, b = nrn["v"], nrn["u"], nrn["this_h"], nrn["a"], nrn["b"]
        pre = 140 * ONE + current - u
        alpha = pre + mul(5 * ONE + mul(1311, v), v)
        eta = v + (mul(h, alpha) >> 1)
        beta = mul(mul(h, mul(b, v) - u), a) >> 1
        nrn["v"] = s32(v + mul(h, pre - beta + mul(5 * ONE + mul(1311, eta), eta)))
        nrn["u"] = s32(u + mul(mul(a, h), -u - beta + mul(b, eta)))
        nrn["this_h"] = nrn["reset_h"]

    def shape(self, nrn: dict[str, int]) -> None:
        """The synapses' change after the neuron's update."""
        kind = self.app.kind
        for prefix in ("exc", "inh"):
            if kind == neuron_apps.NEURON_LIF_DELTA:
                nrn[f"isyn_{prefix}"] = 0
            elif kind == neuron_apps.NEURON_LIF_ALPHA:
                lin = nrn[f"{prefix}_lin"] + mul(nrn[f"{prefix}_q"], nrn[f"{prefix}_k"])
                nrn[f"{prefix}_lin"] = s32(lin)
                nrn[f"{prefix}_exp"] = (nrn[f"{prefix}_exp"] * nrn[f"{prefix}_decay"]) >> 32
            else:
                name = f"isyn_{prefix}"
                nrn[name] = (nrn[name] * nrn[f"{prefix}_decay"]) >> 32


@dataclass
class DelayCore:
    """A delay extension: a counter per (step received, neuron)."""

    params: delays.DelayParams
    counters: dict[tuple[int, int], int] = field(default_factory=dict)
    lost: int = 0

    def receive(self, t: int, key: int, count: int) -> bool:
        """Count a packet; False when its key is not the source's."""
        p = self.params
        if key & p.in_mask != p.in_key:
            return False
        neuron = (key & ~p.in_mask & M32) >> p.in_colour_bits
        if neuron >= p.n_neurons:
            return False
        total = self.counters.get((t, neuron), 0) + count
        if total > 255:
            self.lost += total - 255
            total = 255
        self.counters[(t, neuron)] = total
        return True

    def step(self, t: int) -> list[tuple[int, int]]:
        """(stage x n + neuron, count) of every counter due at every stage."""
        p = self.params
        out = []
        for d in range(p.n_stages):
            for n in range(p.n_neurons):
                count = self.counters.get((t - (d + 1) * p.delay_per_stage, n), 0)
                if count:
                    out.append((d * p.n_neurons + n, count))
        return out


def run_reference(image: Image, topology: Topology, n_steps: int) -> Results:
    """Run ``image`` for ``n_steps`` the slow way and return what the fast executor returns."""
    router = Router(image.tables, topology)
    cores: dict[CoreXYP, object] = {}
    keys: dict[CoreXYP, tuple[list[int], int]] = {}
    arrays: dict[CoreXYP, list[tuple[int, int]]] = {}
    for core in image.cores:
        cores[core.xyp] = _load(core, arrays)
        keys[core.xyp] = _keys_of(core)
    order = [c.xyp for apps in SEND_ORDER for c in image.cores if c.app in apps]
    chips = sorted({c.chip for c in image.cores} | set(image.tables) | set(topology.chips()))
    router_counts = {chip: dict.fromkeys(COUNTER_NAMES, 0) for chip in chips}
    prov = {
        xyp: {
            "packets_sent": 0,
            "spikes_sent": 0,
            "packets_received": 0,
            "invalid_master_pop_hits": 0,
        }
        for xyp in cores
    }
    for t in range(n_steps):
        sent: list[tuple[CoreXYP, int, int]] = []
        for xyp in order:
            state = cores[xyp]
            if isinstance(state, list):  # a spike array's (step, neuron) list
                packets = [(n, 1) for step, n in state if step == t]
            else:
                packets = state.step(t)  # type: ignore[attr-defined]
            base_keys, colour_bits = keys[xyp]
            colour = t & ((1 << colour_bits) - 1)
            for neuron, count in packets:
                if base_keys:
                    sent.append((xyp, base_keys[neuron] | colour, count))
        for xyp, key, count in sent:
            prov[xyp]["packets_sent"] += 1
            prov[xyp]["spikes_sent"] += count
            trace = router.trace(key, ChipXY(xyp.x, xyp.y))
            for (chip, counter), n in trace.counters.items():
                router_counts[chip][COUNTER_NAMES[counter]] += n
            for target in trace.deliveries:
                state = cores.get(target)
                if state is None:
                    continue
                prov[target]["packets_received"] += 1
                if isinstance(state, NeuronCore):
                    rows = state.rows(key)
                    if rows is None:
                        prov[target]["invalid_master_pop_hits"] += count
                        continue
                    for _ in range(count):
                        for kind, row in rows:
                            if kind == "plastic":
                                state.plastic_row(t, row)  # type: ignore[arg-type]
                                continue
                            for word in row:  # type: ignore[attr-defined]
                                state.add(t, word)
                elif isinstance(state, DelayCore) and not state.receive(t, key, count):
                    prov[target]["invalid_master_pop_hits"] += count
    return _results(image, cores, prov, router_counts)


def _load(core: CoreImage, arrays: dict[CoreXYP, list[tuple[int, int]]]) -> object:
    if core.app in neuron_apps.NEURON_APPS:
        app = neuron_apps.NEURON_APPS[core.app]
        records = lif.decode_neuron_params(core.regions[REGION_DATA], app.record)
        neurons = [{name: int(r[name]) for name in app.record.names or ()} for r in records]
        if app.input_record is not None:
            inputs = lif.decode_input_params(
                core.regions[REGION_INPUT_TYPE], len(neurons), app.input_record
            )
            for nrn, r in zip(neurons, inputs, strict=True):
                nrn.update({name: int(r[name]) for name in app.input_record.names or ()})
        plasticity = None
        if REGION_SYNAPSE_DYNAMICS in core.regions:
            plasticity = stdp.decode_stdp_params(core.regions[REGION_SYNAPSE_DYNAMICS])
        return NeuronCore(
            neurons,
            lif.decode_synapse_params(core.regions[REGION_SYNAPSE_PARAMS]),
            lif.decode_pop_table(core.regions[REGION_POP_TABLE]),
            np.frombuffer(core.regions[REGION_SYNAPTIC_MATRIX], "<u4").copy(),
            lif.decode_recording(core.regions[REGION_RECORDING]),
            app,
            plasticity,
            history=[PostHistory() for _ in neurons],
        )
    if core.app == AppId.SPIKE_SOURCE_ARRAY:
        steps, neurons = sources.decode_spike_array(core.regions[REGION_DATA])
        arrays[core.xyp] = list(zip(steps.tolist(), neurons.tolist(), strict=True))
        return arrays[core.xyp]
    if core.app == AppId.SPIKE_SOURCE_POISSON:
        seed, records = sources.decode_poisson_params(core.regions[REGION_DATA])
        return PoissonCore(records, Kiss(seed))
    return DelayCore(delays.decode_delay_params(core.regions[REGION_DATA]))


def _keys_of(core: CoreImage) -> tuple[list[int], int]:
    if core.app == AppId.DELAY_EXTENSION:
        p = delays.decode_delay_params(core.regions[REGION_DATA])
        n_keys = p.n_stages * p.n_neurons
        return [p.out_key_base + (i << p.out_colour_bits) for i in range(n_keys)], p.out_colour_bits
    base, colour_bits, has_key = decode_keys(core.regions[REGION_KEYS])
    return ([int(k) for k in base] if has_key else []), colour_bits


def _results(
    image: Image,
    cores: dict[CoreXYP, object],
    prov: dict[CoreXYP, dict[str, int]],
    router_counts: dict[ChipXY, dict[str, int]],
) -> Results:
    spikes: dict[CoreXYP, npt.NDArray[np.int64]] = {}
    recorded: dict[str, dict[CoreXYP, npt.NDArray[np.float64]]] = {
        "v": {},
        "gsyn_exc": {},
        "gsyn_inh": {},
    }
    matrices: dict[CoreXYP, npt.NDArray[np.uint32]] = {}
    for core in image.cores:
        state = cores[core.xyp]
        if isinstance(state, NeuronCore):
            if state.recording.record_spikes:
                spikes[core.xyp] = np.array(state.spikes, dtype=np.int64).reshape(-1, 2)
            for name, samples in state.samples.items():
                if samples:
                    recorded[name][core.xyp] = np.array(samples, dtype=np.float64)
            prov[core.xyp]["ring_buffer_saturations"] = state.saturations
            prov[core.xyp]["late_spikes"] = 0
            if state.plasticity is not None:
                prov[core.xyp]["plastic_saturations"] = state.plastic_saturations
                matrices[core.xyp] = state.matrix
        if isinstance(state, DelayCore):
            prov[core.xyp]["spikes_lost_to_saturation"] = state.lost
    return Results(
        spikes,
        recorded["v"],
        recorded["gsyn_exc"],
        recorded["gsyn_inh"],
        prov,
        router_counts,
        matrices,
    )
