"""PyNN's own system-test scenarios (``test/system/scenarios`` of PyNN 0.13.0) on the backend.

They are in PyNN's source distribution, not its wheel: the first run downloads it with pip
into a cache folder (``ALLOTMENT_PYNN_SDIST_CACHE``, default ``~/.cache/allotment``) and
later runs reuse it. Without network and cache the tests skip with the reason (they fail
under ``ALLOTMENT_REQUIRE_SERVICES=1``, as CI runs).

Every scenario function runs. One that uses a feature the chip model lacks must stop with
:class:`~toolchain.pynn.errors.NotSupportedError` (or PyNN's own skip, e.g. without
scipy); any other failure fails the test, except the differences listed in ``DIFFERENT``
that are SpiNNaker's nature. The ones in ``PASSING`` must pass: losing one is a regression.
docs/pynn.md lists the outcome of each.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

from toolchain.pynn.errors import NotSupportedError

VERSION = "0.13.0"
MODULES = (
    "test__simulation_control",
    "test_cell_types",
    "test_connection_handling",
    "test_connectors",
    "test_electrodes",
    "test_issue231",
    "test_issue274",
    "test_parameter_handling",
    "test_procedural_api",
    "test_recording",
    "test_scenario1",
    "test_scenario2",
    "test_scenario3",
    "test_scenario4",
    "test_scenario5",
    "test_synapse_types",
    "test_ticket166",
)
PASSING = {
    "test_connection_handling::test_issue652",
    "test__simulation_control::test_reset",
    "test__simulation_control::test_run_until",
    "test_connectors::test_all_to_all_static_no_self",
    "test_connectors::test_fixed_number_post_no_replacement",
    "test_connectors::test_fixed_number_post_with_replacement",
    "test_connectors::test_fixed_number_pre_no_replacement",
    "test_connectors::test_fixed_number_pre_with_replacement",
    "test_connectors::test_issue309",
    "test_connectors::test_issue622",
    "test_procedural_api::test_ticket195",
    "test_recording::test_mix_procedural_and_oo",
    "test_scenario1::test_scenario1",
    "test_ticket166::test_ticket166",
    "test__simulation_control::test_reset_with_clear",
    "test__simulation_control::test_reset_with_spikes",
    "test__simulation_control::test_setup",
    "test_cell_types::test_issue511",
    "test_cell_types::test_update_SpikeSourceArray",
    "test_connection_handling::test_issue672",
    "test_parameter_handling::test_issue241",
}
_SAMPLES = (
    "v is sampled at the start of each step, n samples for n steps as on sPyNNaker, "
    "where PyNN's other backends add one at t_stop"
)
DIFFERENT = {
    "test_recording::test_issue259": (
        "off-grid spike times (0.075 ms at dt = 0.05 ms): SpiNNaker sends a spike in a "
        "whole time step"
    ),
    "test_issue231::test_issue231": (
        "min_delay='auto' is one time step, as on sPyNNaker, not the shortest delay made"
    ),
    "test_recording::test_reset_recording": _SAMPLES,
    "test_recording::test_sampling_interval": _SAMPLES,
}


def _unavailable(reason: str) -> None:
    if os.environ.get("ALLOTMENT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (and ALLOTMENT_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def scenarios_root() -> Path:
    """The folder holding PyNN's ``scenarios`` package, fetched once."""
    cache = Path(os.environ.get("ALLOTMENT_PYNN_SDIST_CACHE", Path.home() / ".cache" / "allotment"))
    root = cache / f"pynn-{VERSION}-system"
    if (root / "scenarios" / "fixtures.py").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"pynn-{VERSION}.tar.gz"
    if not archive.is_file():
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"PyNN=={VERSION}",
                "-d",
                str(cache),
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        if done.returncode != 0 or not archive.is_file():
            _unavailable(f"cannot download PyNN {VERSION}'s sdist: {done.stderr[-300:]}")
    prefix = f"pynn-{VERSION}/test/system/scenarios/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for member in members:
            member.name = "scenarios/" + member.name[len(prefix) :]
        tar.extractall(root, members=members, filter="data")
    return root


def _load(root: Path, name: str) -> ModuleType:
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"scenarios.{name}")


@pytest.mark.parametrize("module_name", MODULES)
def test_pynns_scenarios_pass_or_name_what_is_missing(
    scenarios_root: Path, module_name: str, sim: ModuleType
) -> None:
    module = _load(scenarios_root, module_name)
    outcomes: dict[str, str] = {}
    for name, function in inspect.getmembers(module, inspect.isfunction):
        if not name.startswith("test") or not hasattr(function, "pytestmark"):
            continue
        key = f"{module_name}::{name}"
        try:
            function(sim)
            outcomes[key] = "pass"
        except NotSupportedError as exc:
            outcomes[key] = f"not supported: {exc}"
        except pytest.skip.Exception as exc:
            outcomes[key] = f"skipped by PyNN: {exc}"
        except AssertionError:
            if key not in DIFFERENT:
                raise
            outcomes[key] = f"different: {DIFFERENT[key]}"
        finally:
            sim.end()
    assert outcomes, f"no scenario found in {module_name}"
    lost = {k: v for k, v in outcomes.items() if k in PASSING and v != "pass"}
    assert not lost, lost
    print("\n".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
