"""Brunel (2000) model A with exponential current synapses, through the toolchain and the model.

Implements the benchmark networks ``brunel-exp`` and ``brunel-exp-small`` of the project's
benchmark specification: builds the network with the reference construction (numpy
``default_rng(seed)``), maps it onto a virtual one-board allocation, runs 1000 ms at
dt = 0.1 ms on the chip model's executor and prints one JSON line.

Usage: ``python bench/brunel.py [--network brunel-exp|brunel-exp-small] [--seed S] [--busy N]
[--compare R]``

``--busy N`` keeps N cores busy (N processes spinning) while the benchmark runs, as other runs
and the server do beside a worker. ``--compare R`` runs the benchmark R times with numba's
default thread count and R times with ``NUMBA_NUM_THREADS=1``, alternating (ABAB, BABA ...),
each in a fresh process after one untimed warm-up run, prints every run's line and then a
summary line comparing run_s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine_models import Executor
from toolchain import (
    FromArrays,
    IFCurrExp,
    Network,
    OneToOne,
    Population,
    SpikeSourcePoisson,
    StaticSynapse,
    map_network,
    virtual_allocation,
)

SIM_MS = 1000.0
DT_MS = 0.1
DELAY_MS = 1.5
J_MV = 0.1
PSP_PEAK_PER_NA = 1.8194978
W_E_NA = J_MV / PSP_PEAK_PER_NA
G = 8.0
ETA = 2.0
TAU_M_MS = 20.0
V_THRESH_MV = 20.0
V_RESET_MV = 10.0


@dataclass(frozen=True)
class Sizes:
    """Population sizes and in-degrees of one benchmark network."""

    n_exc: int
    n_inh: int
    c_exc: int
    c_inh: int


NETWORKS = {"brunel-exp": Sizes(8000, 2000, 800, 200), "brunel-exp-small": Sizes(800, 200, 80, 20)}


def reference_connectivity(
    sizes: Sizes, rng: np.random.Generator
) -> tuple[
    npt.NDArray[np.float64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
]:
    """The specification's reference construction: v0, then E and I sources per target."""
    n = sizes.n_exc + sizes.n_inh
    v0 = rng.uniform(V_RESET_MV, V_THRESH_MV, size=n)
    post = np.arange(n)
    is_e = post < sizes.n_exc
    e_pre = rng.integers(0, sizes.n_exc - is_e[:, None], size=(n, sizes.c_exc))
    e_pre += (e_pre >= post[:, None]) & is_e[:, None]
    i_pre = rng.integers(0, sizes.n_inh - (~is_e)[:, None], size=(n, sizes.c_inh))
    i_pre += (i_pre >= (post - sizes.n_exc)[:, None]) & (~is_e)[:, None]
    e_post = np.repeat(post, sizes.c_exc)
    i_post = np.repeat(post, sizes.c_inh)
    return v0, e_pre.reshape(-1), e_post, (sizes.n_exc + i_pre).reshape(-1), i_post


def cv_isi(steps: npt.NDArray[np.int64], neurons: npt.NDArray[np.int64], n: int) -> float:
    """Mean over neurons with >= 3 spikes of std(ISI) / mean(ISI) (ddof 0)."""
    order = np.lexsort((steps, neurons))
    s, nn = steps[order].astype(np.float64), neurons[order]
    same = nn[1:] == nn[:-1]
    isi = np.diff(s)[same]
    owner = nn[1:][same]
    count = np.bincount(owner, minlength=n)
    mean = np.bincount(owner, weights=isi, minlength=n)
    sq = np.bincount(owner, weights=isi * isi, minlength=n)
    ok = count >= 2
    mu = mean[ok] / count[ok]
    var = np.maximum(sq[ok] / count[ok] - mu * mu, 0.0)
    return float(np.mean(np.sqrt(var) / mu)) if ok.any() else float("nan")


def _spin() -> None:  # pragma: no cover - runs in a child process
    while True:
        pass


@contextmanager
def busy_cores(n: int) -> Iterator[None]:
    """Keep ``n`` cores busy with spinning processes while the block runs."""
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for proc in spinners:
        proc.start()
    try:
        yield
    finally:
        for proc in spinners:
            proc.terminate()
        for proc in spinners:
            proc.join()


