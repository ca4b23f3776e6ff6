r"""The one Sinkhorn loop, generic over a soft-min primitive.

Entropic OT between weights a (B, n) and b (B, m) with cost C (B, n, m):

    OT_eps(a, b) = min_{P >= 0, P 1 = a, P^T 1 = b}  <P, C> + eps * KL(P | a b^T)

Its dual potentials f (B, n), g (B, m) give the plan  P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)
and satisfy the soft-min (soft c-transform) equations

    g_j = -eps * log sum_i a_i exp((f_i - C_ij) / eps)      (column update)
    f_i = -eps * log sum_j b_j exp((g_j - C_ij) / eps)      (row update)

Sinkhorn alternates them from f = 0, column update first (POT's order), so after each
iteration the plan's rows sum exactly to a and the error is in the columns:

    err = sum_j |(P^T 1)_j - b_j| = sum_j b_j |exp((g_j - g'_j) / eps) - 1|,

where g' is the next column update: the check costs nothing extra.

A primitive (:class:`SoftMin`) implements both updates in whatever parameterisation of (f, g)
is cheapest for it (log potentials, or scalings exp(-f/eps)) and what the loss and the gradient
need from the final plan. Dense, streaming and Triton primitives plug in here; a primitive
that runs the whole loop in one routine (the fused Triton kernel) does so through
:meth:`SoftMin.solve`.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .costs import FactorisedCost

# With ``tol`` set, convergence is checked every CHECK_EVERY iterations (one host sync each),
# like POT; iteration counts are then multiples of it (or n_iters).
CHECK_EVERY = 10

# Iterations at each intermediate eps of an eps-scaling schedule (:func:`run_annealed`).
STAGE_ITERS = 10


class SoftMin(ABC):
    """Both soft-min updates of one problem batch, in a primitive-defined state.

    ``f_state``/``g_state`` are tensors (B, n)/(B, m) that determine f and g; the loop only
    passes them between the methods. Every primitive holds ``eps`` and the column weights ``b``
    (B, m) and the row weights ``a`` (B, n).
    """

    eps: float
    a: torch.Tensor
    b: torch.Tensor

    def initial_f_state(self, f: torch.Tensor | None = None) -> torch.Tensor:
        """The state of f = 0, or of the given potentials f (B, n) (a warm start)."""
        zeros = torch.zeros_like(self.b)
        return self.states(torch.zeros_like(self.a) if f is None else f, zeros)[0]

    @abstractmethod
    def update_cols(self, f_state: torch.Tensor) -> torch.Tensor:
        """g_state from f_state (the column soft-min)."""

    @abstractmethod
    def update_rows(self, g_state: torch.Tensor) -> torch.Tensor:
        """f_state from g_state (the row soft-min)."""

    def col_log_ratio(self, g_state: torch.Tensor, next_g_state: torch.Tensor) -> torch.Tensor:
        """(B, m) log((P^T 1)_j / b_j) of the plan (f, g), given the next column update g':
        (g - g') / eps for primitives whose states are the potentials."""
        return (g_state - next_g_state) / self.eps

    @abstractmethod
    def potentials(
        self, f_state: torch.Tensor, g_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(f, g) in the plan convention P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)."""

    def states(self, f: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of :meth:`potentials`: (f_state, g_state) of the potentials (f, g).
        Primitives whose states are the potentials keep this default."""
        return f, g

    @abstractmethod
    def plan(self, f_state: torch.Tensor, g_state: torch.Tensor) -> torch.Tensor:
        """The dense plan (B, n, m)."""

    @abstractmethod
    def loss(self, f_state: torch.Tensor, g_state: torch.Tensor) -> torch.Tensor:
        """(B,) transport cost <P, C>."""

    @abstractmethod
    def plan_products(
        self,
        f_state: torch.Tensor,
        g_state: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        x_scale: torch.Tensor,
        y_scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P y', P^T x', P 1, P^T 1) with x' = x_scale x (B, n, d), y' = y_scale y (B, m, d).

        What the gradient needs (:meth:`optical_ops.costs.FactorisedCost.input_grads`). ``y``
        None: P y' (dL/dx's product) is not wanted and comes back None; ``x`` None: the same
        for P^T x' (a frozen teacher needs one product, not two). The marginal of a side not
        asked for (P 1 without P y', P^T 1 without P^T x') may come back None too.
        """

    def input_grads(self, f_state: torch.Tensor, g_state: torch.Tensor, fc: FactorisedCost,
                    grad_loss: torch.Tensor, need_x: bool,
                    need_y: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(dL/dx, dL/dy) of the losses weighted by ``grad_loss`` (B,), through the cost
        ``fc``: the plan's products, then the cost's chain rule (``FactorisedCost.input_grads``).
        Primitives that can apply the chain rule inside their products pass override this."""
        products = self.plan_products(f_state, g_state, fc.x if need_y else None,
                                      fc.y if need_x else None, fc.row_scale, fc.col_scale)
        return fc.input_grads(*products, grad_loss, need_x, need_y)

    def prepare_final(self, need_x: bool, need_y: bool) -> None:  # noqa: B027 (optional hook)
        """Told before a solve whose last iterate is its final state (``tol`` None) that
        :meth:`loss` and :meth:`input_grads` will be asked there, the latter for dL/dx
        (``need_x``) and dL/dy (``need_y``). A primitive that would recompute the cost for them
        (the native streaming one) forms them in its last pass instead; the default ignores
        it."""

    def marginals(
        self, f_state: torch.Tensor, g_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(P 1, P^T 1), (B, n) and (B, m). Primitives that never store P override this."""
        plan = self.plan(f_state, g_state)
        return plan.sum(2), plan.sum(1)

    def iterate(self, f_state: torch.Tensor, n_iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_iters`` full iterations (column then row update) -> (f_state, g_state).

        Primitives with a fused multi-iteration routine override this.
        """
        for _ in range(n_iters):
            g_state = self.update_cols(f_state)
            f_state = self.update_rows(g_state)
        return f_state, g_state

    def solve(self, n_iters: int, tol: float | None, warm: bool, norm: int) -> LoopResult | None:
        """The whole loop in one routine, or None to let :func:`run_sinkhorn` drive
        :meth:`iterate`. Primitives that fuse the loop (and its ``tol`` check) override this;
        ``warm``: a warm start was asked for; ``norm``: of the marginal error (1 or 2)."""
        return None

    def for_backward(self) -> SoftMin:
        """This primitive without the buffers that only the forward pass reads."""
        return self


def entropic_value(op: SoftMin, f_state: torch.Tensor, g_state: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """(B,) OT_eps(P) = <P, C> + eps KL(P | a b^T) of the current plan, exactly.

    From log P_ij = log a_i b_j + (f_i + g_j - C_ij)/eps:
    eps KL(P | a b^T) = sum_ij P_ij (f_i + g_j) - <P, C> - eps (sum P - 1), hence
    OT_eps(P) = <P 1, f> + <P^T 1, g> - eps (sum P - 1).
    """
    f, g = op.potentials(f_state, g_state)
    rows, cols = op.marginals(f_state, g_state)
    return (rows * f).sum(1) + (cols * g).sum(1) - eps * (rows.sum(1) - 1.0)


@dataclass
class LoopResult:
    f_state: torch.Tensor
    g_state: torch.Tensor
    iterations: torch.Tensor  # (B,) int64: iterations each problem ran
    # What a fused solve computed on the way (else None: ask the primitive).
    loss: torch.Tensor | None = None
    plan: torch.Tensor | None = None
    # (B,) bool: the problem reached ``tol`` (None without tol: not checked).
    converged: torch.Tensor | None = None


def marginal_error(b: torch.Tensor, log_ratio: torch.Tensor, norm: int = 1) -> torch.Tensor:
    """(B,) |P^T 1 - b| in the L1 (``norm=1``) or L2 (``norm=2``, POT's rule) norm, from
    log((P^T 1)_j / b_j); zero-weight columns contribute 0."""
    term = b * torch.expm1(log_ratio).abs()
    return torch.linalg.vector_norm(torch.where(b > 0, term, torch.zeros_like(term)), ord=norm,
                                    dim=-1)


def run_sinkhorn(op: SoftMin, n_iters: int, tol: float | None, *,
                 f_init: torch.Tensor | None = None, norm: int = 1) -> LoopResult:
    """Run ``n_iters`` Sinkhorn iterations, or fewer per problem when ``tol`` is reached.

    The first column update starts from f = 0, or from the potentials ``f_init`` (B, n) (a warm
    start). With ``tol=None`` nothing leaves the device inside the loop. With ``tol``, the
    plan's column-marginal error (:func:`marginal_error` in the ``norm``: 1, or 2 as POT) is
    checked every :data:`CHECK_EVERY` iterations (one extra column update and one host sync per
    check); a problem whose error is <= tol keeps its state from then on, and the loop ends
    when all have stopped. ``converged`` is checked once more at the end when the iterations
    ran out.
    """
    fused = op.solve(n_iters, tol, f_init is not None, norm)
    if fused is not None:
        if tol is not None and fused.converged is None:
            fused.converged = (fused.iterations < n_iters) | _reached(op, fused, tol, norm)
        return fused
    f_state = op.initial_f_state(f_init)
    batch = f_state.shape[0]
    if tol is None:
        f_state, g_state = op.iterate(f_state, n_iters)
        iterations = torch.full((batch,), n_iters, dtype=torch.int64, device=f_state.device)
        return LoopResult(f_state, g_state, iterations)

    done = torch.zeros(batch, dtype=torch.bool, device=f_state.device)
    block = min(CHECK_EVERY, n_iters)
    f_state, g_state = op.iterate(f_state, block)
    iterations = torch.full((batch,), block, dtype=torch.int64, device=f_state.device)
    ran = block
    while ran < n_iters:
        done |= _error(op, f_state, g_state, norm) <= tol
        if bool(done.all()):
            break
        block = min(CHECK_EVERY, n_iters - ran)
        next_f, next_g = op.iterate(f_state, block)
        f_state = torch.where(done[:, None], f_state, next_f)
        g_state = torch.where(done[:, None], g_state, next_g)
        iterations += block * (~done)
        ran += block
    result = LoopResult(f_state, g_state, iterations, converged=done)
    if ran >= n_iters:  # the last block was not checked
        result.converged = done | _reached(op, result, tol, norm)
    return result


def eps_schedule(eps: float, start: float, factor: float) -> list[float]:
    """The intermediate eps of eps-scaling: start, start q, start q^2, ... while above eps."""
    schedule, current = [], start
    while current > eps:
        schedule.append(current)
        current *= factor
    return schedule


def run_annealed(build, eps: float, schedule: list[float], n_iters: int, tol: float | None, *,
                 f_init: torch.Tensor | None = None, norm: int = 1,
                 gradients: tuple[bool, bool] = (False, False)):
    """eps-scaling (Kosowsky and Yuille; Schmitzer 2019): :data:`STAGE_ITERS` iterations at
    each eps of ``schedule`` (decreasing), each stage warm-started from the potentials of the
    last, then :func:`run_sinkhorn` at ``eps``. Large eps first moves the potentials cheaply
    most of the way; at small eps plain Sinkhorn needs O(R / eps) iterations to get there.

    ``build(eps)`` returns the primitive at that eps (or a tuple whose first item it is).
    ``gradients``: (need_x, need_y) of the backward, told to the final primitive
    (:meth:`SoftMin.prepare_final`) when its last iterate is the final state (``tol`` None;
    with ``tol`` the loop picks each problem's state after the fact). Returns (what
    ``build(eps)`` returned, the final :class:`LoopResult`).
    """
    f = f_init
    for stage_eps in schedule:
        built = build(stage_eps)
        op = built[0] if isinstance(built, tuple) else built
        res = run_sinkhorn(op, STAGE_ITERS, None, f_init=f)
        f = op.potentials(res.f_state, res.g_state)[0]
    built = build(eps)
    op = built[0] if isinstance(built, tuple) else built
    if tol is None:
        op.prepare_final(*gradients)
    return built, run_sinkhorn(op, n_iters, tol, f_init=f, norm=norm)


def _error(op: SoftMin, f_state, g_state, norm: int) -> torch.Tensor:
    """(B,) column-marginal error of the plan (f, g): one column update."""
    return marginal_error(op.b, op.col_log_ratio(g_state, op.update_cols(f_state)), norm)


def _reached(op: SoftMin, res: LoopResult, tol: float, norm: int) -> torch.Tensor:
    return _error(op, res.f_state, res.g_state, norm) <= tol


def warn_unconverged(converged: torch.Tensor | None, tol: float | None, n_iters: int) -> None:
    """Warn (like POT) when ``tol`` was given and some problem did not reach it; one host
    sync, only with ``tol`` (whose loop reads the device anyway)."""
    if tol is None or converged is None:
        return
    missed = int((~converged).sum())
    if missed:
        warnings.warn(f"Sinkhorn did not converge: {missed} of {converged.numel()} problem(s) "
                      f"did not reach tol={tol:g} in n_iters={n_iters} iterations; raise "
                      "n_iters, raise eps, or inspect ot_distill_plan(...).marginal_error",
                      RuntimeWarning, stacklevel=4)
