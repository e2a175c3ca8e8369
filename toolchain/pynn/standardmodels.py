"""The cell and synapse types this backend runs, and the PyNN types it refuses by name.

Native parameters are PyNN's own (same names, same units): the toolchain describes
networks in PyNN's units, so the translations are the identity. A type the chip model
does not offer is still importable (a script fails where it uses it, not at import) and
raises :class:`~toolchain.pynn.errors.NotSupportedError` naming what is supported.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pyNN import errors
from pyNN.standardmodels import build_translations, cells, electrodes, receptors, synapses

from toolchain.pynn import simulator
from toolchain.pynn.errors import NotSupportedError

__all__ = [
    "SUPPORTED_CELLS",
    "SUPPORTED_SYNAPSES",
    "AdditiveWeightDependence",
    "IF_cond_exp",
    "IF_curr_alpha",
    "IF_curr_delta",
    "IF_curr_exp",
    "Izhikevich",
    "Izhikevich_cond",
    "MultiplicativeWeightDependence",
    "STDPMechanism",
    "SpikePairRule",
    "SpikeSourceArray",
    "SpikeSourcePoisson",
    "StaticSynapse",
]

SUPPORTED_CELLS = (
    "IF_curr_exp, IF_cond_exp, IF_curr_alpha, IF_curr_delta, Izhikevich, Izhikevich_cond, "
    "SpikeSourceArray, SpikeSourcePoisson"
)
SUPPORTED_SYNAPSES = (
    "StaticSynapse, and STDPMechanism with SpikePairRule and AdditiveWeightDependence or "
    "MultiplicativeWeightDependence"
)


def _identity(*names: str) -> Any:
    return build_translations(*((name, name) for name in names))


class _InitialsAsParameters:
    """sPyNNaker's cell types also take their state variables' initial values (``v``,
    ``u``, ``isyn_exc`` ...) as parameters: those become the cell type's default initial
    values (a population's ``initial_values`` or ``initialize`` still win)."""

    default_initial_values: ClassVar[dict[str, Any]]

    def __init__(self, **parameters: Any) -> None:
        names = type(self).default_initial_values
        initial = {name: parameters.pop(name) for name in list(parameters) if name in names}
        super().__init__(**parameters)
        if initial:
            self.default_initial_values = {**names, **initial}  # type: ignore[misc]


class IF_curr_exp(_InitialsAsParameters, cells.IF_curr_exp):  # type: ignore[misc]
    __doc__ = cells.IF_curr_exp.__doc__
    translations = _identity(*cells.IF_curr_exp.default_parameters)
    # sPyNNaker records the synaptic input currents of current-based cells as gsyn
    recordable: ClassVar[list[str]] = ["spikes", "v", "gsyn_exc", "gsyn_inh"]
    units: ClassVar[dict[str, str]] = {
        **cells.IF_curr_exp.units,
        "gsyn_exc": "nA",
        "gsyn_inh": "nA",
    }


class IF_cond_exp(_InitialsAsParameters, cells.IF_cond_exp):  # type: ignore[misc]
    __doc__ = cells.IF_cond_exp.__doc__
    translations = _identity(*cells.IF_cond_exp.default_parameters)


class IF_curr_alpha(_InitialsAsParameters, cells.IF_curr_alpha):  # type: ignore[misc]
    """Leaky integrate-and-fire neuron with alpha-shaped current synapses, as sPyNNaker 7.4.1
    runs it: a weight w (nA) gives the current w (t / tau**2) e^(-t / tau), a charge of w nA ms
    (PyNN's and NEST's alpha current peaks at w instead)."""

    translations = _identity(*cells.IF_curr_alpha.default_parameters)
    recordable: ClassVar[list[str]] = ["spikes", "v", "gsyn_exc", "gsyn_inh"]
    units: ClassVar[dict[str, str]] = {
        **cells.IF_curr_alpha.units,
        "gsyn_exc": "nA",
        "gsyn_inh": "nA",
    }


class IF_curr_delta(_InitialsAsParameters, cells.IF_curr_delta):  # type: ignore[misc]
    """Leaky integrate-and-fire neuron with delta current synapses, as sPyNNaker 7.4.1 runs
    it: a weight w (nA) is a current w / dt for one step, moving V by about w / cm mV."""

    translations = _identity(*cells.IF_curr_delta.default_parameters)
    recordable: ClassVar[list[str]] = ["spikes", "v", "gsyn_exc", "gsyn_inh"]
    units: ClassVar[dict[str, str]] = {
        **cells.IF_curr_delta.units,
        "gsyn_exc": "nA",
        "gsyn_inh": "nA",
    }


class Izhikevich(_InitialsAsParameters, cells.Izhikevich):  # type: ignore[misc]
    """Izhikevich neuron with exponential current synapses, as sPyNNaker 7.4.1's
    ``Izhikevich`` (IZK_curr_exp): PyNN's parameters plus ``tau_syn_E`` and ``tau_syn_I``
    (ms); it spikes at v >= 30 mV. ``u`` is not recordable here."""

    default_parameters: ClassVar[dict[str, float]] = {
        **cells.Izhikevich.default_parameters,
        "tau_syn_E": 5.0,
        "tau_syn_I": 5.0,
    }
    translations = _identity(*default_parameters)
    recordable: ClassVar[list[str]] = ["spikes", "v", "gsyn_exc", "gsyn_inh"]
    units: ClassVar[dict[str, str]] = {
        **cells.Izhikevich.units,
        "tau_syn_E": "ms",
        "tau_syn_I": "ms",
        "gsyn_exc": "nA",
        "gsyn_inh": "nA",
    }


class Izhikevich_cond(Izhikevich):
    """Izhikevich neuron with exponential conductance synapses (sPyNNaker 7.4.1's
    ``extra_models.Izhikevich_cond``, IZK_cond_exp): weights in uS, >= 0 for both
    receptors; reversal potentials ``e_rev_E`` and ``e_rev_I`` (mV)."""

    default_parameters: ClassVar[dict[str, float]] = {
        **Izhikevich.default_parameters,
        "e_rev_E": 0.0,
        "e_rev_I": -70.0,
    }
    translations = _identity(*default_parameters)
    conductance_based = True
    units: ClassVar[dict[str, str]] = {
        **Izhikevich.units,
        "e_rev_E": "mV",
        "e_rev_I": "mV",
        "gsyn_exc": "uS",
        "gsyn_inh": "uS",
    }


class SpikeSourceArray(cells.SpikeSourceArray):  # type: ignore[misc]
    __doc__ = cells.SpikeSourceArray.__doc__
    translations = _identity("spike_times")


class SpikeSourcePoisson(cells.SpikeSourcePoisson):  # type: ignore[misc]
    """Poisson spike source; ``seed`` (sPyNNaker's argument) seeds its spikes."""

    translations = _identity("rate", "start", "duration")

    def __init__(self, seed: int | None = None, **parameters: Any) -> None:
        super().__init__(**parameters)
        self.seed = seed


def _check_weights(weights: Any, projection: Any) -> None:
    # as on sPyNNaker, an inhibitory weight may be given as a magnitude (positive)
    values = np.asarray(weights, dtype=np.float64)
    if projection.post.conductance_based and (values < 0).any():
        raise errors.ConnectionError(
            "Weights must be positive for conductance-based and/or excitatory synapses"
        )
    if projection.receptor_type == "excitatory" and (values < 0).any():
        raise NotSupportedError(
            f"negative weight {float(values.min())} on an excitatory receptor",
            "weights >= 0 for excitatory and either sign for receptor_type='inhibitory'",
        )


def _check_delays(delays: Any, projection: Any) -> None:
    state = projection._simulator.state
    values = np.asarray(delays, dtype=np.float64)
    if values.size and values.min() < state.dt * (1 - 1e-9):
        raise NotSupportedError(
            f"delay {float(values.min())} ms, below the time step",
            f"delays of at least one time step ({state.dt} ms)",
        )
    if values.size and state.max_delay != "auto" and values.max() > state.max_delay:
        raise NotSupportedError(
            f"delay {float(values.max())} ms above setup()'s max_delay",
            f"delays up to max_delay ({state.max_delay} ms)",
        )


class StaticSynapse(synapses.StaticSynapse):  # type: ignore[misc]
    __doc__ = synapses.StaticSynapse.__doc__
    translations = _identity("weight", "delay")
    parameter_checks: ClassVar[dict[str, Any]] = {
        "weight": _check_weights,
        "delay": _check_delays,
    }

    def _get_minimum_delay(self) -> float:
        # a synapse without a delay gets the shortest one (one time step by default)
        return float(simulator.state.min_delay)


class STDPMechanism(synapses.STDPMechanism):  # type: ignore[misc]
    __doc__ = synapses.STDPMechanism.__doc__
    base_translations = _identity("weight", "delay", "dendritic_delay_fraction")
    parameter_checks: ClassVar[dict[str, Any]] = {
        "weight": _check_weights,
        "delay": _check_delays,
    }

    def __init__(
        self,
        timing_dependence: Any = None,
        weight_dependence: Any = None,
        voltage_dependence: Any = None,
        dendritic_delay_fraction: float = 1.0,
        weight: Any = 0.0,
        delay: Any = None,
    ) -> None:
        if not isinstance(timing_dependence, SpikePairRule):
            raise NotSupportedError(
                f"timing dependence {type(timing_dependence).__name__}", "SpikePairRule"
            )
        if not isinstance(
            weight_dependence, AdditiveWeightDependence | MultiplicativeWeightDependence
        ):
            raise NotSupportedError(
                f"weight dependence {type(weight_dependence).__name__}",
                "AdditiveWeightDependence or MultiplicativeWeightDependence",
            )
        if voltage_dependence is not None:
            raise NotSupportedError("a voltage dependence", "none")
        if dendritic_delay_fraction != 1.0:
            raise NotSupportedError(
                f"dendritic_delay_fraction={dendritic_delay_fraction}",
                "1.0 (the whole delay is dendritic, as on SpiNNaker)",
            )
        super().__init__(
            timing_dependence,
            weight_dependence,
            voltage_dependence,
            dendritic_delay_fraction,
            weight,
            delay,
        )

    def _get_minimum_delay(self) -> float:
        return float(simulator.state.min_delay)


class SpikePairRule(synapses.SpikePairRule):  # type: ignore[misc]
    __doc__ = synapses.SpikePairRule.__doc__
    translations = _identity("tau_plus", "tau_minus", "A_plus", "A_minus")


class AdditiveWeightDependence(synapses.AdditiveWeightDependence):  # type: ignore[misc]
    __doc__ = synapses.AdditiveWeightDependence.__doc__
    translations = _identity("w_max", "w_min")


class MultiplicativeWeightDependence(synapses.MultiplicativeWeightDependence):  # type: ignore[misc]
    __doc__ = synapses.MultiplicativeWeightDependence.__doc__
    translations = _identity("w_max", "w_min")


def refusing(name: str, supported: str, base: type | None = None) -> type:
    """A class named `name` (a subclass of PyNN's `base`, if given) that refuses to be made,
    naming what is supported instead."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        raise NotSupportedError(name, supported)

    doc = f"Not supported here: {name}." if base is None else base.__doc__
    bases = () if base is None else (base,)
    return type(name, bases, {"__init__": __init__, "__doc__": doc})


def _unsupported(base: type, supported: str) -> type:
    return refusing(base.__name__, supported, base)


_UNSUPPORTED_CELLS = (
    "IF_cond_alpha",
    "IF_cond_exp_gsfa_grr",
    "IF_facets_hardware1",
    "HH_cond_exp",
    "EIF_cond_alpha_isfa_ista",
    "EIF_cond_exp_isfa_ista",
    "GIF_cond_exp",
    "SpikeSourcePoissonRefractory",
    "SpikeSourceGamma",
    "SpikeSourceInhGamma",
    "PointNeuron",
    "AdExp",
    "LIF",
)
_UNSUPPORTED_SYNAPSES = (
    "TsodyksMarkramSynapse",
    "StochasticTsodyksMarkramSynapse",
    "SimpleStochasticSynapse",
    "MultiQuantalSynapse",
    "ElectricalSynapse",
    "Vogels2011Rule",
    "AdditivePotentiationMultiplicativeDepression",
    "GutigWeightDependence",
)
_UNSUPPORTED_RECEPTORS = (
    "CondExpPostSynapticResponse",
    "CondAlphaPostSynapticResponse",
    "CondBetaPostSynapticResponse",
    "CurrExpPostSynapticResponse",
)
_UNSUPPORTED_ELECTRODES = ("DCSource", "ACSource", "StepCurrentSource", "NoisyCurrentSource")

UNSUPPORTED: dict[str, type] = {}
for _name in _UNSUPPORTED_CELLS:
    UNSUPPORTED[_name] = _unsupported(getattr(cells, _name), SUPPORTED_CELLS)
for _name in _UNSUPPORTED_SYNAPSES:
    UNSUPPORTED[_name] = _unsupported(getattr(synapses, _name), SUPPORTED_SYNAPSES)
for _name in _UNSUPPORTED_RECEPTORS:
    UNSUPPORTED[_name] = _unsupported(
        getattr(receptors, _name), "the excitatory and inhibitory receptors of IF_curr_exp"
    )
for _name in _UNSUPPORTED_ELECTRODES:
    UNSUPPORTED[_name] = _unsupported(
        getattr(electrodes, _name), "no current sources (use i_offset or spike sources)"
    )