def compare(args: argparse.Namespace) -> None:
    """Alternate fresh runs with the default thread count and with one thread; summarise."""
    base = [sys.executable, __file__, "--network", args.network, "--seed", str(args.seed)]
    env_one = dict(os.environ, NUMBA_NUM_THREADS="1")
    env_default = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    runs: dict[str, list[float]] = {"default": [], "one_thread": []}
    # One untimed run first: on a fresh checkout it fills numba's on-disk cache, whose
    # one-off compile would otherwise land in the first timed round's run_s.
    subprocess.run(base, env=env_default, capture_output=True, text=True, check=True)
    with busy_cores(args.busy):
        for round_index in range(args.compare):
            order = ["default", "one_thread"]
            if round_index % 2:
                order.reverse()
            for name in order:
                env = env_default if name == "default" else env_one
                out = subprocess.run(base, env=env, capture_output=True, text=True, check=True)
                line = json.loads(out.stdout.strip().splitlines()[-1])
                line.update(config=name, busy=args.busy)
                print(json.dumps(line), flush=True)
                runs[name].append(float(line["run_s"]))
    default, one = statistics.median(runs["default"]), statistics.median(runs["one_thread"])
    print(
        json.dumps(
            {
                "compare": args.network,
                "busy": args.busy,
                "rounds": args.compare,
                "default_run_s": runs["default"],
                "one_thread_run_s": runs["one_thread"],
                "median_default_s": round(default, 3),
                "median_one_thread_s": round(one, 3),
                "default_over_one_thread": round(default / one, 3),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


def main() -> None:
    """Build, run and print the benchmark's JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="brunel-exp")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--busy", type=int, default=0, help="cores to keep busy meanwhile")
    parser.add_argument("--compare", type=int, default=0, help="alternating rounds to run")
    args = parser.parse_args()
    if not 1 <= args.seed < 2**31:
        parser.error("seed must be in 1 .. 2**31 - 1")
    if args.busy < 0 or args.compare < 0:
        parser.error("--busy and --compare must be >= 0")
    if args.compare:
        compare(args)
        return
    with busy_cores(args.busy):
        run(args)


def brunel_network(
    sizes: Sizes, seed: int
) -> tuple[Network, Population, Population, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The benchmark network: (network, neurons, drive, E sources, I sources)."""
    n = sizes.n_exc + sizes.n_inh
    nu_ext_hz = ETA * V_THRESH_MV / (J_MV * sizes.c_exc * TAU_M_MS) * 1000.0 * sizes.c_exc
    rng = np.random.default_rng(seed)
    v0, e_pre, e_post, i_pre, i_post = reference_connectivity(sizes, rng)
    net = Network(dt_ms=DT_MS, seed=seed)
    cell = IFCurrExp(
        tau_m=TAU_M_MS,
        cm=0.25,
        v_rest=0.0,
        v_thresh=V_THRESH_MV,
        v_reset=V_RESET_MV,
        tau_refrac=2.0,
        tau_syn_E=0.5,
        tau_syn_I=0.5,
        i_offset=0.0,
    )
    neurons = net.population(n, cell, "neurons")
    neurons.initialize(v0)
    neurons.record("spikes")
    drive = net.population(n, SpikeSourcePoisson(rate=nu_ext_hz), "drive")
    net.project(
        neurons,
        neurons,
        FromArrays(e_pre, e_post),
        StaticSynapse(W_E_NA, DELAY_MS),
        "excitatory",
        "exc",
    )
    net.project(
        neurons,
        neurons,
        FromArrays(i_pre, i_post),
        StaticSynapse(-G * W_E_NA, DELAY_MS),
        "inhibitory",
        "inh",
    )
    net.project(drive, neurons, OneToOne(), StaticSynapse(W_E_NA, DELAY_MS), "excitatory", "ext")
    return net, neurons, drive, e_pre, i_pre


def run(args: argparse.Namespace) -> None:
    """Build and run the network once and print its JSON line."""
    sizes = NETWORKS[args.network]
    n = sizes.n_exc + sizes.n_inh
    nu_ext_hz = ETA * V_THRESH_MV / (J_MV * sizes.c_exc * TAU_M_MS) * 1000.0 * sizes.c_exc

    start = time.perf_counter()
    net, neurons, drive, e_pre, i_pre = brunel_network(sizes, args.seed)
    mapped = map_network(net, virtual_allocation(1))
    executor = Executor(mapped.image, mapped.topology)
    build_s = time.perf_counter() - start

    n_steps = round(SIM_MS / DT_MS)
    start = time.perf_counter()
    results = executor.run(n_steps)
    run_s = time.perf_counter() - start

    spikes_of = {tuple(xyp): rows for xyp, rows in results.spikes.items()}
    steps_parts, ids_parts = [], []
    for vertex, where in mapped.cores_of(neurons):
        rows = spikes_of.get(tuple(where), np.zeros((0, 2), dtype=np.int64))
        steps_parts.append(rows[:, 0])
        ids_parts.append(rows[:, 1] + vertex.lo)
    steps = np.concatenate(steps_parts).astype(np.int64)
    ids = np.concatenate(ids_parts).astype(np.int64)
    n_spikes = int(steps.size)
    out_degree = np.bincount(np.concatenate([e_pre, i_pre]), minlength=n)
    provenance = {tuple(xyp): counters for xyp, counters in results.core_provenance.items()}
    ext_events = sum(
        int(provenance[tuple(where)]["spikes_sent"]) for _, where in mapped.cores_of(drive)
    )
    events = int(np.bincount(ids, minlength=n) @ out_degree) + ext_events
    print(
        json.dumps(
            {
                "network": args.network,
                "n_neurons": n,
                "n_synapses": int(e_pre.size + i_pre.size),
                "sim_ms": SIM_MS,
                "dt_ms": DT_MS,
                "build_s": round(build_s, 3),
                "run_s": round(run_s, 3),
                "spikes": n_spikes,
                "synaptic_events": events,
                "mean_rate_hz": round(n_spikes / (n * SIM_MS / 1000.0), 3),
                "cv_isi": round(cv_isi(steps, ids, n), 4),
                "simulator": "allotment-chip-model",
                "seed": args.seed,
                "peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1
                ),
                "ext_events": "counted",
                "ext_rate_hz": nu_ext_hz,
                "events_per_s": round(events / run_s) if run_s > 0 else None,
                "threads": numba.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "seconds_per_step_by_threads": {
                    str(k): round(v, 7) for k, v in executor.seconds_per_step.items()
                },
                "busy": args.busy,
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
