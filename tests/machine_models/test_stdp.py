"""STDP on a neuron core: weight changes of single pre/post pairs against the spike-pair rule.

Each test drives one neuron with a spike array: source 0 reaches it through one plastic
synapse, source 1 through a strong static one that makes it fire when chosen. The weight
after the run is read from the results' synaptic matrix and held against the rule:

* additive:       dw = +A+ exp(-dt / tau+)  (post after pre),  -A- exp(-dt / tau-)  (before);
* multiplicative: dw = +A+ (w_max - w) exp(-dt / tau+),        -A- (w - w_min) exp(-dt / tau-),

first exactly, in the core's fixed point (an s4.11 table entry times an s16.15 factor), then
against the float formula within that fixed point's resolution. dt is 7.4.1's: a post spike
at t_post counts at t_post + d (the synapse's delay, ``backprop_delay``), so a pre spike at
t_pre potentiates when t_post + d > t_pre and depresses otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from machine_models import Executor, Topology, lif, results_file, stdp
from machine_models.geometry import ChipXY
from machine_models.image import Image, RoutingEntry, route_word
from machine_models.regions import REGION_SYNAPSE_DYNAMICS
from tests.machine_models.networks import ARRAY_BASE, LIF_BASE, array_core, neuron_core
from tests.machine_models.reference import run_reference
from tests.machine_models.test_reference import assert_same

BOARD = Topology.single_board()
SHIFT = 4
"""Ring-buffer shift of both synapse types: a stored weight of 1 is 2**-11 nA."""
DELAY = 2
TAU_PLUS, TAU_MINUS = 16.0, 33.0
A_PLUS, A_MINUS = 0.25, 0.2
W_MIN, W_MAX = 0.0, 2.0
W0 = 1.0
DRIVE_WEIGHT = 60000


def w_to_u16(w_na: float) -> int:
    return round(w_na * 2.0 ** (15 - SHIFT))


def u16_to_w(w16: int) -> float:
    return w16 * 2.0 ** (SHIFT - 15)


def plastic_block(
    weights: list[int], targets: list[int], delay: int, n_rows: int
) -> tuple[np.ndarray, int]:
    """One plastic row (source 0) of the given synapses, empty rows for the others."""
    counts = [len(weights)] + [0] * (n_rows - 1)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    controls = lif.synapse_words(np.zeros(len(weights)), delay, 0, targets, 8, 1) & 0xFFFF
    row_length = int(stdp.plastic_row_words(len(weights)))
    return stdp.encode_plastic_block(ptr, weights, controls, row_length), row_length


def pair_image(
    rule: stdp.WeightRule,
    pre_steps: list[int],
    drive_steps: list[int],
    *,
    w0_na: float = W0,
    a_plus: float = A_PLUS,
    a_minus: float = A_MINUS,
    n_neurons: int = 1,
    params: stdp.StdpParams | None = None,
    delay: int = DELAY,
    drive_delay: int = 1,
) -> Image:
    """Source 0 fires at ``pre_steps`` into one plastic synapse per neuron; source 1 fires at
    ``drive_steps`` into a static synapse (``drive_delay``) strong enough to make each neuron
    fire."""
    plastic, plastic_length = plastic_block(
        [w_to_u16(w0_na)] * n_neurons, list(range(n_neurons)), delay, 2
    )
    drive_words = lif.synapse_words(
        [DRIVE_WEIGHT] * n_neurons, drive_delay, 0, np.arange(n_neurons), 8, 1
    )
    ptr = np.array([0, 0, n_neurons])
    static = lif.encode_synaptic_block(ptr, drive_words, n_neurons)
    # blocks start on 16-byte boundaries
    plastic = np.concatenate([plastic, np.zeros(-plastic.size % 4, np.uint32)])
    matrix = np.concatenate([plastic, static])
    table = lif.PopTable(
        (lif.MasterPopEntry(ARRAY_BASE, 0xFFFFF000, 0, 2, 4, 0, 0, 0),),
        ((0, plastic_length), (plastic.size * 4, n_neurons)),
    )
    cell = lif.LifParams(
        n_neurons, v_init=-65.0, tau_m=20.0, tau_syn_e=1.0, tau_refrac=1.0, v_thresh=-50.0
    )
    core = neuron_core(
        ChipXY(0, 0),
        1,
        cell,
        key_base=LIF_BASE,
        synapse_params=lif.SynapseParams(n_neurons, 8, 1, 4, SHIFT, SHIFT),
        pop_table=table,
        matrix=matrix,
        recording=lif.RecordingParams(True, 0, 0, 0),
    )
    rule_params = params or stdp.StdpParams.from_pynn(
        rule,
        1.0,
        tau_plus=TAU_PLUS,
        tau_minus=TAU_MINUS,
        a_plus=a_plus,
        a_minus=a_minus,
        w_min=W_MIN,
        w_max=W_MAX,
    )
    regions = dict(core.regions)
    regions[REGION_SYNAPSE_DYNAMICS] = stdp.encode_stdp_params(rule_params)
    core = type(core)(core.chip, core.p, core.app, regions)
    spikes = sorted([(s, 0) for s in pre_steps] + [(s, 1) for s in drive_steps])
    source = array_core(
        ChipXY(0, 0), 2, [s for s, _ in spikes], [n for _, n in spikes], 2, ARRAY_BASE
    )
    tables = {ChipXY(0, 0): (RoutingEntry(ARRAY_BASE, 0xFFFFF000, route_word((), (1,))),)}
    return Image(1000, (core, source), tables)


def learned(image: Image, n_steps: int) -> tuple[list[int], list[int]]:
    """(stored weights after the run, post spike steps of neuron 0)."""
    results = Executor(image, BOARD).run(n_steps)
    (xyp,) = results.synaptic_matrices
    offset, row_length = lif.decode_pop_table(image.cores[0].regions[5]).addresses[0]
    ((weights, _controls), _empty) = stdp.decode_plastic_rows(
        results.synaptic_matrices[xyp], offset, row_length, 2
    )
    spikes = results.spikes[xyp]
    return [int(w) for w in weights], [int(t) for t, n in spikes if n == 0]


def fixed_point_change(rule: stdp.WeightRule, w16: int, lut_value: int, potentiate: bool) -> int:
    """The stored weight after one update, in the core's arithmetic, written from the rule."""
    lim = stdp.StdpParams.from_pynn(
        rule, 1.0, a_plus=A_PLUS, a_minus=A_MINUS, w_min=W_MIN, w_max=W_MAX
    ).limits[0]
    w = w16 << SHIFT
    a = lim.a2_plus if potentiate else lim.a2_minus
    if rule is stdp.WeightRule.MULTIPLICATIVE:
        span = (lim.max_weight - w) if potentiate else (w - lim.min_weight)
        a = (span * a) >> 15
    step = (a * (lut_value << 4)) >> 15
    w = w + step if potentiate else w - step
    if rule is stdp.WeightRule.ADDITIVE:
        w = min(w, lim.max_weight) if potentiate else max(w, lim.min_weight)
    return w >> SHIFT


