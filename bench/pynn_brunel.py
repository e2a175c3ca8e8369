"""brunel-exp written as a user writes it in PyNN, run through allotment's backend and pyNN.nest.

The same PyNN script (:func:`build_and_run`) runs three ways on this machine, each in a
process of its own, alternating A/B over ``--repeats`` rounds:

* ``allotment``: ``import allotment.pynn as sim`` (virtual mode, the chip model in-process);
* ``nest``: ``import pyNN.nest as sim`` (NEST 3.10, on its grid, one thread);
* ``direct``: ``bench/brunel.py``, the toolchain driven directly from numpy arrays.

Prints one JSON line: the medians of ``backend_total_s``, ``nest_total_s`` and
``direct_total_s`` (build + run, from the first PyNN call to the end of the run),
``overhead_fraction`` = backend / direct - 1, and both PyNN networks' mean rates.

Usage: ``python bench/pynn_brunel.py [--network brunel-exp|brunel-exp-small] [--repeats N]``
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"brunel-exp": (8000, 2000, 800, 200), "brunel-exp-small": (800, 200, 80, 20)}
SIM_MS = 1000.0
DT_MS = 0.1
DELAY_MS = 1.5
J_MV = 0.1
W_E_NA = J_MV / 1.8194978
G = 8.0
ETA = 2.0


def build_and_run(sim: Any, network: str, seed: int, **setup: Any) -> dict[str, Any]:
    """brunel-exp in plain PyNN; returns timings and the mean rate."""
    n_exc, n_inh, c_exc, c_inh = SIZES[network]
    nu_ext_hz = ETA * 20.0 / (J_MV * c_exc * 20.0) * 1000.0 * c_exc
    start = time.perf_counter()
    sim.setup(timestep=DT_MS, min_delay=DT_MS, **setup)
    rng = sim.NumpyRNG(seed=seed)
    cell = sim.IF_curr_exp(
        tau_m=20.0,
        cm=0.25,
        v_rest=0.0,
        v_reset=10.0,
        v_thresh=20.0,
        tau_refrac=2.0,
        tau_syn_E=0.5,
        tau_syn_I=0.5,
        i_offset=0.0,
    )
    exc = sim.Population(n_exc, cell, label="exc")
    inh = sim.Population(n_inh, cell, label="inh")
    neurons = exc + inh
    neurons.initialize(v=sim.RandomDistribution("uniform", (10.0, 20.0), rng=rng))
    drive = sim.Population(n_exc + n_inh, sim.SpikeSourcePoisson(rate=nu_ext_hz), label="drive")
    excitatory = sim.StaticSynapse(weight=W_E_NA, delay=DELAY_MS)
    inhibitory = sim.StaticSynapse(weight=-G * W_E_NA, delay=DELAY_MS)
    sim.Projection(drive, neurons, sim.OneToOneConnector(), excitatory, receptor_type="excitatory")
    sim.Projection(
        exc,
        neurons,
        sim.FixedNumberPreConnector(
            c_exc, allow_self_connections=False, with_replacement=True, rng=rng
        ),
        excitatory,
        receptor_type="excitatory",
    )
    sim.Projection(
        inh,
        neurons,
        sim.FixedNumberPreConnector(
            c_inh, allow_self_connections=False, with_replacement=True, rng=rng
        ),
        inhibitory,
        receptor_type="inhibitory",
    )
    neurons.record("spikes")
    built = time.perf_counter()
    sim.run(SIM_MS)
    done = time.perf_counter()
    n_spikes = sum(len(s) for s in neurons.get_data("spikes").segments[0].spiketrains)
    sim.end()
    return {
        "build_s": built - start,
        "run_s": done - built,
        "total_s": done - start,
        "mean_rate_hz": n_spikes / ((n_exc + n_inh) * SIM_MS / 1000.0),
    }


def _child(simulator: str, network: str, seed: int) -> None:
    if simulator == "allotment":
        sim = importlib.import_module("allotment.pynn")
        out = build_and_run(sim, network, seed)
    else:
        sim = importlib.import_module("pyNN.nest")
        out = build_and_run(sim, network, seed, spike_precision="on_grid", threads=1)
    print("RESULT " + json.dumps(out), flush=True)


def _run(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT / "bench",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-2000:]}")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
        if line.startswith("{"):
            direct: dict[str, Any] = json.loads(line)
            return {"total_s": direct["build_s"] + direct["run_s"], **direct}
    raise SystemExit(f"{args} printed no result")


def main() -> None:
    """Run the rounds and print the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(SIZES), default="brunel-exp")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--simulators",
        default="allotment,direct,nest",
        help="comma-separated subset of allotment,direct,nest (the line omits the others)",
    )
    parser.add_argument("--child", choices=("allotment", "nest"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.network, args.seed)
        return
    me = str(Path(__file__).resolve())
    chosen = [n for n in ("allotment", "direct", "nest") if n in args.simulators.split(",")]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    for _ in range(args.repeats):
        for name in chosen:
            if name == "direct":
                command = [
                    str(ROOT / "bench" / "brunel.py"),
                    "--network",
                    args.network,
                    "--seed",
                    str(args.seed),
                ]
            else:
                command = [me, "--child", name, "--network", args.network, "--seed", str(args.seed)]
            rounds[name].append(_run(command))
            print(f"{name}: {json.dumps(rounds[name][-1])}", file=sys.stderr, flush=True)

    def median(name: str, key: str) -> float | None:
        if not rounds.get(name):
            return None
        return round(statistics.median(r[key] for r in rounds[name]), 3)

    backend, direct = median("allotment", "total_s"), median("direct", "total_s")
    rates = {f"{n}_mean_rate_hz": median(n, "mean_rate_hz") for n in chosen}
    print(
        json.dumps(
            {
                "network": args.network,
                "seed": args.seed,
                "repeats": args.repeats,
                "backend_total_s": backend,
                "backend_build_s": median("allotment", "build_s"),
                "backend_run_s": median("allotment", "run_s"),
                "nest_total_s": median("nest", "total_s"),
                "nest_build_s": median("nest", "build_s"),
                "nest_run_s": median("nest", "run_s"),
                "direct_total_s": direct,
                "overhead_fraction": None
                if backend is None or direct is None
                else round(backend / direct - 1.0, 3),
                "backend_mean_rate_hz": rates.get("allotment_mean_rate_hz"),
                **rates,
                "load_average": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
