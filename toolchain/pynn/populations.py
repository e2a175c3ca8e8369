"""Populations, views and assemblies: PyNN's own classes, holding native parameter arrays.

Parameters live here, evaluated (one array or one scalar per parameter) as PyNN's mock and
NEST backends keep them; the network is built from them at the next run, so ``set()``
and ``initialize()`` between runs take effect then.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
from pyNN import common, errors
from pyNN.parameters import ParameterSpace, simplify
from pyNN.standardmodels import StandardCellType

from toolchain.pynn import simulator
from toolchain.pynn.errors import NotSupportedError
from toolchain.pynn.recording import Recorder
from toolchain.pynn.standardmodels import SUPPORTED_CELLS

__all__ = ["Assembly", "Population", "PopulationView"]

logger = logging.getLogger("allotment.pynn")

ADDITIONAL_PARAMETERS = ("seed", "max_rate")
"""Keys of sPyNNaker's ``additional_parameters`` (or extra keywords) this backend takes.

``max_rate`` is what sPyNNaker sizes a Poisson source's ring buffers for when its rate
changes later; here every source counts as one spike per step in the weight-shift rule
(spec 3.5), so it changes nothing and is taken with a line in the log."""


class Assembly(common.Assembly):  # type: ignore[misc]
    __doc__ = common.Assembly.__doc__
    _simulator = simulator


def _check_spike_times(celltype: Any, values: Any) -> None:
    """A spike array's times must be in order, as PyNN's other backends insist."""
    if "spike_times" not in values:
        return
    times = values["spike_times"]
    trains = times.reshape(-1) if isinstance(times, np.ndarray) else [times]
    for train in trains:
        value = np.asarray(getattr(train, "value", train), dtype=np.float64)
        if value.size > 1 and np.any(np.diff(value) < 0):
            raise errors.InvalidParameterValueError(
                f"spike times of {celltype.__class__.__name__} must be in increasing order"
            )


class _Parameters:
    """Reading and writing native parameters, shared by populations and their views."""

    parent: Any
    mask: Any
    celltype: Any

    def _get_native_parameters(self, *names: str) -> ParameterSpace:
        raise NotImplementedError

    def record(self, variables: Any, *args: Any, **kwargs: Any) -> None:
        """Record `variables` (PyNN's names, or ``"all"`` for every one the cell type has,
        as sPyNNaker takes it); the other arguments are PyNN's."""
        if isinstance(variables, str) and variables == "all":
            variables = list(self.celltype.recordable)
        super().record(variables, *args, **kwargs)  # type: ignore[misc]

    def _get_parameters(self, *names: str) -> ParameterSpace:
        if isinstance(self.celltype, StandardCellType):
            if any(name in self.celltype.computed_parameters() for name in names):
                native_names = self.celltype.get_native_names()
            else:
                native_names = self.celltype.get_native_names(*names)
            return self.celltype.reverse_translate(self._get_native_parameters(*native_names))
        return self._get_native_parameters(*names)


class PopulationView(_Parameters, common.PopulationView):  # type: ignore[misc]
    __doc__ = common.PopulationView.__doc__
    _assembly_class = Assembly
    _simulator = simulator

    def _root_cells(self) -> tuple[Population, npt.NDArray[np.int64]]:
        """The population this view is of (through views of views) and its cells' indices
        there (a view's own mask indexes its parent, which may be a view itself)."""
        root = self.parent
        while isinstance(root, PopulationView):
            root = root.parent
        return root, np.asarray(self.all_cells, dtype=np.int64) - int(root.first_id)

    def _get_native_parameters(self, *names: str) -> ParameterSpace:
        root, cells = self._root_cells()
        values = {}
        for name in names:
            value = root._parameters[name]
            if isinstance(value, np.ndarray):
                value = value[cells]
            values[name] = simplify(value)
        return ParameterSpace(values, shape=(self.size,))

    def _set_parameters(self, parameter_space: ParameterSpace) -> None:
        root, cells = self._root_cells()
        for name, value in parameter_space.items():
            full = np.broadcast_to(np.asarray(root._parameters[name]), (root.size,)).copy()
            try:
                full[cells] = value.evaluate(simplify=True)
            except ValueError as exc:
                raise errors.InvalidParameterValueError(
                    f"{name} should not be of type {type(value)}"
                ) from exc
            root._parameters[name] = full
        simulator.state.parameters_changed()

    def _set_initial_value_array(self, variable: str, initial_values: Any) -> None:
        root, cells = self._root_cells()
        root._set_initial_value_array(variable, initial_values, mask=cells)

    @property
    def initial_values(self) -> dict[str, Any]:
        """The view's share of its parent's initial values (a copy: set with initialize())."""
        root, cells = self._root_cells()
        return {
            name: root.initial_value_array(name)[cells]
            for name in root.celltype.default_initial_values
        }

    def _get_view(self, selector: Any, label: str | None = None) -> PopulationView:
        return PopulationView(self, selector, label)


