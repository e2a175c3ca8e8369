"""The Izhikevich neuron core applications (IZK_curr_exp, IZK_cond_exp): their neuron record.

They share every region of the LIF cores (:mod:`machine_models.lif`) but the neuron record:
``REGION_DATA`` (2) holds ``n_neurons`` then one :data:`IZH_DTYPE` record per neuron, the
neuron model of 7.4.1's ``neuron_model_izh_impl.h`` followed by the same exponential
synapses as IF_curr_exp. IZK_cond_exp adds the reversal potentials of region 3.

Each step the core integrates Izhikevich's two equations,
``dv/dt = 0.04 v**2 + 5 v + 140 - u + I`` and ``du/dt = a (b v - u)``, with one explicit
midpoint (RK2) step of length ``this_h`` in s16.15, every multiply a truncating accum one and
0.04 held as 0.040008544921875 (the core's ``MAGIC_MULTIPLIER``). A spike (v >= 30 mV,
sPyNNaker's fixed threshold) resets v to c, adds d to u and lengthens the next step to
1.85 h (``SIMPLE_TQ_OFFSET``, stored truncated: 60620 / 32768), then h again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from machine_models import fixedpoint as fx
from machine_models.lif import fill_exp_synapses, per_neuron
from machine_models.regions import to_s1615

__all__ = [
    "IZH_DTYPE",
    "IZH_THRESHOLD_MV",
    "IzhParams",
    "encode_izh_params",
]

IZH_THRESHOLD_MV = 30.0
"""sPyNNaker's Izhikevich cells spike at v >= 30 mV (a static threshold)."""

IZH_DTYPE = np.dtype(
    [
        ("a", "<i4"),
        ("b", "<i4"),
        ("c", "<i4"),
        ("d", "<i4"),
        ("v", "<i4"),
        ("u", "<i4"),
        ("i_offset", "<i4"),
        ("this_h", "<i4"),
        ("reset_h", "<i4"),
        ("v_thresh", "<i4"),
        ("isyn_exc", "<i4"),
        ("isyn_inh", "<i4"),
        ("exc_decay", "<u4"),
        ("exc_init", "<u4"),
        ("inh_decay", "<u4"),
        ("inh_init", "<u4"),
    ]
)
"""One Izhikevich neuron's record (64 bytes): a, b, c, d, v, u, I_offset, the length of the
next step and of every other step (ms), the threshold (all s16.15), then the exponential
synapses as in :data:`machine_models.lif.NEURON_DTYPE`."""


@dataclass(frozen=True)
class IzhParams:
    """Parameters of the Izhikevich neurons of one core (arrays or scalars; ms, mV, nA).

    Defaults are sPyNNaker 7.4.1's (``izk_curr_exp_base.py``), which are PyNN's.
    """

    n_neurons: int
    a: npt.ArrayLike = 0.02
    b: npt.ArrayLike = 0.2
    c: npt.ArrayLike = -65.0
    d: npt.ArrayLike = 2.0
    v_init: npt.ArrayLike = -70.0
    u_init: npt.ArrayLike = -14.0
    i_offset: npt.ArrayLike = 0.0
    tau_syn_e: npt.ArrayLike = 5.0
    tau_syn_i: npt.ArrayLike = 5.0


def encode_izh_params(params: IzhParams, timestep_us: int) -> bytes:
    """Encode an Izhikevich core's neuron region, with the words the core derives at load.

    The host writes h as s16.15 for both ``this_h`` (7.4.1's ``next_h``) and the time step;
    the core's ``reset_h`` is ``kdivui(h, 1)``, h itself. The synapses' decays and init
    factors are those of :func:`machine_models.lif.encode_neuron_params`.
    """
    n = params.n_neurons
    h = int(to_s1615(timestep_us / 1000.0))
    rec = np.zeros(n, dtype=IZH_DTYPE)
    for name, value in (
        ("a", params.a),
        ("b", params.b),
        ("c", params.c),
        ("d", params.d),
        ("v", params.v_init),
        ("u", params.u_init),
        ("i_offset", params.i_offset),
    ):
        rec[name] = to_s1615(per_neuron(value, n))
    rec["this_h"] = h
    rec["reset_h"] = fx.kdivui(h, 1)
    rec["v_thresh"] = to_s1615(IZH_THRESHOLD_MV)
    fill_exp_synapses(rec, params.tau_syn_e, params.tau_syn_i, h)
    return struct.pack("<I", n) + rec.tobytes()
