"""The IF_curr_exp core against a bit-level reference of sPyNNaker 7.4.1's integer arithmetic.

The reference below is written from the C (``neuron_model_lif_impl.h``, ``exp_synapse_utils.h``,
``synapse_row.h``, ``neuron_impl_standard.h``), one neuron and one step at a time on Python
integers, starting from the constants in the image's neuron region: each recorded value must
equal the executor's bit for bit. The load-time constants are checked separately against
values the core's routines give (pinned) and against float64 within their resolution.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from machine_models import Executor, Topology, lif, validate
from machine_models.regions import REGION_DATA
from tests.machine_models.networks import driven_image

BOARD = Topology.single_board()


def reference_trace(
    record: np.void, arrivals: dict[int, int], n_steps: int, shift: int
) -> tuple[list[int], list[int], list[int]]:
    """v and I_exc as recorded (raw s16.15) and the spike steps, from 7.4.1's arithmetic.

    Args:
        record: The neuron's decoded region record (state and load-time constants).
        arrivals: Step -> summed ring-buffer value of the excitatory slot consumed then.
        n_steps: Steps to run.
        shift: The excitatory ring-buffer shift.
    """
    v, ie = int(record["v"]), int(record["isyn_exc"])
    timer = int(record["refract_timer"])
    vs, ies, spikes = [], [], []
    for t in range(n_steps):
        # transfer: buffer value << shift is an s16.15 input, times the init factor (u0.32)
        ie += ((arrivals.get(t, 0) << shift) * int(record["exc_init"])) >> 32
        vs.append(v)
        ies.append(ie)
        if timer <= 0:
            current = ie + int(record["i_offset"])
            # accum * accum: the 64-bit product >> 15, an arithmetic shift (floor)
            alpha = ((current * int(record["r_membrane"])) >> 15) + int(record["v_rest"])
            v = alpha - ((int(record["exp_tc"]) * (alpha - v)) >> 15)
        else:
            timer -= 1
        if v >= int(record["v_thresh"]):
            spikes.append(t)
            v = int(record["v_reset"])
            timer = int(record["t_refract"])
        ie = (ie * int(record["exc_decay"])) >> 32
    return vs, ies, spikes


def _run(
    params: lif.LifParams,
    spikes: list[tuple[int, int]],
    weight_u16: int,
    n_steps: int,
    timestep_us: int,
    shift: int = 2,
) -> tuple[np.void, list[int], list[int], list[int]]:
    image = driven_image(
        params, spikes, [(0, 0, weight_u16, 1, 0)], shifts=(shift, shift), timestep_us=timestep_us
    )
    validate(image, BOARD)
    res = Executor(image, BOARD).run(n_steps)
    record = lif.decode_neuron_params(image.cores[0].regions[REGION_DATA])[0]
    v = np.rint(res.v_mv[(0, 0, 1)][:, 0] * 32768).astype(np.int64).tolist()
    ge = np.rint(res.gsyn_exc_na[(0, 0, 1)][:, 0] * 32768).astype(np.int64).tolist()
    fired = res.spikes[(0, 0, 1)][:, 0].tolist()
    return record, v, ge, fired


CASES = {
    # constant current well above rheobase (0.75 nA for these parameters): regular firing
    "constant current": (lif.LifParams(1, i_offset=1.3, tau_refrac=2.0), [], 0),
    # just above rheobase: the first spike's time depends on every rounding of the climb
    "near rheobase": (lif.LifParams(1, v_init=-65.0, i_offset=0.7504), [], 0),
    "single input spikes": (
        lif.LifParams(1, v_init=-60.0, tau_syn_e=5.0, tau_refrac=1.0),
        [(3, 0), (40, 0), (41, 0), (90, 0)],
        30000,
    ),
}


@pytest.mark.parametrize("timestep_us", [1000, 100])
@pytest.mark.parametrize("case", sorted(CASES))
def test_trace_equals_the_bit_level_reference(case: str, timestep_us: int) -> None:
    params, spikes, weight = CASES[case]
    n_steps = 400 if timestep_us == 1000 else 3000
    record, v, ge, fired = _run(params, spikes, weight, n_steps, timestep_us)
    # a spike sent in step s reaches the ring buffer slot consumed in step s + 1
    arrivals: dict[int, int] = {}
    for step, _ in spikes:
        arrivals[step + 1] = arrivals.get(step + 1, 0) + weight
    ref_v, ref_ge, ref_fired = reference_trace(record, arrivals, n_steps, shift=2)
    assert ge == ref_ge
    assert v == ref_v
    assert fired == ref_fired
    if case != "single input spikes":
        assert fired  # the case really fires


@pytest.mark.parametrize(
    ("timestep_us", "tau_ms", "exp_tc", "decay", "init"),
    [
        # raw words as the core's kdivk/expk/expulr give them (s16.15, u0.32, u0.32)
        (1000, 20.0, 31170, 4085544196, 4188461980),
        (100, 20.0, 32605, 4273656398, 4261919257),
        (1000, 5.0, 26828, 3516490311, 3892384920),
        (100, 5.0, 32119, 4209972212, 4249494765),
    ],
)
def test_load_time_constants_are_the_cores(
    timestep_us: int, tau_ms: float, exp_tc: int, decay: int, init: int
) -> None:
    params = lif.LifParams(1, tau_m=tau_ms, tau_syn_e=tau_ms, tau_syn_i=tau_ms)
    record = lif.decode_neuron_params(lif.encode_neuron_params(params, timestep_us))[0]
    assert int(record["exp_tc"]) == exp_tc
    assert int(record["exc_decay"]) == decay
    assert int(record["exc_init"]) == init
    h = timestep_us / 1000.0
    # within the resolution the core's truncating steps allow
    assert exp_tc / 32768 == pytest.approx(math.exp(-h / tau_ms), rel=1e-3)
    assert decay / 2**32 == pytest.approx(math.exp(-h / tau_ms), rel=1e-4)
    assert init / 2**32 == pytest.approx(tau_ms / h * (1 - math.exp(-h / tau_ms)), rel=6e-3)


def test_refractory_steps_come_from_the_s1615_step() -> None:
    # 0.3 ms is 9830 / 32768 (rounded down), so 0.6 / 0.3 is a hair above 2: three steps,
    # where float64 would say two
    params = lif.LifParams(1, tau_refrac=0.6)
    record = lif.decode_neuron_params(lif.encode_neuron_params(params, 300))[0]
    assert int(record["t_refract"]) == 3
    # 2.0 ms at 0.1 ms stays 20 steps (0.1 rounds up to 3277 / 32768)
    record = lif.decode_neuron_params(
        lif.encode_neuron_params(lif.LifParams(1, tau_refrac=2.0), 100)
    )[0]
    assert int(record["t_refract"]) == 20


def test_stored_weights_round_and_wrap_like_the_host() -> None:
    # round(|w| * 2**(15 - shift)); above 16 bits the host's "& 0xFFFF" wraps
    assert lif.weights_to_u16([0.5, -0.5, 1.00002], 0).tolist() == [16384, 16384, 32769]
    assert int(lif.weights_to_u16(70000 / 32768, 0)) == 70000 & 0xFFFF
