r"""The one autograd layer, over any soft-min primitive and either backend.

* :class:`EmbeddingOTFunction`: per-problem value (B,) of the plan between embeddings x, y.
* :class:`CostOTFunction`: (loss, plan, f, g, iterations) for a dense cost.

The solver comes from the plan (:mod:`.dispatch`), the primitive from :mod:`.primitives`, the
loop from :mod:`.sinkhorn_loop`. Every tensor the backward reads is saved with
``save_for_backward`` (:mod:`.saved`); the forward runs outside autocast and with full-precision
fp32 products (the op's accuracy does not depend on the caller's global switches).

N.B. Both functions return the transport cost L = <P, C> (or the entropic value) of the Sinkhorn
plan P and back-propagate the envelope gradient dL/dC = P. That is the exact gradient of the
entropic value OT_eps = <P, C> + eps KL(P | a b^T) at convergence (Danskin/envelope theorem),
and an approximation of the gradient of <P, C> itself, which also has a term through dP/dC of
order eps. No per-iteration history is kept: backward recomputes what it needs from the final
potentials. Double backward (``create_graph=True``) is not supported and says so.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .costs import FactorisedCost, full_fp32_products
from .dispatch import SolverPlan, solver_plan
from .primitives import cost_primitive, embedding_primitive
from .ragged import Bucket, length_buckets
from .saved import release, restore
from .sinkhorn_loop import SoftMin, entropic_value, run_sinkhorn


@dataclass(frozen=True)
class SolveSpec:
    """The non-tensor arguments of a solve. ``requested``: the caller's ``solver`` option, used
    to plan each length bucket again; ``value``: ``"transport"`` (<P, C>) or ``"entropic"``."""

    plan: SolverPlan
    requested: str
    eps: float
    n_iters: int
    tol: float | None
    tau: float | None
    check_inputs: bool
    cost: str = "cosine"
    value: str = "transport"

    def bucket_solver(self, bucket: Bucket, batch: int, d: int, dtype, device) -> str:
        if not self.plan.buckets:
            return self.plan.solver
        size = batch if bucket.index is None else bucket.index.shape[0]
        return solver_plan(size, bucket.n, bucket.m, d, device=device, dtype=dtype,
                           backend=self.plan.backend, solver=self.requested, tau=self.tau,
                           debias=self.value == "entropic", check_inputs=False).solver


@dataclass
class BucketState:
    """What the backward needs of one bucket (tensors released to ``save_for_backward``)."""

    bucket: Bucket
    op: SoftMin
    fc: FactorisedCost
    f: torch.Tensor
    g: torch.Tensor


def first_order_only(backward):
    """Refuse ``create_graph=True`` with a clear error; run the backward without a graph."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "optical_ops does not support double backward (create_graph=True, e.g. a "
                "gradient penalty through the OT loss): its backward is the envelope gradient "
                "P, computed without a graph")
        return backward(ctx, *grads)

    return wrapped


@contextmanager
def exact_numerics(device: torch.device):
    """No autocast (the solver picks its own compute dtype) and full-precision fp32 products."""
    with torch.autocast(device_type=device.type, enabled=False), full_fp32_products():
        yield


