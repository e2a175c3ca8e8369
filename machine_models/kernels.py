"""Compiled per-timestep kernels of the executor: all cores of a job advanced in one call.

The executor flattens every core's state into contiguous arrays (see ``executor``); these
functions only do arithmetic on them, exactly as the chip does: s16.15 multiplies that truncate
(floor), u0.32 decays that truncate, 16-bit ring buffers that saturate, 7.4.1's KISS generator
per Poisson core. Compiled with ``cache=True`` so later processes skip compilation.
"""

# The kernels are typed by numba when they compile (from the arrays the executor passes), not by
# annotations; mypy cannot follow numba's dispatchers, so it does not check this module.
# mypy: ignore-errors

from __future__ import annotations

import math
from typing import Any, NamedTuple, TypeAlias

import numba
import numpy as np
import numpy.typing as npt

from machine_models import neuron_apps

M32 = 0xFFFFFFFF
REGIME_SLOW, REGIME_FAST, REGIME_FASTER = 0, 1, 2
"""Poisson regimes, as ``sources`` numbers them."""
ISI_SCALE = 1000
"""A slow Poisson source counts time in ticks x 1000."""


@numba.njit(cache=True, inline="always")
def _mul_accum(a: int, b: int) -> int:  # pragma: no cover - compiled
    # GCC's accum multiply on ARM: smull, then the 64-bit product shifted right by 15, which
    # floors (spec 3.5)
    return (a * b) >> 15


@numba.njit(cache=True, inline="always")
def _kiss(x, y, z, c):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """One step of 7.4.1's KISS generator on a state in four u64 locals holding u32 words.

    Returns the new state and the output ``x + y + z`` (mod 2**32).
    """
    m = np.uint64(M32)
    x = (np.uint64(314527869) * x + np.uint64(1234567)) & m
    y ^= (y << np.uint64(5)) & m
    y ^= y >> np.uint64(7)
    y ^= (y << np.uint64(22)) & m
    t = np.uint64(4294584393) * z + c
    c = t >> np.uint64(32)
    z = t & m
    return x, y, z, c, (x + y + z) & m


@numba.njit(cache=True, inline="always")
def _exp_variate(x, y, z, c):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """An exponential variate by von Neumann's method, as s16.15 bits, and the new state.

    Whole units count the runs of descending uniforms that had even length; the fraction is
    the first uniform of the last run, truncated to 15 bits.
    """
    a = 0
    while True:
        x, y, z, c, u = _kiss(x, y, z, c)
        u0 = u
        while True:
            x, y, z, c, ustar = _kiss(x, y, z, c)
            if u < ustar:
                return x, y, z, c, (a << 15) + np.int64(u0 >> np.uint64(17))
            x, y, z, c, u = _kiss(x, y, z, c)
            if not u < ustar:
                break
        a += 1


@numba.njit(cache=True, inline="always")
def _time_to_spike(x, y, z, c, isi):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """round(E x 1000) x isi (mod 2**32): a slow source's next interval, in ticks x 1000."""
    x, y, z, c, bits = _exp_variate(x, y, z, c)
    scaled = bits * 1000
    rounded = (scaled >> 15) + ((scaled >> 14) & 1)
    return x, y, z, c, (rounded * isi) & M32


@numba.njit(cache=True)
def draw_time_to_spike(state, i, isi):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Draw a slow source's time to its next spike (ticks x 1000) from Poisson core i."""
    x, y, z, c, value = _time_to_spike(state[i, 0], state[i, 1], state[i, 2], state[i, 3], isi)
    state[i, 0] = x
    state[i, 1] = y
    state[i, 2] = z
    state[i, 3] = c
    return value


