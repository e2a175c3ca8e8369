"""Projections: PyNN's connectors compute the connections, kept here as flat arrays.

PyNN's connectors call :meth:`Projection._convergent_connect` once per target neuron with
the sources and the synapse parameters (weights and delays already evaluated, random
ones drawn); the projection keeps them as arrays (one entry per synapse, so multapses
stay) and hands them to the toolchain as ``FromArrays`` at the next run.

Delays become whole time steps here, as on SpiNNaker. Weights are stored on the chip with
16 bits and a ring-buffer shift per target population: after a run, ``get("weight")``
answers the weights the machine used, not the ones asked for; for an ``STDPMechanism``
projection, the weights it learned in the runs so far.

A fixed number of sources per target drawn with replacement (sPyNNaker's and Brunel's
``FixedNumberPreConnector``) is drawn here in one call, giving PyNN's own connections.
A one-to-one connection is built here directly: PyNN 0.13's own path crashes with numpy
2.1 and newer when the presynaptic population has one neuron (its connection map yields a
0-d array), and the direct path is also the fast one.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from typing import Any

import numpy as np
import numpy.typing as npt
from pyNN import common, errors
from pyNN.connectors import FixedNumberPreConnector, OneToOneConnector
from pyNN.random import NumpyRNG
from pyNN.space import Space

from toolchain.pynn import simulator
from toolchain.pynn.errors import NotSupportedError
from toolchain.pynn.standardmodels import SUPPORTED_SYNAPSES, StaticSynapse, STDPMechanism

__all__ = ["Projection"]

_ATTRIBUTES = ("presynaptic_index", "postsynaptic_index", "weight", "delay")


def _joined(parts: list[npt.NDArray[Any]], dtype: type) -> npt.NDArray[Any]:
    """The parts as one array; one value everywhere stays one broadcast value (no memory)."""
    if not parts:
        return np.zeros(0, dtype)
    total = sum(p.size for p in parts)
    filled = [p for p in parts if p.size]
    if filled and all(p.strides == (0,) for p in filled):
        first = filled[0][0]
        if all(p[0] == first for p in filled):
            return np.broadcast_to(np.asarray(first, dtype), (total,))
    return np.concatenate(parts, dtype=dtype)


def _split_lists(synapse: Any) -> tuple[Any, dict[str, npt.NDArray[np.float64]]]:
    """Take out weights or delays given as one value per connection (a list or 1-D array).

    sPyNNaker takes such a list in the order the connector makes the connections; PyNN's
    parameter spaces would read it as one value per presynaptic neuron. The synapse type
    that remains holds the list's last value, so PyNN can still guess the receptor type.
    """
    if synapse is None or isinstance(synapse, STDPMechanism):
        return synapse, {}
    lists: dict[str, npt.NDArray[np.float64]] = {}
    kept: dict[str, Any] = {}
    for name in ("weight", "delay"):
        base = synapse.parameter_space[name].base_value
        if isinstance(base, np.ndarray | list | tuple) and np.ndim(base) == 1:
            lists[name] = np.asarray(base, dtype=np.float64)
            kept[name] = float(lists[name][-1]) if lists[name].size else 0.0
        else:
            kept[name] = base
    if not lists:
        return synapse, {}
    return StaticSynapse(**kept), lists


class Projection(common.Projection):  # type: ignore[misc]
    __doc__ = common.Projection.__doc__
    _simulator = simulator
    _static_synapse_class = StaticSynapse

    def __init__(
        self,
        presynaptic_population: Any,
        postsynaptic_population: Any,
        connector: Any,
        synapse_type: Any = None,
        source: str | None = None,
        receptor_type: str | None = None,
        space: Any = None,
        label: str | None = None,
    ) -> None:
        if synapse_type is not None and not isinstance(synapse_type, StaticSynapse | STDPMechanism):
            raise NotSupportedError(
                f"synapse type {type(synapse_type).__name__}", SUPPORTED_SYNAPSES
            )
        if source is not None:
            raise NotSupportedError(f"source {source!r}", "the cells' single spike source")
        synapse_type, per_connection = _split_lists(synapse_type)
        super().__init__(
            presynaptic_population,
            postsynaptic_population,
            connector,
            synapse_type,
            source,
            receptor_type,
            space if space is not None else Space(),
            label,
        )
        self._pre_parts: list[npt.NDArray[np.int64]] = []
        self._post_parts: list[npt.NDArray[np.int64]] = []
        self._weight_parts: list[npt.NDArray[np.float64]] = []
        self._delay_parts: list[npt.NDArray[np.float64]] = []
        self._quantised: npt.NDArray[np.float64] | None = None
        self._quantise: Callable[[], npt.NDArray[np.float64]] | None = None
        if isinstance(connector, OneToOneConnector):
            self._connect_one_to_one(connector)
        elif not self._connect_fixed_number_pre(connector):
            connector.connect(self)
        for name, values in per_connection.items():
            self._set_per_connection(name, values)
        simulator.state.projections.append(self)
        simulator.state.network_changed()

    def _guess_receptor_type(self) -> None:
        # PyNN takes the first or second of the target's receptor types by the weight's
        # sign, but an Assembly lists them as a set, in no fixed order: name them here
        if not set(self.post.receptor_types) >= {"excitatory", "inhibitory"}:
            super()._guess_receptor_type()
            return
        space = self._handle_distance_expressions(deepcopy(self.synapse_type.parameter_space))
        weights = space["weight"]
        if weights.shape is None:
            weights.shape = self.shape
        try:
            last = weights[self.pre.size - 1, self.post.size - 1]
        except TypeError:  # a native random distribution: no value to look at
            last = 0.0
        except IndexError:  # one weight per connection, as sPyNNaker takes a list
            last = float(np.asarray(weights.base_value).reshape(-1)[-1])
        self.receptor_type = "inhibitory" if last < 0 else "excitatory"

    # --- building
    def _connect_one_to_one(self, connector: Any) -> None:
        n = self.pre.size
        if n != self.post.size:
            raise errors.InvalidDimensionsError(
                "OneToOneConnector does not support presynaptic and postsynaptic "
                "Populations of different sizes."
            )
        index = np.arange(n)
        values = {}
        for name, larray in connector._parameters_from_synapse_type(self).items():
            values[name] = (
                larray.evaluate(simplify=True) if larray.is_homogeneous else larray[index, index]
            )
        for name, check in self.synapse_type.parameter_checks.items():
            if name in values:
                check(values[name], self)
        self._store(index, index, values["weight"], values["delay"])

    def _connect_fixed_number_pre(self, connector: Any) -> bool:
        """A fixed number of sources per target, drawn with replacement, in one draw.

        PyNN draws ``n`` sources target by target from the connector's generator; numpy's
        generator gives the same numbers drawn ``n * targets`` at once, so the connections
        (and the generator's state after them) are PyNN's own. Only the case where that
        holds is taken here (one number ``n``, a ``NumpyRNG``, one value per synapse
        parameter, no callback); anything else returns False and goes through PyNN.
        """
        if type(connector) is not FixedNumberPreConnector:
            return False
        n = connector.n
        if not (
            connector.with_replacement
            and isinstance(n, int)
            and n > 0
            and type(connector.rng) is NumpyRNG
            and connector.callback is None
            and (connector.allow_self_connections or self.pre != self.post)
        ):
            return False
        parameters = connector._parameters_from_synapse_type(self)
        if not all(larray.is_homogeneous for _, larray in parameters.items()):
            return False
        values = {name: larray.evaluate(simplify=True) for name, larray in parameters.items()}
        if connector.safe:
            for name, check in self.synapse_type.parameter_checks.items():
                if name in values:
                    check(values[name], self)
        n_post = self.post.size
        pre = connector.rng.next(n * n_post, "uniform_int", {"low": 0, "high": self.pre.size})
        post = np.repeat(np.arange(n_post, dtype=np.int64), n)
        self._store(pre, post, values["weight"], values["delay"])
        return True

    def _convergent_connect(
        self,
        presynaptic_indices: Any,
        postsynaptic_index: int,
        location_selector: Any = None,
        **connection_parameters: Any,
    ) -> None:
        if location_selector is not None:
            raise NotSupportedError("multi-compartment location selectors", "point neurons")
        pre = np.asarray(presynaptic_indices, dtype=np.int64).reshape(-1)
        post = np.full(pre.size, int(postsynaptic_index), dtype=np.int64)
        weight = connection_parameters["weight"]
        check = self.synapse_type.parameter_checks.get("weight")
        if check is not None:  # (a list's or a file's weights: PyNN's connectors check none)
            check(weight, self)
        self._store(pre, post, weight, connection_parameters["delay"])

    def _store(self, pre: Any, post: Any, weight: Any, delay: Any) -> None:
        n = len(pre)
        dt = self._simulator.state.dt
        steps = np.maximum(np.rint(np.asarray(delay, np.float64) / dt), 1.0)
        self._pre_parts.append(np.asarray(pre, np.int64))
        self._post_parts.append(np.asarray(post, np.int64))
        # a scalar stays a broadcast view: 10 M synapses of one weight cost no memory
        self._weight_parts.append(np.broadcast_to(np.asarray(weight, np.float64), (n,)))
        self._delay_parts.append(np.broadcast_to(steps * dt, (n,)))
        self._quantised = None
        self._quantise = None

    def arrays(
        self,
    ) -> tuple[
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
    ]:
        """(pre index, post index, weight, delay) of every synapse, as asked for."""
        if len(self._pre_parts) != 1:
            self._pre_parts = [_joined(self._pre_parts, np.int64)]
            self._post_parts = [_joined(self._post_parts, np.int64)]
            self._weight_parts = [_joined(self._weight_parts, np.float64)]
            self._delay_parts = [_joined(self._delay_parts, np.float64)]
        return (
            self._pre_parts[0],
            self._post_parts[0],
            self._weight_parts[0],
            self._delay_parts[0],
        )

    def _set_per_connection(self, name: str, values: npt.NDArray[np.float64]) -> None:
        if values.size != len(self):
            raise errors.ConnectionError(
                f"{values.size} values of {name} given for the {len(self)} connections of "
                f"projection {self.label!r}"
            )
        check = self.synapse_type.parameter_checks.get(name)
        if check is not None:
            check(values, self)
        self.arrays()
        if name == "weight":
            self._weight_parts = [values.astype(np.float64)]
        else:
            dt = self._simulator.state.dt
            self._delay_parts = [np.maximum(np.rint(values / dt), 1.0) * dt]

    def set_quantised_weights(self, weights: Callable[[], npt.NDArray[np.float64]] | None) -> None:
        """Say how to compute the weights the machine stores (after mapping; on demand)."""
        self._quantise = weights
        self._quantised = None

    # --- PyNN's queries
    def __len__(self) -> int:
        return int(sum(p.size for p in self._pre_parts))

    def _columns(self, names: Any) -> list[npt.NDArray[Any]]:
        pre, post, weight, delay = self.arrays()
        if self._quantised is None and self._quantise is not None:
            self._quantised = self._quantise()
        if self._quantised is not None:
            weight = self._quantised
        by_name = {
            "presynaptic_index": pre,
            "postsynaptic_index": post,
            "weight": weight,
            "delay": delay,
        }
        columns = []
        for name in names:
            key = name[:-1] if name in ("weights", "delays") else name
            if key not in by_name:
                rule = self._rule_parameter(key)
                if rule is None:
                    raise errors.NonExistentParameterError(
                        key, type(self.synapse_type).__name__, list(_ATTRIBUTES)
                    )
                by_name[key] = np.broadcast_to(rule, pre.shape)
            columns.append(by_name[key])
        return columns

    def _rule_parameter(self, name: str) -> float | None:
        """An STDP rule's parameter (one value for the whole projection); None if none."""
        if not isinstance(self.synapse_type, STDPMechanism):
            return None
        for component in (
            self.synapse_type.timing_dependence,
            self.synapse_type.weight_dependence,
        ):
            if name in component.get_parameter_names():
                return float(component.parameter_space[name].base_value)
        return None

    def _get_attributes_as_list(self, names: Any) -> list[tuple[Any, ...]]:
        columns = self._columns(names)
        return list(zip(*(c.tolist() for c in columns), strict=True))

    def _get_attributes_as_arrays(self, names: Any, multiple_synapses: str = "sum") -> list[Any]:
        pre, post = self.arrays()[:2]
        combine = common.Projection.MULTI_SYNAPSE_OPERATIONS[multiple_synapses]
        result = []
        for column in self._columns(names):
            values = np.full((self.pre.size, self.post.size), np.nan)
            if multiple_synapses == "sum":
                seen = np.zeros_like(values, dtype=bool)
                seen[pre, post] = True
                values[seen] = 0.0
                np.add.at(values, (pre, post), column)
            elif multiple_synapses == "last":
                values[pre, post] = column
            else:
                for i, j, v in zip(pre.tolist(), post.tolist(), column.tolist(), strict=True):
                    values[i, j] = v if np.isnan(values[i, j]) else combine(values[i, j], v)
            result.append(values)
        return result

    @property
    def connections(self) -> Any:
        """PyNN's per-connection objects: not kept here (10 M synapses are flat arrays)."""
        raise NotSupportedError(
            "Projection.connections (one object per connection)",
            "Projection.get(...) and save(...), which answer from the arrays",
        )

    def set(self, **attributes: Any) -> None:
        raise NotSupportedError(
            "Projection.set() (changing synapses after creation)",
            "weights and delays given to the synapse type when the projection is made",
        )