class EmbeddingOTFunction(torch.autograd.Function):
    """Per-problem value (B,) of the plan P between x (B, n, d) and y (B, m, d) with weights
    a (B, n), b (B, m) in the compute dtype: ``<P, C>``, or ``<P, C> + eps KL(P | a b^T)`` for
    ``spec.value == "entropic"``.

    A ragged batch is solved in length buckets (:mod:`.ragged`) when the plan says so, each with
    the solver planned for its extents. Backward: G = grad_loss * P enters through
    (G y', G^T x', G 1, G^T 1), which each bucket's primitive computes from its final
    potentials, and the hand-derived chain rule of the cost
    (:meth:`~optical_ops.costs.FactorisedCost.input_grads`).
    """

    @staticmethod
    def forward(ctx, x, y, a, b, spec: SolveSpec):
        batch, n, d = x.shape
        m = y.shape[1]
        buckets = length_buckets(a, b) if spec.plan.buckets else [Bucket(None, n, m)]
        losses = a.new_empty(batch)
        states = []
        with exact_numerics(x.device):
            for bucket in buckets:
                xb, yb, ab, bb = bucket.take(x, y, a, b)
                solver = spec.bucket_solver(bucket, batch, d, x.dtype, x.device)
                op, fc = embedding_primitive(solver, xb, yb, ab, bb, spec.cost, spec.eps,
                                             spec.tau, sync_ok=spec.check_inputs)
                if spec.check_inputs:
                    fc.check_finite(ab, bb)
                res = run_sinkhorn(op, spec.n_iters, spec.tol)
                if spec.value == "entropic":
                    loss = entropic_value(op, res.f_state, res.g_state, spec.eps)
                elif res.loss is not None:
                    loss = res.loss
                else:
                    loss = op.loss(res.f_state, res.g_state)
                if bucket.index is None:
                    losses = loss
                else:
                    losses[bucket.index] = loss
                states.append(BucketState(bucket, op.for_backward(), fc, res.f_state,
                                          res.g_state))
        tensors, ctx.slots = release(states)
        ctx.save_for_backward(*tensors)
        ctx.states = states
        ctx.inputs = (x.shape, y.shape, x.dtype, y.dtype)
        return losses

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss):
        restore(ctx.slots, ctx.saved_tensors)
        need_x, need_y = ctx.needs_input_grad[:2]
        x_shape, y_shape, x_dtype, y_dtype = ctx.inputs
        states = ctx.states
        whole = len(states) == 1 and states[0].bucket.is_whole(x_shape[1], y_shape[1])
        dx = dy = None
        if not whole:
            dx = grad_loss.new_zeros(x_shape, dtype=x_dtype) if need_x else None
            dy = grad_loss.new_zeros(y_shape, dtype=y_dtype) if need_y else None
        with exact_numerics(grad_loss.device):
            for state in states:
                bucket, fc = state.bucket, state.fc
                products = state.op.plan_products(state.f, state.g, fc.x, fc.y, fc.row_scale,
                                                  fc.col_scale)
                weight = grad_loss if bucket.index is None else grad_loss[bucket.index]
                gx, gy = fc.input_grads(*products, weight.to(products[0].dtype), need_x,
                                        need_y)
                if whole:
                    dx = None if gx is None else gx.to(x_dtype)
                    dy = None if gy is None else gy.to(y_dtype)
                    continue
                rows = slice(None) if bucket.index is None else bucket.index
                if need_x:
                    dx[rows, : bucket.n] = gx.to(x_dtype)
                if need_y:
                    dy[rows, : bucket.m] = gy.to(y_dtype)
        return dx, dy, None, None, None


class CostOTFunction(torch.autograd.Function):
    """(loss, plan, f, g, iterations) for a dense cost (B, n, m) and weights a, b in the
    compute dtype; only ``loss`` has a gradient, dL/dC = grad * P."""

    @staticmethod
    def forward(ctx, cost, a, b, spec: SolveSpec):
        with exact_numerics(cost.device):
            op = cost_primitive(spec.plan.solver, cost, a, b, spec.eps, spec.tau,
                                sync_ok=spec.check_inputs)
            res = run_sinkhorn(op, spec.n_iters, spec.tol)
            plan = op.plan(res.f_state, res.g_state) if res.plan is None else res.plan
            loss = op.loss(res.f_state, res.g_state) if res.loss is None else res.loss
            f, g = op.potentials(res.f_state, res.g_state)
        ctx.save_for_backward(plan)
        ctx.cost_dtype = cost.dtype
        ctx.mark_non_differentiable(plan, f, g, res.iterations)
        return loss, plan, f, g, res.iterations

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss, *_):
        (plan,) = ctx.saved_tensors
        return (grad_loss[:, None, None] * plan).to(ctx.cost_dtype), None, None, None