def rule_change(rule: stdp.WeightRule, w_na: float, dt: float, potentiate: bool) -> float:
    """The pair rule's weight change in float (nA)."""
    if potentiate:
        factor = A_PLUS * math.exp(-dt / TAU_PLUS)
        return factor * ((W_MAX - w_na) if rule is stdp.WeightRule.MULTIPLICATIVE else 1.0)
    factor = A_MINUS * math.exp(-dt / TAU_MINUS)
    return -factor * ((w_na - W_MIN) if rule is stdp.WeightRule.MULTIPLICATIVE else 1.0)


RULES = [stdp.WeightRule.ADDITIVE, stdp.WeightRule.MULTIPLICATIVE]


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("interval", [1, 3, 10, 25, 60])
def test_post_after_pre_potentiates_by_the_pair_rule(rule: stdp.WeightRule, interval: int) -> None:
    drive = 100
    # the drive reaches the neuron a step later; it fires then
    t_post = drive + 1
    t_pre = t_post + DELAY - interval
    # a late pre spike applies the pairing (the chip updates on pre spikes), far past every
    # table so it adds no depression of its own
    readout = t_post + 400
    weights, posts = learned(pair_image(rule, [t_pre, readout], [drive]), readout + 5)
    assert posts == [t_post]
    lut = stdp.exp_lut(1.0, TAU_PLUS).values[interval]
    w16 = w_to_u16(W0)
    assert weights[0] == fixed_point_change(rule, w16, lut, True)
    expected = W0 + rule_change(rule, W0, interval, True)
    # the table's 1/2048 step times A (plus one stored-weight step) bounds the difference
    assert abs(u16_to_w(weights[0]) - expected) <= A_PLUS * 2 / 2048 + u16_to_w(1)
    assert weights[0] > w16


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("interval", [0, 2, 10, 25, 60])
def test_pre_after_post_depresses_by_the_pair_rule(rule: stdp.WeightRule, interval: int) -> None:
    drive = 100
    t_post = drive + 1
    t_pre = t_post + DELAY + interval
    weights, posts = learned(pair_image(rule, [t_pre], [drive]), t_pre + 5)
    assert posts == [t_post]
    lut = stdp.exp_lut(1.0, TAU_MINUS).values[interval]
    w16 = w_to_u16(W0)
    assert weights[0] == fixed_point_change(rule, w16, lut, False)
    expected = W0 + rule_change(rule, W0, interval, False)
    assert abs(u16_to_w(weights[0]) - expected) <= A_MINUS * 2 / 2048 + u16_to_w(1)
    assert weights[0] < w16


def test_a_pair_past_the_table_changes_nothing() -> None:
    drive = 100
    t_post = drive + 1
    size = len(stdp.exp_lut(1.0, TAU_MINUS).values)
    weights, _ = learned(
        pair_image(stdp.WeightRule.ADDITIVE, [t_post + DELAY + size], [drive]), t_post + 300
    )
    assert weights[0] == w_to_u16(W0)


