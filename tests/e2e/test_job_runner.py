"""A job runner's whole path: boards from the server, a network mapped onto them, run.

The runner talks to the server only through `protocol.client` (as any job runner would),
maps a small network with `toolchain` onto the allocation exactly as the server reports it,
and executes the image on the chip model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from machine_models import Executor, validate
from protocol.client import AllotmentClient
from tests.e2e.conftest import ServerProcess
from toolchain import (
    IFCurrExp,
    Network,
    OneToOne,
    SpikeSourceArray,
    StaticSynapse,
    allocation_from_machine_info,
    map_network,
)


async def _allocate(server: ServerProcess, *dims: int) -> tuple[int, dict[str, Any]]:
    async with await AllotmentClient.connect(server.host, server.port, timeout_s=10.0) as client:
        job_id = await client.create_job(*dims, owner="runner")
        await client.notify_job(job_id)
        while (await client.get_job_state(job_id)).state != 3:
            await client.receive_notification(timeout_s=10.0)
        info = await client.get_job_machine_info(job_id)
        return job_id, info.model_dump(mode="json")


async def test_network_runs_on_the_boards_the_server_granted(start_server: Any) -> None:
    server: ServerProcess = start_server()
    _job_id, info = await _allocate(server, 2, 1)
    assert (info["width"], info["height"]) == (28, 16)
    assert len(info["connections"]) == 6

    topology = allocation_from_machine_info(info)
    n = 300  # more than one core's worth, so the populations span cores and chips
    net = Network(dt_ms=1.0, seed=3)
    source = net.population(n, SpikeSourceArray([[5.0, 40.0]] * n), "source")
    cells = net.population(n, IFCurrExp(tau_refrac=20.0), "cells")
    net.project(source, cells, OneToOne(), StaticSynapse(weight=20.0, delay=3.0))
    cells.record("spikes")
    mapped = map_network(net, topology)
    validate(mapped.image, topology)
    results = Executor(mapped.image, topology).run(100)

    fired: dict[int, list[int]] = {}
    for vertex, core in mapped.cores_of(cells):
        for step, local in results.spikes[core]:
            fired.setdefault(int(vertex.lo + local), []).append(int(step))
    assert sorted(fired) == list(range(n)), "every cell fires"
    # Inputs at 5 and 40 ms with a 3 ms delay land at steps 8 and 43; the strong weight
    # fires the cell at once and the 20 ms refractory period allows one spike per input.
    steps_fired = np.array([steps for steps in fired.values()])
    assert steps_fired.shape == (n, 2), {k: v for k, v in fired.items() if len(v) != 2}
    assert set(steps_fired[:, 0].tolist()) <= {8, 9}
    assert set(steps_fired[:, 1].tolist()) <= {43, 44}
