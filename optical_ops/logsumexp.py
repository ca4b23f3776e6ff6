"""In-place log-sum-exp for the soft-min primitives."""

from __future__ import annotations

import torch

# exp(x) for x below this is a denormal or 0 in the dtype; denormal results are several times
# slower to compute on x86, and they are ~1e-35 (fp32) / 1e-304 (fp64) of the row's largest
# term, so inputs are clamped here first.
EXP_FLOOR = {torch.float32: -80.0, torch.float64: -700.0}


def logsumexp_(z: torch.Tensor, dim: int) -> torch.Tensor:
    """log sum exp(z) along ``dim``, overwriting ``z`` (a scratch buffer).

    Passes over z: max, subtract, clamp, exp, sum. A slice that is all -inf (no mass) gives
    about EXP_FLOOR + log(size) instead of -inf; the solvers never produce one for valid input.
    """
    top = z.amax(dim=dim, keepdim=True)
    top.masked_fill_(~torch.isfinite(top), 0.0)
    z.sub_(top).clamp_min_(EXP_FLOOR[z.dtype]).exp_()
    return z.sum(dim=dim).log_().add_(top.squeeze(dim))
