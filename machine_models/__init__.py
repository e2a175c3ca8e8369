"""Software model of SpiNNaker chips: the placed-binary image, the routers, the core applications.

Typical use::

    image = Image.decode(data)
    topology = Topology(width_chips, height_chips, ethernet_chips)
    validate(image, topology)
    results = Executor(image, topology).run(n_steps)
"""

import machine_models._openmp  # noqa: F401  (first: libgomp reads it when numba loads it)
from machine_models.errors import ImageError, MachineModelError
from machine_models.executor import Executor, Results
from machine_models.image import AppId, CoreImage, CoreXYP, Image, RoutingEntry, route_word
from machine_models.resources import validate
from machine_models.router import Router
from machine_models.topology import Topology

__all__ = [
    "AppId",
    "CoreImage",
    "CoreXYP",
    "Executor",
    "Image",
    "ImageError",
    "MachineModelError",
    "Results",
    "Router",
    "RoutingEntry",
    "Topology",
    "route_word",
    "validate",
]
