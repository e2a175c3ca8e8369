"""setup(), end(), run() and the other functions of PyNN's control API, sPyNNaker's way.

``setup()`` takes sPyNNaker's extra arguments (``n_boards_required``,
``n_chips_required``, ``time_scale_factor``, the ``[Machine]`` keys of spynnaker.cfg)
and starts a :class:`~toolchain.pynn.session.Session`; ``end()`` writes what is still to
be written and prints the run's worries. A script that never calls ``end()`` is ended at
interpreter exit the same way.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from pyNN import common
from pyNN.common.control import DEFAULT_MIN_DELAY, DEFAULT_TIMESTEP
from pyNN.recording import get_io

from machine_models.topology import Topology
from toolchain.pynn import simulator
from toolchain.pynn.config import describe, read_settings
from toolchain.pynn.errors import NotSupportedError
from toolchain.pynn.reports import ReportFolder
from toolchain.pynn.session import Session
from toolchain.splitting import MAX_DELAY_STAGES, MAX_RING_BUFFER_BITS, SYNAPSE_TYPE_BITS, ceil_log2

__all__ = [
    "end",
    "get_current_time",
    "get_machine",
    "get_max_delay",
    "get_min_delay",
    "get_time_step",
    "initialize",
    "name",
    "num_processes",
    "rank",
    "reset",
    "run",
    "run_for",
    "run_until",
    "set_number_of_neurons_per_core",
    "setup",
]

logger = logging.getLogger("allotment.pynn")

SETUP_MACHINE_KEYS = (
    "spalloc_server",
    "spalloc_port",
    "spalloc_user",
    "virtual_board",
    "n_boards_required",
    "n_chips_required",
)
ACCEPTED_EXTRA = (
    *SETUP_MACHINE_KEYS,
    "max_delay",
    "time_scale_factor",
    "database_socket_addresses",
    "graph_label",
    "n_chips",
)
DEFAULT_NEURONS_PER_CORE = 256


def _longest_delay_steps(neurons_per_core: int) -> int:
    index_bits = ceil_log2(neurons_per_core)
    slots = 1 << max(0, MAX_RING_BUFFER_BITS - index_bits - SYNAPSE_TYPE_BITS)
    return MAX_DELAY_STAGES * slots


def setup(
    timestep: float = DEFAULT_TIMESTEP,
    min_delay: float | str = DEFAULT_MIN_DELAY,
    max_delay: float | str | None = None,
    **extra_params: Any,
) -> int:
    """Start a new network (any previous one is ended and forgotten).

    Args:
        timestep: the time step in ms (a whole number of microseconds).
        min_delay: the shortest delay; ``"auto"`` is one time step.
        max_delay: the longest delay; ``"auto"`` or None is what delay extensions reach
            with 256 neurons per core.
        extra_params: sPyNNaker's: ``n_boards_required``, ``n_chips_required``,
            ``time_scale_factor`` (accepted; the chip model runs as fast as it can),
            and the ``[Machine]`` keys ``spalloc_server``, ``spalloc_port``,
            ``spalloc_user``, ``virtual_board`` (over spynnaker.cfg).

    Returns:
        The MPI rank, 0.
    """
    for key in extra_params:
        if key not in ACCEPTED_EXTRA:
            # as PyNN's other backends do, an argument meant for another simulator is
            # ignored (NEST's threads, NEURON's use_cvode ...); the log says so
            logger.warning("setup() argument %r is not used by allotment", key)
    if timestep is None:
        timestep = 1.0  # sPyNNaker's default machine time step
    common.setup(timestep, min_delay, **extra_params)
    state = simulator.state
    if state.session is not None:
        _end_session()
    state.clear()
    state.dt = float(timestep)
    state.min_delay = state.dt if min_delay == "auto" else float(min_delay)
    if max_delay in (None, "auto"):
        state.max_delay = _longest_delay_steps(DEFAULT_NEURONS_PER_CORE) * state.dt
    else:
        state.max_delay = float(max_delay)
    if extra_params.get("time_scale_factor") is not None:
        logger.info("time_scale_factor is accepted and ignored: the chip model runs unpaced")
    settings = read_settings(extra_params)
    state.session = Session(state, settings, ReportFolder())
    _register_exit()
    return 0


def _end_session() -> None:
    state = simulator.state
    try:
        for population, variables, filename in state.write_on_end:
            population.write_data(get_io(filename), variables)
    finally:
        # A file that cannot be written still ends the session: the boards are freed.
        state.write_on_end = []
        if state.session is not None:
            session, state.session = state.session, None
            session.end()


def end(compatible_output: bool = True) -> None:
    """Write files asked for at the end, print the run's worries, free the machine."""
    _end_session()


_is_registered = False


def _register_exit() -> None:
    global _is_registered
    if not _is_registered:
        atexit.register(_at_exit)
        _is_registered = True


def _at_exit() -> None:
    # a script that never calls end() still gets its files, reports and summary
    try:
        _end_session()
    except Exception:  # an exit hook must not turn a finished script into a failed one
        logger.exception("ending the simulation at exit failed")


run, run_until = common.build_run(simulator)
run_for = run
reset = common.build_reset(simulator)
initialize = common.initialize
(
    get_current_time,
    get_time_step,
    get_min_delay,
    get_max_delay,
    num_processes,
    rank,
) = common.build_state_queries(simulator)


def name() -> str:
    """What runs the network (sPyNNaker's ``sim.name()``)."""
    session = simulator.state.session
    if session is None:
        return "allotment"
    return describe(session.settings)


def set_number_of_neurons_per_core(neuron_type: Any, max_permitted: int) -> None:
    """Neurons per core for a cell type (a class or an instance), as on sPyNNaker."""
    type_name = (
        neuron_type.__name__ if isinstance(neuron_type, type) else type(neuron_type).__name__
    )
    if isinstance(max_permitted, tuple):
        raise NotSupportedError("multi-dimensional neurons per core", "one number of neurons")
    if int(max_permitted) < 1:
        raise NotSupportedError(f"{max_permitted} neurons per core", "at least 1")
    session = simulator.state.session
    if session is not None and session.machine.step > 0:
        # (it maps the network anew: from t = 0 only, as a population added)
        raise NotSupportedError(
            "set_number_of_neurons_per_core() between runs without reset()",
            "set_number_of_neurons_per_core() before the first run, or after reset()",
        )
    simulator.state.neurons_per_core[type_name] = int(max_permitted)
    simulator.state.network_changed()


def set_number_of_synapse_cores(neuron_type: Any, n_synapse_cores: int) -> None:
    """sPyNNaker's split of synapse processing onto cores of their own: taken, and it changes
    nothing here (each neuron core processes its own synapses, as sPyNNaker's combined
    cores do)."""
    logger.info(
        "set_number_of_synapse_cores(%s, %s) changes nothing: each neuron core processes its"
        " own synapses",
        getattr(neuron_type, "__name__", type(neuron_type).__name__),
        n_synapse_cores,
    )


def set_allow_delay_extensions(allow: bool) -> None:
    """sPyNNaker's switch for delay extension cores: they are always used for delays past a
    core's own slots; refusing them is not supported."""
    if not allow:
        raise NotSupportedError(
            "set_allow_delay_extensions(False)",
            "delays past a core's own slots through delay extensions",
        )


def get_machine() -> Topology:
    """The machine the network runs on (mapping the network if it is not yet)."""
    session = simulator.state.session
    if session is None:
        raise RuntimeError("setup() must be called before get_machine()")
    return session.topology()
