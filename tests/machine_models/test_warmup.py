"""The warm-up image: a valid image whose run spikes and loads every kernel a real run calls."""

from __future__ import annotations

import json
import subprocess
import sys

from machine_models.image import Image
from machine_models.warmup import warm_kernels, warm_up_image

# A fresh process: which kernels have been called before the warm-up, after it, and after a
# run of a network the toolchain maps (one per kernel: its number of compiled signatures).
_PROBE = """
import json, numba
from machine_models import kernels, router, Executor, Topology
from machine_models.warmup import warm_kernels
from toolchain import IFCurrExp, Network, OneToOne, SpikeSourcePoisson, StaticSynapse, map_network
from toolchain.allocation import virtual_allocation

def called():
    return {
        f"{module.__name__}.{name}": len(value.signatures)
        for module in (kernels, router)
        for name, value in vars(module).items()
        if isinstance(value, numba.core.registry.CPUDispatcher) and value.signatures
    }

before = called()
warm_kernels()
warmed = called()
net = Network(dt_ms=1.0, seed=5)
drive = net.population(50, SpikeSourcePoisson(rate=80.0), "drive")
cells = net.population(50, IFCurrExp(), "cells")
net.project(drive, cells, OneToOne(), StaticSynapse(weight=2.0, delay=1.0))
cells.record("spikes")
Executor(map_network(net, virtual_allocation(1)).image, Topology.single_board()).run(100)
print(json.dumps([before, warmed, called()]))
"""


def test_the_warm_up_image_round_trips_and_its_neurons_spike() -> None:
    image = warm_up_image()
    assert Image.decode(image.encode()).encode() == image.encode()
    assert warm_kernels() > 0


def test_after_the_warm_up_a_run_calls_no_kernel_it_did_not_load() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=240
    )
    before, warmed, after_run = json.loads(probe.stdout.splitlines()[-1])
    assert before == {}
    assert "machine_models.kernels.run_windows" in warmed
    assert after_run == warmed
