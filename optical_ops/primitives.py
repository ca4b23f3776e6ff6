"""Build the soft-min primitive of a planned solver (:mod:`.dispatch` decides which).

One constructor per kind of input: :func:`embedding_primitive` for token embeddings (returns
the factorised cost too, for the chain rule) and :func:`cost_primitive` for a dense cost.
"""

from __future__ import annotations

import torch

from .costs import FactorisedCost, factorise
from .dispatch import COSINE_RANGE
from .sinkhorn_loop import SoftMin
from .softmin_dense import damping, dense_softmin
from .softmin_streaming import StreamingSoftMin


def _triton(solver: str, a, b, eps, **source) -> SoftMin:
    from .softmin_triton import triton_softmin  # needs triton

    return triton_softmin(solver, a, b, eps, **source)


def embedding_primitive(solver: str, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                        b: torch.Tensor, cost: str, eps: float, tau: float | None,
                        sync_ok: bool) -> tuple[SoftMin, FactorisedCost]:
    """(primitive, factorised cost) for x (B, n, d), y (B, m, d) and weights a, b in the
    compute dtype. The PyTorch solvers compute in that dtype; the Triton kernels read x and y
    as they are."""
    valid = (a > 0, b > 0)
    if solver.startswith("triton"):
        fc = factorise(x, y, cost, *valid, sync_ok=sync_ok)
        return _triton(solver, a, b, eps, fc=fc), fc
    fc = factorise(x.to(a.dtype), y.to(a.dtype), cost, *valid, sync_ok=sync_ok)
    if solver == "streaming":
        return StreamingSoftMin(fc, a, b, eps, damping(eps, tau)), fc
    bound = COSINE_RANGE if cost == "cosine" else None
    return dense_softmin(fc.dense(), a, b, eps, solver, tau, sync_ok, bound), fc


def cost_primitive(solver: str, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   eps: float, tau: float | None, sync_ok: bool) -> SoftMin:
    """The primitive for a dense cost (B, n, m); a Triton solve also writes the plan."""
    if solver.startswith("triton"):
        return _triton(solver, a, b, eps, cost=cost, write_plan=True)
    return dense_softmin(cost.to(a.dtype), a, b, eps, solver, tau, sync_ok)
