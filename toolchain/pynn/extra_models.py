"""sPyNNaker's ``extra_models``: its models beyond standard PyNN, under sPyNNaker's names.

Scripts written for sPyNNaker use ``sim.extra_models.Izhikevich_cond`` or
``sim.extra_models.IFCurDelta``; those run here (they are this backend's `Izhikevich_cond`
and `IF_curr_delta`). The others are importable and raise
:class:`~toolchain.pynn.errors.NotSupportedError` naming what is supported when a script
uses them, as the standard types the chip model does not offer do.
"""

from __future__ import annotations

from typing import Any

from toolchain.pynn.errors import NotSupportedError
from toolchain.pynn.standardmodels import (
    SUPPORTED_CELLS,
    SUPPORTED_SYNAPSES,
    IF_curr_delta,
    Izhikevich_cond,
    refusing,
)

__all__ = [
    "IFCondExpCerebellum",
    "IFCondExpStoc",
    "IFCurDelta",
    "IFCurrExpCa2Adaptive",
    "IF_curr_dual_exp",
    "IF_curr_exp_sEMD",
    "Izhikevich_cond",
    "Neuromodulation",
    "PfisterSpikeTriplet",
    "RecurrentRule",
    "SpikeNearestPairRule",
    "SpikeSourcePoissonVariable",
    "TimingDependenceMFVN",
    "TimingDependencePFPC",
    "Vogels2011Rule",
    "WeightDependenceAdditiveTriplet",
    "WeightDependenceMFVN",
    "WeightDependencePFPC",
]

IFCurDelta = IF_curr_delta


IFCondExpCerebellum = refusing("extra_models.IFCondExpCerebellum", SUPPORTED_CELLS)
IFCondExpStoc = refusing("extra_models.IFCondExpStoc", SUPPORTED_CELLS)
IFCurrExpCa2Adaptive = refusing("extra_models.IFCurrExpCa2Adaptive", SUPPORTED_CELLS)
IF_curr_dual_exp = refusing("extra_models.IF_curr_dual_exp", SUPPORTED_CELLS)
IF_curr_exp_sEMD = refusing("extra_models.IF_curr_exp_sEMD", SUPPORTED_CELLS)
SpikeSourcePoissonVariable = refusing("extra_models.SpikeSourcePoissonVariable", SUPPORTED_CELLS)
Neuromodulation = refusing("extra_models.Neuromodulation", SUPPORTED_SYNAPSES)
PfisterSpikeTriplet = refusing("extra_models.PfisterSpikeTriplet", SUPPORTED_SYNAPSES)
RecurrentRule = refusing("extra_models.RecurrentRule", SUPPORTED_SYNAPSES)
SpikeNearestPairRule = refusing("extra_models.SpikeNearestPairRule", SUPPORTED_SYNAPSES)
Vogels2011Rule = refusing("extra_models.Vogels2011Rule", SUPPORTED_SYNAPSES)
WeightDependenceAdditiveTriplet = refusing(
    "extra_models.WeightDependenceAdditiveTriplet", SUPPORTED_SYNAPSES
)
TimingDependencePFPC = refusing("extra_models.TimingDependencePFPC", SUPPORTED_SYNAPSES)
WeightDependencePFPC = refusing("extra_models.WeightDependencePFPC", SUPPORTED_SYNAPSES)
TimingDependenceMFVN = refusing("extra_models.TimingDependenceMFVN", SUPPORTED_SYNAPSES)
WeightDependenceMFVN = refusing("extra_models.WeightDependenceMFVN", SUPPORTED_SYNAPSES)

SPYNNAKER_ONLY: dict[str, type] = {
    name: refusing(name, supported)
    for names, supported in (
        (
            (
                "RandomSelection",
                "LastNeuronSelection",
                "DistanceDependentFormation",
                "RandomByWeightElimination",
                "StructuralMechanismStatic",
                "StructuralMechanismSTDP",
            ),
            f"no structural plasticity ({SUPPORTED_SYNAPSES})",
        ),
        (
            (
                "AllButMeConnector",
                "KernelConnector",
                "PoolDenseConnector",
                "ConvolutionConnector",
                "CSAConnector",
            ),
            "PyNN's own connectors",
        ),
        (("SpiNNakerProjection",), "Projection"),
        (
            ("SmallWorldConnector",),
            "PyNN's other connectors (PyNN 0.13 implements SmallWorldConnector for no backend)",
        ),
    )
    for name in names
}
"""sPyNNaker's own names at the top of its PyNN namespace that this backend refuses."""


class _Refused:
    """A module of sPyNNaker's that this backend does not have: using anything of it
    raises NotSupportedError naming what is supported instead."""

    def __init__(self, name: str, supported: str) -> None:
        self._name = name
        self._supported = supported

    def __repr__(self) -> str:
        return f"<{self._name}: not supported here>"

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        raise NotSupportedError(f"{self._name}.{attribute}", self._supported)


external_devices = _Refused(
    "external_devices",
    "no live input or output: spikes go in through SpikeSourceArray or SpikeSourcePoisson and"
    " come out through recording",
)
"""sPyNNaker's live input and output over Ethernet (SpikeInjector, activate_live_output...)."""
