"""POT (Python Optimal Transport) peers: numpy per problem, torch per problem, torch batched.

All three run POT's log-domain Sinkhorn for exactly the workload's iterations (stop threshold 0,
which the marginal error can never go below), or with the workload's ``tol`` as POT's own stop
threshold. POT checks that error every 10 iterations, which costs an extra pass over the plan
each time: that is part of POT's cost.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch

from ..workloads import Problem
from .base import Calls, Implementation
from .torch_calls import cosine_cost, envelope, torch_calls


def stop_threshold(problem: Problem) -> float:
    return 0.0 if problem.tol is None else problem.tol


@contextmanager
def quiet():
    """Silence POT's "Sinkhorn did not converge": a fixed iteration count is the point here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sinkhorn did not converge")
        yield


class PotNumpy(Implementation):
    name = "pot-numpy"
    group = "pot"
    how = ('ot.sinkhorn(a, b, M, eps, method="sinkhorn_log", stopThr=0) per problem, numpy; '
           "cost in torch, envelope gradient through it")
    requires = ("ot",)

    def setup(self, problem: Problem) -> Calls:
        import ot

        def plan(cost, a, b):
            with quiet():
                p = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), problem.eps,
                                method="sinkhorn_log", numItermax=problem.iterations,
                                stopThr=stop_threshold(problem))
            return torch.from_numpy(np.asarray(p))

        return torch_calls(problem, envelope(plan), batched=False)


class PotTorchSolve(Implementation):
    name = "pot-torch-solve"
    group = "pot"
    how = ('ot.solve(M, a, b, reg=eps, max_iter=iters, tol=0, grad="envelope") per problem, '
           "torch; backward of res.value")
    requires = ("ot",)

    def setup(self, problem: Problem) -> Calls:
        import ot

        def solve(x, y, a, b):
            with quiet():
                res = ot.solve(cosine_cost(x, y), a, b, reg=problem.eps,
                               max_iter=problem.iterations, tol=stop_threshold(problem),
                               grad="envelope")
            # value = <P, M> + eps KL(P | a b^T) carries dvalue/dM = P; value_linear = <P, M>.
            return res.value_linear, res.value

        return torch_calls(problem, solve, batched=False)


class PotTorchBatch(Implementation):
    """N.B. ``solve_batch(..., grad="envelope")`` keeps the autograd graph of every iteration
    (it only detaches the final plan), so it is timed with ``grad="detach"`` and the same
    envelope gradient taken through the cost, which is what "envelope" should cost."""

    name = "pot-torch-batch"
    group = "pot"
    how = ('ot.batch.solve_batch(M, eps, a, b, max_iter=iters, tol=0, method="log_sinkhorn", '
           'grad="detach") on the padded batch; envelope gradient through the cost')
    requires = ("ot",)

    def setup(self, problem: Problem) -> Calls:
        from ot.batch import solve_batch

        def plan(cost, a, b):
            return solve_batch(cost, problem.eps, a, b, max_iter=problem.iterations,
                               tol=stop_threshold(problem), method="log_sinkhorn",
                               grad="detach").plan

        return torch_calls(problem, envelope(plan), batched=True)
