r"""Autograd functions of the PyTorch backend.

N.B. Both functions return the transport cost L = <P, C> of the Sinkhorn plan P and
back-propagate the envelope gradient dL/dC = P. That is the exact gradient of the entropic
value OT_eps = <P, C> + eps KL(P | a b^T) at convergence (Danskin/envelope theorem), and an
approximation of the gradient of <P, C> itself, which also has a term through dP/dC of order
eps. No per-iteration history is kept: backward recomputes what it needs from the final
potentials.
"""

from __future__ import annotations

import torch

from .costs import FactorisedCost, factorise
from .ragged import length_buckets
from .sinkhorn_loop import SoftMin, entropic_value, run_sinkhorn
from .softmin_dense import damping, dense_softmin
from .softmin_streaming import StreamingSoftMin

TORCH_STRATEGIES = ("auto", "dense", "dense-scaling", "dense-log", "streaming")

# Largest dense (B, n, m) cost the "auto" strategy stores; beyond it the cost is streamed.
DENSE_MAX_BYTES = 256 * 2**20


def pick_strategy(batch: int, n: int, m: int, dtype: torch.dtype, strategy: str) -> str:
    if strategy != "auto":
        return strategy
    itemsize = torch.finfo(dtype).bits // 8
    return "dense" if batch * n * m * itemsize <= DENSE_MAX_BYTES else "streaming"


def embedding_softmin(fc, a, b, eps: float, strategy: str, tau: float | None) -> SoftMin:
    """The primitive for a factorised cost, by strategy (see :data:`TORCH_STRATEGIES`)."""
    strategy = pick_strategy(a.shape[0], a.shape[1], b.shape[1], a.dtype, strategy)
    if strategy == "streaming":
        return StreamingSoftMin(fc, a, b, eps, damping(eps, tau))
    method = {"dense": "auto", "dense-scaling": "scaling", "dense-log": "log"}[strategy]
    return dense_softmin(fc.dense(), a, b, eps, method, tau)


class SinkhornCostFunction(torch.autograd.Function):
    """(loss, plan, f, g, iterations) for a dense cost (B, n, m); only ``loss`` has a gradient."""

    @staticmethod
    def forward(ctx, cost, a, b, eps, n_iters, tol, tau):
        op = dense_softmin(cost.to(a.dtype), a, b, eps, "auto", tau)
        res = run_sinkhorn(op, n_iters, tol)
        plan = op.plan(res.f_state, res.g_state)
        loss = op.loss(res.f_state, res.g_state)
        f, g = op.potentials(res.f_state, res.g_state)
        ctx.save_for_backward(plan)
        ctx.cost_dtype = cost.dtype
        ctx.mark_non_differentiable(plan, f, g, res.iterations)
        return loss, plan, f, g, res.iterations

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (plan,) = ctx.saved_tensors
        grad_cost = (plan * grad_loss[:, None, None]).to(ctx.cost_dtype)
        return grad_cost, None, None, None, None, None, None


class OTDistillFunction(torch.autograd.Function):
    """Per-problem value (B,) of the plan P between embeddings x (B, n, d) and y (B, m, d):
    ``value="transport"``: <P, C>; ``"entropic"``: <P, C> + eps KL(P | a b^T). Both get the
    envelope gradient dL/dC = P.

    Ragged batches are solved in length buckets (:mod:`.ragged`). Backward: G = grad_loss * P
    enters through (G y', G^T x', G 1, G^T 1), which each bucket's primitive computes from its
    final potentials, and the hand-derived chain rule of the cost
    (:meth:`~optical_ops.costs.FactorisedCost.input_grads`).
    """

    @staticmethod
    def forward(ctx, x, y, a, b, cost, eps, n_iters, tol, strategy, check_inputs, tau, value):
        losses = a.new_empty(a.shape[0])
        ctx.buckets, ctx.ops, saved = length_buckets(a, b), [], []
        for bucket in ctx.buckets:
            xb, yb, ab, bb = bucket.take(x, y, a, b)
            fc = factorise(xb.to(a.dtype), yb.to(a.dtype), cost, ab > 0, bb > 0)
            if check_inputs:
                fc.check_finite(ab, bb)
            op = embedding_softmin(fc, ab, bb, eps, strategy, tau)
            res = run_sinkhorn(op, n_iters, tol)
            if value == "entropic":
                loss = entropic_value(op, res.f_state, res.g_state, eps)
            else:
                loss = op.loss(res.f_state, res.g_state)
            if bucket.index is None:
                losses = loss
            else:
                losses[bucket.index] = loss
            ctx.ops.append(op.for_backward())
            saved += [fc.x, fc.y, fc.row_offset, fc.col_offset, fc.row_scale, fc.col_scale,
                      res.f_state, res.g_state]
        ctx.save_for_backward(*saved)
        ctx.cost, ctx.scale = cost, fc.scale
        ctx.input_shapes = (x.shape, y.shape)
        ctx.input_dtypes = (x.dtype, y.dtype)
        return losses

    @staticmethod
    def backward(ctx, grad_loss):
        need_x, need_y = ctx.needs_input_grad[:2]
        saved = ctx.saved_tensors
        (x_shape, y_shape), (x_dtype, y_dtype) = ctx.input_shapes, ctx.input_dtypes
        single = len(ctx.buckets) == 1 and ctx.buckets[0].is_whole(x_shape[1], y_shape[1])
        dx = dy = None
        if not single:
            dx = grad_loss.new_zeros(x_shape, dtype=x_dtype) if need_x else None
            dy = grad_loss.new_zeros(y_shape, dtype=y_dtype) if need_y else None
        for k, (bucket, op) in enumerate(zip(ctx.buckets, ctx.ops)):
            x, y, row_offset, col_offset, row_scale, col_scale, f, g = saved[8 * k : 8 * k + 8]
            fc = FactorisedCost(ctx.cost, x, y, row_offset, col_offset, row_scale, col_scale,
                                ctx.scale)
            products = op.plan_products(f, g, x, y, row_scale, col_scale)
            wb = grad_loss if bucket.index is None else grad_loss[bucket.index]
            gx, gy = fc.input_grads(*products, wb, need_x, need_y)
            if single:
                dx = None if gx is None else gx.to(x_dtype)
                dy = None if gy is None else gy.to(y_dtype)
                continue
            rows = slice(None) if bucket.index is None else bucket.index
            if need_x:
                dx[rows, : bucket.n] = gx.to(x_dtype)
            if need_y:
                dy[rows, : bucket.m] = gy.to(y_dtype)
        return dx, dy, None, None, None, None, None, None, None, None, None, None
