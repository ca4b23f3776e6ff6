r"""The plain PyTorch batched log-domain Sinkhorn, eager and with its iteration compiled.

From f = 0, column update first (POT's order), for weights a (B, n), b (B, m) (zeros allowed):

    g_j = -eps LSE_i((f_i - C_ij) / eps + log a_i),   f_i = -eps LSE_j((g_j - C_ij) / eps + log b_j)

and P_ij = exp((f_i + g_j - C_ij) / eps + log a_i + log b_j). Memory traffic per half-iteration
in eager mode: reads C (B n m), writes and reads one (B, n, m) temporary for the LSE argument,
writes B m or B n. Compiled, the temporary is fused away.

With a ``tol`` (W9), every ``CHECK_EVERY`` iterations the batch's largest column-marginal error
max_b |P_b^T 1 - b_b|_2 (POT's rule) is computed from the plan, and the loop stops once it is
<= tol: one extra pass over C and one host sync per check, as in POT.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..workloads import Problem
from .base import Calls, Implementation
from .torch_calls import Solve, envelope, torch_calls

Step = Callable[..., tuple[torch.Tensor, torch.Tensor]]
CHECK_EVERY = 10


def sinkhorn_iteration(f, cost, log_a, log_b, eps: float):
    """One iteration: (f, g) from f; f (B, n, 1), g (B, 1, m), log weights likewise."""
    g = -eps * torch.logsumexp((f - cost) / eps + log_a, dim=1, keepdim=True)
    f = -eps * torch.logsumexp((g - cost) / eps + log_b, dim=2, keepdim=True)
    return f, g


def log_plan(f, g, cost, log_a, log_b, eps: float) -> torch.Tensor:
    return (f + g - cost) / eps + log_a + log_b


def reference_solve(problem: Problem, step: Step = sinkhorn_iteration) -> Solve:
    """The envelope solve on the padded batch, with ``step`` as the Sinkhorn iteration."""
    eps, tol = problem.eps, problem.tol

    def converged(f, g, cost, log_a, log_b) -> bool:
        columns = log_plan(f, g, cost, log_a, log_b, eps).exp().sum(1)
        return bool(torch.linalg.vector_norm(columns - log_b[:, 0].exp(), dim=-1).max() <= tol)

    def plan(cost, a, b):
        log_a, log_b = a.log()[:, :, None], b.log()[:, None, :]
        f = torch.zeros_like(log_a)
        with torch.no_grad():  # one compiled graph for both calls: the loop never needs grad
            for iteration in range(1, problem.iterations + 1):
                f, g = step(f, cost, log_a, log_b, eps)
                if (tol is not None and iteration % CHECK_EVERY == 0
                        and converged(f, g, cost, log_a, log_b)):
                    break
        return log_plan(f, g, cost, log_a, log_b, eps).exp()

    return envelope(plan)


class TorchReference(Implementation):
    name = "torch-reference"
    group = "reference"
    how = "plain PyTorch batched log-domain Sinkhorn (torch.logsumexp), envelope gradient"

    def setup(self, problem: Problem) -> Calls:
        return torch_calls(problem, reference_solve(problem), batched=True)


class TorchCompiled(Implementation):
    """The reference with its Sinkhorn iteration under ``torch.compile`` (the loop stays in
    Python: compiling the unrolled loop takes minutes per shape), compiled on the warm-up call.

    N.B. ``setup`` resets the compiler caches, so that the compiled iterations of earlier
    workloads do not count towards dynamo's recompile limit. The runner sets up every
    implementation before warming any up, so no other compiled code is lost."""

    name = "torch-compile"
    group = "reference"
    how = "the plain PyTorch reference with torch.compile(iteration, dynamic=False)"
    compiles = True

    def setup(self, problem: Problem) -> Calls:
        torch.compiler.reset()
        step = torch.compile(sinkhorn_iteration, dynamic=False)
        return torch_calls(problem, reference_solve(problem, step), batched=True)
