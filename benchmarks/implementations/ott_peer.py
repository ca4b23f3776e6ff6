r"""OTT-JAX on the CPU: ``PointCloud`` with the cosine cost, ``Sinkhorn`` at fixed iterations.

``min_iterations = max_iterations = iters`` runs exactly ``iters`` iterations (the error is then
computed once, at the last one); with a workload's ``tol``, POT's rule instead: the l2 column
error checked every 10 iterations (``threshold=tol, norm_error=2``). The batch is
``jax.vmap``-ed over padded problems with zero weights; both calls are ``jax.jit``-compiled on
their first call (the warm-up). bfloat16 inputs (W8) arrive as float32 copies.

Reported loss: ``out.primal_cost`` = <P, C> from the plan. Gradient: ``jax.value_and_grad`` of
``out.reg_ot_cost``, differentiated with Danskin's theorem (OTT's default with implicit
differentiation): the potentials are held fixed, so the gradient is the envelope gradient.
"""

from __future__ import annotations

import numpy as np

from ..workloads import Problem
from .base import Calls, Implementation, Output


class OttJax(Implementation):
    name = "ott-jax"
    group = "ott"
    how = ("ott Sinkhorn(min_iterations=max_iterations=iters) on PointCloud(cost_fn=Cosine(), "
           "epsilon=eps), vmap over the padded batch, jit")
    requires = ("ott", "jax")
    compiles = True

    def setup(self, problem: Problem) -> Calls:
        import jax
        import jax.numpy as jnp
        from ott.geometry import costs, pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn

        fixed = problem.tol is None
        solver = sinkhorn.Sinkhorn(min_iterations=problem.iterations if fixed else 0,
                                   max_iterations=problem.iterations,
                                   inner_iterations=min(10, problem.iterations),
                                   threshold=0.0 if fixed else problem.tol, norm_error=2)

        def costs_of_one(x, y, a, b):
            geom = pointcloud.PointCloud(x, y, cost_fn=costs.Cosine(), epsilon=problem.eps)
            out = solver(linear_problem.LinearProblem(geom, a, b))
            return out.reg_ot_cost, out.primal_cost

        def totals(x, y, a, b):
            reg_ot, primal = jax.vmap(costs_of_one)(x, y, a, b)
            return reg_ot.sum(), primal.sum()

        x, y = (jnp.asarray(t.float().numpy()) for t in (problem.x, problem.y))
        a, b = (jnp.asarray(np.asarray(w)) for w in problem.weights())
        primal_only = jax.jit(lambda x, y: totals(x, y, a, b)[1])
        with_grads = jax.jit(jax.value_and_grad(lambda x, y: totals(x, y, a, b),
                                                argnums=(0, 1), has_aux=True))

        def forward() -> Output:
            return Output(float(primal_only(x, y)))

        def forward_backward() -> Output:
            (_, primal), grads = jax.block_until_ready(with_grads(x, y))
            return Output(float(primal), grads)

        return Calls(forward, forward_backward)
