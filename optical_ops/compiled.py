r"""The OT value as a ``torch.library`` custom op: what :func:`~optical_ops.ot_distill_loss`
runs while ``torch.compile`` traces it.

Dynamo cannot trace the solver (Python loops, primitives, length buckets), so under
``torch.compile`` the solve is one opaque graph node, ``optical_ops::ot_value``, with a fake
(meta) implementation for shapes and its gradient registered through
``torch.library.register_autograd``: a compiled training step has no graph break inside the
loss (with ``check_inputs=False``, ``fullgraph=True`` works), and with ``tol=None`` the node
reads nothing on the host, so CUDA graphs can capture it.

The node solves the whole padded batch with the solver the plan picks (no length buckets) and
returns the value and the potentials (f, g). A custom op saves only tensors of its signature,
so the backward, ``optical_ops::ot_value_backward``, rebuilds the primitive from the inputs
(one cost build) and the potentials (:meth:`~optical_ops.sinkhorn_loop.SoftMin.states`); the
gradients are those of :class:`~optical_ops.autograd.EmbeddingOTFunction`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .autograd import SolveSpec, solve_embeddings
from .costs import exact_numerics
from .primitives import embedding_factors, embedding_primitives
from .sinkhorn_loop import entropic_value


@torch.library.custom_op("optical_ops::ot_value", mutates_args=())
def ot_value(x: Tensor, y: Tensor, a: Tensor, b: Tensor, f_init: Tensor | None, solver: str,
             cost: str, eps: float, n_iters: int, tol: float | None, tol_norm: int,
             tau: float | None, eps_scaling: float | None,
             entropic: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(value (B,), f (B, n), g (B, m)) of the problems x (B, n, d), y (B, m, d) with weights
    a (B, n), b (B, m) in the compute dtype; value = <P, C>, or the entropic value."""
    spec = SolveSpec(None, solver, eps, n_iters, tol, tau, False, cost, norm=tol_norm,
                     eps_scaling=eps_scaling)
    with exact_numerics(x.device):
        op, _, res = solve_embeddings(solver, x, y, a, b, spec, f_init)
        if entropic:
            value = entropic_value(op, res.f_state, res.g_state, eps)
        else:
            value = op.loss(res.f_state, res.g_state) if res.loss is None else res.loss
        f, g = op.potentials(res.f_state, res.g_state)
    return value.clone(), f.clone(), g.clone()


@ot_value.register_fake
def _ot_value_fake(x, y, a, b, f_init, solver, cost, eps, n_iters, tol, tol_norm, tau,
                   eps_scaling, entropic):
    return a.new_empty(a.shape[0]), a.new_empty(a.shape), b.new_empty(b.shape)


@torch.library.custom_op("optical_ops::ot_value_backward", mutates_args=())
def ot_value_backward(grad: Tensor, x: Tensor, y: Tensor, a: Tensor, b: Tensor, f: Tensor,
                      g: Tensor, solver: str, cost: str, eps: float, tau: float | None,
                      need_x: bool, need_y: bool) -> tuple[Tensor, Tensor]:
    """(dL/dx, dL/dy) from the potentials; an empty tensor for a side not asked for."""
    if not (need_x or need_y):
        return x.new_empty(0), y.new_empty(0)
    with exact_numerics(x.device):
        fc = embedding_factors(solver, x, y, a, b, cost, sync_ok=False)
        op = embedding_primitives(solver, fc, a, b, tau, sync_ok=False)(eps)
        f_state, g_state = op.states(f, g)
        dx, dy = op.input_grads(f_state, g_state, fc, grad, need_x, need_y)
    return (dx.to(x.dtype) if need_x else x.new_empty(0),
            dy.to(y.dtype) if need_y else y.new_empty(0))


@ot_value_backward.register_fake
def _ot_value_backward_fake(grad, x, y, a, b, f, g, solver, cost, eps, tau, need_x, need_y):
    return (x.new_empty(x.shape if need_x else (0,)), y.new_empty(y.shape if need_y else (0,)))


def _setup_context(ctx, inputs, output):
    x, y, a, b, _f_init, solver, cost, eps, *_, tau, _eps_scaling, _entropic = inputs
    _, f, g = output
    ctx.save_for_backward(x, y, a, b, f, g)
    ctx.options = (solver, cost, eps, tau)


def _backward(ctx, grad_value, _grad_f, _grad_g):
    """dL/dx, dL/dy through the cost; dL/da = grad f, dL/db = grad g. (f and g are outputs for
    the backward's sake; gradients flowing into them are not propagated.)"""
    x, y, a, b, f, g = ctx.saved_tensors
    need_x, need_y, need_a, need_b = ctx.needs_input_grad[:4]
    dx = dy = None
    if need_x or need_y:
        dx, dy = ot_value_backward(grad_value, x, y, a, b, f, g, *ctx.options, need_x, need_y)
    weight = grad_value[:, None]
    return (dx if need_x else None, dy if need_y else None,
            (weight * f).to(a.dtype) if need_a else None,
            (weight * g).to(b.dtype) if need_b else None,
            None, None, None, None, None, None, None, None, None, None)


ot_value.register_autograd(_backward, setup_context=_setup_context)
