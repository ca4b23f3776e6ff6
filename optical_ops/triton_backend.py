r"""Autograd functions of the Triton backend (``backend="triton"``).

Same objective, iterations and conventions as the PyTorch backend (:mod:`.sinkhorn_loop`):
P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), from f = 0, column update first; the loss is
the transport cost <P, C> per problem. Three solvers, by size
(:mod:`optical_ops.kernels.sinkhorn_fused`):

* the cost tile fits in registers (:func:`~optical_ops.kernels.sinkhorn_fused.fused_config`,
  padded up to 64 x 128 tokens): one fused launch computes C, runs every iteration and the
  loss, with ``tol`` checked on the device per problem;
* up to 256 x 256 tokens (:func:`~optical_ops.kernels.sinkhorn_fused.strip_config`), while the
  dense C (B, n, m) fp32 fits :data:`optical_ops.autograd.DENSE_MAX_BYTES`: C built once by a
  kernel, then the same fused kernel sweeps it in row strips from L1/L2, all iterations in
  that one launch (two launches per solve);
* larger ones: :func:`~optical_ops.sinkhorn_loop.run_sinkhorn` over
  :class:`~optical_ops.softmin_triton.TritonStreamingSoftMin`, one streaming launch per
  half-iteration, over a dense C built once by a kernel while it fits DENSE_MAX_BYTES (no dot
  products per iteration), and beyond that over cost tiles recomputed from the embeddings
  (C never stored, O(B (n + m) d) memory). The backward makes the same dense-or-recompute
  choice.

fp16/bf16/fp32 inputs are read as they are and computed in fp32 (fp32 cost products in 3xTF32,
see :mod:`optical_ops.kernels.cost_tile`); float64 is left to the PyTorch backend. With
``tol=None`` the launch sequence has no host sync (CUDA-graph capturable); with ``tol`` the
fused paths still have none, the streaming path reads one flag every CHECK_EVERY iterations.

N.B. The gradient is the envelope gradient dL/dC = P pushed through C(x, y), exact for the
entropic OT value at convergence and an approximation of the gradient of <P, C> (see
:mod:`.autograd`). The backward rebuilds P tile by tile from the saved potentials
(:mod:`optical_ops.kernels.sinkhorn_backward`) for G y', G^T x', G 1, G^T 1 with G = grad * P
(y' = y / |y| for the cosine cost, through the kernels' 1 / |y| statistic, never written out),
then applies the PyTorch backend's chain rule (:meth:`~optical_ops.costs.FactorisedCost.
input_grads`). The clamp of the squared distance at 0 is not differentiated, as there.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import autograd as pytorch_backend
from .costs import NORM_FLOOR, FactorisedCost
from .sinkhorn_loop import CHECK_EVERY, run_sinkhorn

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype | None = None):
    """Why the Triton backend cannot run on ``device`` with ``dtype`` inputs, or None."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install 'optical-ot[triton]')"
    interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    if device.type != "cuda" and not (device.type == "cpu" and interpret):
        return (f"it needs CUDA tensors, got {device.type} tensors (on a CPU, set "
                "TRITON_INTERPRET=1 before importing optical_ops to run Triton's interpreter)")
    if dtype is not None and dtype not in TRITON_DTYPES:
        return f"its kernels take float16, bfloat16 or float32 inputs, got {dtype}"
    return None


def triton_available(device: torch.device, dtype: torch.dtype | None = None) -> bool:
    """triton is importable and ``device`` is CUDA (or CPU with TRITON_INTERPRET=1)."""
    return triton_unavailable_reason(device, dtype) is None


def _log_weights(w: torch.Tensor) -> torch.Tensor:
    """(B, n) fp32 contiguous log-weights, -inf where a weight is 0."""
    return torch.log(w.to(torch.float32)).contiguous()


def _iteration_operands(ops, log_a, log_b):
    """What the streaming kernels should read: a dense cost built once by a kernel while it fits
    DENSE_MAX_BYTES (the PyTorch backend's "auto" budget; no dot products per pass), else ``ops``
    (cost tiles recomputed from the embeddings, C never stored)."""
    from .kernels.cost_tile import DENSE, dense_operands
    from .kernels.sinkhorn_streaming import cost_matrix

    if ops.kind != DENSE and ops.batch * ops.n * ops.m * 4 <= pytorch_backend.DENSE_MAX_BYTES:
        return dense_operands(cost_matrix(ops, log_a, log_b))
    return ops


def _solve(ops, b, log_a, log_b, eps, n_iters, tol, write_plan):
    """(f, g, loss, iterations, plan or None): fused in one launch when the tile fits in
    registers, or when the problem fits the strip mode over a dense cost (given, or built once
    while it fits DENSE_MAX_BYTES); else streaming, one launch per half-iteration."""
    from .kernels.cost_tile import DENSE
    from .kernels.sinkhorn_fused import fused_config, sinkhorn_fused, strip_config
    from .kernels.sinkhorn_streaming import transport_cost
    from .softmin_triton import TritonStreamingSoftMin

    if fused_config(ops.n, ops.m, ops.d, ops.dtype) is None:
        ops = _iteration_operands(ops, log_a, log_b)
        if ops.kind != DENSE or strip_config(ops.n, ops.m) is None:
            res = run_sinkhorn(TritonStreamingSoftMin(ops, b, log_a, log_b, eps), n_iters, tol)
            loss, plan = transport_cost(ops, log_a, log_b, res.f_state, res.g_state, eps,
                                        write_plan)
            return res.f_state, res.g_state, loss, res.iterations, plan
    return sinkhorn_fused(ops, log_a, log_b, eps, n_iters, tol, CHECK_EVERY, write_plan)


