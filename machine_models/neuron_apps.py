"""What each neuron core application is made of: its records, neuron model and input type.

sPyNNaker builds every neuron application from a neuron model, a synapse type, an input type
and a threshold; the model names each combination it runs by its application id::

    application     neuron, synapses   input         record (region 2)    region 3
    IF_curr_exp     LIF, exponential   current       lif.NEURON_DTYPE     -
    IF_cond_exp     LIF, exponential   conductance   lif.NEURON_DTYPE     lif.INPUT_DTYPE
    IF_curr_delta   LIF, delta         delta         lif.DELTA_DTYPE      lif.DELTA_INPUT_DTYPE
    IF_curr_alpha   LIF, alpha         current       lif.ALPHA_DTYPE      -
    IZK_curr_exp    Izhikevich, exp    current       izhikevich.IZH_DTYPE -
    IZK_cond_exp    Izhikevich, exp    conductance   izhikevich.IZH_DTYPE lif.INPUT_DTYPE
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from machine_models import izhikevich, lif
from machine_models.image import AppId

__all__ = [
    "INPUT_CONDUCTANCE",
    "INPUT_CURRENT",
    "INPUT_DELTA",
    "NEURON_APPS",
    "NEURON_IZH_EXP",
    "NEURON_LIF_ALPHA",
    "NEURON_LIF_DELTA",
    "NEURON_LIF_EXP",
    "NeuronApp",
]

NEURON_LIF_EXP, NEURON_LIF_DELTA, NEURON_LIF_ALPHA, NEURON_IZH_EXP = range(4)
"""Neuron model and synapse type of a core (the kernels' ``LIF_KIND`` column)."""
INPUT_CURRENT, INPUT_CONDUCTANCE, INPUT_DELTA = range(3)
"""Input type of a core: synaptic values are currents (nA), conductances (uS, stored x 1024)
or delta inputs (nA over one step, scaled by 1 / h)."""


class NeuronApp(NamedTuple):
    """One neuron application: its neuron record, its input-type record (region 3, if any),
    its neuron kind and its input type."""

    record: np.dtype[np.void]
    input_record: np.dtype[np.void] | None
    kind: int
    input_kind: int

    @property
    def dtcm_bytes_per_neuron(self) -> int:
        """DTCM a neuron's records take."""
        extra = self.input_record.itemsize if self.input_record is not None else 0
        return self.record.itemsize + extra


NEURON_APPS: dict[AppId, NeuronApp] = {
    AppId.IF_CURR_EXP: NeuronApp(lif.NEURON_DTYPE, None, NEURON_LIF_EXP, INPUT_CURRENT),
    AppId.IF_COND_EXP: NeuronApp(
        lif.NEURON_DTYPE, lif.INPUT_DTYPE, NEURON_LIF_EXP, INPUT_CONDUCTANCE
    ),
    AppId.IF_CURR_DELTA: NeuronApp(
        lif.DELTA_DTYPE, lif.DELTA_INPUT_DTYPE, NEURON_LIF_DELTA, INPUT_DELTA
    ),
    AppId.IF_CURR_ALPHA: NeuronApp(lif.ALPHA_DTYPE, None, NEURON_LIF_ALPHA, INPUT_CURRENT),
    AppId.IZK_CURR_EXP: NeuronApp(izhikevich.IZH_DTYPE, None, NEURON_IZH_EXP, INPUT_CURRENT),
    AppId.IZK_COND_EXP: NeuronApp(
        izhikevich.IZH_DTYPE, lif.INPUT_DTYPE, NEURON_IZH_EXP, INPUT_CONDUCTANCE
    ),
}
"""Every neuron application the model runs."""
