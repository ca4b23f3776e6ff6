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
from dataclasses import dataclass

import torch

from .costs import FactorisedCost, exact_numerics
from .dispatch import COSINE_RANGE, SolverPlan, solver_plan
from .primitives import cost_primitive, embedding_factors, embedding_primitives
from .ragged import Bucket, length_buckets
from .saved import release, restore
from .sinkhorn_loop import (
    LoopResult,
    SoftMin,
    entropic_value,
    eps_schedule,
    run_annealed,
    warn_unconverged,
)


@dataclass(frozen=True)
class SolveSpec:
    """The non-tensor arguments of a solve. ``requested``: the caller's ``solver`` option, used
    to plan each length bucket again; ``value``: ``"transport"`` (<P, C>) or ``"entropic"``."""

    plan: SolverPlan | None  # None: a single solve (the custom op), no buckets
    requested: str
    eps: float
    n_iters: int
    tol: float | None
    tau: float | None
    check_inputs: bool
    cost: str = "cosine"
    value: str = "transport"
    norm: int = 1  # of the marginal error checked against tol (2: POT's rule)
    eps_scaling: float | None = None  # factor of the eps-scaling schedule, or None
    grad_mode: bool = False  # grad mode was on at the call: a backward may follow

    def bucket_solver(self, bucket: Bucket, batch: int, d: int, dtype, device) -> str:
        if not self.plan.buckets:
            return self.plan.solver
        size = batch if bucket.index is None else bucket.index.shape[0]
        return solver_plan(size, bucket.n, bucket.m, d, device=device, dtype=dtype,
                           backend=self.plan.backend, solver=self.requested, tau=self.tau,
                           debias=self.value == "entropic", check_inputs=False).solver


def solve_embeddings(solver: str, x, y, a, b, spec: SolveSpec, f_init=None,
                     gradients: tuple[bool, bool] = (False, False),
                     ) -> tuple[SoftMin, FactorisedCost, LoopResult]:
    """Factorise, check (``check_inputs``), and solve one batch of embedding problems with
    ``solver``, with eps-scaling when asked (from the cost's range bound down to eps);
    ``gradients``: (need_x, need_y) of the backward that will follow."""
    sync_ok = spec.check_inputs
    fc = embedding_factors(solver, x, y, a, b, spec.cost, sync_ok)
    if sync_ok:
        fc.check_finite(a, b)
    schedule = []
    if spec.eps_scaling is not None:
        schedule = eps_schedule(spec.eps, _range_bound(fc, a, b, sync_ok), spec.eps_scaling)

    build = embedding_primitives(solver, fc, a, b, spec.tau, sync_ok)
    op, res = run_annealed(build, spec.eps, schedule, spec.n_iters, spec.tol, f_init=f_init,
                           norm=spec.norm, gradients=gradients)
    return op, fc, res


def _range_bound(fc: FactorisedCost, a, b, sync_ok: bool) -> float:
    """An upper bound of the cost's range: 2 for the cosine cost; (max|x| + max|y|)^2 over the
    tokens with mass for the squared Euclidean cost (one host sync)."""
    if fc.kind == "cosine":
        return COSINE_RANGE
    if not sync_ok:
        raise ValueError("eps_scaling with the squared Euclidean cost reads the cost's scale "
                         "on the host: pass check_inputs=True")
    top = (torch.where(a > 0, fc.row_offset, 0.0).amax().sqrt()
           + torch.where(b > 0, fc.col_offset, 0.0).amax().sqrt())
    return float(top) ** 2


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


def _check_weight_gradients(a, b, spec: SolveSpec) -> None:
    if spec.tau is not None and (a.requires_grad or b.requires_grad):
        raise ValueError("gradients with respect to the weights are implemented for balanced "
                         "OT (tau=None) only; detach the weights or drop tau")


