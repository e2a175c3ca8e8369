"""The PyNN backend under its short name: ``import allotment.pynn as sim``.

Everything is :mod:`toolchain.pynn`'s; this module only re-exports it.
"""

from toolchain.pynn import *  # noqa: F403
from toolchain.pynn import __all__ as __all__
