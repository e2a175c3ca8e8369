"""Modules that make sPyNNaker's import names mean allotment's PyNN backend inside a job.

Scripts written for the portal say `import spynnaker8 as sim`, `import spynnaker.pyNN as
sim` or `import pyNN.spiNNaker as sim` (PyNN's own `pyNN/spiNNaker.py` is
`from spynnaker.pyNN import *`). The runner writes two tiny packages into a directory of its
own and puts it first on the job's PYTHONPATH; nothing is installed globally.
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

_FILES = {
    "spynnaker/__init__.py": '"""sPyNNaker\'s package name, for `spynnaker.pyNN`."""\n',
    "spynnaker/pyNN/__init__.py": _SHIM,
    "spynnaker8/__init__.py": _SHIM,
}


def install(directory: Path) -> Path:
    """Write the shim packages under `directory` (idempotent) and return it."""
    for relative, text in _FILES.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    return directory
