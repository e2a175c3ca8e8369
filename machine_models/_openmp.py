"""How the executor's OpenMP threads wait for each other: asleep, not spinning.

The executor's numba threads (OpenMP, through libgomp) meet at a barrier twice per window.
libgomp's default is to spin at a barrier for a while before sleeping, and a thread that spins
while its partner has lost its core to another process holds the very core that partner needs:
on a busy machine every meeting then waits for a scheduler slice, and a run slows many times
over (the collapse :mod:`machine_models.threads` measures and avoids). Sleeping at once costs
one wake-up per meeting instead. libgomp reads the setting once, when it is loaded, which numba
does at the first parallel kernel: this module is imported first by the package so the setting
is in place by then. A setting of the user's own stands.
"""

import os

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
"""The OpenMP standard's variable; libgomp's PASSIVE means no spinning at barriers."""

os.environ.setdefault(WAIT_POLICY_VARIABLE, "PASSIVE")
