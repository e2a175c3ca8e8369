"""The deployment files agree with the code: configurations load, dashboards query real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from allocator.config import load_config
from allocator.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize("name", ["allotment.toml", "compose-allotment.toml"])
def test_example_configurations_load(name: str) -> None:
    config = load_config(DEPLOY / name)
    machine = config.machines[0]
    assert machine.n_boards == 1200
    assert config.metrics.port != 0, "the examples turn the metrics endpoint on"
    assert config.mqtt.url, "the examples publish events"


def _exposed_names() -> set[str]:
    metrics = Metrics()
    metrics.request_done("create_job", "ok", 0.001)  # labelled families appear once used
    text = metrics.exposition().decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE))


def test_dashboard_queries_name_metrics_that_exist() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "allotment.json").read_text())
    expressions = re.findall(r'"expr": "((?:[^"\\]|\\.)*)"', json.dumps(dashboard))
    assert expressions, "the dashboard has queries"
    used = {name for expr in expressions for name in re.findall(r"\ballotment_\w+", expr)}
    exposed = _exposed_names()
    suffixes = ("_bucket", "_count", "_sum", "_total", "_created")
    missing = sorted(
        name
        for name in used
        if name not in exposed and not any(name.removesuffix(s) in exposed for s in suffixes)
    )
    assert missing == []


def test_systemd_unit_runs_the_server() -> None:
    unit = (DEPLOY / "allotment.service").read_text().replace("\\\n", " ")
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "allotment serve" in exec_start
    assert "--config" in exec_start
