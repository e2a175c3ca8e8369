"""Reports like sPyNNaker's: a folder per run under ``./reports/`` and a list of worries.

Written when the network is mapped (``placements.rpt``, ``routing_tables.rpt``,
``synapses.rpt``) and after every run (``provenance_cores.csv``,
``provenance_routers.csv``). :func:`worries` reads the provenance for what a user should
look at (saturated ring buffers, dropped packets, lost delayed spikes) and the session
prints them at ``end()``.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from machine_models.executor import Results
from machine_models.router import COUNTER_NAMES
from machine_models.sources import silent_poisson_sources
from toolchain.build import MappedNetwork
from toolchain.network import SpikeSourcePoisson
from toolchain.splitting import VertexKind

__all__ = ["ReportFolder", "worries"]


class ReportFolder:
    """One run's report folder, made when first written to.

    Args:
        root: the folder holding every run's reports (``./reports`` by default).
    """

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else Path.cwd() / "reports"
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        """This run's folder (created on first use)."""
        if self._path is None:
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d-%H-%M-%S-%f")
            self._path = self.root / stamp
            self._path.mkdir(parents=True, exist_ok=True)
        return self._path

    def write_mapping(self, mapped: MappedNetwork, machine: str) -> None:
        """Placements, routing table sizes and synapse layout of a mapped network."""
        lines = [f"machine: {machine}", "vertex\tneurons\tchip\tcore"]
        for vertex in mapped.vertices:
            where = mapped.locations[vertex]
            lines.append(
                f"{vertex.population.label} {vertex.kind.value}\t"
                f"{vertex.lo}:{vertex.hi}\t({where.x}, {where.y})\t{where.p}"
            )
        (self.path / "placements.rpt").write_text("\n".join(lines) + "\n")
        lines = ["chip\tentries before compression\tentries loaded"]
        for chip in sorted(mapped.image.tables):
            before = mapped.uncompressed_entries.get(chip, len(mapped.image.tables[chip]))
            lines.append(f"({chip.x}, {chip.y})\t{before}\t{len(mapped.image.tables[chip])}")
        (self.path / "routing_tables.rpt").write_text("\n".join(lines) + "\n")
        net = mapped.network
        lines = [
            f"synapses: {mapped.n_synapses}",
            "population\tsynapse type\tweight shift\tweight step (nA)\tdelay slots",
        ]
        for pop in net.populations:
            if pop.index not in mapped.delays.slots:
                continue
            for syn_type, name in ((0, "excitatory"), (1, "inhibitory")):
                shift = mapped.shifts.get((pop.index, syn_type), 0)
                lines.append(
                    f"{pop.label}\t{name}\t{shift}\t{2.0 ** (shift - 15):.6g}\t"
                    f"{mapped.delays.slots[pop.index]}"
                )
        for index, stages in mapped.delays.n_stages.items():
            lines.append(
                f"delay extension of {net.populations[index].label}: {stages} stages of "
                f"{mapped.delays.stage_steps[index]} steps"
            )
        (self.path / "synapses.rpt").write_text("\n".join(lines) + "\n")

    def write_provenance(self, mapped: MappedNetwork, results: Results) -> None:
        """Per-core and per-router counters of everything run so far."""
        label = {
            tuple(mapped.locations[v]): f"{v.population.label} {v.kind.value} {v.lo}:{v.hi}"
            for v in mapped.vertices
        }
        names = sorted({k for counters in results.core_provenance.values() for k in counters})
        with (self.path / "provenance_cores.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["x", "y", "p", "vertex", *names])
            for xyp in sorted(results.core_provenance):
                counters = results.core_provenance[xyp]
                writer.writerow(
                    [*xyp, label.get(tuple(xyp), "?"), *(counters.get(n, "") for n in names)]
                )
        with (self.path / "provenance_routers.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["x", "y", *COUNTER_NAMES])
            for chip in sorted(results.router_provenance):
                counters = results.router_provenance[chip]
                writer.writerow([chip.x, chip.y, *(counters[n] for n in COUNTER_NAMES)])

    def write_worries(self, lines: Sequence[str]) -> None:
        """The summary printed at the end, kept with the reports."""
        (self.path / "worries.rpt").write_text(
            "\n".join(lines or ["nothing to worry about"]) + "\n"
        )


def _by_population(
    mapped: MappedNetwork, provenance: Mapping[Any, Mapping[str, int]], counter: str
) -> dict[str, int]:
    totals: dict[str, int] = {}
    for vertex in mapped.vertices:
        value = provenance.get(mapped.locations[vertex], {}).get(counter, 0)
        if value:
            name = vertex.population.label
            if vertex.kind is VertexKind.DELAY:
                name += " (delay extension)"
            totals[name] = totals.get(name, 0) + int(value)
    return totals


def _silent_sources(mapped: MappedNetwork) -> list[str]:
    """Poisson sources whose rate the chip's fast method draws no spikes for."""
    timestep_us = round(mapped.network.dt_ms * 1000)
    lines = []
    for population in mapped.network.populations:
        if not isinstance(population.cell, SpikeSourcePoisson):
            continue
        rate = np.broadcast_to(
            np.asarray(population.cell.rate, dtype=np.float64), (population.size,)
        )
        silent = silent_poisson_sources(rate, timestep_us)
        if silent.any():
            lines.append(
                f"population {population.label!r}: {int(silent.sum())} Poisson sources send"
                f" nothing (a rate of {float(rate[silent][0]):g} Hz is"
                f" {float(rate[silent][0]) * mapped.network.dt_ms / 1000:g} spikes a step, where"
                " the chip's fast method, as sPyNNaker 7.4.1's, draws none: from about 10.4 to"
                " 20 a step); use a rate outside that band (more sources at a lower rate give"
                " the same input)"
            )
    return lines


def worries(mapped: MappedNetwork, results: Results) -> list[str]:
    """What a user should look at in a run's provenance, one line each."""
    lines = _silent_sources(mapped)
    for name, n in _by_population(
        mapped, results.core_provenance, "ring_buffer_saturations"
    ).items():
        lines.append(
            f"population {name!r}: {n} ring-buffer saturations (input summed above the "
            f"weight shift's range was clipped); lower the weights or the input rate"
        )
    for name, n in _by_population(
        mapped, results.core_provenance, "spikes_lost_to_saturation"
    ).items():
        lines.append(f"population {name!r}: {n} delayed spikes lost in the delay extension")
    for name, n in _by_population(
        mapped, results.core_provenance, "invalid_master_pop_hits"
    ).items():
        lines.append(f"population {name!r}: {n} packets found no synapses on a core")
    for name, n in _by_population(mapped, results.core_provenance, "late_spikes").items():
        lines.append(f"population {name!r}: {n} spikes arrived too late to be processed")
    for chip, counters in sorted(results.router_provenance.items()):
        dropped = sum(counters[n] for n in COUNTER_NAMES if n.startswith("dropped"))
        if dropped:
            lines.append(f"router of chip ({chip.x}, {chip.y}): {dropped} packets dropped")
    return lines
