"""Build the soft-min primitive of a planned solver (:mod:`.dispatch` decides which).

One constructor per kind of input: :func:`embedding_primitive` for token embeddings (over the
factorised cost of :func:`embedding_factors`, which the chain rule reuses) and
:func:`cost_primitive` for a dense cost.
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


def embedding_factors(solver: str, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                      b: torch.Tensor, cost: str, sync_ok: bool) -> FactorisedCost:
    """The factorised cost between x (B, n, d) and y (B, m, d) for ``solver``: the PyTorch
    solvers compute in the weights' (compute) dtype, the Triton kernels read x and y as they
    are."""
    if not solver.startswith("triton"):
        x, y = x.to(a.dtype), y.to(a.dtype)
    return factorise(x, y, cost, a > 0, b > 0, sync_ok=sync_ok)


def embedding_primitive(solver: str, fc: FactorisedCost, a: torch.Tensor, b: torch.Tensor,
                        eps: float, tau: float | None, sync_ok: bool) -> SoftMin:
    """The primitive of ``solver`` for the factorised cost ``fc`` and weights a (B, n),
    b (B, m)."""
    if solver.startswith("triton"):
        return _triton(solver, a, b, eps, fc=fc)
    if solver == "streaming":
        return StreamingSoftMin(fc, a, b, eps, damping(eps, tau))
    bound = COSINE_RANGE if fc.kind == "cosine" else None
    return dense_softmin(fc.dense(), a, b, eps, solver, tau, sync_ok, bound)


def cost_primitive(solver: str, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   eps: float, tau: float | None, sync_ok: bool) -> SoftMin:
    """The primitive for a dense cost (B, n, m); a Triton solve also writes the plan."""
    if solver.startswith("triton"):
        return _triton(solver, a, b, eps, cost=cost, write_plan=True)
    return dense_softmin(cost.to(a.dtype), a, b, eps, solver, tau, sync_ok)
