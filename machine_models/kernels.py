"""Compiled per-timestep kernels of the executor: all cores of a job advanced in one call.

The executor flattens every core's state into contiguous arrays (see ``executor``); these
functions only do arithmetic on them, exactly as the chip does: s16.15 multiplies that round
to nearest, u0.32 decays that truncate, 16-bit ring buffers that saturate, a xorshift128
generator per Poisson core. Compiled with ``cache=True`` so later processes skip compilation.
"""

# The kernels are typed by numba when they compile (from the arrays the executor passes), not by
# annotations; mypy cannot follow numba's dispatchers, so it does not check this module.
# mypy: ignore-errors

from __future__ import annotations

import math

import numba
import numpy as np

M32 = 0xFFFFFFFF


@numba.njit(cache=True, inline="always")
def _mul_round(a: int, b: int) -> int:  # pragma: no cover - compiled
    return (a * b + (1 << 14)) >> 15


@numba.njit(cache=True, inline="always")
def _xs_next(s0, s1, s2, s3):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """One xorshift128 step on a state held in four u64 locals; the new output is the last."""
    t = (s0 ^ ((s0 << np.uint64(11)) & np.uint64(M32))) & np.uint64(M32)
    w = (s3 ^ (s3 >> np.uint64(19)) ^ (t ^ (t >> np.uint64(8)))) & np.uint64(M32)
    return s1, s2, s3, w


@numba.njit(cache=True)
def xorshift128(state, i):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Advance core i's generator (4 words in ``state[i]``) and return a u32."""
    s0, s1, s2, s3 = _xs_next(state[i, 0], state[i, 1], state[i, 2], state[i, 3])
    state[i, 0] = s0
    state[i, 1] = s1
    state[i, 2] = s2
    state[i, 3] = s3
    return s3


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


@numba.njit(cache=True, inline="always")
def _isi_from_uniform(word, isi_raw):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    u = (float(word) + 0.5) / 4294967296.0
    return int(-math.log(u) * isi_raw)


@numba.njit(cache=True)
def draw_isi(state, i, isi_raw):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """An exponential inter-spike interval in s16.15 ticks for Poisson core i."""
    return _isi_from_uniform(xorshift128(state, i), isi_raw)


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


@numba.njit(cache=True, inline="always")
def _deliver(
    e,
    count,
    t,
    fo_ptr,
    d_kind,
    d_core,
    d_a,
    d_b,
    syn,
    ring,
    lif_ring_base,
    lif_ring_mask,
    lif_shift_bits,
    sat,
    de_counter_base,
    de_slots,
    de_nn,
    de_lost,
    de_counter,
):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # A packet with payload k is k spikes, each walking the row in turn (spec 3.2). For a
    # one-synapse row the k additions to one slot have a closed form: the first
    # (0xFFFF - slot) // w fit, every later one saturates and is counted.
    for j in range(fo_ptr[e], fo_ptr[e + 1]):
        c = d_core[j]
        if d_kind[j] == 0:
            base = lif_ring_base[c]
            mask = lif_ring_mask[c]
            tshift = np.uint32((t << lif_shift_bits[c]) & M32)
            start = d_a[j]
            length = d_b[j]
            if count == 1:
                for k in range(start, start + length):
                    word = syn[k]
                    idx = base + ((word + tshift) & mask)
                    total = np.int64(ring[idx]) + np.int64(word >> np.uint32(16))
                    if total > 0xFFFF:
                        total = 0xFFFF
                        sat[c] += 1
                    ring[idx] = total
            elif length == 1:
                word = syn[start]
                idx = base + ((word + tshift) & mask)
                weight = np.int64(word >> np.uint32(16))
                if weight != 0:
                    current = np.int64(ring[idx])
                    fit = (0xFFFF - current) // weight
                    if count <= fit:
                        ring[idx] = current + count * weight
                    else:
                        ring[idx] = 0xFFFF
                        sat[c] += count - fit
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
        else:
            slot = t & (de_slots[c] - 1)
            idx = de_counter_base[c] + slot * de_nn[c] + d_a[j]
            total = np.int64(de_counter[idx]) + count
            if total > 255:
                de_lost[c] += total - 255
                total = 255
            de_counter[idx] = total


