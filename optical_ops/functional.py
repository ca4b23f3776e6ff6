r"""Public functional API: :func:`sinkhorn` and :func:`ot_distill_loss`.

Entropic OT between token weights a (n,) and b (m,) with cost C (n, m):

    P* = argmin_{P >= 0, P 1 = a, P^T 1 = b}  <P, C> + eps KL(P | a b^T),
    P*_ij = a_i b_j exp((f_i + g_j - C_ij) / eps),

found by log-stable Sinkhorn iterations (:mod:`optical_ops.sinkhorn_loop`). The OPTICAL
distillation loss (Huang, Yu, Allan, WSDM 2023) is the transport cost <P*, C> between a
student's token embeddings and a frozen teacher's, with C_ij = 1 - cos(student_i, teacher_j).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch

from . import _validation as v
from .autograd import CostOTFunction, EmbeddingOTFunction, SolveSpec
from .compiled import ot_value
from .costs import COSTS, cost_matrix
from .dispatch import SOLVERS, solver_plan

REDUCTIONS = ("mean", "sum", "none")
TOL_NORMS = {"l1": 1, "l2": 2}


@dataclass
class SinkhornResult:
    """Output of :func:`sinkhorn`. Shapes for a batched cost (B, n, m); unbatched drops B.

    Attributes:
        plan: (B, n, m) transport plan P.
        f: (B, n) and g: (B, m) dual potentials, P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps).
        loss: (B,) transport cost <P, C>; differentiable w.r.t. the cost (dL/dC = P).
        iterations: (B,) int64, Sinkhorn iterations each problem ran.
        marginal_error: (B,) |P 1 - a|_1 + |P^T 1 - b|_1.
        converged: (B,) bool, the problem reached ``tol``; None when no ``tol`` was given.
    """

    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    loss: torch.Tensor
    iterations: torch.Tensor
    marginal_error: torch.Tensor
    converged: torch.Tensor | None = None


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    eps: float = 0.05,
    n_iters: int = 100,
    tol: float | None = None,
    tau: float | None = None,
    backend: str = "auto",
    solver: str = "auto",
    check_inputs: bool = True,
    tol_norm: str = "l1",
    warm_start: torch.Tensor | None = None,
    eps_scaling: float | None = None,
) -> SinkhornResult:
    """Entropic OT plan, potentials and transport cost for one cost matrix or a batch.

    Args:
        cost: (n, m) or (B, n, m) float tensor; no NaN or -inf where both weights are > 0;
            +inf marks a forbidden pair (P_ij = 0; PyTorch backend), as long as every row and
            column with mass keeps a finite entry.
        a: row weights (n,) or (B, n), non-negative, normalised per problem; zeros allowed
            (those points carry no mass). Default uniform.
        b: column weights (m,) or (B, m), likewise.
        eps: entropic regularisation (> 0), in the units of the cost.
        n_iters: Sinkhorn iterations (>= 1); with ``tol=None`` exactly this many.
        tol: stop a problem once its L1 marginal error is <= tol (checked every 10 iterations;
            for unbalanced OT, once the column scaling changes by <= tol between updates).
        tau: None for balanced OT; a number > 0 for unbalanced OT, where the marginal
            constraints become penalties tau KL(P 1 | a) + tau KL(P^T 1 | b) (PyTorch backend).
        backend: ``"auto"`` (Triton for CUDA tensors when triton is installed, else PyTorch) |
            ``"torch"`` | ``"triton"`` (fp16/bf16/fp32 costs; the cost is read in place).
        solver: ``"auto"`` or a solver of :data:`optical_ops.dispatch.SOLVERS` that takes a
            dense cost; :func:`~optical_ops.solver_plan` tells which one "auto" picks.
        check_inputs: run the value checks that need a device-to-host sync.
        tol_norm: ``"l1"`` (default) or ``"l2"``: the norm of the column-marginal error
            |P^T 1 - b| compared with ``tol``; ``"l2"`` is POT's stopping rule.
        warm_start: potentials f (n,) or (B, n) to start from instead of f = 0 (e.g. the ``f``
            of an earlier result), in the cost's units.
        eps_scaling: None, or a factor q in (0, 1): eps-scaling, 10 iterations at each of
            R, R q, R q^2, ... above ``eps`` (R: the cost's range), each warm-starting the next,
            before the ``n_iters`` at ``eps``. For small eps, where plain Sinkhorn needs
            O(R / eps) iterations.

    Returns:
        :class:`SinkhornResult`, in fp32 for half-precision costs, else the cost's dtype.
        ``plan``, ``f`` and ``g`` carry no gradient. With ``tol``, a RuntimeWarning names the
        problems that did not reach it (``converged`` flags them).

    N.B. ``loss.backward()`` gives dL/dC = P and, for weights that require grad, dL/da = f and
    dL/db = g: the exact gradients of the entropic OT value at convergence (envelope theorem),
    an approximation of the gradients of <P, C>.
    """
    v.check_float_tensor("cost", cost)
    if cost.dim() not in (2, 3):
        raise ValueError(f"cost must be (n, m) or (B, n, m), got shape {tuple(cost.shape)}")
    v.check_solver_options(eps, n_iters, tol)
    v.check_tau(tau)
    v.check_choice("tol_norm", tol_norm, TOL_NORMS)
    v.check_eps_scaling(eps_scaling)
    device = v.check_same_device(cost=cost, a=a, b=b, warm_start=warm_start)
    single = cost.dim() == 2
    c3 = cost[None] if single else cost
    batch, n, m = c3.shape
    if min(n, m) < 1:
        raise ValueError(f"cost must have at least one row and one column, got {tuple(cost.shape)}")
    plan = solver_plan(batch, n, m, None, device=device, dtype=cost.dtype, backend=backend,
                       solver=solver, tau=tau, check_inputs=check_inputs)
    dtype = v.compute_dtype(cost.dtype)
    if batch == 0:
        return _empty_result(c3, dtype)
    common = dict(dtype=dtype, device=device, check_values=check_inputs)
    wa = v.marginal(n, batch, None, a, mask_name="a", weights_name="a", **common)
    wb = v.marginal(m, batch, None, b, mask_name="b", weights_name="b", **common)
    if check_inputs:
        v.check_cost(c3, wa > 0, wb > 0)

    f_init = v.potentials("warm_start", warm_start, (batch, n), device, dtype)
    spec = SolveSpec(plan, solver, float(eps), n_iters, tol, tau, check_inputs,
                     norm=TOL_NORMS[tol_norm], eps_scaling=eps_scaling)
    loss, transport, f, g, iterations, converged = CostOTFunction.apply(c3, wa, wb, f_init, spec)
    with torch.no_grad():
        error = (transport.sum(2) - wa).abs().sum(1) + (transport.sum(1) - wb).abs().sum(1)
    fields = (transport, f, g, loss, iterations, error, converged)
    return SinkhornResult(*(t[0] if single and t is not None else t for t in fields))


def _empty_result(cost: torch.Tensor, dtype: torch.dtype) -> SinkhornResult:
    """The result for a batch of no problems (B = 0): empty tensors of the right shapes."""
    n, m = cost.shape[1:]
    empty = cost.new_zeros
    return SinkhornResult(empty((0, n, m), dtype=dtype), empty((0, n), dtype=dtype),
                          empty((0, m), dtype=dtype), cost.sum((1, 2)).to(dtype) * 0,
                          empty(0, dtype=torch.int64), empty(0, dtype=dtype))


def _check_embeddings(student, teacher):
    v.check_float_tensor("student", student)
    v.check_float_tensor("teacher", teacher)
    if student.dim() not in (2, 3) or teacher.dim() != student.dim():
        raise ValueError(
            "student and teacher must both be (n, d) or both (B, n, d), got shapes "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"student and teacher must have the same embedding size d, got "
            f"{student.shape[-1]} and {teacher.shape[-1]}"
        )
    if student.dim() == 3 and student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher must have the same batch size B, got "
            f"{student.shape[0]} and {teacher.shape[0]}"
        )
    if student.shape[-2] < 1 or teacher.shape[-2] < 1 or student.shape[-1] < 1:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must have "
            "at least one token and one feature"
        )


def check_loss_options(cost: str, eps: float, n_iters: int, tol: float | None,
                       tau: float | None, debias: bool, reduction: str,
                       tol_norm: str = "l1") -> None:
    """The value-free option checks of :func:`ot_distill_loss` (also run by
    :class:`~optical_ops.OTDistillLoss` at construction)."""
    v.check_choice("cost", cost, COSTS)
    v.check_choice("reduction", reduction, REDUCTIONS)
    v.check_choice("tol_norm", tol_norm, TOL_NORMS)
    v.check_solver_options(eps, n_iters, tol)
    v.check_tau(tau)
    if not isinstance(debias, bool):
        raise TypeError(f"debias must be a bool, got {type(debias).__name__}")
    if debias and tau is not None:
        raise ValueError("debias=True is defined for balanced OT only: pass tau=None")


def _batched(student, teacher, student_mask, teacher_mask, student_weights, teacher_weights,
             warm_start=None):
    """(x, y, single, device): the embeddings checked and batched ((n, d) -> (1, n, d)), every
    tensor argument on one device."""
    _check_embeddings(student, teacher)
    device = v.check_same_device(
        student=student, teacher=teacher, student_mask=student_mask,
        teacher_mask=teacher_mask, student_weights=student_weights,
        teacher_weights=teacher_weights, warm_start=warm_start,
    )
    single = student.dim() == 2
    x, y = (student[None], teacher[None]) if single else (student, teacher)
    return x, y, single, device


def _token_weights(x, y, student_mask, teacher_mask, student_weights, teacher_weights, dtype,
                   device, check_inputs):
    """The normalised token weights (a (B, n), b (B, m)) of the student and teacher sides."""
    common = dict(dtype=dtype, device=device, check_values=check_inputs)
    a = v.marginal(x.shape[1], x.shape[0], student_mask, student_weights,
                   mask_name="student_mask", weights_name="student_weights", **common)
    b = v.marginal(y.shape[1], y.shape[0], teacher_mask, teacher_weights,
                   mask_name="teacher_mask", weights_name="teacher_weights", **common)
    return a, b


def ot_distill_plan(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_mask: torch.Tensor | None = None,
    teacher_mask: torch.Tensor | None = None,
    *,
    student_weights: torch.Tensor | None = None,
    teacher_weights: torch.Tensor | None = None,
    cost: str = "cosine",
    **options,
) -> SinkhornResult:
    """The plan, potentials, iterations and convergence of the problems that
    :func:`ot_distill_loss` solves with the same arguments: the cost C(student, teacher) is
    built densely (:func:`~optical_ops.cost_matrix`) and solved by :func:`sinkhorn` with the
    same token weights. For inspection (convergence, alignments); the loss's own solver never
    stores the plan. ``options``: the solver options of :func:`sinkhorn` (``eps``, ``n_iters``,
    ``tol``, ``tau``, ``backend``, ``solver``, ``check_inputs``, ``tol_norm``, ``warm_start``,
    ``eps_scaling``); a solver that needs embeddings (``"streaming"``,
    ``"triton-streaming"``) is replaced by the automatic dense-cost choice.
    """
    v.check_choice("cost", cost, COSTS)
    unknown = set(options) - set(_SINKHORN_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; expected some of "
                        f"{sorted(_SINKHORN_OPTIONS)}")
    x, y, single, device = _batched(student, teacher, student_mask, teacher_mask,
                                    student_weights, teacher_weights)
    a, b = _token_weights(x, y, student_mask, teacher_mask, student_weights, teacher_weights,
                          v.compute_dtype(student.dtype, teacher.dtype), device,
                          options.get("check_inputs", True))
    c = cost_matrix(x, y, cost)
    if single:
        c, a, b = c[0], a[0], b[0]
    solver = options.pop("solver", "auto")
    takes_cost = solver in SOLVERS and "cost" in SOLVERS[solver].inputs
    return sinkhorn(c, a, b, solver=solver if takes_cost else "auto", **options)


def ot_distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    student_mask: torch.Tensor | None = None,
    teacher_mask: torch.Tensor | None = None,
    *,
    student_weights: torch.Tensor | None = None,
    teacher_weights: torch.Tensor | None = None,
    cost: str = "cosine",
    eps: float = 0.05,
    n_iters: int = 100,
    tol: float | None = None,
    tau: float | None = None,
    debias: bool = False,
    reduction: str = "mean",
    backend: str = "auto",
    solver: str = "auto",
    check_inputs: bool = True,
    tol_norm: str = "l1",
    warm_start: torch.Tensor | None = None,
    eps_scaling: float | None = None,
) -> torch.Tensor:
    """OPTICAL distillation loss: OT cost <P, C> between student and teacher token sets.

    Args:
        student: (B, n, d) or (n, d) token embeddings (any float dtype).
        teacher: (B, m, d) or (m, d) token embeddings.
        student_mask, teacher_mask: (B, n) / (B, m), bool or 0/1 (a Hugging Face
            ``attention_mask`` works as is); masked tokens carry no mass and get zero gradient.
        student_weights, teacher_weights: optional non-negative token weights (e.g. IDF),
            multiplied with the masks and normalised per problem. Default uniform.
        cost: ``"cosine"`` (C = 1 - cos, as in OPTICAL) or ``"sqeuclidean"`` (|x - y|^2).
        eps: entropic regularisation (> 0), in cost units.
        n_iters: Sinkhorn iterations; tol: early stop per problem (see :func:`sinkhorn`).
        tau: None (balanced) or > 0: unbalanced OT with KL-relaxed marginals (as in
            :func:`sinkhorn`); the loss stays <P, C>.
        debias: return the Sinkhorn divergence (Feydy et al., 2019)
            S = OT_eps(x, y) - OT_eps(x, x)/2 - OT_eps(y, y)/2 of the entropic values
            OT_eps = <P, C> + eps KL(P | a b^T), which is >= 0 and 0 when the two weighted token
            sets coincide (balanced OT only).
        reduction: ``"mean"`` | ``"sum"`` over problems, or ``"none"`` for (B,).
        backend: ``"auto"`` (Triton for CUDA tensors when triton is installed and the
            options allow it, else PyTorch) | ``"torch"`` | ``"triton"`` (fp16/bf16/fp32
            inputs, read in place; see :mod:`optical_ops.softmin_triton`).
        solver: ``"auto"`` or one of :data:`optical_ops.dispatch.SOLVERS` (e.g.
            ``"dense-log"``, ``"streaming"``: never store the (B, n, m) cost, ``"triton-fused"``);
            :func:`~optical_ops.solver_plan` tells which one "auto" picks and why.
        check_inputs: run the value checks that need a device-to-host sync. With
            ``check_inputs=False`` (and ``tol=None``) nothing is read on the host, forward or
            backward (CUDA graphs, ``torch.compile``): ragged batches are then not split into
            length buckets, and the dense solver picks its domain from a bound instead of the
            cost's range.
        tol_norm, warm_start, eps_scaling: as in :func:`sinkhorn`; ``warm_start`` holds the
            student-side potentials f (B, n) (e.g. ``ot_distill_plan(...).f``); the range R of
            ``eps_scaling`` is 2 for the cosine cost, (max|x| + max|y|)^2 for sqeuclidean.

    Returns:
        The loss: a scalar, or (B,) with ``reduction="none"`` (() for unbatched inputs), in
        fp32 for half-precision inputs.

    N.B. The gradient (to the student, and to the teacher when it requires grad) is the
    envelope gradient dL/dC = P pushed through C(student, teacher): exact for the entropic OT
    value at convergence, an approximation of the gradient of <P, C>.
    """
    check_loss_options(cost, eps, n_iters, tol, tau, debias, reduction, tol_norm)
    v.check_eps_scaling(eps_scaling)
    x, y, single, device = _batched(student, teacher, student_mask, teacher_mask,
                                    student_weights, teacher_weights, warm_start)
    dtype = v.compute_dtype(student.dtype, teacher.dtype)
    batch, n, m = x.shape[0], x.shape[1], y.shape[1]
    plan = solver_plan(batch, n, m, x.shape[2], device=device,
                       dtype=torch.promote_types(student.dtype, teacher.dtype), backend=backend,
                       solver=solver, tau=tau, debias=debias, check_inputs=check_inputs)
    a, b = _token_weights(x, y, student_mask, teacher_mask, student_weights, teacher_weights,
                          dtype, device, check_inputs)
    f_init = v.potentials("warm_start", warm_start, (batch, n), device, dtype)
    norm = TOL_NORMS[tol_norm]
    spec = SolveSpec(plan, solver, float(eps), n_iters, tol, tau, check_inputs, cost, norm=norm,
                     eps_scaling=eps_scaling, grad_mode=torch.is_grad_enabled())

    def value(p, q, wp, wq, warm=None, entropic: bool = False):
        if torch.compiler.is_compiling():  # one opaque graph node (see .compiled)
            return ot_value(p, q, wp, wq, warm, plan.solver, cost, float(eps), n_iters, tol,
                            norm, tau, eps_scaling, entropic)[0]
        return EmbeddingOTFunction.apply(p, q, wp, wq, warm,
                                         replace(spec, value="entropic") if entropic else spec)

    if batch == 0:  # what torch losses return: empty, sum 0, mean NaN (connected to the graph)
        per_problem = (x.sum((1, 2)) + y.sum((1, 2))).to(dtype) * 0
    elif debias:
        per_problem = (value(x, y, a, b, f_init, True) - 0.5 * value(x, x, a, a, None, True)
                       - 0.5 * value(y, y, b, b, None, True))
    else:
        per_problem = value(x, y, a, b, f_init)
    if reduction == "mean":
        return per_problem.mean()
    if reduction == "sum":
        return per_problem.sum()
    return per_problem[0] if single else per_problem


_SINKHORN_OPTIONS = [name for name, p in inspect.signature(sinkhorn).parameters.items()
                     if p.kind is inspect.Parameter.KEYWORD_ONLY]
