"""Network description: populations, projections and connectors, PyNN style.

A :class:`Network` holds populations of one cell type each and projections between them.
Nothing here knows about chips: connectors turn into plain ``(pre, post)`` index arrays
(:meth:`Projection.synapses`), which the mapping stages consume. Units are PyNN's: ms, mV,
nF, nA, Hz.

Randomness is seeded: the network's seed and the projection's position give each
projection its own generator, so the same description always yields the same synapses::

    net = Network(dt_ms=0.1, seed=1)
    exc = net.population(80, IFCurrExp(tau_m=20.0), label="exc")
    src = net.population(80, SpikeSourcePoisson(rate=100.0), label="drive")
    net.project(src, exc, OneToOne(), StaticSynapse(weight=0.05, delay=1.5))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from toolchain.errors import NetworkError

__all__ = [
    "DEFAULT_V_INIT_MV",
    "AllToAll",
    "CellType",
    "Connector",
    "FixedNumberPre",
    "FixedProbability",
    "FromArrays",
    "FromList",
    "IFCondExp",
    "IFCurrAlpha",
    "IFCurrDelta",
    "IFCurrExp",
    "Izhikevich",
    "IzhikevichCond",
    "LifCell",
    "Network",
    "NeuronCell",
    "OneToOne",
    "Population",
    "Projection",
    "Receptor",
    "SpikeSourceArray",
    "SpikeSourcePoisson",
    "StaticSynapse",
    "StdpSynapse",
]

IndexArray: TypeAlias = npt.NDArray[np.int64]
FloatArray: TypeAlias = npt.NDArray[np.float64]
Receptor: TypeAlias = Literal["excitatory", "inhibitory"]
DEFAULT_V_INIT_MV = -65.0
"""Initial membrane potential of a population never initialised (PyNN's and sPyNNaker's default,
whatever ``v_rest`` is)."""


def _check_cell(cell: object, name: str, positive: tuple[str, ...]) -> None:
    # each parameter is one value for the population or one per neuron
    for key in positive:
        value = np.asarray(getattr(cell, key), dtype=np.float64)
        if not (value > 0.0).all():
            raise NetworkError(f"{name} {key} must be positive, got {value.min()}")
    if hasattr(cell, "tau_refrac"):
        refrac = np.asarray(cell.tau_refrac, dtype=np.float64)
        if (refrac < 0.0).any():
            raise NetworkError(f"{name} tau_refrac must be >= 0, got {refrac.min()}")


@dataclass(frozen=True)
class NeuronCell:
    """What every neuron cell type (one with synapses and a membrane potential) shares.

    ``weight_scale`` is the factor 7.4.1's host applies to the weights of synapses onto the
    cell before it stores them (1 for current input; 1024 for conductance input, whose
    weights are conductances >= 0 for both receptors: ``is_conductance``). ``default_v_init``
    is the initial membrane potential of a population never initialised (mV).
    """

    name = "neuron"
    weight_scale = 1.0
    is_conductance = False
    default_v_init = DEFAULT_V_INIT_MV


@dataclass(frozen=True)
class LifCell(NeuronCell):
    """What the leaky integrate-and-fire cell types with shaped synapses share (PyNN's names
    and defaults): IF_curr_exp, IF_cond_exp and IF_curr_alpha."""

    tau_m: float | FloatArray = 20.0
    cm: float | FloatArray = 1.0
    v_rest: float | FloatArray = -65.0
    v_reset: float | FloatArray = -65.0
    v_thresh: float | FloatArray = -50.0
    tau_refrac: float | FloatArray = 0.1
    tau_syn_E: float | FloatArray = 5.0
    tau_syn_I: float | FloatArray = 5.0
    i_offset: float | FloatArray = 0.0

    name = "LIF"

    def __post_init__(self) -> None:
        _check_cell(self, self.name, ("tau_m", "cm", "tau_syn_E", "tau_syn_I"))


@dataclass(frozen=True)
class IFCurrExp(LifCell):
    """Leaky integrate-and-fire neuron with exponential current synapses (PyNN defaults)."""

    name = "IF_curr_exp"


@dataclass(frozen=True)
class IFCondExp(LifCell):
    """Leaky integrate-and-fire neuron with exponential conductance synapses.

    Synaptic weights are conductances in uS; reversal potentials in mV (PyNN's and
    sPyNNaker 7.4.1's defaults). The host stores weights x 1024 and the core shifts its
    synaptic values right by 10 bits (7.4.1's ``input_type_conductance``).
    """

    e_rev_E: float | FloatArray = 0.0
    e_rev_I: float | FloatArray = -70.0

    name = "IF_cond_exp"
    weight_scale = 1024.0
    is_conductance = True


@dataclass(frozen=True)
class IFCurrAlpha(LifCell):
    """Leaky integrate-and-fire neuron with alpha-shaped current synapses (PyNN's and
    sPyNNaker 7.4.1's defaults: ``tau_syn`` 0.5 ms).

    A weight w (nA) gives the current w (t / tau**2) e^(-t / tau), a charge of w nA ms, as
    7.4.1's ``synapse_types_alpha_impl.h`` computes it (linear term x exponential term);
    PyNN's and NEST's alpha current peaks at w instead (e / tau times this one).
    """

    tau_syn_E: float | FloatArray = 0.5
    tau_syn_I: float | FloatArray = 0.5

    name = "IF_curr_alpha"


@dataclass(frozen=True)
class IFCurrDelta(NeuronCell):
    """Leaky integrate-and-fire neuron with delta current synapses (no synaptic time
    constant): a weight w (nA) is a current w / dt for one step, moving V by about w / cm mV
    (7.4.1's ``synapse_types_delta_impl.h`` and ``input_type_delta.h``)."""

    tau_m: float | FloatArray = 20.0
    cm: float | FloatArray = 1.0
    v_rest: float | FloatArray = -65.0
    v_reset: float | FloatArray = -65.0
    v_thresh: float | FloatArray = -50.0
    tau_refrac: float | FloatArray = 0.1
    i_offset: float | FloatArray = 0.0

    name = "IF_curr_delta"

    def __post_init__(self) -> None:
        _check_cell(self, self.name, ("tau_m", "cm"))


@dataclass(frozen=True)
class Izhikevich(NeuronCell):
    """Izhikevich neuron with exponential current synapses, as sPyNNaker 7.4.1's
    ``Izhikevich`` (IZK_curr_exp): PyNN's a, b, c, d and i_offset, sPyNNaker's tau_syn_E and
    tau_syn_I; it spikes at v >= 30 mV. Initial v -70 mV and u -14 mV/ms unless initialised.
    """

    a: float | FloatArray = 0.02
    b: float | FloatArray = 0.2
    c: float | FloatArray = -65.0
    d: float | FloatArray = 2.0
    i_offset: float | FloatArray = 0.0
    tau_syn_E: float | FloatArray = 5.0
    tau_syn_I: float | FloatArray = 5.0

    name = "Izhikevich"
    default_v_init = -70.0
    default_u_init = -14.0

    def __post_init__(self) -> None:
        _check_cell(self, self.name, ("tau_syn_E", "tau_syn_I"))


@dataclass(frozen=True)
class IzhikevichCond(Izhikevich):
    """Izhikevich neuron with exponential conductance synapses (7.4.1's IZK_cond_exp,
    ``extra_models.Izhikevich_cond``): weights in uS, stored x 1024, as IF_cond_exp's."""

    e_rev_E: float | FloatArray = 0.0
    e_rev_I: float | FloatArray = -70.0

    name = "Izhikevich_cond"
    weight_scale = 1024.0
    is_conductance = True


@dataclass(frozen=True)
class SpikeSourceArray:
    """Neurons that spike at given times (ms).

    Attributes:
        spike_times: one sequence of times per neuron, or one sequence shared by all.
    """

    spike_times: tuple[tuple[float, ...], ...] | tuple[float, ...] = ()

    name = "SpikeSourceArray"

    def times_of(self, n_neurons: int) -> list[FloatArray]:
        """Return the spike times of each of ``n_neurons`` neurons, sorted."""
        times = self.spike_times
        if len(times) > 0 and isinstance(times[0], tuple | list | np.ndarray):
            if len(times) != n_neurons:
                raise NetworkError(
                    f"SpikeSourceArray has {len(times)} spike trains for {n_neurons} neurons"
                )
            return [np.sort(np.asarray(t, dtype=np.float64)) for t in times]
        shared = np.sort(np.asarray(times, dtype=np.float64))
        return [shared for _ in range(n_neurons)]


@dataclass(frozen=True)
class SpikeSourcePoisson:
    """Independent Poisson spike trains.

    Attributes:
        rate: mean rate in Hz.
        start: time of the first possible spike in ms.
        duration: length of the active window in ms.

    Each is one value for the population or one per neuron.
    """

    rate: float | FloatArray = 1.0
    start: float | FloatArray = 0.0
    duration: float | FloatArray = 1e10

    name = "SpikeSourcePoisson"

    def __post_init__(self) -> None:
        values = [np.asarray(v, dtype=np.float64) for v in (self.rate, self.start, self.duration)]
        if any((v < 0.0).any() for v in values):
            raise NetworkError(
                f"SpikeSourcePoisson rate, start and duration must be >= 0, got "
                f"{self.rate}, {self.start}, {self.duration}"
            )


CellType: TypeAlias = (
    IFCurrExp
    | IFCondExp
    | IFCurrAlpha
    | IFCurrDelta
    | Izhikevich
    | IzhikevichCond
    | SpikeSourceArray
    | SpikeSourcePoisson
)
RECORDABLE = {
    **{
        cell.name: ("spikes", "v", "gsyn_exc", "gsyn_inh")
        for cell in (IFCurrExp, IFCondExp, IFCurrAlpha, IFCurrDelta, Izhikevich, IzhikevichCond)
    },
    "SpikeSourceArray": ("spikes",),
    "SpikeSourcePoisson": ("spikes",),
}


@dataclass(eq=False)
class Population:
    """A group of neurons of one cell type.

    Attributes:
        size: number of neurons.
        cell: the cell type and its parameters.
        label: unique name within the network.
        index: position in the network.
        initial_v: initial membrane potential per neuron (mV), neuron cells only.
        initial_u: initial recovery variable per neuron (mV/ms), Izhikevich cells only.
        recorded: variable -> sorted neuron indices recorded.
        sampling_interval_ms: interval between samples of v and gsyn.
        seed: seed of this population's own random draws (Poisson spikes); the
            network's seed and the population's index when None.
    """

    size: int
    cell: CellType
    label: str
    index: int
    initial_v: FloatArray | None = None
    initial_u: FloatArray | None = None
    recorded: dict[str, IndexArray] = field(default_factory=dict)
    sampling_interval_ms: float | None = None
    seed: int | None = None

    def initialize(
        self,
        v: float | Sequence[float] | FloatArray | None = None,
        *,
        u: float | Sequence[float] | FloatArray | None = None,
    ) -> None:
        """Set the initial membrane potential and, for Izhikevich cells, the recovery variable
        (each one value, or one per neuron; None leaves it as it is)."""
        if not isinstance(self.cell, NeuronCell):
            raise NetworkError(f"population {self.label!r} ({self.cell.name}) has no v")
        if u is not None and not isinstance(self.cell, Izhikevich):
            raise NetworkError(f"population {self.label!r} ({self.cell.name}) has no u")
        if v is not None:
            self.initial_v = np.broadcast_to(np.asarray(v, dtype=np.float64), (self.size,)).copy()
        if u is not None:
            self.initial_u = np.broadcast_to(np.asarray(u, dtype=np.float64), (self.size,)).copy()

    def record(
        self,
        variables: str | Sequence[str],
        neurons: Sequence[int] | IndexArray | None = None,
        sampling_interval_ms: float | None = None,
    ) -> None:
        """Record variables (``"spikes"``, ``"v"``, ``"gsyn_exc"``, ``"gsyn_inh"``).

        Args:
            variables: one name or several.
            neurons: indices to record; all neurons when omitted.
            sampling_interval_ms: interval of v/gsyn samples; every step when omitted.
        """
        names = [variables] if isinstance(variables, str) else list(variables)
        ids = (
            np.arange(self.size, dtype=np.int64)
            if neurons is None
            else np.unique(np.asarray(neurons, dtype=np.int64))
        )
        if ids.size and (ids[0] < 0 or ids[-1] >= self.size):
            raise NetworkError(f"population {self.label!r} has no neuron {int(ids[-1])}")
        for name in names:
            if name not in RECORDABLE[self.cell.name]:
                raise NetworkError(
                    f"{self.cell.name} population {self.label!r} cannot record {name!r}"
                )
            self.recorded[name] = ids
        if sampling_interval_ms is not None:
            self.sampling_interval_ms = sampling_interval_ms

    def __repr__(self) -> str:
        return f"<Population {self.label!r} {self.cell.name} x{self.size}>"


class Connector:
    """Turns population sizes into (pre, post) index arrays."""

    def connect(
        self, n_pre: int, n_post: int, rng: np.random.Generator, is_same_population: bool
    ) -> tuple[IndexArray, IndexArray]:
        """Return the pre and post index of every synapse."""
        raise NotImplementedError


@dataclass(frozen=True)
class OneToOne(Connector):
    """Neuron i of pre to neuron i of post; the sizes must be equal."""

    def connect(
        self, n_pre: int, n_post: int, rng: np.random.Generator, is_same_population: bool
    ) -> tuple[IndexArray, IndexArray]:
        if n_pre != n_post:
            raise NetworkError(f"one-to-one needs equal sizes, got {n_pre} and {n_post}")
        ids = np.arange(n_pre, dtype=np.int64)
        return ids, ids.copy()


@dataclass(frozen=True)
class AllToAll(Connector):
    """Every pre neuron to every post neuron."""

    allow_self_connections: bool = True

    def connect(
        self, n_pre: int, n_post: int, rng: np.random.Generator, is_same_population: bool
    ) -> tuple[IndexArray, IndexArray]:
        pre = np.repeat(np.arange(n_pre, dtype=np.int64), n_post)
        post = np.tile(np.arange(n_post, dtype=np.int64), n_pre)
        if is_same_population and not self.allow_self_connections:
            keep = pre != post
            return pre[keep], post[keep]
        return pre, post


@dataclass(frozen=True)
class FixedProbability(Connector):
    """Each (pre, post) pair connected independently with probability ``p``."""

    p: float
    allow_self_connections: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise NetworkError(f"connection probability must be in [0, 1], got {self.p}")

    def connect(
        self, n_pre: int, n_post: int, rng: np.random.Generator, is_same_population: bool
    ) -> tuple[IndexArray, IndexArray]:
        mask = rng.random((n_pre, n_post)) < self.p
        if is_same_population and not self.allow_self_connections:
            np.fill_diagonal(mask, False)
        pre, post = np.nonzero(mask)
        return pre.astype(np.int64), post.astype(np.int64)


@dataclass(frozen=True)
class FixedNumberPre(Connector):
    """Fixed in-degree: every post neuron gets ``n`` sources drawn uniformly.

    Attributes:
        n: sources per post neuron.
        allow_self_connections: when False (same population only), a neuron never
            draws itself.
        with_replacement: when True the same source may be drawn several times
            (multapses), each draw its own synapse.
    """

    n: int
    allow_self_connections: bool = True
    with_replacement: bool = False

    def connect(
        self, n_pre: int, n_post: int, rng: np.random.Generator, is_same_population: bool
    ) -> tuple[IndexArray, IndexArray]:
        exclude_self = is_same_population and not self.allow_self_connections
        n_choices = n_pre - 1 if exclude_self else n_pre
        if self.n < 0 or (not self.with_replacement and self.n > n_choices):
            raise NetworkError(
                f"fixed in-degree {self.n} without replacement needs at most {n_choices} "
                f"sources, pre has {n_pre}"
            )
        post = np.repeat(np.arange(n_post, dtype=np.int64), self.n)
        if self.with_replacement:
            pre = rng.integers(0, n_choices, size=(n_post, self.n), dtype=np.int64)
        else:
            keys = rng.random((n_post, n_choices))
            pre = (
                np.argpartition(keys, self.n - 1, axis=1)[:, : self.n].astype(np.int64)
                if self.n > 0
                else np.zeros((n_post, 0), dtype=np.int64)
            )
        if exclude_self:
            pre += pre >= np.arange(n_post, dtype=np.int64)[:, None]
        return pre.reshape(-1), post


@dataclass(frozen=True)
class FromList(Connector):
    """Explicit ``(pre, post)`` or ``(pre, post, weight, delay)`` tuples."""

    connections: tuple[tuple[float, ...], ...]

    def columns(self) -> npt.NDArray[np.float64]:
        """Return the list as a 2-D float array (one row per synapse)."""
        table = np.asarray(self.connections, dtype=np.float64).reshape(len(self.connections), -1)
        if table.shape[0] and table.shape[1] not in (2, 4):
            raise NetworkError(f"from-list rows need 2 or 4 columns, got {table.shape[1]}")
        return table

    def connect(
        self, n_pre: int, n_post: int, rng: np.random.Generator, is_same_population: bool
    ) -> tuple[IndexArray, IndexArray]:
        table = self.columns()
        if table.shape[0] == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)


@dataclass(frozen=True, eq=False)
class FromArrays(Connector):
    """Synapses given as two index arrays (one entry per synapse, multapses allowed)."""

    pre: IndexArray
    post: IndexArray

    def connect(
        self, n_pre: int, n_post: int, rng: np.random.Generator, is_same_population: bool
    ) -> tuple[IndexArray, IndexArray]:
        pre = np.asarray(self.pre, dtype=np.int64).reshape(-1)
        post = np.asarray(self.post, dtype=np.int64).reshape(-1)
        if pre.shape != post.shape:
            raise NetworkError(f"from-arrays needs equal lengths, got {pre.size} and {post.size}")
        return pre, post


@dataclass(frozen=True, eq=False)
class StaticSynapse:
    """Fixed weight (nA) and delay (ms): a scalar, or one value per synapse."""

    weight: float | FloatArray = 0.0
    delay: float | FloatArray | None = None


@dataclass(frozen=True, eq=False)
class StdpSynapse:
    """Spike-pair STDP (sPyNNaker's ``STDPMechanism`` with ``SpikePairRule``): an initial
    weight (nA, uS on conductance cells) and delay, as a :class:`StaticSynapse`, and the rule.

    Attributes:
        weight_rule: ``"additive"`` (dw = A x decay, clipped to [w_min, w_max]) or
            ``"multiplicative"`` (dw = A x (w_max - w) or A x (w - w_min) x decay).
        tau_plus: ms. tau_minus: ms.
        a_plus: A+ (additive: in weight units, as sPyNNaker takes it). a_minus: A-.
        w_min: smallest weight. w_max: largest weight.
    """

    weight: float | FloatArray = 0.0
    delay: float | FloatArray | None = None
    weight_rule: Literal["additive", "multiplicative"] = "additive"
    tau_plus: float = 20.0
    tau_minus: float = 20.0
    a_plus: float = 0.01
    a_minus: float = 0.01
    w_min: float = 0.0
    w_max: float = 1.0

    def __post_init__(self) -> None:
        if self.weight_rule not in ("additive", "multiplicative"):
            raise NetworkError(
                f"weight rule must be additive or multiplicative, got {self.weight_rule!r}"
            )
        if self.tau_plus <= 0 or self.tau_minus <= 0:
            raise NetworkError(
                f"STDP time constants must be positive, got tau_plus={self.tau_plus} "
                f"and tau_minus={self.tau_minus}"
            )
        if not 0 <= self.w_min <= self.w_max:
            raise NetworkError(
                f"STDP weight limits must satisfy 0 <= w_min <= w_max, got "
                f"w_min={self.w_min} and w_max={self.w_max}"
            )

    def rule(self) -> tuple[object, ...]:
        """Everything but weight and delay: projections onto one population must share it."""
        return (
            self.weight_rule,
            self.tau_plus,
            self.tau_minus,
            self.a_plus,
            self.a_minus,
            self.w_min,
            self.w_max,
        )


@dataclass(eq=False)
class Projection:
    """Synapses from one population to another, of one receptor type.

    Attributes:
        pre: source population.
        post: target population (a LIF cell type).
        connector: the connection rule.
        synapse: weights and delays.
        receptor_type: ``"excitatory"`` or ``"inhibitory"``.
        seed: seed of this projection's random connections.
    """

    pre: Population
    post: Population
    connector: Connector
    synapse: StaticSynapse | StdpSynapse
    receptor_type: Receptor
    seed: Sequence[int]
    label: str = ""
    _cache: tuple[IndexArray, IndexArray, FloatArray, FloatArray] | None = None

    def synapses(self, dt_ms: float) -> tuple[IndexArray, IndexArray, FloatArray, FloatArray]:
        """Return (pre, post, |weight| nA, delay ms) of every synapse; cached.

        Raises:
            NetworkError: an index out of range, a weight of the wrong sign or a
                delay below one time step.
        """
        if self._cache is not None:
            return self._cache
        rng = np.random.default_rng(list(self.seed))
        pre, post = self.connector.connect(
            self.pre.size, self.post.size, rng, self.pre is self.post
        )
        if pre.size and (pre.min() < 0 or pre.max() >= self.pre.size):
            raise NetworkError(
                f"projection {self.label!r} names a source outside "
                f"{self.pre.label!r} (size {self.pre.size})"
            )
        if post.size and (post.min() < 0 or post.max() >= self.post.size):
            raise NetworkError(
                f"projection {self.label!r} names a target outside "
                f"{self.post.label!r} (size {self.post.size})"
            )
        weight, delay = self._weights_delays(pre.size, dt_ms)
        self._cache = (pre, post, weight, delay)
        return self._cache

    def _weights_delays(self, n: int, dt_ms: float) -> tuple[FloatArray, FloatArray]:
        weight_in = self.synapse.weight
        delay_in = self.synapse.delay if self.synapse.delay is not None else dt_ms
        if isinstance(self.connector, FromList):
            table = self.connector.columns()
            if table.shape[0] and table.shape[1] == 4:
                weight_in, delay_in = table[:, 2], table[:, 3]
        try:
            # scalars stay broadcast views: 10 M synapses cost no weight or delay memory
            weight = np.broadcast_to(np.asarray(weight_in, dtype=np.float64), (n,))
            delay = np.broadcast_to(np.asarray(delay_in, dtype=np.float64), (n,))
        except ValueError as exc:
            raise NetworkError(
                f"projection {self.label!r} has {n} synapses but weights or "
                f"delays of another length"
            ) from exc
        if n and self.receptor_type == "excitatory" and weight.min() < 0.0:
            raise NetworkError(
                f"projection {self.label!r} is excitatory but has weight {float(weight.min())} < 0"
            )
        is_conductance = isinstance(self.post.cell, NeuronCell) and self.post.cell.is_conductance
        if n and is_conductance and weight.min() < 0.0:
            raise NetworkError(
                f"projection {self.label!r} has weight {float(weight.min())} < 0 "
                f"(conductance weights are >= 0 for both receptor types)"
            )
        if n and not is_conductance and self.receptor_type == "inhibitory" and weight.max() > 0.0:
            raise NetworkError(
                f"projection {self.label!r} is inhibitory but has weight "
                f"{float(weight.max())} > 0 (current-based inhibitory "
                f"weights are negative)"
            )
        if n and delay.min() < dt_ms * (1.0 - 1e-9):
            raise NetworkError(
                f"projection {self.label!r} has delay {float(delay.min())} ms, "
                f"below one time step ({dt_ms} ms)"
            )
        magnitude = np.abs(np.asarray(weight_in, dtype=np.float64))
        return np.broadcast_to(magnitude, (n,)), delay

    def __repr__(self) -> str:
        return (
            f"<Projection {self.label!r} {self.pre.label}->{self.post.label} {self.receptor_type}>"
        )


class Network:
    """A whole network: populations, projections, time step and seed.

    Args:
        dt_ms: simulation time step.
        seed: root seed of every random draw of the description and the run.
    """

    def __init__(self, dt_ms: float = 1.0, seed: int = 1) -> None:
        if not dt_ms > 0.0:
            raise NetworkError(f"time step must be positive, got {dt_ms} ms")
        self.dt_ms = dt_ms
        self.seed = seed
        self.populations: list[Population] = []
        self.projections: list[Projection] = []

    def population(
        self, size: int, cell: CellType, label: str | None = None, *, seed: int | None = None
    ) -> Population:
        """Add a population of ``size`` neurons and return it."""
        if size < 1:
            raise NetworkError(f"population size must be >= 1, got {size}")
        name = label if label is not None else f"population{len(self.populations)}"
        if any(p.label == name for p in self.populations):
            raise NetworkError(f"population label {name!r} is already used")
        pop = Population(size=size, cell=cell, label=name, index=len(self.populations), seed=seed)
        self.populations.append(pop)
        return pop

    def project(
        self,
        pre: Population,
        post: Population,
        connector: Connector,
        synapse: StaticSynapse | StdpSynapse | None = None,
        receptor_type: Receptor = "excitatory",
        label: str | None = None,
    ) -> Projection:
        """Connect ``pre`` to ``post`` and return the projection.

        Raises:
            NetworkError: a bad target or receptor, or an STDP rule that differs from that of
                another plastic projection onto ``post`` (a core runs one rule).
        """
        if not isinstance(post.cell, NeuronCell):
            raise NetworkError(
                f"projection target {post.label!r} is a {post.cell.name}, which has no synapses"
            )
        if receptor_type not in ("excitatory", "inhibitory"):
            raise NetworkError(
                f"receptor type must be excitatory or inhibitory, got {receptor_type!r}"
            )
        for pop in (pre, post):
            if pop not in self.populations:
                raise NetworkError(f"population {pop.label!r} is not in this network")
        if isinstance(synapse, StdpSynapse):
            for other in self.projections:
                if (
                    other.post is post
                    and isinstance(other.synapse, StdpSynapse)
                    and other.synapse.rule() != synapse.rule()
                ):
                    raise NetworkError(
                        f"population {post.label!r} already learns with another STDP rule "
                        f"(projection {other.label!r}); one population runs one rule"
                    )
        proj = Projection(
            pre=pre,
            post=post,
            connector=connector,
            synapse=synapse or StaticSynapse(),
            receptor_type=receptor_type,
            seed=(self.seed, 1, len(self.projections)),
            label=label or f"{pre.label}->{post.label}#{len(self.projections)}",
        )
        self.projections.append(proj)
        return proj

    def plasticity_of(self, population: Population) -> StdpSynapse | None:
        """The STDP rule of the plastic projections onto ``population``, if any."""
        for proj in self.projections:
            if proj.post is population and isinstance(proj.synapse, StdpSynapse):
                return proj.synapse
        return None

    def delay_steps(self, delay_ms: FloatArray) -> IndexArray:
        """Convert delays in ms to whole time steps (rounded to nearest)."""
        return np.rint(np.asarray(delay_ms) / self.dt_ms).astype(np.int64)

    def summary(self) -> Mapping[str, int]:
        """Return counts of populations, neurons and projections."""
        return {
            "populations": len(self.populations),
            "neurons": sum(p.size for p in self.populations),
            "projections": len(self.projections),
        }
