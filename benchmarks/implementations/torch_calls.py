r"""Timed calls for implementations driven from PyTorch tensors.

Every PyTorch-side implementation is a ``solve(x, y, a, b) -> (reported, differentiated)``:
``reported`` is <P, C> summed over the problems it was given, ``differentiated`` the scalar whose
backward gives the implementation's gradient (the same tensor for an envelope implementation).
``batched`` implementations get the padded batch (x (B, n, d), weights a (B, n) with zeros on
padding); the others are looped over the unpadded problems (x_b (n_b, d), a_b (n_b,)) in Python.

N.B. The envelope gradient, what distillation code does with an OT solver today: the plan P is
computed from a detached cost and the loss <P, C(x, y)> is back-propagated through the cost only,
so dL/dC = P.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..workloads import Problem, solve_dtype
from .base import Calls, Output

Solve = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                 tuple[torch.Tensor, torch.Tensor]]
Plan = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
CPU = torch.device("cpu")


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C = 1 - cos(x_i, y_j) for x (..., n, d), y (..., m, d): plain PyTorch, independent of
    the op under test, in float32 at least (bfloat16 inputs are cast, differentiably, as user
    code does). Reads (n + m) d, writes n m."""
    dtype = solve_dtype(x.dtype)
    xn = torch.nn.functional.normalize(x.to(dtype), dim=-1)
    yn = torch.nn.functional.normalize(y.to(dtype), dim=-1)
    return 1.0 - xn @ yn.transpose(-1, -2)


def envelope(plan: Plan) -> Solve:
    """A solve from a plan function ``plan(cost_detached, a, b) -> P``: loss <P, C>."""

    def solve(x, y, a, b):
        cost = cosine_cost(x, y)
        loss = (plan(cost.detach(), a, b) * cost).sum()
        return loss, loss

    return solve


def uniform(tokens: torch.Tensor) -> torch.Tensor:
    """Uniform weights over the rows of ``tokens`` (n, d)."""
    n = tokens.shape[0]
    return torch.full((n,), 1.0 / n, dtype=solve_dtype(tokens.dtype), device=tokens.device)


def torch_calls(problem: Problem, solve: Solve, *, batched: bool,
                device: torch.device = CPU) -> Calls:
    """Forward under ``torch.no_grad()``; forward+backward w.r.t. X and Y.

    Both end with ``.item()`` on the loss, which waits for the device to finish.
    """
    x = problem.x.to(device, copy=True).requires_grad_(True)
    y = problem.y.to(device, copy=True).requires_grad_(True)
    if batched:
        pieces = [(x, y, *(w.to(device) for w in problem.weights(problem.solve_dtype)))]
    else:
        pieces = [(xb, yb, uniform(xb), uniform(yb)) for xb, yb in problem.unpadded(x, y)]

    def forward() -> Output:
        with torch.no_grad():
            return Output(sum(solve(*piece)[0] for piece in pieces).item())

    def forward_backward() -> Output:
        x.grad = y.grad = None
        reported, differentiated = zip(*(solve(*piece) for piece in pieces))
        sum(differentiated).backward()
        return Output(sum(reported).item(), (x.grad, y.grad))

    return Calls(forward, forward_backward)
