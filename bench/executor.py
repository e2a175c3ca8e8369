"""Benchmark of the chip model's executor on a synthetic Brunel-like network (no toolchain).

Builds images directly: N LIF neurons in cores of 250, fixed in-degree CE + CI random synapses
with a 15-step delay, one Poisson source per neuron (one-to-one, payload counts), dt 0.1 ms.
Prints one JSON line: events/s, spikes, build and run seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numba
import numpy as np

from machine_models import lif, sources
from machine_models.executor import Executor
from machine_models.geometry import ChipXY
from machine_models.image import AppId, CoreImage, Image, RoutingEntry, route_word
from machine_models.regions import (
    REGION_DATA,
    REGION_KEYS,
    REGION_POP_TABLE,
    REGION_RECORDING,
    REGION_SYNAPSE_PARAMS,
    REGION_SYNAPTIC_MATRIX,
    encode_keys,
)
from machine_models.topology import Topology

PER_CORE = 250
LIF_FLAG = 1 << 18
POISSON_FLAG = 2 << 18


def build(n_neurons: int, ce: int, ci: int, seed: int) -> tuple[Image, int]:
    rng = np.random.default_rng(seed)
    n_cores = n_neurons // PER_CORE
    ne = n_neurons * 4 // 5
    pre = np.concatenate(
        [rng.integers(0, ne, (n_neurons, ce)), rng.integers(ne, n_neurons, (n_neurons, ci))], axis=1
    )
    post = np.repeat(np.arange(n_neurons), ce + ci)
    pre = pre.reshape(-1)
    w_e = lif.weights_to_u16(0.0549602204, 1)
    w_i = lif.weights_to_u16(0.4396817632, 3)
    cores: list[CoreImage] = []
    placement = [(ChipXY(c // 8, 0), 1 + c % 8) for c in range(n_cores)]
    tables: dict[ChipXY, list[RoutingEntry]] = {ChipXY(x, 0): [] for x in range(5)}
    tcore = post // PER_CORE
    order = np.lexsort((post, pre, tcore))
    pre_s, post_s, tc_s = pre[order], post[order], tcore[order]
    is_inh = pre_s >= ne
    words_all = lif.synapse_words(
        np.where(is_inh, w_i, w_e), 15, is_inh.astype(np.uint32), post_s % PER_CORE, 8, 1
    )
    bounds = np.searchsorted(tc_s, np.arange(n_cores + 1))
    for c in range(n_cores):
        chip, p = placement[c]
        lo, hi = bounds[c], bounds[c + 1]
        counts = np.bincount(pre_s[lo:hi], minlength=n_neurons)
        ptr = np.concatenate([[0], np.cumsum(counts)])
        row_len = int(counts.max())
        block = lif.encode_synaptic_block(ptr, words_all[lo:hi], row_len)
        one = lif.encode_synaptic_block(
            np.arange(PER_CORE + 1),
            lif.synapse_words(np.full(PER_CORE, w_e), 15, 0, np.arange(PER_CORE), 8, 1),
            1,
        )
        matrix = np.concatenate([block, one])
        pop = lif.PopTable(
            (
                lif.MasterPopEntry(LIF_FLAG, 0xFFFC0000, 0, 1, 4, 0x3F, 12, PER_CORE),
                lif.MasterPopEntry(POISSON_FLAG | c << 12, 0xFFFFF000, 1, 1, 4, 0, 0, 0),
            ),
            ((0, row_len), (block.size * 4, 1)),
        )
        params = lif.brunel_cell(PER_CORE, rng.uniform(10, 20, PER_CORE))
        cores.append(
            CoreImage(
                chip,
                p,
                AppId.IF_CURR_EXP,
                {
                    REGION_KEYS: encode_keys(LIF_FLAG | c << 12 | np.arange(PER_CORE) << 4, 4),
                    REGION_DATA: lif.encode_neuron_params(params, 100),
                    REGION_SYNAPSE_PARAMS: lif.encode_synapse_params(
                        lif.SynapseParams(PER_CORE, 8, 1, 4, 1, 3)
                    ),
                    REGION_POP_TABLE: lif.encode_pop_table(pop),
                    REGION_SYNAPTIC_MATRIX: matrix.astype("<u4").tobytes(),
                    REGION_RECORDING: lif.encode_recording(lif.RecordingParams(True)),
                },
            )
        )
        cores.append(
            CoreImage(
                chip,
                p + 8,
                AppId.SPIKE_SOURCE_POISSON,
                {
                    REGION_KEYS: encode_keys(POISSON_FLAG | c << 12 | np.arange(PER_CORE) << 4, 4),
                    REGION_DATA: sources.encode_poisson_params(
                        sources.PoissonParams(PER_CORE, 20000.0, (seed, c + 1, 7, 11)), 100
                    ),
                },
            )
        )
        tables[chip].append(RoutingEntry(POISSON_FLAG | c << 12, 0xFFFFF000, route_word((), (p,))))
    n_chips = (n_cores + 7) // 8
    for c in range(n_cores):
        sx = placement[c][0].x
        for x in range(n_chips):
            local = tuple(1 + k for k in range(8) if x * 8 + k < n_cores)
            links = (0,) if x >= sx and x + 1 < n_chips else ()
            links += (3,) if x <= sx and x > 0 else ()
            tables[ChipXY(x, 0)].append(
                RoutingEntry(LIF_FLAG | c << 12, 0xFFFFF000, route_word(links, local))
            )
    return Image(100, tuple(cores), {k: tuple(v) for k, v in tables.items() if v}), pre.size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--neurons", type=int, default=10000)
    parser.add_argument("--in-degree", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    image, n_syn = build(args.neurons, args.in_degree * 4 // 5, args.in_degree // 5, args.seed)
    ex = Executor(image, Topology.single_board())
    ex.run(1)  # compile (cached) outside the timing
    t1 = time.perf_counter()
    res = ex.run(args.steps)
    t2 = time.perf_counter()
    n_spikes = sum(len(s) for s in res.spikes.values())
    ext = sum(p["spikes_sent"] for xyp, p in res.core_provenance.items() if xyp.p > 8)
    events = n_spikes * args.in_degree + ext
    print(
        json.dumps(
            {
                "bench": "executor-synthetic",
                "n_neurons": args.neurons,
                "n_synapses": n_syn,
                "steps": args.steps,
                "build_s": round(t1 - t0, 3),
                "run_s": round(t2 - t1, 3),
                "spikes": n_spikes,
                "mean_rate_hz": n_spikes / args.neurons / (args.steps * 1e-4),
                "synaptic_events": events,
                "events_per_s": events / (t2 - t1),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "threads": numba.get_num_threads(),
                "window_steps": ex.window_steps,
            }
        )
    )


if __name__ == "__main__":
    main()