class Population(_Parameters, common.Population):  # type: ignore[misc]
    """A PyNN population; ``seed`` and ``additional_parameters`` as sPyNNaker takes them.

    Args:
        seed: seeds the population's own random draws (its Poisson spikes).
        additional_parameters: sPyNNaker's extra settings; ``seed`` is honoured, any
            other key raises :class:`NotSupportedError`.
    """

    _simulator = simulator
    _recorder_class = Recorder
    _assembly_class = Assembly

    def id_to_index(self, id: Any) -> Any:
        """PyNN's, and no ids are no indices (PyNN's takes the minimum of an empty array when
        a view's cells record none of what its parent's other cells record)."""
        if isinstance(id, list | tuple | np.ndarray) and len(id) == 0:
            return np.zeros(0, dtype=int)
        return super().id_to_index(id)

    def __init__(
        self,
        size: Any,
        cellclass: Any,
        cellparams: Any = None,
        structure: Any = None,
        initial_values: Any = None,
        label: str | None = None,
        seed: int | None = None,
        additional_parameters: dict[str, Any] | None = None,
        **additional_kwargs: Any,
    ) -> None:
        extra = {**(additional_parameters or {}), **additional_kwargs}
        for key in extra:
            if key not in ADDITIONAL_PARAMETERS:
                raise NotSupportedError(
                    f"additional_parameters key {key!r}", ", ".join(ADDITIONAL_PARAMETERS)
                )
        if "max_rate" in extra:
            logger.info(
                "max_rate of %s is taken and changes nothing: the weight shifts count every"
                " source as one spike per step",
                label or "a population",
            )
        self.seed = extra.get("seed", seed)
        self._initial: dict[str, np.ndarray] = {}
        if not isinstance(cellclass, StandardCellType) and not (
            isinstance(cellclass, type) and issubclass(cellclass, StandardCellType)
        ):
            raise NotSupportedError(f"cell type {cellclass!r}", SUPPORTED_CELLS)
        if isinstance(cellclass, type) and cellparams is None:
            cellparams = {}  # a cell class alone, as sPyNNaker takes it: its defaults
        super().__init__(size, cellclass, cellparams, structure, initial_values or {}, label)
        simulator.state.populations.append(self)
        simulator.state.network_changed()

    def _create_cells(self) -> None:
        first = simulator.state.id_counter
        self.all_cells = np.array(
            [simulator.ID(i) for i in range(first, first + self.size)], dtype=simulator.ID
        )
        self._mask_local = np.ones(self.size, dtype=bool)
        if isinstance(self.celltype, StandardCellType):
            parameter_space = self.celltype.native_parameters
        else:
            parameter_space = self.celltype.parameter_space
        parameter_space.shape = (self.size,)
        parameter_space.evaluate(mask=self._mask_local, simplify=True)
        self._parameters = parameter_space.as_dict()
        _check_spike_times(self.celltype, self._parameters)
        for cell in self.all_cells:
            cell.parent = self
        simulator.state.id_counter += self.size

    def _set_initial_value_array(
        self, variable: str, initial_values: Any, mask: Any = None
    ) -> None:
        values = np.asarray(initial_values.evaluate(simplify=False), dtype=np.float64)
        if mask is None:
            self._initial[variable] = np.broadcast_to(values.reshape(-1), (self.size,)).copy()
        else:
            current = self.initial_value_array(variable).copy()
            current[mask] = values.reshape(-1)
            self._initial[variable] = current
        if any(p is self for p in simulator.state.populations):  # not while being made
            simulator.state.initial_values_changed()

    def _get_cell_initial_value(self, id: Any, variable: str) -> float:
        return float(self.initial_value_array(variable)[self.id_to_index(id)])

    def _set_cell_initial_value(self, id: Any, variable: str, value: Any) -> None:
        """``ID.set_initial_value``: one cell's, as ``initialize`` sets a population's (PyNN's
        own wrote it where the run never looked)."""
        if variable not in self.celltype.default_initial_values:
            raise NotSupportedError(
                f"initial value of {variable!r} for {type(self.celltype).__name__}",
                ", ".join(self.celltype.default_initial_values),
            )
        current = self.initial_value_array(variable).copy()
        current[self.id_to_index(id)] = float(value)
        self._initial[variable] = current
        simulator.state.initial_values_changed()

    def _get_view(self, selector: Any, label: str | None = None) -> PopulationView:
        return PopulationView(self, selector, label)

    def _get_native_parameters(self, *names: str) -> ParameterSpace:
        return ParameterSpace(
            {name: simplify(self._parameters[name]) for name in names}, shape=(self.size,)
        )

    def _set_parameters(self, parameter_space: ParameterSpace) -> None:
        parameter_space.evaluate(simplify=True, mask=self._mask_local)
        _check_spike_times(self.celltype, dict(parameter_space.items()))
        for name, value in parameter_space.items():
            self._parameters[name] = value
        simulator.state.parameters_changed()

    def initial_value_array(self, variable: str) -> np.ndarray:
        """The initial values of ``variable``, one per neuron."""
        if variable in self._initial:
            return self._initial[variable]
        default = self.celltype.default_initial_values.get(variable, 0.0)
        return np.full(self.size, float(default))
