"""pytest-benchmark view of the workloads: ours and POT, forward and forward+backward.

    pytest benchmarks/ --benchmark-only                  # W1-W9
    pytest benchmarks/ --benchmark-only -m "not slow"    # all but W4, W5 (POT: minutes)

Same inputs and calls as ``python -m benchmarks`` (which adds the other peers, the memory
probes, the floor and the loss agreement); the repeats follow the same rule: at least 5, more
for fast calls. The environment is left as it is (no BLAS override removal here).
"""

from __future__ import annotations

import math

import pytest
import torch

from .implementations import IMPLEMENTATIONS
from .timing import repeats_for, time_call
from .workloads import FULL_RUN, WORKLOADS, make_problem

UNDER_TEST = ("ours-torch", "pot-numpy")
SLOW = ("W4", "W5")
MIN_REPEATS, MAX_REPEATS, TARGET_SECONDS = 5, 50, 2.0


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("name", UNDER_TEST)
@pytest.mark.parametrize(
    "workload", [pytest.param(w, marks=[pytest.mark.slow] if w in SLOW else []) for w in FULL_RUN]
)
def test_sinkhorn(benchmark, workload: str, name: str, mode: str) -> None:
    impl = IMPLEMENTATIONS[name]
    if impl.unavailable():
        pytest.skip(impl.unavailable())
    torch.set_num_threads(2)
    calls = impl.setup(make_problem(WORKLOADS[workload]))
    call = calls.forward if mode == "fwd" else calls.forward_backward
    warm_seconds, _ = time_call(call)
    benchmark.group = f"{workload} {mode}"
    rounds = repeats_for(warm_seconds, MIN_REPEATS, MAX_REPEATS, TARGET_SECONDS)
    out = benchmark.pedantic(call, rounds=rounds, iterations=1)
    assert math.isfinite(out.loss)
