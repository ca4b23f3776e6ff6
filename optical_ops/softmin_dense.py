r"""Dense soft-min primitives: the cost (B, n, m) is held in memory.

Two exact parameterisations of the same iterations (see :mod:`.sinkhorn_loop`):

* :class:`DenseLogSoftMin` works on the potentials with log-sum-exp: stable at any eps, one
  ``exp`` per entry per half-iteration (reads and writes B*n*m per half-iteration).
* :class:`DenseScalingSoftMin` works on scalings with the kernel K = exp(-(C - min C) / eps)
  computed once: each half-iteration is a batched matrix-vector product (reads B*n*m, no exp).
  Its states are the soft-min sums  s = K (b e^{g/eps})  and  t = K^T (a e^{f/eps})  up to the
  shift, so  f = -eps log s,  g = min C - eps log t  stay finite even where a weight is zero.

The scaling form is used when it cannot overflow (the rule and its thresholds live in
:func:`optical_ops.dispatch.dense_domain`). With f_0 = 0, the iterates satisfy |f| <= R and g in
[min C - R, max C + R] (R = max C - min C over the entries that carry mass: Sinkhorn's composite
map is a sup-norm contraction towards a fixed point of oscillation <= R), so every scaling and
soft-min sum lies in [e^{-2R/eps}, m e^{2R/eps}]: inside the dtype's range for R/eps up to
:data:`~optical_ops.dispatch.SCALING_MAX_RANGE`; otherwise the log form is used.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from .costs import FactorisedCost
from .dispatch import dense_domain
from .kernels.cpu_dense_cost import dense_cost, native_dense_cost_available
from .kernels.cpu_dense_cost import plan_gradients as native_plan_gradients
from .kernels.cpu_dense_cost import plan_products as native_plan_products
from .kernels.cpu_scaling import native_scaling_available, scaling_iterate
from .kernels.cpu_scaling import transport_cost as scaling_transport_cost
from .kernels.cpu_stabilised import native_stabilised_available
from .logsumexp import logsumexp_
from .sinkhorn_loop import SoftMin


class DensePlan(SoftMin):
    """A dense primitive whose plan is P_ij = r_i M_ij c_j or, in the log form, P_ij =
    exp(r_i + c_j + k M_ij) for its :meth:`plan_factors` (M, r, c, k). On the CPU, for a batch
    of small problems, the plan's products run as one native pass per problem that reads only
    its block with mass (benchmarks/NOTES.md, O23, O29), and the gradient's chain rule inside
    that pass (O31)."""

    a: torch.Tensor
    b: torch.Tensor

    @abstractmethod
    def plan_factors(self, f, g) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float | None]:
        """(M (B, n, m), r (B, n), c (B, m), k): the plan at states f, g; k None for the
        product form, the scale of M in the exponent for the log form."""

    @abstractmethod
    def batched_plan_products(self, factors, x, y, x_scale, y_scale):
        """:meth:`plan_products` of the plan with these :meth:`plan_factors` as batched
        PyTorch products (any device, any size)."""

    def plan_products(self, f, g, x, y, x_scale, y_scale):
        factors = matrix, row, col, k = self.plan_factors(f, g)
        if native_products_pay(matrix, x, y):
            return native_plan_products(matrix, row, col, x, x_scale, y, y_scale, self.a,
                                        self.b, log_scale=k)
        return self.batched_plan_products(factors, x, y, x_scale, y_scale)

    def input_grads(self, f, g, fc, grad_loss, need_x, need_y):
        matrix, row, col, k = self.plan_factors(f, g)
        # The fused pass reads both sides whichever gradient is asked for (one side's product,
        # the other's rows for its update), so both must suit it.
        if not native_products_pay(matrix, fc.x, fc.y):
            return super().input_grads(f, g, fc, grad_loss, need_x, need_y)
        x_update, y_update = fc.row_updates(grad_loss, matrix.dtype, need_x, need_y)
        return native_plan_gradients(matrix, row, col, fc.x, fc.row_scale, fc.y, fc.col_scale,
                                     self.a, self.b, k, x_update, y_update)


class ShiftedLogPlan(DensePlan):
    """A dense primitive in the log form whose states are the potentials f and g - shift
    (``shift`` (B,): the cost's minimum, subtracted once): the shift, the plan from
    :meth:`plan_factors` and its batched products, shared by the log and stabilised domains."""

    shift: torch.Tensor

    def potentials(self, f, g):
        return f, g + self.shift[:, None]

    def states(self, f, g):
        return f, g - self.shift[:, None]

    def plan(self, f, g):
        return _log_form_plan(*self.plan_factors(f, g))

    def batched_plan_products(self, factors, x, y, x_scale, y_scale):
        p = _log_form_plan(*factors)
        rows, cols = p.sum(2), p.sum(1)
        p_y = None if y is None else torch.bmm(p * y_scale[:, None, :], y)
        p_x = None if x is None else torch.bmm(p.transpose(1, 2) * x_scale[:, None, :], x)
        return p_y, p_x, rows, cols


def _log_form_plan(matrix, row, col, k):
    """P_ij = exp(r_i + c_j + k M_ij), (B, n, m)."""
    z = torch.add(matrix, row[:, :, None]) if k == 1 else torch.mul(matrix, k).add_(
        row[:, :, None])
    return z.add_(col[:, None, :]).exp_()


class DenseLogSoftMin(ShiftedLogPlan):
    """Log-domain updates on a dense cost. States are f (B, n) and g - shift (B, m).

    ``damping`` = tau / (tau + eps) < 1 gives unbalanced OT (see :func:`dense_softmin`).
    ``shift`` (B,), balanced OT only: the iterations run on C - shift (the cost's minimum), so
    a large constant in the cost, which OT ignores, costs no precision in C / eps; the
    iterates are the same, with g shifted.
    """

    def __init__(self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                 damping: float = 1.0, shift: torch.Tensor | None = None):
        if shift is not None and damping != 1.0:
            raise ValueError("the cost shift is exact for balanced OT only")
        self.eps, self.damping = eps, damping
        self.a, self.b = a, b
        self.log_a, self.log_b = a.log(), b.log()  # -inf where a weight is zero
        self.shift = torch.zeros_like(a[:, 0]) if shift is None else shift
        # (B, n, m), reused by every half-iteration
        self.neg_cost_eps = (cost - self.shift[:, None, None]) / -eps
        self._scratch: torch.Tensor | None = None  # one (B, n, m) buffer for all iterations

    def for_backward(self) -> DenseLogSoftMin:
        self._scratch = None
        return self

    def _softmin(self, h: torch.Tensor, dim: int) -> torch.Tensor:
        """-eps LSE over ``dim`` of -C/eps + h: reads and writes B n m once per pass."""
        if self._scratch is None:
            self._scratch = torch.empty_like(self.neg_cost_eps)
        torch.add(self.neg_cost_eps, h, out=self._scratch)
        return logsumexp_(self._scratch, dim).mul_(-self.eps * self.damping)

    def update_cols(self, f: torch.Tensor) -> torch.Tensor:
        return self._softmin((self.log_a + f / self.eps)[:, :, None], dim=1)

    def update_rows(self, g: torch.Tensor) -> torch.Tensor:
        return self._softmin((self.log_b + g / self.eps)[:, None, :], dim=2)

    def plan_factors(self, f, g):
        return self.neg_cost_eps, self.log_a + f / self.eps, self.log_b + g / self.eps, 1.0

    def loss(self, f, g):
        plan = self.plan(f, g)
        # P_ij C_ij is 0 where P_ij = 0, +inf costs (forbidden pairs) included.
        terms = torch.where(plan > 0, plan * self.neg_cost_eps, 0.0)
        return terms.sum((1, 2)) * -self.eps + self.shift * plan.sum((1, 2))


class DenseScalingSoftMin(DensePlan):
    """Scaling-domain updates with K = exp(-(C - shift) / eps) stored once.

    States: s = K v (B, n) and t = K^T u (B, m), with u = a / s and v = b / t the scalings
    of the plan P = diag(u) K diag(v). Half-iteration: one batched mat-vec, one division.
    """

    def __init__(self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                 shift: torch.Tensor):
        self.eps = eps
        self.a, self.b = a, b
        self.shift = shift  # (B,) min of the cost over entries that carry mass
        # Our own buffer (never the user's), row-major for the native loop; one fresh (B, n, m)
        # buffer, the division and exp in place (fresh pages are expensive, NOTES O2 and O12).
        self.kernel = torch.sub(cost, shift[:, None, None]).div_(-eps).exp_().contiguous()
        self.cost: torch.Tensor | None = cost  # only the loss reads it

    def for_backward(self) -> DenseScalingSoftMin:
        self.cost = None
        return self

    def update_cols(self, s: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.kernel.transpose(1, 2), (self.a / s)[:, :, None])[:, :, 0]

    def update_rows(self, t: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.kernel, (self.b / t)[:, :, None])[:, :, 0]

    def iterate(self, s: torch.Tensor, n_iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        if native_scaling_available(self.kernel):
            return scaling_iterate(self.kernel, self.a, self.b, s, n_iters)
        return super().iterate(s, n_iters)

    def col_log_ratio(self, t: torch.Tensor, next_t: torch.Tensor) -> torch.Tensor:
        return torch.log(next_t / t)

    def potentials(self, s, t):
        return -self.eps * s.log(), self.shift[:, None] - self.eps * t.log()

    def states(self, f, g):
        return torch.exp(f / -self.eps), torch.exp((self.shift[:, None] - g) / self.eps)

    def plan(self, s, t):
        # The big operand first: TensorIterator lays the output out like its first input.
        return self.kernel * (self.a / s)[:, :, None] * (self.b / t)[:, None, :]

    def loss(self, s, t):
        """sum_ij u_i K_ij C_ij v_j: on the CPU one native pass over K and C (benchmarks/NOTES.md,
        O22); otherwise one pass for K * C, then a mat-vec."""
        if self.cost is None:
            raise RuntimeError("the loss needs the cost, which for_backward() released")
        u, v = self.a / s, self.b / t
        if native_scaling_available(self.kernel):
            return scaling_transport_cost(self.kernel, self.cost, u, v)
        # +inf costs (forbidden pairs) have K = 0, whose product is NaN: 0 there, in place.
        kc = torch.mul(self.kernel, self.cost).nan_to_num_(nan=0.0, posinf=math.inf,
                                                           neginf=-math.inf)
        weighted = torch.bmm(kc, v[:, :, None])[:, :, 0]
        return (u * weighted).sum(1)

    def marginals(self, s, t):
        return self._marginals(self.a / s, self.b / t)

    def _marginals(self, u, v):
        """(P 1, P^T 1) for the plan diag(u) K diag(v)."""
        return (u * torch.bmm(self.kernel, v[:, :, None])[:, :, 0],
                v * torch.bmm(self.kernel.transpose(1, 2), u[:, :, None])[:, :, 0])

    def plan_factors(self, s, t):
        return self.kernel, self.a / s, self.b / t, None

    def batched_plan_products(self, factors, x, y, x_scale, y_scale):
        """P y' with P = diag(u) K diag(v): the diagonal scalings go on whichever operand of the
        product is smaller, K (B, n, m) or the embeddings (B, n + m, d); the only large
        allocations are the two results."""
        k, u, v, _ = factors
        kt = k.transpose(1, 2)
        rows, cols = self._marginals(u, v)
        n, m = k.shape[1:]
        p_y = p_x = None
        if n * m <= (n + m) * (x if y is None else y).shape[2]:
            if y is not None:
                p_y = torch.bmm(k * u[:, :, None] * (v * y_scale)[:, None, :], y)
            if x is not None:
                p_x = torch.bmm(kt * v[:, :, None] * (u * x_scale)[:, None, :], x)
        else:
            if y is not None:
                p_y = torch.bmm(k, y * (v * y_scale)[:, :, None]).mul_(u[:, :, None])
            if x is not None:
                p_x = torch.bmm(kt, x * (u * x_scale)[:, :, None]).mul_(v[:, :, None])
        return p_y, p_x, rows, cols


def sanitised_cost_range(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                         sync_ok: bool = True):
    """Cost with massless entries set to its minimum, and its (min, max) per problem.

    Entries with a_i = 0 or b_j = 0 carry no mass; they may hold anything (padding, NaN).
    Setting them to the minimum keeps K = exp(-(C - min C) / eps) <= 1 there and every
    soft-min sum positive. Returns (cost, lo, hi) with lo, hi of shape (B,). With ``sync_ok``
    one host sync skips the copy when every weight is positive.
    """
    if sync_ok and bool((a > 0).all() & (b > 0).all()):
        return cost, cost.amin((1, 2)), cost.amax((1, 2))
    valid = (a > 0)[:, :, None] & (b > 0)[:, None, :]
    inf = torch.tensor(float("inf"), dtype=cost.dtype, device=cost.device)
    lo = torch.where(valid, cost, inf).amin((1, 2))
    hi = torch.where(valid, cost, -inf).amax((1, 2))
    return torch.where(valid, cost, lo[:, None, None]), lo, hi


# The native passes over a batch of problems (the cost, the plan's products) run one problem per
# thread and read a problem's embeddings again for every four rows: they beat the batched
# products only with a problem for every thread and those embeddings resident in L2 (NOTES O15:
# through the cost pass, one W3 or W4 problem took 1.4-1.6x longer; O23).
NATIVE_MAX_SIDE_BYTES = 512 * 1024


def _native_pays(reference: torch.Tensor, *sides: torch.Tensor | None) -> bool:
    """A native per-problem pass pays for embeddings ``sides`` (B, *, d) (None: not read) and
    dense operands of ``reference``'s dtype."""
    sides = [z for z in sides if z is not None]
    return (native_dense_cost_available(reference) and bool(sides)
            and all(z.dtype == reference.dtype for z in sides)
            and sides[0].shape[0] >= torch.get_num_threads()
            and max(z.shape[1] * z.shape[2] * z.element_size() for z in sides)
            <= NATIVE_MAX_SIDE_BYTES)


def native_products_pay(matrix: torch.Tensor, x: torch.Tensor | None,
                        y: torch.Tensor | None) -> bool:
    """The plan's products of a dense (B, n, m) ``matrix`` run natively (O23)."""
    return _native_pays(matrix, x, y)


def _native_cost_pays(fc: FactorisedCost, a: torch.Tensor) -> bool:
    return fc.x.dtype == a.dtype and _native_pays(fc.x, fc.y)


def sanitised_dense_cost(fc: FactorisedCost, a: torch.Tensor, b: torch.Tensor,
                         sync_ok: bool = True):
    """:func:`sanitised_cost_range` of ``fc.dense()``, (cost, lo, hi). On the CPU, for a batch
    of small problems, one native pass that multiplies only the pairs within each problem's
    last row and column with mass (``kernels/csrc/dense_cost_cpu.cpp``, no host sync);
    otherwise the batched product and the masking as PyTorch ops."""
    if _native_cost_pays(fc, a):
        return dense_cost(fc.x, fc.y, fc.row_offset, fc.col_offset, fc.row_scale,
                          fc.col_scale, a, b, fc.scale, fc.kind == "sqeuclidean")
    return sanitised_cost_range(fc.dense(), a, b, sync_ok)


def damping(eps: float, tau: float | None) -> float:
    """lambda = tau / (tau + eps): the soft-min damping of unbalanced OT (1 when balanced).

    Unbalanced OT replaces the marginal constraints by tau KL(P 1 | a) + tau KL(P^T 1 | b);
    its Sinkhorn updates are the balanced ones multiplied by lambda (Chizat et al., 2018).
    """
    return 1.0 if tau is None else tau / (tau + eps)


def dense_softmin(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                  solver: str = "dense", tau: float | None = None, sync_ok: bool = True,
                  range_bound: float | None = None,
                  cost_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> SoftMin:
    """The dense primitive for ``cost`` (B, n, m) with weights a (B, n), b (B, m).

    ``solver``: ``"dense-scaling"``, ``"dense-stabilised"``, ``"dense-log"``, or ``"dense"``:
    the domain that :func:`~optical_ops.dispatch.dense_domain` picks from the cost range, read
    on the host (``sync_ok``) or else bounded by ``range_bound`` (None: no bound known).
    ``cost_range``: (lo, hi) when ``cost`` is already sanitised (:func:`sanitised_dense_cost`).
    """
    from .softmin_stabilised import StabilisedSoftMin  # it builds on this module

    if cost_range is None:
        cost, lo, hi = sanitised_cost_range(cost, a, b, sync_ok)
    else:
        lo, hi = cost_range
    spread = (lambda: float((hi - lo).max())) if sync_ok else range_bound
    native = sync_ok and native_stabilised_available(cost)
    domain = dense_domain(solver, spread, eps, cost.dtype, tau, native)
    shift = lo if tau is None else None
    if domain == "log":
        return DenseLogSoftMin(cost, a, b, eps, damping(eps, tau), shift=shift)
    if domain == "stabilised":
        return StabilisedSoftMin(cost, a, b, eps, damping(eps, tau),
                                 torch.zeros_like(lo) if shift is None else shift)
    return DenseScalingSoftMin(cost, a, b, eps, shift=lo)