@numba.njit(cache=True)
def _ndtri(p):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # Acklam's rational approximation of the inverse normal CDF (relative error < 1.2e-9)
    a0, a1, a2 = -3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02
    a3, a4, a5 = 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00
    b0, b1, b2 = -5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02
    b3, b4 = 6.680131188771972e01, -1.328068155288572e01
    c0, c1, c2 = -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00
    c3, c4, c5 = -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00
    d0, d1, d2, d3 = (
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e00,
        3.754408661907416e00,
    )
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        return (((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) / (
            (((d0 * q + d1) * q + d2) * q + d3) * q + 1.0
        )
    if p > 1.0 - 0.02425:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        return -(((((c0 * q + c1) * q + c2) * q + c3) * q + c4) * q + c5) / (
            (((d0 * q + d1) * q + d2) * q + d3) * q + 1.0
        )
    q = p - 0.5
    r = q * q
    return (
        (((((a0 * r + a1) * r + a2) * r + a3) * r + a4) * r + a5)
        * q
        / (((((b0 * r + b1) * r + b2) * r + b3) * r + b4) * r + 1.0)
    )


@numba.njit(cache=True)
def pack_rows(syn, starts, lengths, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Copy row i, ``syn[starts[i]:starts[i] + lengths[i]]``, to the next free words of ``out``."""
    k = 0
    for i in range(starts.size):
        s = starts[i]
        for j in range(lengths[i]):
            out[k] = syn[s + j]
            k += 1
    return k


# Columns of the per-core parameter tables the executor builds (int64, one row per core).
LIF_NB, LIF_NN, LIF_IB, LIF_TB, LIF_DB, LIF_IT, LIF_SHE, LIF_SHI, LIF_RB, LIF_RM = range(10)
LIF_EMIT, LIF_REC, LIF_VIV, LIF_GEIV, LIF_GIIV = range(10, 15)
LIF_VOFF, LIF_VFIRST, LIF_GEOFF, LIF_GEFIRST, LIF_GIOFF, LIF_GIFIRST = range(15, 21)
LIF_INPUT, LIF_KIND = 21, 22
LIF_COLUMNS = 23
# a neuron core's input type (LIF_INPUT) and neuron kind (LIF_KIND), as neuron_apps names them
INPUT_CURRENT, INPUT_CONDUCTANCE, INPUT_DELTA = (
    neuron_apps.INPUT_CURRENT,
    neuron_apps.INPUT_CONDUCTANCE,
    neuron_apps.INPUT_DELTA,
)
NEURON_LIF_EXP, NEURON_LIF_DELTA, NEURON_LIF_ALPHA, NEURON_IZH_EXP = (
    neuron_apps.NEURON_LIF_EXP,
    neuron_apps.NEURON_LIF_DELTA,
    neuron_apps.NEURON_LIF_ALPHA,
    neuron_apps.NEURON_IZH_EXP,
)
ONE = 1 << 15
"""1.0 in s16.15."""
IZH_MAGIC = 1311
"""0.040008544921875 in s16.15: 7.4.1's stand-in for Izhikevich's 0.04."""
IZH_TQ_OFFSET = 60620
"""1.85 in s16.15 as GCC stores the literal (truncated): the step after a spike is longer."""
COND_SHIFT = 10
"""A conductance core's input is its synaptic value >> 10 (``lif.CONDUCTANCE_INPUT_SHIFT``)."""
PO_NB, PO_NN, PO_FAST_FROM, PO_FAST_TO, PO_LIMIT = range(5)
PO_COLUMNS = 5
DE_NN, DE_STAGES, DE_DPS, DE_SLOTS, DE_CB = range(5)
DE_COLUMNS = 5
SSA_HI = 0
SSA_COLUMNS = 1
# the emitting cores, in the order the chip's packets of one step are delivered
SRC_KIND, SRC_INDEX, SRC_EMIT, SRC_SEG = range(4)
SRC_COLUMNS = 4
KIND_SSA, KIND_POISSON, KIND_DELAY, KIND_LIF = range(4)
# how an emitting core reaches a group of receiving cores (else: the neuron core it reaches
# directly, every key through one one-synapse row)
REACH_NONE, REACH_ROWS = -2, -1
# what a fan-out entry feeds: a synaptic row of a neuron core, a delay extension's counter, or
# a plastic row of a neuron core (``a`` its first word in ``StdpCores.words``)
FAN_ROW, FAN_DELAY, FAN_PLASTIC = 0, 1, 2
# columns of the plastic cores' table (one row per neuron core; ST_PLASTIC 0 on static cores)
ST_PLASTIC, ST_RULE, ST_BACKPROP, ST_POST = range(4)
ST_LP_OFF, ST_LP_SIZE, ST_LP_SHIFT, ST_LM_OFF, ST_LM_SIZE, ST_LM_SHIFT, ST_LIMITS = range(4, 11)
ST_COLUMNS = 11
# weight dependences (``stdp.WeightRule``)
RULE_ADDITIVE, RULE_MULTIPLICATIVE = 1, 2
STDP_ONE = 2048
"""1.0 in the traces' s4.11 fixed point."""
POST_SLOTS = 32
"""Post-synaptic events each neuron keeps: the chip's 15, plus the most a window runs ahead."""
CHIP_POST_EVENTS = 15
"""Real events in the chip's post-synaptic history (16 entries, the first a placeholder)."""

Array: TypeAlias = npt.NDArray[Any]


class Emitters(NamedTuple):
    """The emitting cores and the packets they send within a window.

    ``src`` has a row per emitting core (columns ``SRC_*``), in delivery order; ``a_ptr`` and
    ``a_items`` group them for the threads (CSR). Packet j of core q in window step i sits at
    ``i * stride + src[q, SRC_SEG] + j`` of ``em_j`` (neuron) and ``em_k`` (payload), with
    ``em_n[i, q]`` packets. ``packets`` and ``spikes_sent`` count per (key, colour variant).
    """

    src: Array
    a_ptr: Array
    a_items: Array
    em_n: Array
    em_j: Array
    em_k: Array
    packets: Array
    spikes_sent: Array


class Fanout(NamedTuple):
    """Where each (key, colour variant) goes, split by the group of receiving cores.

    Entries ``g_ptr[group * n_rows + row] .. g_ptr[... + 1]`` feed, each, a synaptic row
    (``kind`` FAN_ROW: neuron core ``core``, words ``syn[a : a + b]``) or a delay extension
    (FAN_DELAY: core ``core``, neuron ``a``). ``reach[q, group]`` says how emitting core q
    reaches a group (``REACH_*`` or the one neuron core it feeds directly); ``b_ptr`` and
    ``b_items`` list the delay extensions of each group.
    """

    reach: Array
    g_ptr: Array
    kind: Array
    core: Array
    a: Array
    b: Array
    syn: Array
    b_ptr: Array
    b_items: Array


class LifCores(NamedTuple):
    """Every neuron of the job's neuron cores, one array per field of the applications'
    records (``neuron_apps``), zero where a core's record has no such field.

    ``table`` has a row per core (columns ``LIF_*``); ``ring`` holds every core's ring
    buffers; ``sat`` counts saturations per core; ``spk`` is scratch (fired this step).
    """

    table: Array
    ring: Array
    sat: Array
    spk: Array
    v: Array
    v_rest: Array
    r_membrane: Array
    exp_tc: Array
    i_offset: Array
    v_reset: Array
    v_thresh: Array
    t_refract: Array
    refract_timer: Array
    isyn_exc: Array
    isyn_inh: Array
    exc_decay: Array
    exc_init: Array
    inh_decay: Array
    inh_init: Array
    e_rev_e: Array
    e_rev_i: Array
    input_scale: Array
    exc_lin: Array
    exc_exp: Array
    exc_q: Array
    exc_k: Array
    inh_lin: Array
    inh_exp: Array
    inh_q: Array
    inh_k: Array
    a: Array
    b: Array
    c: Array
    d: Array
    u: Array
    this_h: Array
    reset_h: Array


NEURON_FIELDS = LifCores._fields[4:]
"""The per-neuron fields, named as in the applications' records."""
NEURON_STATE_FIELDS = (
    "v",
    "refract_timer",
    "isyn_exc",
    "isyn_inh",
    "exc_lin",
    "exc_exp",
    "exc_q",
    "inh_lin",
    "inh_exp",
    "inh_q",
    "u",
    "this_h",
)
"""The fields a neuron core changes as it runs (its state; the rest are parameters)."""


class StdpCores(NamedTuple):
    """The plastic state of the neuron cores (``table`` row c is LIF core c, ``ST_*``).

    ``lut`` holds every core's two lookup tables, ``limits`` a row (min, max, a2+, a2-) per
    (core, synapse type) from ``table[c, ST_LIMITS]``; ``words`` the synaptic matrices of
    the plastic cores, updated in place (pre-synaptic histories, weights). Post-synaptic
    events of neuron k of core c live at ``table[c, ST_POST] + k``: event i (counted from
    the first ever) at ``i % POST_SLOTS`` of ``post_time`` and ``post_trace``, ``post_count``
    events in all. ``sat`` counts the plastic ring-buffer saturations of each core.
    """

    table: Array
    lut: Array
    limits: Array
    words: Array
    post_time: Array
    post_trace: Array
    post_count: Array
    sat: Array


class Recording(NamedTuple):
    """What a run records: spikes (step, neuron; ``count[0]`` used) and sampled values."""

    spike_t: Array
    spike_n: Array
    count: Array
    v: Array
    gsyn_exc: Array
    gsyn_inh: Array


class SourceArrays(NamedTuple):
    """SpikeSourceArray cores: ``table`` (``SSA_*``), a cursor per core into the sorted
    ``steps``/``neurons``, and the range of entries each core visited in each window step."""

    table: Array
    cursor: Array
    lo: Array
    hi: Array
    steps: Array
    neurons: Array


class PoissonCores(NamedTuple):
    """SpikeSourcePoisson cores: ``table`` (``PO_*``), a KISS state per core (4 words), and
    one array per source field of ``sources.POISSON_DTYPE`` plus the slow sources' time to
    spike (ticks x 1000)."""

    table: Array
    state: Array
    start_step: Array
    end_step: Array
    regime: Array
    exp_minus_lambda: Array
    sqrt_lambda: Array
    isi_ticks: Array
    time_to_spike: Array


class DelayCores(NamedTuple):
    """Delay-extension cores: ``table`` (``DE_*``), 8-bit counters per (slot, neuron) of each
    core, and the spikes each lost to saturated counters."""

    table: Array
    counter: Array
    lost: Array


@numba.njit(cache=True)
def min_row_delay(syn, kind, core, starts, lengths, lif_p):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The shortest delay (in steps) of any synapse a fan-out entry reaches; 1 << 30 if none."""
    best = 1 << 30
    for j in range(kind.size):
        if kind[j] != FAN_ROW:
            continue
        c = core[j]
        shift = lif_p[c, LIF_IT]
        dmask = (1 << lif_p[c, LIF_DB]) - 1
        for k in range(starts[j], starts[j] + lengths[j]):
            d = (np.int64(syn[k]) >> shift) & dmask
            if d < best:
                best = d
    return best


@numba.njit(cache=True)
def min_plastic_delay(words, kind, core, starts, lif_p):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The shortest delay (steps) of a plastic synapse any entry reaches; 1 << 30 if none."""
    best = 1 << 30
    for j in range(kind.size):
        if kind[j] != FAN_PLASTIC:
            continue
        c = core[j]
        it = lif_p[c, LIF_IT]
        dmask = (1 << lif_p[c, LIF_DB]) - 1
        w0 = starts[j]
        fixed = w0 + 1 + np.int64(words[w0])
        c_half = 2 * (fixed + 2 + np.int64(words[fixed]))
        for i in range(np.int64(words[fixed + 1])):
            ch = c_half + i
            cw = (np.int64(words[ch >> 1]) >> (16 * (ch & 1))) & 0xFFFF
            d = (cw >> it) & dmask
            if d < best:
                best = d
    return best


@numba.njit(cache=True, inline="always")
def _add_payload(ring, sat, c, idx, weight, count):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # k additions of one weight to one slot have a closed form: they all fit, or the first
    # (0xFFFF - slot) // w fit and every later one saturates and is counted
    current = np.int64(ring[idx])
    total = current + count * weight
    if total <= 0xFFFF:
        ring[idx] = total
    else:
        fit = (0xFFFF - current) // weight
        ring[idx] = 0xFFFF
        sat[c] += count - fit


@numba.njit(cache=True, inline="always")
def _i16(x):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # an int16_t: the low 16 bits, signed
    return ((x + 0x8000) & 0xFFFF) - 0x8000


@numba.njit(cache=True, inline="always")
def _i32(x):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    return ((x + 0x80000000) & M32) - 0x80000000


@numba.njit(cache=True, inline="always")
def _mul16(a, b):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # STDP_FIXED_MUL_16X16: smulbb (the low halves, signed) then >> 11
    return (_i16(a) * _i16(b)) >> 11


@numba.njit(cache=True, inline="always")
def _decay(lut, off, size, shift, dt):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # maths_lut_exponential_decay on a uint32 interval: 0 past the table's end
    i = (dt & M32) >> shift
    return lut[off + i] if i < size else 0


@numba.njit(cache=True, inline="always")
def _mul_fixed(a, stdp_fixed):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # mul_accum_fixed: an accum times kbits(stdp_fixed << 4), GCC's truncating multiply
    return _i32((a * _i32(stdp_fixed << 4)) >> 15)


@numba.njit(cache=True, inline="always")
def _apply(rule, w, lim, k, amount, is_potentiation):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """One weight-dependence step on an s16.15 weight (``weight_one_term_apply_*``)."""
    if rule == RULE_ADDITIVE:
        if is_potentiation:
            return min(_i32(w + _mul_fixed(lim[k, 2], amount)), lim[k, 1])
        return max(_i32(w - _mul_fixed(lim[k, 3], amount)), lim[k, 0])
    if is_potentiation:
        scale = _i32(((lim[k, 1] - w) * lim[k, 2]) >> 15)
        return _i32(w + _mul_fixed(scale, amount))
    scale = _i32(((w - lim[k, 0]) * lim[k, 3]) >> 15)
    return _i32(w - _mul_fixed(scale, amount))


@numba.njit(cache=True)
def _add_post_event(st, c, post, t):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """A spike of neuron ``post`` of core c at step t joins its history (``post_events_add``).

    Its trace is the last event's, decayed through tau_minus, plus 1.0 (``timing_add_post_spike``
    in int16); the placeholder at time 0 with trace 0 stands in before the first.
    """
    n = st.post_count[post]
    last_t = st.post_time[post, (n - 1) % POST_SLOTS] if n > 0 else 0
    last_trace = st.post_trace[post, (n - 1) % POST_SLOTS] if n > 0 else 0
    tab = st.table
    decay = _decay(st.lut, tab[c, ST_LM_OFF], tab[c, ST_LM_SIZE], tab[c, ST_LM_SHIFT], t - last_t)
    trace = _i16(_i16(_mul16(last_trace, decay)) + STDP_ONE)
    st.post_time[post, n % POST_SLOTS] = t
    st.post_trace[post, n % POST_SLOTS] = trace
    st.post_count[post] = n + 1


@numba.njit(cache=True)
def _plastic_row(st, c, w0, t, ring, lif_p):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """One pre-synaptic spike through plastic row ``w0`` of core c in step t.

    7.4.1's ``synapse_dynamics_process_plastic_synapses``: the row's pre-synaptic trace
    takes the spike, then each synapse applies the post-synaptic events since the row's
    last spike (potentiation) and this spike (depression, against the last post event),
    adds its new weight to the ring buffer and is written back.
    """
    words = st.words
    tab = st.table
    rule = tab[c, ST_RULE]
    lut = st.lut
    lp_off, lp_size, lp_shift = tab[c, ST_LP_OFF], tab[c, ST_LP_SIZE], tab[c, ST_LP_SHIFT]
    lm_off, lm_size, lm_shift = tab[c, ST_LM_OFF], tab[c, ST_LM_SIZE], tab[c, ST_LM_SHIFT]
    lim = st.limits
    k0 = tab[c, ST_LIMITS]
    post0 = tab[c, ST_POST]
    backprop = tab[c, ST_BACKPROP] != 0
    ib = lif_p[c, LIF_IB]
    it = lif_p[c, LIF_IT]
    dmask = (1 << lif_p[c, LIF_DB]) - 1
    tmask = (1 << lif_p[c, LIF_TB]) - 1
    imask = (1 << ib) - 1
    base = lif_p[c, LIF_RB]
    rmask = lif_p[c, LIF_RM]
    p_words = np.int64(words[w0])
    hdr = w0 + 1
    last_pre = np.int64(words[hdr])
    last_trace = _i16(np.int64(words[hdr + 1]))
    new_trace = _i16(
        _mul16(last_trace, _decay(lut, lp_off, lp_size, lp_shift, t - last_pre)) + STDP_ONE
    )
    words[hdr] = np.uint32(t & M32)
    words[hdr + 1] = np.uint32((np.int64(words[hdr + 1]) & 0xFFFF0000) | (new_trace & 0xFFFF))
    fixed = hdr + p_words
    n_fixed = np.int64(words[fixed])
    n_plastic = np.int64(words[fixed + 1])
    w_half = 2 * (hdr + 2)
    c_half = 2 * (fixed + 2 + n_fixed)
    for i in range(n_plastic):
        ch = c_half + i
        cw = (np.int64(words[ch >> 1]) >> (16 * (ch & 1))) & 0xFFFF
        wh = w_half + i
        w16 = (np.int64(words[wh >> 1]) >> (16 * (wh & 1))) & 0xFFFF
        delay = (cw >> it) & dmask
        k = k0 + ((cw >> ib) & tmask)
        shift = lif_p[c, LIF_SHE] if ((cw >> ib) & tmask) == 0 else lif_p[c, LIF_SHI]
        post = post0 + (cw & imask)
        pd = delay if backprop else 0
        begin = last_pre - pd if last_pre >= pd else 0
        end = t - pd if t >= pd else 0
        w = _i32(w16 << shift)
        # the chip's history as it stands in step t: the last 15 events up to t
        n = st.post_count[post]
        hi = n - 1
        while hi >= 0 and st.post_time[post, hi % POST_SLOTS] > t:
            hi -= 1
        lo = max(0, hi - (CHIP_POST_EVENTS - 1))
        j = hi
        while j >= lo and st.post_time[post, j % POST_SLOTS] > begin:
            j -= 1
        valid = j >= lo
        prev_time = st.post_time[post, j % POST_SLOTS] if valid else 0
        prev_trace = st.post_trace[post, j % POST_SLOTS] if valid else 0
        for e in range(j + 1, hi + 1):
            et = st.post_time[post, e % POST_SLOTS]
            if et > end:
                break
            since = (et + pd - last_pre) & M32
            if since > 0:
                amount = _mul16(last_trace, _decay(lut, lp_off, lp_size, lp_shift, since))
                w = _apply(rule, w, lim, k, amount, True)
            prev_time = et
            prev_trace = st.post_trace[post, e % POST_SLOTS]
            valid = True
        if valid:
            amount = _mul16(
                prev_trace, _decay(lut, lm_off, lm_size, lm_shift, t - (prev_time + pd))
            )
            w = _apply(rule, w, lim, k, amount, False)
        # weight_t of the s16.15 weight: the shift truncates towards zero
        w16 = ((w >> shift) if w >= 0 else -((-w) >> shift)) & 0xFFFF
        idx = base + ((cw + (t << it)) & rmask)
        total = np.int64(ring[idx]) + w16
        if total > 0xFFFF:
            total = 0xFFFF
            st.sat[c] += 1
        ring[idx] = total
        old = np.int64(words[wh >> 1])
        sh = 16 * (wh & 1)
        words[wh >> 1] = np.uint32((old & ~(0xFFFF << sh) & M32) | (w16 << sh))


@numba.njit(cache=True, inline="always")
def _deliver(
    lo, hi, count, t, f_kind, f_core, f_a, f_b, syn, ring, lif_p, sat, de_p, de_counter, de_lost, st
):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # A packet with payload k is k spikes, each walking the row in turn (spec 3.2).
    for j in range(lo, hi):
        c = f_core[j]
        if f_kind[j] == FAN_ROW:
            base = lif_p[c, LIF_RB]
            mask = lif_p[c, LIF_RM]
            tshift = np.uint32((t << lif_p[c, LIF_IT]) & M32)
            start = f_a[j]
            length = f_b[j]
            if length == 1:
                # also exact for a single spike: one-to-one payloads of any count take this
                # path without a branch on the count
                word = syn[start]
                idx = base + ((word + tshift) & mask)
                _add_payload(ring, sat, c, idx, np.int64(word >> np.uint32(16)), count)
            else:
                for _ in range(count):
                    for k in range(start, start + length):
                        word = syn[k]
                        idx = base + ((word + tshift) & mask)
                        total = np.int64(ring[idx]) + np.int64(word >> np.uint32(16))
                        if total > 0xFFFF:
                            total = 0xFFFF
                            sat[c] += 1
                        ring[idx] = total
        elif f_kind[j] == FAN_PLASTIC:
            # st is None on a network without plastic cores: the branch is compiled out
            if st is not None:
                for _ in range(count):
                    _plastic_row(st, c, f_a[j], t, ring, lif_p)
        else:
            slot = t & (de_p[c, DE_SLOTS] - 1)
            idx = de_p[c, DE_CB] + slot * de_p[c, DE_NN] + f_a[j]
            total = np.int64(de_counter[idx]) + count
            if total > 255:
                de_lost[c] += total - 255
                total = 255
            de_counter[idx] = total


@numba.njit(cache=True)
def _deliver_packets(
    lo,
    hi,
    row,
    t,
    nvar,
    var,
    em_j,
    em_k,
    g_ptr,
    f_kind,
    f_core,
    f_a,
    f_b,
    syn,
    ring,
    lif_p,
    sat,
    de_p,
    de_counter,
    de_lost,
    st,
):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Deliver one emitting core's packets ``lo:hi`` of a step, (neuron, payload) pairs, in order.

    ``row`` is the fan-out row of the core's first key. A function of its own, so that the
    compiler keeps this loop's values in registers. It takes the arrays themselves, not the
    named tuples: it runs once per emitting core, group and step, and there the tuples'
    fields cost more to pass than the work (measured); it takes offsets, not views, because a
    view made on a thread updates its array's shared reference count.
    """
    for j in range(lo, hi):
        e = row + em_j[j] * nvar + var
        _deliver(
            g_ptr[e],
            g_ptr[e + 1],
            em_k[j],
            t,
            f_kind,
            f_core,
            f_a,
            f_b,
            syn,
            ring,
            lif_p,
            sat,
            de_p,
            de_counter,
            de_lost,
            st,
        )


@numba.njit(cache=True)
def _deliver_direct(lo, hi, row, t, nvar, var, c, em_j, em_k, g_ptr, f_a, syn, ring, lif_p, sat):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """:func:`_deliver_packets` for a core whose keys each reach neuron core c through one
    one-synapse row or none: the same additions in the same order, with the core's constants
    hoisted.
    """
    base = lif_p[c, LIF_RB]
    mask = lif_p[c, LIF_RM]
    tshift = np.uint32((t << lif_p[c, LIF_IT]) & M32)
    for j in range(lo, hi):
        e = row + em_j[j] * nvar + var
        entry = g_ptr[e]
        if g_ptr[e + 1] == entry:
            continue
        word = syn[f_a[entry]]
        idx = base + ((word + tshift) & mask)
        _add_payload(ring, sat, c, idx, np.int64(word >> np.uint32(16)), em_k[j])


@numba.njit(cache=True, inline="always")
def _lif_fire(vm, r, current, r_m, v_rest, exp_tc, v_thresh, v_reset, t_refract):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The LIF step of one neuron driven by ``current`` (spec 3.7): the closed-form membrane
    update, or the refractory hold (the update of a refractory neuron is computed and
    discarded: no branch in the loop), the threshold (>=), the reset.

    Returns:
        The new V, the new refractory timer and whether the neuron fired.
    """
    alpha = _mul_accum(current, r_m) + v_rest
    free = alpha - _mul_accum(exp_tc, alpha - vm)
    active = r <= 0
    vm = free if active else vm
    r = r if active else r - 1
    fired = vm >= v_thresh
    return (v_reset if fired else vm), (t_refract if fired else r), fired


@numba.njit(cache=True)
def _lif_update(nb, hi, lif, is_cond):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Update neurons ``nb:hi``: input current, closed-form LIF, threshold, synapse decay.

    A conductance core (``is_cond``) turns its synaptic values into currents as 7.4.1's
    ``input_type_conductance.h`` does, in s16.15 with truncating multiplies:
    ``g = isyn >> 10``, ``I = g_e * (E_e - V) - (-g_i) * (E_i - V) + I_offset``.
    """
    v_ = lif.v[nb:hi]
    ref_ = lif.refract_timer[nb:hi]
    ie_ = lif.isyn_exc[nb:hi]
    ii_ = lif.isyn_inh[nb:hi]
    i_off_ = lif.i_offset[nb:hi]
    r_m_ = lif.r_membrane[nb:hi]
    v_rest_ = lif.v_rest[nb:hi]
    exp_tc_ = lif.exp_tc[nb:hi]
    v_thr_ = lif.v_thresh[nb:hi]
    v_reset_ = lif.v_reset[nb:hi]
    t_ref_ = lif.t_refract[nb:hi]
    ed_ = lif.exc_decay[nb:hi]
    idc_ = lif.inh_decay[nb:hi]
    spk_ = lif.spk[nb:hi]
    ee_ = lif.e_rev_e[nb:hi]
    ei_ = lif.e_rev_i[nb:hi]
    for n in range(hi - nb):
        vm = np.int64(v_[n])
        if is_cond:
            g_e = np.int64(ie_[n]) >> COND_SHIFT
            g_i = np.int64(ii_[n]) >> COND_SHIFT
            exc = _mul_accum(g_e, np.int64(ee_[n]) - vm)
            inh = _mul_accum(-g_i, np.int64(ei_[n]) - vm)
            current = exc - inh + np.int64(i_off_[n])
        else:
            current = np.int64(ie_[n]) - np.int64(ii_[n]) + np.int64(i_off_[n])
        v_[n], ref_[n], spk_[n] = _lif_fire(
            vm,
            np.int64(ref_[n]),
            current,
            np.int64(r_m_[n]),
            np.int64(v_rest_[n]),
            np.int64(exp_tc_[n]),
            np.int64(v_thr_[n]),
            np.int64(v_reset_[n]),
            np.int64(t_ref_[n]),
        )
        ie_[n] = (np.int64(ie_[n]) * np.int64(ed_[n])) >> 32
        ii_[n] = (np.int64(ii_[n]) * np.int64(idc_[n])) >> 32


@numba.njit(cache=True)
def _lif_delta_update(nb, hi, lif):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Update IF_curr_delta neurons ``nb:hi``: each summed input, times 1 / h (7.4.1's
    ``input_type_delta.h``), is the current of this step only; then the inputs are zeroed."""
    v_ = lif.v[nb:hi]
    ref_ = lif.refract_timer[nb:hi]
    ie_ = lif.isyn_exc[nb:hi]
    ii_ = lif.isyn_inh[nb:hi]
    scale_ = lif.input_scale[nb:hi]
    spk_ = lif.spk[nb:hi]
    for n in range(hi - nb):
        g = nb + n
        scale = np.int64(scale_[n])
        current = (
            _mul_accum(np.int64(ie_[n]), scale)
            - _mul_accum(np.int64(ii_[n]), scale)
            + np.int64(lif.i_offset[g])
        )
        v_[n], ref_[n], spk_[n] = _lif_fire(
            np.int64(v_[n]),
            np.int64(ref_[n]),
            current,
            np.int64(lif.r_membrane[g]),
            np.int64(lif.v_rest[g]),
            np.int64(lif.exp_tc[g]),
            np.int64(lif.v_thresh[g]),
            np.int64(lif.v_reset[g]),
            np.int64(lif.t_refract[g]),
        )
        ie_[n] = 0
        ii_[n] = 0


@numba.njit(cache=True)
def _alpha_transfer(nb, hi, lif, ring_e, ring_i, she, shi):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Consume IF_curr_alpha neurons' ring-buffer slots as 7.4.1's ``add_input_alpha`` does.

    For an input x > 0 (s16.15): q = x; E = E d + 1; L = (L + x k) (1 - 1 / E), with
    truncating multiplies and ``kdivk``.
    """
    for n in range(hi - nb):
        g = nb + n
        val = np.int64(ring_e[n])
        ring_e[n] = 0
        if val > 0:
            x = val << she
            e = ((np.int64(lif.exc_exp[g]) * np.int64(lif.exc_decay[g])) >> 32) + ONE
            tmp = ONE - ((ONE << 15) // e)
            lif.exc_q[g] = x
            lif.exc_exp[g] = e
            lif.exc_lin[g] = _mul_accum(
                np.int64(lif.exc_lin[g]) + _mul_accum(x, np.int64(lif.exc_k[g])), tmp
            )
        val = np.int64(ring_i[n])
        ring_i[n] = 0
        if val > 0:
            x = val << shi
            e = ((np.int64(lif.inh_exp[g]) * np.int64(lif.inh_decay[g])) >> 32) + ONE
            tmp = ONE - ((ONE << 15) // e)
            lif.inh_q[g] = x
            lif.inh_exp[g] = e
            lif.inh_lin[g] = _mul_accum(
                np.int64(lif.inh_lin[g]) + _mul_accum(x, np.int64(lif.inh_k[g])), tmp
            )


@numba.njit(cache=True)
def _alpha_values(lin, exp, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """An alpha synapse's value, L x E (truncating), for every neuron of a core."""
    for n in range(lin.size):
        out[n] = _mul_accum(np.int64(lin[n]), np.int64(exp[n]))


@numba.njit(cache=True)
def _lif_alpha_update(nb, hi, lif):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Update IF_curr_alpha neurons ``nb:hi``: current L x E per synapse type, the LIF step,
    then the alpha shaping L += q k, E *= d (7.4.1's ``alpha_shaping``)."""
    v_ = lif.v[nb:hi]
    ref_ = lif.refract_timer[nb:hi]
    spk_ = lif.spk[nb:hi]
    for n in range(hi - nb):
        g = nb + n
        exc = _mul_accum(np.int64(lif.exc_lin[g]), np.int64(lif.exc_exp[g]))
        inh = _mul_accum(np.int64(lif.inh_lin[g]), np.int64(lif.inh_exp[g]))
        v_[n], ref_[n], spk_[n] = _lif_fire(
            np.int64(v_[n]),
            np.int64(ref_[n]),
            exc - inh + np.int64(lif.i_offset[g]),
            np.int64(lif.r_membrane[g]),
            np.int64(lif.v_rest[g]),
            np.int64(lif.exp_tc[g]),
            np.int64(lif.v_thresh[g]),
            np.int64(lif.v_reset[g]),
            np.int64(lif.t_refract[g]),
        )
        lif.exc_lin[g] = np.int64(lif.exc_lin[g]) + _mul_accum(
            np.int64(lif.exc_q[g]), np.int64(lif.exc_k[g])
        )
        lif.exc_exp[g] = (np.int64(lif.exc_exp[g]) * np.int64(lif.exc_decay[g])) >> 32
        lif.inh_lin[g] = np.int64(lif.inh_lin[g]) + _mul_accum(
            np.int64(lif.inh_q[g]), np.int64(lif.inh_k[g])
        )
        lif.inh_exp[g] = (np.int64(lif.inh_exp[g]) * np.int64(lif.inh_decay[g])) >> 32


@numba.njit(cache=True)
def _izh_update(nb, hi, lif, is_cond):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Update Izhikevich neurons ``nb:hi`` as 7.4.1's ``neuron_model_izh_impl.h`` does.

    One midpoint step of length h = ``this_h``, every multiply truncating (``x / 2`` is
    ``x * 0.5k``, a shift)::

        P = 140 + I - u;  A = P + (5 + M v) v;  eta = v + h A / 2
        beta = (h (b v - u)) a / 2
        v += h (P - beta + (5 + M eta) eta);  u += (a h) (-u - beta + b eta)

    then h = ``reset_h``; at v >= 30 mV: v = c, u += d, and the next h is 1.85 ``reset_h``.
    The input current is that of IF_curr_exp or, on a conductance core, IF_cond_exp's.
    """
    v_ = lif.v[nb:hi]
    u_ = lif.u[nb:hi]
    spk_ = lif.spk[nb:hi]
    five = np.int64(5 * ONE)
    for n in range(hi - nb):
        g = nb + n
        vm = np.int64(v_[n])
        um = np.int64(u_[n])
        if is_cond:
            g_e = np.int64(lif.isyn_exc[g]) >> COND_SHIFT
            g_i = np.int64(lif.isyn_inh[g]) >> COND_SHIFT
            exc = _mul_accum(g_e, np.int64(lif.e_rev_e[g]) - vm)
            inh = _mul_accum(-g_i, np.int64(lif.e_rev_i[g]) - vm)
        else:
            exc = np.int64(lif.isyn_exc[g])
            inh = np.int64(lif.isyn_inh[g])
        current = exc - inh + np.int64(lif.i_offset[g])
        h = np.int64(lif.this_h[g])
        a = np.int64(lif.a[g])
        b = np.int64(lif.b[g])
        pre = np.int64(140 * ONE) + current - um
        alpha = pre + _mul_accum(five + _mul_accum(np.int64(IZH_MAGIC), vm), vm)
        eta = vm + (_mul_accum(h, alpha) >> 1)
        beta = _mul_accum(_mul_accum(h, _mul_accum(b, vm) - um), a) >> 1
        v_new = vm + _mul_accum(
            h, pre - beta + _mul_accum(five + _mul_accum(np.int64(IZH_MAGIC), eta), eta)
        )
        u_new = um + _mul_accum(_mul_accum(a, h), -um - beta + _mul_accum(b, eta))
        reset_h = np.int64(lif.reset_h[g])
        fired = v_new >= lif.v_thresh[g]
        v_[n] = np.int64(lif.c[g]) if fired else v_new
        u_[n] = u_new + np.int64(lif.d[g]) if fired else u_new
        lif.this_h[g] = _mul_accum(reset_h, np.int64(IZH_TQ_OFFSET)) if fired else reset_h
        spk_[n] = fired
        lif.isyn_exc[g] = (np.int64(lif.isyn_exc[g]) * np.int64(lif.exc_decay[g])) >> 32
        lif.isyn_inh[g] = (np.int64(lif.isyn_inh[g]) * np.int64(lif.inh_decay[g])) >> 32


@numba.njit(cache=True)
def _lif_step(c, t, off, lif, rec, em_j, em_k, st):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """One step of neuron core c: consume the step's ring-buffer slots, record, update.

    The core's kind (``LIF_KIND``) picks its synapse transfer, the value recorded as gsyn and
    its neuron update; its input type (``LIF_INPUT``) how synaptic values become a current.
    Writes the neurons that fired to ``em_j[off:]`` and returns how many did; on a plastic
    core their spikes also join the post-synaptic histories, whatever the neuron model.
    """
    p = lif.table
    nb = p[c, LIF_NB]
    nn = p[c, LIF_NN]
    hi = nb + nn
    slot = (t & ((1 << p[c, LIF_DB]) - 1)) << (p[c, LIF_IB] + p[c, LIF_TB])
    base = p[c, LIF_RB] + slot
    tstep = 1 << p[c, LIF_IB]
    she = p[c, LIF_SHE]
    shi = p[c, LIF_SHI]
    # Views indexed by the loop counter alone: no negative-index fix-up per access, so the
    # loops compile to SIMD code.
    ring_e = lif.ring[base : base + nn]
    ring_i = lif.ring[base + tstep : base + tstep + nn]
    v_ = lif.v[nb:hi]
    ie_ = lif.isyn_exc[nb:hi]
    ii_ = lif.isyn_inh[nb:hi]
    kind = p[c, LIF_KIND]
    if kind == NEURON_LIF_ALPHA:
        _alpha_transfer(nb, hi, lif, ring_e, ring_i, she, shi)
    elif kind == NEURON_LIF_DELTA:
        for n in range(nn):
            ie_[n] = ie_[n] + (np.int64(ring_e[n]) << she)
            ring_e[n] = 0
            ii_[n] = ii_[n] + (np.int64(ring_i[n]) << shi)
            ring_i[n] = 0
    else:
        # an empty slot adds exactly zero, so every slot is consumed without a branch
        ei_ = lif.exc_init[nb:hi]
        iin_ = lif.inh_init[nb:hi]
        for n in range(nn):
            val = np.int64(ring_e[n])
            ring_e[n] = 0
            ie_[n] = ie_[n] + (((val << she) * np.int64(ei_[n])) >> 32)
            val = np.int64(ring_i[n])
            ring_i[n] = 0
            ii_[n] = ii_[n] + (((val << shi) * np.int64(iin_[n])) >> 32)
    is_cond = p[c, LIF_INPUT] == INPUT_CONDUCTANCE
    viv = p[c, LIF_VIV]
    if viv > 0 and t % viv == 0:
        row = p[c, LIF_VOFF] + (t // viv - p[c, LIF_VFIRST]) * nn
        rec.v[row : row + nn] = v_
    geiv = p[c, LIF_GEIV]
    if geiv > 0 and t % geiv == 0:
        row = p[c, LIF_GEOFF] + (t // geiv - p[c, LIF_GEFIRST]) * nn
        if kind == NEURON_LIF_ALPHA:
            _alpha_values(lif.exc_lin[nb:hi], lif.exc_exp[nb:hi], rec.gsyn_exc[row : row + nn])
        elif is_cond:
            rec.gsyn_exc[row : row + nn] = ie_ >> COND_SHIFT
        else:
            rec.gsyn_exc[row : row + nn] = ie_
    giiv = p[c, LIF_GIIV]
    if giiv > 0 and t % giiv == 0:
        row = p[c, LIF_GIOFF] + (t // giiv - p[c, LIF_GIFIRST]) * nn
        if kind == NEURON_LIF_ALPHA:
            _alpha_values(lif.inh_lin[nb:hi], lif.inh_exp[nb:hi], rec.gsyn_inh[row : row + nn])
        elif is_cond:
            rec.gsyn_inh[row : row + nn] = ii_ >> COND_SHIFT
        else:
            rec.gsyn_inh[row : row + nn] = ii_
    if kind == NEURON_LIF_EXP:
        if is_cond:
            _lif_update(nb, hi, lif, True)
        else:
            _lif_update(nb, hi, lif, False)
    elif kind == NEURON_LIF_DELTA:
        _lif_delta_update(nb, hi, lif)
    elif kind == NEURON_LIF_ALPHA:
        _lif_alpha_update(nb, hi, lif)
    elif is_cond:
        _izh_update(nb, hi, lif, True)
    else:
        _izh_update(nb, hi, lif, False)
    spk_ = lif.spk[nb:hi]
    m = 0
    for n in range(nn):
        if spk_[n]:
            em_j[off + m] = n
            em_k[off + m] = 1
            m += 1
    # nested, not "and": numba prunes a branch on "st is not None" alone
    if st is not None:  # noqa: SIM102
        if st.table[c, ST_PLASTIC]:
            post0 = st.table[c, ST_POST]
            for i in range(m):
                _add_post_event(st, c, post0 + em_j[off + i], t)
    return m


@numba.njit(cache=True, inline="always")
def _fast_scan(s0, s1, s2, s3, uniform_limit, eml_, em_j_, em_k_, nvar, packets_, spikes_sent_):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The fast regime for a step in which every source of the core is active.

    The same draws in the same order as the per-source loop of :func:`_poisson_step`, as
    one stream of uniforms: each multiplies the current source's product, and the one that
    takes it to ``exp(-lambda)`` or below ends that source's count. No branch depends on a
    draw, so the unpredictable end of each count costs no misprediction. The stream records
    only which draw ended each source (in ``em_k_[n]``); a second pass turns those into
    counts and packets. ``uniform_limit`` is every source's ``exp(-lambda)`` when they share
    one, else -1. Counts each packet and its spikes in ``packets_`` and ``spikes_sent_`` at
    the source's key (every ``nvar``-th entry). Returns the generator and the packet count.
    """
    one = np.uint64(M32)  # UFRACT_CONST(1.0): the largest u0.32
    nn = eml_.size
    p = one
    n = 0
    d = 0
    if uniform_limit >= 0:
        # one rate for the whole core: no load on the chain of draws, and as
        # (p * u) >> 32 <= limit is p * u <= (limit << 32) | 0xFFFFFFFF, the test of a draw
        # does not wait for the shift
        bound = (np.uint64(uniform_limit) << np.uint64(32)) | np.uint64(M32)
        while n < nn:
            s0, s1, s2, s3, u = _kiss(s0, s1, s2, s3)
            prod = p * u
            done = prod <= bound
            em_k_[n] = d
            n += np.int64(done)
            d += 1
            p = one if done else prod >> np.uint64(32)
    else:
        while n < nn:
            s0, s1, s2, s3, u = _kiss(s0, s1, s2, s3)
            p = (p * u) >> np.uint64(32)
            done = p <= np.uint64(eml_[n])
            em_k_[n] = d
            n += np.int64(done)
            d += 1
            p = one if done else p
    # packet m is written at or before source n, so the draw indices are read before overwritten
    m = 0
    last = -1
    for n in range(nn):
        end = em_k_[n]
        k = end - last - 1
        last = end
        em_j_[m] = n
        em_k_[m] = k
        m += np.int64(k > 0)
        packets_[n * nvar] += np.int64(k > 0)
        spikes_sent_[n * nvar] += k
    return s0, s1, s2, s3, m


@numba.njit(cache=True)
def _poisson_fast_step(c, off, po, em_j, em_k, emit, nvar, var, packets, spikes_sent):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """A step of Poisson core c in which every source is active in the fast regime.

    Writes (neuron, payload) of every packet like :func:`_poisson_step`, and also counts them
    (packets and spikes per key, as the caller does for other cores) when the core has keys
    (``emit`` >= 0). Returns the number of packets.
    """
    nb = po.table[c, PO_NB]
    hi = nb + po.table[c, PO_NN]
    e0 = max(emit, 0) * nvar + var
    scratch = emit < 0
    s0, s1, s2, s3, m = _fast_scan(
        po.state[c, 0],
        po.state[c, 1],
        po.state[c, 2],
        po.state[c, 3],
        po.table[c, PO_LIMIT],
        po.exp_minus_lambda[nb:hi],
        em_j[off:],
        em_k[off:],
        nvar,
        packets[e0:] if not scratch else np.zeros((hi - nb) * nvar, np.int64),
        spikes_sent[e0:] if not scratch else np.zeros((hi - nb) * nvar, np.int64),
    )
    po.state[c, 0] = s0
    po.state[c, 1] = s1
    po.state[c, 2] = s2
    po.state[c, 3] = s3
    return m


@numba.njit(cache=True)
def _poisson_step(c, t, off, po, em_j, em_k):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """One step of Poisson core c; writes (neuron, payload) of every packet, returns the count."""
    # the core's generator lives in registers for the whole step
    s0 = po.state[c, 0]
    s1 = po.state[c, 1]
    s2 = po.state[c, 2]
    s3 = po.state[c, 3]
    nb = po.table[c, PO_NB]
    nn = po.table[c, PO_NN]
    hi = nb + nn
    start_ = po.start_step[nb:hi]
    end_ = po.end_step[nb:hi]
    regime_ = po.regime[nb:hi]
    eml_ = po.exp_minus_lambda[nb:hi]
    m = 0
    for n in range(nn):
        if t < start_[n] or t >= end_[n]:
            continue
        regime = regime_[n]
        k = 0
        if regime == REGIME_FAST:
            # exp(-lambda) of 0 in 15 bits: no draws, no spikes (fast_spike_source_get_num_spikes)
            limit = np.uint64(eml_[n])
            if limit != 0:
                p = np.uint64(M32)
                while True:
                    s0, s1, s2, s3, u = _kiss(s0, s1, s2, s3)
                    p = (p * u) >> np.uint64(32)
                    if p <= limit:
                        break
                    k += 1
        elif regime == REGIME_SLOW:
            g = nb + n
            isi = po.isi_ticks[g]
            if isi != 0:
                tts = po.time_to_spike[g]
                while tts < ISI_SCALE:
                    k += 1
                    s0, s1, s2, s3, more = _time_to_spike(s0, s1, s2, s3, isi)
                    tts = (tts + more) & M32
                po.time_to_spike[g] = tts - ISI_SCALE
        elif regime == REGIME_FASTER:
            s0, s1, s2, s3, w = _kiss(s0, s1, s2, s3)
            u = (float(w) + 0.5) / 4294967296.0
            x = _ndtri(u) / 2.0 + po.sqrt_lambda[nb + n] / 32768.0
            k = math.floor(x * x + 0.5)
        if k > 0:
            em_j[off + m] = n
            em_k[off + m] = k
            m += 1
    po.state[c, 0] = s0
    po.state[c, 1] = s1
    po.state[c, 2] = s2
    po.state[c, 3] = s3
    return m


@numba.njit(cache=True)
def _delay_step(c, t, off, de, em_j, em_k):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """One step of delay-extension core c: each stage resends every non-zero counter."""
    nn = de.table[c, DE_NN]
    dps = de.table[c, DE_DPS]
    m = 0
    for d in range(de.table[c, DE_STAGES]):
        back = t - (d + 1) * dps
        if back < 0:
            continue
        b = de.table[c, DE_CB] + (back & (de.table[c, DE_SLOTS] - 1)) * nn
        for n in range(nn):
            count = de.counter[b + n]
            if count != 0:
                em_j[off + m] = d * nn + n
                em_k[off + m] = count
                m += 1
    return m


@numba.njit(cache=True, parallel=True)
def run_windows(t0, t1, window, nvar, emit, fan, lif, rec, ssa, po, de, st):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Advance every core from step t0 to t1, ``window`` steps at a time.

    No synapse or delay stage is shorter than ``window`` steps, so within a window the cores
    depend only on packets sent before it: each group of emitting cores advances the whole
    window on its own (phase A), then each group of receiving cores delivers the window's
    packets, step by step in the order the sequential chip model sends them (phase B). Which
    thread runs which group changes nothing in the results. Returns the step reached (early
    when the spike record would overflow).

    The named tuples' arrays are taken out here, before the parallel loops: their bodies use
    plain arrays only. ``st`` is None when no core is plastic: then this compiles without the
    plastic paths, and the calls per emitting core and group do not carry the plastic
    cores' arrays.
    """
    src, a_ptr, a_items, em_n, em_j, em_k = (
        emit.src,
        emit.a_ptr,
        emit.a_items,
        emit.em_n,
        emit.em_j,
        emit.em_k,
    )
    packets, spikes_sent = emit.packets, emit.spikes_sent
    reach, g_ptr, f_kind, f_core, f_a, f_b, syn = (
        fan.reach,
        fan.g_ptr,
        fan.kind,
        fan.core,
        fan.a,
        fan.b,
        fan.syn,
    )
    b_ptr, b_items = fan.b_ptr, fan.b_items
    lif_p, ring, sat = lif.table, lif.ring, lif.sat
    ssa_p, ssa_cursor, ssa_lo, ssa_hi, ssa_steps, ssa_neurons = (
        ssa.table,
        ssa.cursor,
        ssa.lo,
        ssa.hi,
        ssa.steps,
        ssa.neurons,
    )
    po_p = po.table
    de_p, de_counter, de_lost = de.table, de.counter, de.lost
    rec_t, rec_n, rec_count = rec.spike_t, rec.spike_n, rec.count
    n_groups = a_ptr.size - 1
    n_rows = packets.size
    n_src = src.shape[0]
    stride = em_j.size // window
    n_lif_neurons = lif.v.size
    t_start = t0
    while t_start < t1:
        n_win = min(window, t1 - t_start)
        if rec_count[0] + n_lif_neurons * n_win > rec_t.size:
            return t_start
        # phase A: every emitting core advances the window
        for grp in numba.prange(n_groups):
            for a in range(a_ptr[grp], a_ptr[grp + 1]):
                q = a_items[a]
                kind = src[q, SRC_KIND]
                x = src[q, SRC_INDEX]
                first = src[q, SRC_EMIT]
                for i in range(n_win):
                    t = t_start + i
                    var = t & (nvar - 1)
                    off = i * stride + src[q, SRC_SEG]
                    m = 0
                    counted = False
                    if kind == KIND_SSA:
                        ssa_lo[i, x] = ssa_cursor[x]
                        hi = ssa_p[x, SSA_HI]
                        cur = ssa_cursor[x]
                        while cur < hi and ssa_steps[cur] <= t:
                            if ssa_steps[cur] == t and first >= 0:
                                e = (first + ssa_neurons[cur]) * nvar + var
                                packets[e] += 1
                                spikes_sent[e] += 1
                            cur += 1
                        ssa_cursor[x] = cur
                        ssa_hi[i, x] = cur
                    elif kind == KIND_POISSON and po_p[x, PO_FAST_FROM] <= t < po_p[x, PO_FAST_TO]:
                        m = _poisson_fast_step(
                            x, off, po, em_j, em_k, first, nvar, var, packets, spikes_sent
                        )
                        counted = True
                    elif kind == KIND_POISSON:
                        m = _poisson_step(x, t, off, po, em_j, em_k)
                    elif kind == KIND_DELAY:
                        m = _delay_step(x, t, off, de, em_j, em_k)
                    else:
                        m = _lif_step(x, t, off, lif, rec, em_j, em_k, st)
                    em_n[i, q] = m
                    if first >= 0 and not counted:
                        for j in range(off, off + m):
                            e = (first + em_j[j]) * nvar + var
                            packets[e] += 1
                            spikes_sent[e] += em_k[j]
        # the spike record, in (step, core, neuron) order
        for i in range(n_win):
            for q in range(n_src):
                if src[q, SRC_KIND] != KIND_LIF:
                    continue
                x = src[q, SRC_INDEX]
                if not lif_p[x, LIF_REC]:
                    continue
                off = i * stride + src[q, SRC_SEG]
                for j in range(off, off + em_n[i, q]):
                    rec_t[rec_count[0]] = t_start + i
                    rec_n[rec_count[0]] = lif_p[x, LIF_NB] + em_j[j]
                    rec_count[0] += 1
        # phase B: every group of receiving cores takes the window's packets in order
        for grp in numba.prange(n_groups):
            row0 = grp * n_rows
            for i in range(n_win):
                t = t_start + i
                var = t & (nvar - 1)
                for b in range(b_ptr[grp], b_ptr[grp + 1]):
                    c = b_items[b]
                    slot = t & (de_p[c, DE_SLOTS] - 1)
                    cb = de_p[c, DE_CB] + slot * de_p[c, DE_NN]
                    for n in range(de_p[c, DE_NN]):
                        de_counter[cb + n] = 0
                for q in range(n_src):
                    first = src[q, SRC_EMIT]
                    how = reach[q, grp]
                    if first < 0 or how == REACH_NONE:
                        continue
                    if src[q, SRC_KIND] == KIND_SSA:
                        x = src[q, SRC_INDEX]
                        for cur in range(ssa_lo[i, x], ssa_hi[i, x]):
                            if ssa_steps[cur] == t:
                                e = row0 + (first + ssa_neurons[cur]) * nvar + var
                                _deliver(
                                    g_ptr[e],
                                    g_ptr[e + 1],
                                    1,
                                    t,
                                    f_kind,
                                    f_core,
                                    f_a,
                                    f_b,
                                    syn,
                                    ring,
                                    lif_p,
                                    sat,
                                    de_p,
                                    de_counter,
                                    de_lost,
                                    st,
                                )
                        continue
                    off = i * stride + src[q, SRC_SEG]
                    if how >= 0:
                        _deliver_direct(
                            off,
                            off + em_n[i, q],
                            row0 + first * nvar,
                            t,
                            nvar,
                            var,
                            how,
                            em_j,
                            em_k,
                            g_ptr,
                            f_a,
                            syn,
                            ring,
                            lif_p,
                            sat,
                        )
                        continue
                    _deliver_packets(
                        off,
                        off + em_n[i, q],
                        row0 + first * nvar,
                        t,
                        nvar,
                        var,
                        em_j,
                        em_k,
                        g_ptr,
                        f_kind,
                        f_core,
                        f_a,
                        f_b,
                        syn,
                        ring,
                        lif_p,
                        sat,
                        de_p,
                        de_counter,
                        de_lost,
                        st,
                    )
        t_start += n_win
    return t1
