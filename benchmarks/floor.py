r"""The floor: a lower bound on any Sinkhorn variant, from two rates measured in the same run.

With E = B n m cost entries (as BENCHMARKS.md defines it; for a ragged workload also the
stricter E = sum_b n_b m_b of the real tokens, reported beside it), d features and
``iters`` iterations, a solver that builds C once (one product, 2 E d FLOPs) and then does two
matrix-vector products per iteration (4 E FLOPs, reading the 4-byte C twice: 8 E bytes) takes

    floor_fwd    = 2 E d / R + iters * max(4 E / R, 8 E / BW)
    floor_fwdbwd = floor_fwd + 4 E d / R            (two more products for the gradients)

where R is the FLOP rate of a 2048^3 float32 matrix product and BW the read bandwidth of a sum
over a float32 buffer of E entries (cache-resident or not, as it happens). A workload too big to
store C (W5) recomputes it every half-iteration and once for the loss:

    floor_fwd    = (2 iters + 1) * 2 E d / R,   floor_fwdbwd = floor_fwd + 4 E d / R.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch

from .timing import repeats_for, time_call
from .workloads import Workload

MATMUL_SIZE = 2048
FLOAT32_BYTES = 4
# Rates come from at least MIN_REPEATS calls after a warm-up, more for short calls.
MIN_REPEATS, MAX_REPEATS, TARGET_SECONDS = 7, 500, 0.25


@dataclass
class Rate:
    """Work per second: from the median call (what the floor uses) and from the fastest one.
    They part when other processes share the cores."""

    median: float
    best: float


def _rate(work: float, call) -> Rate:
    warm_seconds, _ = time_call(call)
    repeats = repeats_for(warm_seconds, MIN_REPEATS, MAX_REPEATS, TARGET_SECONDS)
    seconds = [time_call(call)[0] for _ in range(repeats)]
    return Rate(work / statistics.median(seconds), work / min(seconds))


def matmul_rate(size: int = MATMUL_SIZE) -> Rate:
    """R: FLOP/s of a size^3 float32 matrix product."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    return _rate(2 * size**3, lambda: torch.mm(a, b))


def read_bandwidth(entries: int) -> Rate:
    """BW: bytes/s of ``sum`` over a float32 buffer of ``entries``."""
    buffer = torch.ones(entries)
    return _rate(FLOAT32_BYTES * entries, lambda: buffer.sum())


@dataclass
class Floor:
    fwd_s: float
    fwdbwd_s: float
    matmul_flops: Rate  # R
    bandwidth: Rate  # BW, bytes/s
    formula: str
    tokens: str  # what E counts


def floor(workload: Workload, entries: int, flops: Rate, bandwidth: Rate,
          tokens: str = "E = B n m") -> Floor:
    """Floors (seconds) of a workload with ``entries`` cost entries, from the median rates."""
    iters, d, r, bw = workload.iterations, workload.d, flops.median, bandwidth.median
    product = 2 * entries * d / r
    if workload.recompute_floor:
        fwd = (2 * iters + 1) * product
        formula = "(2 iters + 1) 2 E d / R"
    else:
        per_iteration = max(4 * entries / r, 2 * FLOAT32_BYTES * entries / bw)
        fwd = product + iters * per_iteration
        formula = "2 E d / R + iters max(4 E / R, 8 E / BW)"
    return Floor(fwd, fwd + 2 * product, flops, bandwidth,
                 formula + "; fwd+bwd adds 4 E d / R", tokens)