def _factors(kind: int, x, y, x_stat, y_stat) -> FactorisedCost:
    """The kernels' per-token statistics as the PyTorch backend's factors (:mod:`.costs`), for
    its finiteness check and its chain rule. x, y stay raw: massless rows are not zeroed."""
    from .kernels.cost_tile import COSINE

    if kind == COSINE:  # statistics 1 / |x|, 1 / |y|
        return FactorisedCost("cosine", x, y, torch.full_like(x_stat, 0.5),
                              torch.full_like(y_stat, 0.5), x_stat, y_stat, scale=1.0)
    return FactorisedCost("sqeuclidean", x, y, x_stat, y_stat, torch.ones_like(x_stat),
                          torch.ones_like(y_stat), scale=2.0, unit_scales=True)


def _masked_grad(grad, valid, dtype):
    """Massless tokens get exactly 0, whatever they hold (NaN padding times 0 is NaN)."""
    return None if grad is None else torch.where(valid[..., None], grad, 0.0).to(dtype)


class TritonOTDistillFunction(torch.autograd.Function):
    """Per-problem <P, C(x, y)> (B,) fp32 for x (B, n, d), y (B, m, d) in fp16/bf16/fp32.

    a (B, n), b (B, m): normalised weights (fp32); cost: "cosine" | "sqeuclidean".
    Saves x, y, their statistics, the log-weights and f, g: O(B (n + m) d) memory.
    """

    @staticmethod
    def forward(ctx, x, y, a, b, cost, eps, n_iters, tol, check_inputs):
        from .kernels.cost_tile import embedding_operands

        ops = embedding_operands(x, y, cost, a > 0, b > 0, NORM_FLOOR)
        if check_inputs:
            _factors(ops.kind, x, y, ops.x_stat, ops.y_stat).check_finite(a, b)
        log_a, log_b = _log_weights(a), _log_weights(b)
        f, g, loss, _, _ = _solve(ops, b, log_a, log_b, eps, n_iters, tol, write_plan=False)
        ctx.save_for_backward(x, y, ops.x_stat, ops.y_stat, log_a, log_b, f, g)
        ctx.kind, ctx.eps = ops.kind, eps
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        from .kernels.cost_tile import COSINE, CostOperands
        from .kernels.sinkhorn_backward import plan_matmul

        x, y, xs, ys, log_a, log_b, f, g = ctx.saved_tensors
        ops = CostOperands(ctx.kind, x, y, xs, ys, x.shape[1], y.shape[1], x.shape[2])
        need_x, need_y = ctx.needs_input_grad[:2]
        cosine = ctx.kind == COSINE
        # P is rebuilt from C: read from a dense cost built once when it fits, so the
        # feature blocks of the products do not each redo the cost's dot products.
        cost_ops = _iteration_operands(ops, log_a, log_b)
        py = ptx = rows = cols = None
        if need_x:  # P y' (through 1 / |y| for the cosine), P 1
            py, rows = plan_matmul(cost_ops, log_a, log_b, f, g, ctx.eps, y,
                                   ys if cosine else None)
        if need_y:
            ptx, cols = plan_matmul(cost_ops.transposed(), log_b, log_a, g, f, ctx.eps, x,
                                    xs if cosine else None)
        fc = _factors(ctx.kind, x, y, xs, ys)
        dx, dy = fc.input_grads(py, ptx, rows, cols, grad_loss.to(torch.float32), need_x, need_y)
        return (_masked_grad(dx, log_a > -torch.inf, x.dtype),
                _masked_grad(dy, log_b > -torch.inf, y.dtype),
                None, None, None, None, None, None, None)


class TritonSinkhornCostFunction(torch.autograd.Function):
    """(loss, plan, f, g, iterations) for a dense cost (B, n, m) read in place; only ``loss``
    has a gradient, dL/dC = grad * P."""

    @staticmethod
    def forward(ctx, cost, a, b, eps, n_iters, tol):
        from .kernels.cost_tile import dense_operands

        log_a, log_b = _log_weights(a), _log_weights(b)
        f, g, loss, iterations, plan = _solve(dense_operands(cost), b, log_a, log_b, eps,
                                              n_iters, tol, write_plan=True)
        ctx.save_for_backward(plan)
        ctx.cost_dtype = cost.dtype
        ctx.mark_non_differentiable(plan, f, g, iterations)
        return loss, plan, f, g, iterations

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (plan,) = ctx.saved_tensors
        return (grad_loss[:, None, None] * plan).to(ctx.cost_dtype), None, None, None, None, None
