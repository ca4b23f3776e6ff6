"""Build the soft-min primitive of a planned solver (:mod:`.dispatch` decides which).

One constructor per kind of input: :func:`embedding_primitives` for token embeddings (over the
factorised cost of :func:`embedding_factors`, which the chain rule reuses; it returns a builder
by eps) and :func:`cost_primitive` for a dense cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .costs import FactorisedCost, factorise
from .dispatch import COSINE_RANGE
from .sinkhorn_loop import SoftMin
from .softmin_dense import damping, dense_softmin, sanitised_dense_cost
from .softmin_streaming import StreamingSoftMin


def embedding_factors(solver: str, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                      b: torch.Tensor, cost: str, sync_ok: bool) -> FactorisedCost:
    """The factorised cost between x (B, n, d) and y (B, m, d) for ``solver``: the PyTorch
    solvers compute in the weights' (compute) dtype, the Triton kernels read x and y as they
    are."""
    if not solver.startswith("triton"):
        x, y = x.to(a.dtype), y.to(a.dtype)
    return factorise(x, y, cost, a > 0, b > 0, sync_ok=sync_ok)


def embedding_primitives(solver: str, fc: FactorisedCost, a: torch.Tensor, b: torch.Tensor,
                         tau: float | None, sync_ok: bool) -> Callable[[float], SoftMin]:
    """eps -> the primitive of ``solver`` for the factorised cost ``fc`` and weights a (B, n),
    b (B, m). What does not depend on eps (the dense cost of the dense solvers) is built once
    here, so the stages of eps-scaling share it."""
    if solver.startswith("triton"):
        from .softmin_triton import triton_softmin, triton_source  # needs triton

        source = triton_source(solver, fc, a, b)
        return lambda eps: triton_softmin(solver, a, b, eps, **source)
    if solver == "streaming":
        return lambda eps: StreamingSoftMin(fc, a, b, eps, damping(eps, tau))
    cost, lo, hi = sanitised_dense_cost(fc, a, b, sync_ok)
    bound = COSINE_RANGE if fc.kind == "cosine" else None
    return lambda eps: dense_softmin(cost, a, b, eps, solver, tau, sync_ok, bound, (lo, hi))


def cost_primitive(solver: str, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                   eps: float, tau: float | None, sync_ok: bool) -> SoftMin:
    """The primitive for a dense cost (B, n, m); a Triton solve also writes the plan."""
    if solver.startswith("triton"):
        from .softmin_triton import triton_softmin  # needs triton

        return triton_softmin(solver, a, b, eps, cost=cost, write_plan=True)
    return dense_softmin(cost.to(a.dtype), a, b, eps, solver, tau, sync_ok)
