"""Modules that make sPyNNaker's import names mean allotment's PyNN backend inside a job.

Scripts written for the portal say `import spynnaker8 as sim`, `import spynnaker.pyNN as
sim` or `import pyNN.spiNNaker as sim` (PyNN's own `pyNN/spiNNaker.py` is
`from spynnaker.pyNN import *`). The runner writes two tiny packages into a directory of its
own and puts it first on the job's PYTHONPATH; nothing is installed globally. sPyNNaker's
helper modules (`neo_convertor`, `plot_utils`, `spynnaker_plotting`, under both names) are
there too, as `toolchain.pynn.neo_convertor` and `toolchain.pynn.spynnaker_plotting`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["install"]

_SHIM = '''"""allotment's PyNN backend under sPyNNaker's name (written by the batch runner)."""
try:
    from allotment.pynn import *  # noqa: F403
    from allotment.pynn import __all__  # noqa: F401
except ImportError as _error:
    if getattr(_error, "name", "") not in ("allotment", "allotment.pynn"):
        raise
    raise ImportError(
        "allotment's PyNN backend (allotment.pynn) is not installed in this environment"
    ) from None
'''

_NEO_CONVERTOR = (
    '"""sPyNNaker\'s neo_convertor (written by the batch runner)."""\n'
    "from toolchain.pynn.neo_convertor import *  # noqa: F403\n"
    "from toolchain.pynn.neo_convertor import __all__  # noqa: F401\n"
)
_PLOTTING = (
    '"""sPyNNaker\'s plotting helpers (written by the batch runner)."""\n'
    "from toolchain.pynn.spynnaker_plotting import *  # noqa: F403\n"
    "from toolchain.pynn.spynnaker_plotting import __all__  # noqa: F401\n"
)

_FILES = {
    "spynnaker/__init__.py": '"""sPyNNaker\'s package name, for `spynnaker.pyNN`."""\n',
    "spynnaker/pyNN/__init__.py": _SHIM,
    "spynnaker/pyNN/utilities/__init__.py": '"""sPyNNaker\'s utilities package."""\n',
    "spynnaker/pyNN/utilities/neo_convertor.py": _NEO_CONVERTOR,
    "spynnaker/plot_utils.py": (
        '"""sPyNNaker\'s plot_utils (written by the batch runner)."""\n'
        "from toolchain.pynn.spynnaker_plotting import heat_plot, line_plot, plot_spikes\n"
        '__all__ = ["heat_plot", "line_plot", "plot_spikes"]\n'
    ),
    "spynnaker/spynnaker_plotting.py": _PLOTTING,
    "spynnaker8/__init__.py": _SHIM,
    "spynnaker8/utilities/__init__.py": '"""sPyNNaker 8\'s utilities package."""\n',
    "spynnaker8/utilities/neo_convertor.py": _NEO_CONVERTOR,
    "spynnaker8/spynnaker_plotting.py": _PLOTTING,
}


def install(directory: Path) -> Path:
    """Write the shim packages under `directory` (idempotent) and return it."""
    for relative, text in _FILES.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return directory
