"""Compile the PyNN backend's numba kernels once into a cache that every job gets a copy of.

A job's Python cannot keep numba's cache in the (read-only) source tree, so without help each
job compiles the chip model's kernels again (tens of seconds for a one-neuron script). The
runner runs this module once, outside any job, with `NUMBA_CACHE_DIR` set to a directory of
its own, and copies that directory into each job (a copy: a job can never change what the
next one loads). `python -m jobqueue.warmup` runs a tiny network through the common models,
delays and sources, in virtual mode.
"""

from __future__ import annotations

import os
import sys
import tempfile

__all__ = ["main"]


def main() -> int:
    """Run the warm-up network; 0 when the kernels are compiled, 1 if there is no backend
    (nothing was compiled: the cache must not be marked warm)."""
    try:
        import toolchain.pynn as sim
    except ImportError as error:
        print(f"allotment: no PyNN backend to warm up: {error}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        with open("spynnaker.cfg", "w") as cfg:
            cfg.write("[Machine]\nvirtual_board = True\n")
        sim.setup(timestep=1.0)
        cells = sim.Population(4, sim.IF_curr_exp(), label="cells")
        spikes = sim.Population(1, sim.SpikeSourceArray(spike_times=[0.0, 2.0]), label="spikes")
        noise = sim.Population(2, sim.SpikeSourcePoisson(rate=100.0), label="noise")
        sim.Projection(
            spikes, cells, sim.AllToAllConnector(), sim.StaticSynapse(weight=5.0, delay=1.0)
        )
        sim.Projection(
            noise, cells, sim.AllToAllConnector(), sim.StaticSynapse(weight=1.0, delay=20.0)
        )
        cells.record(["spikes", "v"])
        sim.run(30.0)
        cells.get_data(variables=["spikes", "v"])
        sim.end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