@numba.njit(cache=True)
def run_steps(
    t0,
    t1,
    nvar,
    # emitters and fan-out
    fo_ptr,
    d_kind,
    d_core,
    d_a,
    d_b,
    syn,
    packets,
    spikes_sent,
    # LIF cores
    lif_nb,
    lif_nn,
    lif_ib,
    lif_tb,
    lif_db,
    lif_it,
    lif_she,
    lif_shi,
    lif_ring_base,
    lif_ring_mask,
    lif_emit,
    lif_rec,
    lif_viv,
    lif_voff,
    lif_vfirst,
    lif_geiv,
    lif_geoff,
    lif_gefirst,
    lif_giiv,
    lif_gioff,
    lif_gifirst,
    sat,
    ring,
    v,
    v_rest,
    r_m,
    exp_tc,
    i_off,
    v_reset,
    v_thr,
    t_ref,
    ref,
    ie,
    ii,
    ed,
    ei,
    idc,
    iin,
    rec_t,
    rec_n,
    rec_count,
    v_buf,
    ge_buf,
    gi_buf,
    # spike source arrays
    ssa_emit,
    ssa_cursor,
    ssa_end,
    ssa_steps,
    ssa_neurons,
    # poisson
    po_emit,
    po_nb,
    po_nn,
    po_state,
    po_start,
    po_end,
    po_regime,
    po_eml,
    po_sqrt,
    po_isi,
    po_tts,
    # delay extensions
    de_emit,
    de_nn,
    de_stages,
    de_dps,
    de_slots,
    de_counter_base,
    de_flag_base,
    de_flags,
    de_counter,
    de_lost,
):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Advance every core from step t0 to t1; returns the step reached (early if rec full)."""
    n_lif_neurons = v.size
    for t in range(t0, t1):
        if rec_count[0] + n_lif_neurons > rec_t.size:
            return t
        var = t & (nvar - 1)
        # phase 1: consume this step's ring-buffer slots; clear delay-extension slots
        for c in range(lif_nb.size):
            nb = lif_nb[c]
            nn = lif_nn[c]
            slot = (t & ((1 << lif_db[c]) - 1)) << (lif_ib[c] + lif_tb[c])
            base = lif_ring_base[c] + slot
            tstep = 1 << lif_ib[c]
            for n in range(nn):
                val = ring[base + n]
                if val != 0:
                    ring[base + n] = 0
                    inp = np.int64(val) << lif_she[c]
                    ie[nb + n] = ie[nb + n] + ((inp * np.int64(ei[nb + n])) >> 32)
                val = ring[base + tstep + n]
                if val != 0:
                    ring[base + tstep + n] = 0
                    inp = np.int64(val) << lif_shi[c]
                    ii[nb + n] = ii[nb + n] + ((inp * np.int64(iin[nb + n])) >> 32)
        for c in range(de_nn.size):
            slot = t & (de_slots[c] - 1)
            b = de_counter_base[c] + slot * de_nn[c]
            for n in range(de_nn[c]):
                de_counter[b + n] = 0
        # phase 2: sources and delay extensions send, neurons update and send
        for c in range(ssa_emit.size):
            while ssa_cursor[c] < ssa_end[c] and ssa_steps[ssa_cursor[c]] <= t:
                if ssa_steps[ssa_cursor[c]] == t:
                    e = (ssa_emit[c] + ssa_neurons[ssa_cursor[c]]) * nvar + var
                    packets[e] += 1
                    spikes_sent[e] += 1
                    _deliver(
                        e,
                        1,
                        t,
                        fo_ptr,
                        d_kind,
                        d_core,
                        d_a,
                        d_b,
                        syn,
                        ring,
                        lif_ring_base,
                        lif_ring_mask,
                        lif_it,
                        sat,
                        de_counter_base,
                        de_slots,
                        de_nn,
                        de_lost,
                        de_counter,
                    )
                ssa_cursor[c] += 1
        for c in range(po_emit.size):
            # the core's generator lives in registers for the whole step
            s0 = po_state[c, 0]
            s1 = po_state[c, 1]
            s2 = po_state[c, 2]
            s3 = po_state[c, 3]
            for n in range(po_nn[c]):
                g = po_nb[c] + n
                if t < po_start[g] or t >= po_end[g]:
                    continue
                regime = po_regime[g]
                k = 0
                if regime == 1:
                    p = np.uint64(1) << np.uint64(32)
                    limit = np.uint64(po_eml[g])
                    while True:
                        s0, s1, s2, s3 = _xs_next(s0, s1, s2, s3)
                        p = (p * s3) >> np.uint64(32)
                        if p <= limit:
                            break
                        k += 1
                elif regime == 0:
                    tts = po_tts[g] - 32768
                    while tts <= 0:
                        k += 1
                        s0, s1, s2, s3 = _xs_next(s0, s1, s2, s3)
                        tts += _isi_from_uniform(s3, po_isi[g])
                    po_tts[g] = tts
                elif regime == 2:
                    s0, s1, s2, s3 = _xs_next(s0, s1, s2, s3)
                    u = (float(s3) + 0.5) / 4294967296.0
                    x = _ndtri(u) / 2.0 + po_sqrt[g] / 32768.0
                    k = math.floor(x * x + 0.5)
                if k > 0:
                    e = (po_emit[c] + n) * nvar + var
                    packets[e] += 1
                    spikes_sent[e] += k
                    _deliver(
                        e,
                        k,
                        t,
                        fo_ptr,
                        d_kind,
                        d_core,
                        d_a,
                        d_b,
                        syn,
                        ring,
                        lif_ring_base,
                        lif_ring_mask,
                        lif_it,
                        sat,
                        de_counter_base,
                        de_slots,
                        de_nn,
                        de_lost,
                        de_counter,
                    )
            po_state[c, 0] = s0
            po_state[c, 1] = s1
            po_state[c, 2] = s2
            po_state[c, 3] = s3
        for c in range(de_nn.size):
            nn = de_nn[c]
            for d in range(de_stages[c]):
                back = t - (d + 1) * de_dps[c]
                if back < 0:
                    continue
                b = de_counter_base[c] + (back & (de_slots[c] - 1)) * nn
                fb = de_flag_base[c] + d * nn
                for n in range(nn):
                    count = de_counter[b + n]
                    if count != 0 and de_flags[fb + n]:
                        e = (de_emit[c] + d * nn + n) * nvar + var
                        packets[e] += 1
                        spikes_sent[e] += count
                        _deliver(
                            e,
                            count,
                            t,
                            fo_ptr,
                            d_kind,
                            d_core,
                            d_a,
                            d_b,
                            syn,
                            ring,
                            lif_ring_base,
                            lif_ring_mask,
                            lif_it,
                            sat,
                            de_counter_base,
                            de_slots,
                            de_nn,
                            de_lost,
                            de_counter,
                        )
        for c in range(lif_nb.size):
            nb = lif_nb[c]
            nn = lif_nn[c]
            if lif_viv[c] > 0 and t % lif_viv[c] == 0:
                row = lif_voff[c] + (t // lif_viv[c] - lif_vfirst[c]) * nn
                for n in range(nn):
                    v_buf[row + n] = v[nb + n]
            if lif_geiv[c] > 0 and t % lif_geiv[c] == 0:
                row = lif_geoff[c] + (t // lif_geiv[c] - lif_gefirst[c]) * nn
                for n in range(nn):
                    ge_buf[row + n] = ie[nb + n]
            if lif_giiv[c] > 0 and t % lif_giiv[c] == 0:
                row = lif_gioff[c] + (t // lif_giiv[c] - lif_gifirst[c]) * nn
                for n in range(nn):
                    gi_buf[row + n] = ii[nb + n]
            for n in range(nn):
                g = nb + n
                vm = np.int64(v[g])
                if ref[g] <= 0:
                    current = np.int64(ie[g]) - np.int64(ii[g]) + np.int64(i_off[g])
                    alpha = _mul_round(current, np.int64(r_m[g])) + np.int64(v_rest[g])
                    vm = alpha - _mul_round(np.int64(exp_tc[g]), alpha - vm)
                else:
                    ref[g] -= 1
                if vm >= v_thr[g]:
                    vm = np.int64(v_reset[g])
                    ref[g] = t_ref[g]
                    if lif_rec[c]:
                        rec_t[rec_count[0]] = t
                        rec_n[rec_count[0]] = g
                        rec_count[0] += 1
                    e = (lif_emit[c] + n) * nvar + var
                    packets[e] += 1
                    spikes_sent[e] += 1
                    _deliver(
                        e,
                        1,
                        t,
                        fo_ptr,
                        d_kind,
                        d_core,
                        d_a,
                        d_b,
                        syn,
                        ring,
                        lif_ring_base,
                        lif_ring_mask,
                        lif_it,
                        sat,
                        de_counter_base,
                        de_slots,
                        de_nn,
                        de_lost,
                        de_counter,
                    )
                v[g] = vm
                ie[g] = (np.int64(ie[g]) * np.int64(ed[g])) >> 32
                ii[g] = (np.int64(ii[g]) * np.int64(idc[g])) >> 32
    return t1
