r"""GeomLoss, tensorized backend, driven at a fixed eps for a fixed number of soft-min pairs.

``SamplesLoss`` anneals eps from the diameter down to blur (eps-scaling), which does different
work; its Sinkhorn loop is therefore called directly with a constant temperature list. GeomLoss
spends one soft-min pair on its initialisation and one on its final extrapolation, each loop
step being a symmetric (Jacobi) update averaged with the previous potentials: ``iters - 2`` loop
steps make ``iters`` pairs, the work of ``iters`` Sinkhorn iterations.

Reported loss: <P, C> with P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) from its potentials.
Gradient: autograd of GeomLoss's own value <a, f> + <b, g>, whose last extrapolation is taken
through C(x, y.detach()) for f and C(y, x.detach()) for g: the envelope gradient.
"""

from __future__ import annotations

import torch

from ..workloads import Problem
from .base import Calls, Implementation
from .torch_calls import cosine_cost, torch_calls


class GeomLossTensorized(Implementation):
    name = "geomloss"
    group = "geomloss"
    how = ("geomloss sinkhorn_loop(softmin_tensorized, ...) with eps_list = [eps] * (iters - 2), "
           "debias=False, on the padded batch")
    requires = ("geomloss",)

    def setup(self, problem: Problem) -> Calls:
        from geomloss._legacy.sinkhorn_divergence import log_weights, sinkhorn_loop
        from geomloss._legacy.sinkhorn_samples import softmin_tensorized

        if problem.tol is not None:
            raise ValueError("GeomLoss's Sinkhorn loop has no stopping threshold: it runs its "
                             "eps list to the end")
        eps = problem.eps
        eps_list = [eps] * max(problem.iterations - 2, 1)

        def solve(x, y, a, b):
            c_xy = cosine_cost(x, y.detach())
            c_yx = cosine_cost(y, x.detach())
            _, _, g, f = sinkhorn_loop(softmin_tensorized, log_weights(a), log_weights(b),
                                       None, None, c_xy, c_yx, eps_list, None, debias=False)
            value = (a * f).sum() + (b * g).sum()
            with torch.no_grad():
                log_plan = (f[:, :, None] + g[:, None, :] - c_xy) / eps
                plan = a[:, :, None] * b[:, None, :] * log_plan.exp()
                transport = (plan * c_xy).sum()
            return transport, value

        return torch_calls(problem, solve, batched=True)