class EmbeddingOTFunction(torch.autograd.Function):
    """Per-problem value (B,) of the plan P between x (B, n, d) and y (B, m, d) with weights
    a (B, n), b (B, m) in the compute dtype: ``<P, C>``, or ``<P, C> + eps KL(P | a b^T)`` for
    ``spec.value == "entropic"``.

    A ragged batch is solved in length buckets (:mod:`.ragged`) when the plan says so, each with
    the solver planned for its extents. Backward: G = grad_loss * P enters through
    (G y', G^T x', G 1, G^T 1), which each bucket's primitive computes from its final
    potentials, and the hand-derived chain rule of the cost
    (:meth:`~optical_ops.costs.FactorisedCost.row_updates`), both in the primitive's
    ``input_grads`` (on the CPU's dense path one native pass per problem).
    """

    @staticmethod
    def forward(ctx, x, y, a, b, f_init, spec: SolveSpec):
        _check_weight_gradients(a, b, spec)
        batch, n, d = x.shape
        m = y.shape[1]
        buckets = length_buckets(a, b) if spec.plan.buckets else [Bucket(None, n, m)]
        losses = a.new_empty(batch)
        states, converged = [], []
        # (needs_input_grad follows the inputs' requires_grad, not the caller's grad mode.)
        gradients = ctx.needs_input_grad[:2] if spec.grad_mode else (False, False)
        with exact_numerics(x.device):
            for bucket in buckets:
                xb, yb, ab, bb = bucket.take(x, y, a, b)
                solver = spec.bucket_solver(bucket, batch, d, x.dtype, x.device)
                op, fc, res = solve_embeddings(solver, xb, yb, ab, bb, spec,
                                               bucket.trim(f_init, bucket.n), gradients)
                if res.converged is not None:
                    converged.append(res.converged)
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
        if converged:
            warn_unconverged(torch.cat(converged), spec.tol, spec.n_iters)
        tensors, ctx.slots = release(states)
        ctx.save_for_backward(*tensors)
        ctx.states = states
        ctx.inputs = [(t.shape, t.dtype) for t in (x, y, a, b)]
        return losses

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss):
        """dL/dx, dL/dy through the cost; dL/da = grad f, dL/db = grad g (the potentials: the
        envelope gradient of the entropic value in the weights, up to a constant that the
        normalisation of the weights removes)."""
        restore(ctx.slots, ctx.saved_tensors)
        needs = ctx.needs_input_grad[:4]
        shapes = [shape for shape, _ in ctx.inputs]
        states = ctx.states
        whole = len(states) == 1 and states[0].bucket.is_whole(shapes[0][1], shapes[1][1])
        grads = [grad_loss.new_zeros(shape, dtype=dtype) if need and not whole else None
                 for need, (shape, dtype) in zip(needs, ctx.inputs)]
        with exact_numerics(grad_loss.device):
            for state in states:
                bucket, fc = state.bucket, state.fc
                weight = grad_loss if bucket.index is None else grad_loss[bucket.index]
                parts = [None] * 4
                if needs[0] or needs[1]:
                    parts[:2] = state.op.input_grads(state.f, state.g, fc, weight, needs[0],
                                                     needs[1])
                if needs[2] or needs[3]:
                    f, g = state.op.potentials(state.f, state.g)
                    parts[2:] = weight[:, None] * f, weight[:, None] * g
                rows = slice(None) if bucket.index is None else bucket.index
                for k, (part, extent) in enumerate(zip(parts, (bucket.n, bucket.m) * 2)):
                    if not needs[k]:
                        continue
                    if whole:
                        grads[k] = part.to(ctx.inputs[k][1])
                    else:
                        grads[k][rows, :extent] = part.to(ctx.inputs[k][1])
        return (*grads, None, None)


class CostOTFunction(torch.autograd.Function):
    """(loss, plan, f, g, iterations, converged) for a dense cost (B, n, m) and weights a, b in
    the compute dtype; only ``loss`` has a gradient, dL/dC = grad * P. ``converged`` is None
    without ``tol``."""

    @staticmethod
    def forward(ctx, cost, a, b, f_init, spec: SolveSpec):
        _check_weight_gradients(a, b, spec)
        with exact_numerics(cost.device):
            schedule = []
            if spec.eps_scaling is not None:
                if not spec.check_inputs:
                    raise ValueError("eps_scaling on a dense cost reads the cost's range on the "
                                     "host: pass check_inputs=True")
                valid = (a > 0)[:, :, None] & (b > 0)[:, None, :] & torch.isfinite(cost)
                spread = (torch.where(valid, cost, -torch.inf).amax()
                          - torch.where(valid, cost, torch.inf).amin())
                schedule = eps_schedule(spec.eps, float(spread), spec.eps_scaling)

            def build(eps):
                return cost_primitive(spec.plan.solver, cost, a, b, eps, spec.tau,
                                      sync_ok=spec.check_inputs)

            op, res = run_annealed(build, spec.eps, schedule, spec.n_iters, spec.tol,
                                   f_init=f_init, norm=spec.norm)
            plan = op.plan(res.f_state, res.g_state) if res.plan is None else res.plan
            loss = op.loss(res.f_state, res.g_state) if res.loss is None else res.loss
            f, g = op.potentials(res.f_state, res.g_state)
        ctx.save_for_backward(plan, f, g)
        ctx.dtypes = (cost.dtype, a.dtype, b.dtype)
        ctx.mark_non_differentiable(plan, f, g, res.iterations)
        warn_unconverged(res.converged, spec.tol, spec.n_iters)
        return loss, plan, f, g, res.iterations, res.converged

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss, *_):
        """dL/dC = grad P; dL/da = grad f, dL/db = grad g (see :class:`EmbeddingOTFunction`)."""
        plan, f, g = ctx.saved_tensors
        weight = grad_loss[:, None]
        grads = (grad_loss[:, None, None] * plan, weight * f, weight * g)
        return (*(t.to(dtype) if need else None
                  for t, dtype, need in zip(grads, ctx.dtypes, ctx.needs_input_grad)), None, None)