@pytest.mark.parametrize("rule", RULES)
def test_weights_stay_within_the_limits(rule: stdp.WeightRule) -> None:
    """Additive weights clip at w_max and w_min; multiplicative ones approach them (with
    A+ and A- up to 1, as the chip leaves a multiplicative step unclipped)."""
    drive = 100
    t_post = drive + 1
    amplitude = 5.0 if rule is stdp.WeightRule.ADDITIVE else 1.0
    up = pair_image(rule, [t_post + DELAY - 1, t_post + 400], [drive], w0_na=1.9, a_plus=amplitude)
    weights, _ = learned(up, t_post + 405)
    assert w_to_u16(1.9) < weights[0] <= w_to_u16(W_MAX)
    if rule is stdp.WeightRule.ADDITIVE:
        assert weights[0] == w_to_u16(W_MAX)
    down = pair_image(rule, [t_post + DELAY], [drive], w0_na=0.1, a_minus=amplitude)
    weights, _ = learned(down, t_post + DELAY + 5)
    assert w_to_u16(W_MIN) <= weights[0] < w_to_u16(0.1)
    if rule is stdp.WeightRule.ADDITIVE:
        assert weights[0] == w_to_u16(W_MIN)


def test_lookup_table_is_the_hosts() -> None:
    lut = stdp.exp_lut(1.0, 20.0)
    # ln(2048) * 20 = 152.5 steps, rounded up to an even count
    assert len(lut.values) == 154
    assert lut.values[0] == 2048
    assert lut.values[20] == math.floor(math.exp(-1.0) * 2048)
    assert all(a >= b for a, b in zip(lut.values, lut.values[1:], strict=False))


def test_region_round_trips() -> None:
    params = stdp.StdpParams.from_pynn(
        stdp.WeightRule.MULTIPLICATIVE, 0.1, tau_plus=15.0, w_max=0.5, weight_scale=1024.0
    )
    assert stdp.decode_stdp_params(stdp.encode_stdp_params(params)) == params
    with pytest.raises(ValueError, match="unknown plasticity rule"):
        stdp.decode_stdp_params(b"\x01\0\0\0\x07\0\0\0" + bytes(8))


@pytest.mark.parametrize("rule", RULES)
def test_fast_executor_equals_reference_on_a_plastic_network(rule: stdp.WeightRule) -> None:
    rng = np.random.default_rng(5)
    n = 6
    drive = sorted(rng.choice(np.arange(5, 300), 25, replace=False).tolist())
    pre = sorted(rng.choice(np.arange(1, 300), 40, replace=False).tolist())
    image = pair_image(rule, pre, drive, n_neurons=n, a_plus=0.3, a_minus=0.35)
    fast = Executor(image, BOARD).run(320)
    slow = run_reference(image, BOARD, 320)
    assert_same(fast, slow)
    (xyp,) = fast.synaptic_matrices
    assert np.array_equal(fast.synaptic_matrices[xyp], slow.synaptic_matrices[xyp])
    before = np.frombuffer(image.cores[0].regions[6], "<u4")
    assert not np.array_equal(fast.synaptic_matrices[xyp], before)


@pytest.mark.parametrize("rule", RULES)
def test_fast_executor_equals_reference_with_long_windows_and_full_histories(
    rule: stdp.WeightRule,
) -> None:
    # delays of 6 and more let the executor run 6 steps between exchanges; a neuron fires
    # up to 20 times between two pre spikes, past the 15 its history keeps
    rng = np.random.default_rng(9)
    drive = sorted(rng.choice(np.arange(5, 600), 200, replace=False).tolist())
    pre = sorted(rng.choice(np.arange(1, 600), 12, replace=False).tolist())
    image = pair_image(rule, pre, drive, n_neurons=4, delay=6, drive_delay=8)
    executor = Executor(image, BOARD)
    assert executor.window_steps == 6
    fast = executor.run(640)
    slow = run_reference(image, BOARD, 640)
    assert_same(fast, slow)
    (xyp,) = fast.synaptic_matrices
    assert np.array_equal(fast.synaptic_matrices[xyp], slow.synaptic_matrices[xyp])
    posts = fast.spikes[xyp][fast.spikes[xyp][:, 1] == 0, 0]
    between, _ = np.histogram(posts, bins=[0, *pre, 640])
    assert between.max() > 15


def test_learned_weights_survive_the_results_file() -> None:
    image = pair_image(stdp.WeightRule.ADDITIVE, [50, 99, 300], [100])
    results = Executor(image, BOARD).run(320)
    data = results_file.encode_results(results, first_step=0, last_step=320)
    decoded, _ = results_file.decode_results(data)
    (xyp,) = results.synaptic_matrices
    assert np.array_equal(decoded.synaptic_matrices[xyp], results.synaptic_matrices[xyp])
    assert decoded.core_provenance[xyp]["plastic_saturations"] == 0
