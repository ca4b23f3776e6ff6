r"""Stabilised scaling-domain soft-min: mat-vec iterations at any eps, log-domain results.

The iterations of :mod:`.sinkhorn_loop` on the potentials f (B, n), g (B, m),

    g_j = -lam eps log sum_i a_i exp((f_i - C_ij) / eps),
    f_i = -lam eps log sum_j b_j exp((g_j - C_ij) / eps)      (lam = 1: balanced OT),

are run on scalings relative to an *absorption point* (fbar, gbar) (Schmitzer 2019, "Stabilized
sparse scaling algorithms for entropy regularized transport problems"): with the absorbed kernel

    K~_ij = exp((fbar_i + gbar_j - C_ij) / eps)          (one exp pass over B n m)

and u = exp((f - fbar)/eps), v = exp((g - gbar)/eps), the column update is a mat-vec

    T = K~^T (a u),    g = lam (gbar - eps log T),    v = exp(-(1 - lam) gbar / eps) T^(-lam),

(v = 1 / T when balanced), and the row update likewise with K~. The exponentials of the log
domain are only paid when the scalings leave a safe range:

* *absorption*: when some |log u| or |log v| exceeds ``ABSORB[dtype]`` (the coefficients of
  the next mat-vec would lose the headroom below), (fbar, gbar) moves to the current potentials,
  K~ is rebuilt from C, and u = v = 1. Right after an update, K~ is normalised along the
  fresh side (sum_i a_i K~_ij = 1 after a balanced column update), so its entries that carry
  mass are <= 1 / weight and cannot overflow.
* *log-domain fallback*: when a sum T leaves [e^-ACCURATE, e^ACCURATE] (a potential moved by
  more than ~ACCURATE * eps in one half-iteration, as in the first iterations at small eps), its
  kernel entries clamped at the floor could matter, so that half-iteration is redone with
  log-sum-exp from C, exactly as :class:`~optical_ops.softmin_dense.DenseLogSoftMin` does, and
  the result is absorbed.

Accuracy: K~ entries are exp of an argument clamped to EXP_RANGE[dtype]; entries below the
floor change a sum T >= e^-ACCURATE with coefficients <= e^ABSORB by at most
n e^(ABSORB + ACCURATE + floor) relative (fp32: n e^-37, fp64: n e^-70), and the ceiling keeps
every sum finite (n e^(ABSORB + ceiling) < the dtype's largest number). Entries at the ceiling
would only be reached by massful pairs when a weight is below e^-ceiling; unbalanced problems
whose potentials are that far from their balanced normalisation run in the log domain.

States are the log potentials f (B, n) and g (B, m) - lo, with lo the per-problem minimum of the
cost over massful pairs (balanced OT only: it is invariant to that shift, so C - lo is formed
once, exactly, and fp32 keeps its precision on costs with a large offset). The loop
(``run_sinkhorn``: tol, restored states), :func:`~optical_ops.sinkhorn_loop.entropic_value` and
the backward's ``plan_products`` see ordinary potentials through :meth:`potentials`.

Zero weights: rows and columns without mass never enter a massful sum (their coefficient is
exactly 0), their scalings may leave every range without effect, and their potentials are
recomputed exactly by log-sum-exp after the last iteration. The cost of massless pairs may hold
anything (NaN): it is replaced by lo (:func:`~optical_ops.softmin_dense.sanitised_cost_range`).

Loops: on the CPU (float32/float64) :meth:`StabilisedSoftMin.iterate` is one native call
(``kernels/csrc/sinkhorn_stabilised_cpu.cpp``, all iterations, absorptions and fallbacks per
problem), and with ``tol`` :meth:`StabilisedSoftMin.solve` runs the whole loop there, each
problem checking its column error every CHECK_EVERY iterations with one mat-vec. Elsewhere the
same iterations run op by op (one host sync per half-iteration, for the range checks).

Memory: the shifted cost, K~ and (native loop) K~^T: 3 B n m, plus a B n m scratch for the
log-domain passes of the PyTorch-op loop.
"""

from __future__ import annotations

import torch

from .kernels._native import EXP_RANGE
from .kernels.cpu_stabilised import (
    native_stabilised_available,
    stabilised_iterate,
    transport_cost,
)
from .logsumexp import logsumexp_
from .sinkhorn_loop import CHECK_EVERY, LoopResult, SoftMin
from .softmin_dense import ShiftedLogPlan, damping, sanitised_cost_range

# |log u|, |log v| above which the scalings are absorbed into K~ (see the module docstring).
ABSORB = {torch.float32: 20.0, torch.float64: 300.0}
# |log T| above which a sum is not trusted and its half-iteration runs in the log domain.
ACCURATE = {torch.float32: 30.0, torch.float64: 330.0}


class StabilisedSoftMin(ShiftedLogPlan):
    """Dense soft-min on an absorbed kernel; states f (B, n), g - lo (B, m).

    Args:
        cost: (B, n, m), massless entries already replaced by one value per problem
            (``sanitised_cost_range``; the native loop relies on it).
        a, b: (B, n), (B, m) weights (zeros allowed).
        eps: regularisation; damping: tau / (tau + eps) (1: balanced).
        shift: (B,) lo, subtracted from the cost (zeros for unbalanced OT).
    """

    def __init__(self, cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                 damping: float = 1.0, shift: torch.Tensor | None = None):
        self.eps, self.damping = eps, damping
        self.a, self.b = a.contiguous(), b.contiguous()  # the native loop reads them raw
        self.log_a, self.log_b = a.log(), b.log()
        self.mass_rows, self.mass_cols = a > 0, b > 0
        self.shift = cost.new_zeros(cost.shape[0]) if shift is None else shift
        # Our own contiguous buffer: C - lo >= 0 on massful pairs.
        self.cost = (cost - self.shift[:, None, None]).contiguous()
        self.massless = not bool(self.mass_rows.all() & self.mass_cols.all())
        dtype = cost.dtype
        self.absorb_at, self.accurate = ABSORB[dtype], ACCURATE[dtype]
        self.exp_lo, self.exp_hi = EXP_RANGE[dtype]
        # Absorption state: K~ (B, n, m) at (fbar, gbar); None until the first absorption.
        self.kernel: torch.Tensor | None = None
        self.fbar: torch.Tensor | None = None
        self.gbar: torch.Tensor | None = None
        self.log_mode = torch.zeros(cost.shape[0], dtype=torch.bool, device=cost.device)
        self._scratch: torch.Tensor | None = None
        # Counters (host ints) for tests and benchmarks: absorptions and log-domain passes.
        self.absorptions = 0
        self.log_updates = 0

    # ----- log-domain passes (exact; also the tol check's column update) -----

    def _softmin(self, h: torch.Tensor, dim: int) -> torch.Tensor:
        """-lam eps LSE over ``dim`` of -C/eps + h: one read and write of B n m."""
        if self._scratch is None:
            self._scratch = torch.empty_like(self.cost)
        torch.add(self.cost / -self.eps, h, out=self._scratch)
        return logsumexp_(self._scratch, dim).mul_(-self.eps * self.damping)

    def update_cols(self, f: torch.Tensor) -> torch.Tensor:
        return self._softmin((self.log_a + f / self.eps)[:, :, None], dim=1)

    def update_rows(self, g: torch.Tensor) -> torch.Tensor:
        return self._softmin((self.log_b + g / self.eps)[:, None, :], dim=2)

    def for_backward(self) -> StabilisedSoftMin:
        self.kernel = self._scratch = None
        return self

    # ----- the scaling iterations -----

    def _absorb(self, f: torch.Tensor, g: torch.Tensor) -> None:
        """K~ at (fbar, gbar) = (f, g); massless potentials (never read) are set to 0."""
        fbar = torch.where(self.mass_rows, f, torch.zeros_like(f))
        gbar = torch.where(self.mass_cols, g, torch.zeros_like(g))
        z = (fbar[:, :, None] + gbar[:, None, :] - self.cost) / self.eps
        # Entries of massful pairs above the ceiling: this problem's potentials are too far from
        # a normalised kernel (unbalanced OT with |g| / tau > ceiling): log domain from now on.
        pairs = self.mass_rows[:, :, None] & self.mass_cols[:, None, :]
        over = torch.where(pairs, z, torch.zeros_like(z)).amax((1, 2)) > self.exp_hi
        self.log_mode |= over
        self.kernel = z.clamp_(self.exp_lo, self.exp_hi).exp_()
        self.fbar, self.gbar = fbar, gbar
        self.absorptions += 1

    def _scalings(self, f: torch.Tensor) -> torch.Tensor | None:
        """u = exp((f - fbar)/eps) when the cached kernel can take f, else None."""
        if self.kernel is None:
            return None
        log_u = (f - self.fbar) / self.eps
        if bool((torch.where(self.mass_rows, log_u, torch.zeros_like(log_u)).abs()
                 > self.absorb_at).any()):
            return None
        return log_u.exp()

    def _half(self, k: torch.Tensor, coef: torch.Tensor, bar: torch.Tensor,
              mass: torch.Tensor):
        """One scaling half-iteration: (log s, ok, within) for the side whose sums are k @ coef.

        log s = log of the new scaling; ok: every massful sum was in the accurate range;
        within: every massful |log s| <= ABSORB (no absorption needed before the next one).
        """
        t = torch.bmm(k, coef[:, :, None])[:, :, 0]
        log_t = t.log()
        lam = self.damping
        log_s = -log_t if lam == 1.0 else bar * (-(1.0 - lam) / self.eps) - lam * log_t
        zero = torch.zeros_like(log_t)
        ok = bool((torch.where(mass, log_t, zero).abs() <= self.accurate).all())
        within = bool((torch.where(mass, log_s, zero).abs() <= self.absorb_at).all())
        return log_s, ok, within

    def iterate(self, f: torch.Tensor, n_iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        if native_stabilised_available(self.cost) and not bool(self.log_mode.any()):
            return self._native_iterate(f, n_iters)
        if bool(self.log_mode.any()):
            return SoftMin.iterate(self, f, n_iters)
        return self._torch_iterate(f, n_iters)

    def _torch_iterate(self, f: torch.Tensor, n_iters: int):
        """The iterations op by op (any device; one host sync per half-iteration)."""
        eps = self.eps
        zero_a, zero_b = torch.zeros_like(self.a), torch.zeros_like(self.b)
        log_u = None
        u = self._scalings(f)
        if u is not None:
            log_u = u.log()
        log_v = None
        f_prev = f
        for _ in range(n_iters):
            # Column update from the current f (held as fbar + eps log u, or f itself).
            if log_u is None:
                g = self._log_update_cols(f)
                self._absorb(f, g)
                log_u, log_v = torch.zeros_like(f), torch.zeros_like(g)
            else:
                coef = torch.where(self.mass_rows, self.a * log_u.exp(), zero_a)
                log_v, ok, within = self._half(self.kernel.transpose(1, 2), coef, self.gbar,
                                               self.mass_cols)
                log_u, log_v = self._settle(ok, within, log_u, log_v,
                                            lambda lu=log_u: self._redo_cols(self.fbar + eps * lu))
            f_prev_log_u, f_prev_bar = log_u, self.fbar
            # Row update from g = gbar + eps log v.
            coef = torch.where(self.mass_cols, self.b * log_v.exp(), zero_b)
            log_u, ok, within = self._half(self.kernel, coef, self.fbar, self.mass_rows)
            log_u, log_v = self._settle(ok, within, log_u, log_v,
                                        lambda lv=log_v: self._redo_rows(self.gbar + eps * lv))
        f_prev = f_prev_bar + eps * f_prev_log_u
        f = self.fbar + eps * log_u
        g = self.gbar + eps * log_v
        return self._exact_massless(f_prev, f, g)

    def _settle(self, ok, within, log_u, log_v, redo):
        """(log u, log v) after a half-iteration: when a sum left the accurate range, the
        half-iteration redone in the log domain (``redo() -> (f, g)``) and absorbed; when a
        scaling left the safe range, the scalings absorbed; else as they are."""
        if not ok:
            f, g = redo()
            self._absorb(f, g)
            return torch.zeros_like(f), torch.zeros_like(g)
        if not within:
            self._absorb(self.fbar + self.eps * log_u, self.gbar + self.eps * log_v)
            return torch.zeros_like(log_u), torch.zeros_like(log_v)
        return log_u, log_v

    def _redo_cols(self, f):
        return f, self._log_update_cols(f)

    def _redo_rows(self, g):
        return self._log_update_rows(g), g

    def _log_update_cols(self, f):
        self.log_updates += 1
        return self.update_cols(f)

    def _log_update_rows(self, g):
        self.log_updates += 1
        return self.update_rows(g)

    def _exact_massless(self, f_prev, f, g):
        """Massless potentials by log-sum-exp: g from the f before the last row update, f from
        the final g (what the log-domain loop holds). Massful ones are untouched."""
        if not self.massless:
            return f, g
        f_prev = torch.where(self.mass_rows, f_prev, torch.zeros_like(f_prev))
        g = torch.where(self.mass_cols, g, self.update_cols(f_prev))
        f = torch.where(self.mass_rows, f, self.update_rows(g))
        return f, g

    def _native_iterate(self, f: torch.Tensor, n_iters: int, **tol):
        if self.kernel is None:  # K~ and its transpose, for the two mat-vecs
            self.kernel = self.cost.new_empty((2, *self.cost.shape))
            self.fbar, self.gbar = torch.zeros_like(self.a), torch.zeros_like(self.b)
            self._valid = torch.zeros(self.a.shape[0], dtype=torch.int32)
        out = stabilised_iterate(
            self.cost, self.a, self.b, f, self.kernel, self.fbar, self.gbar, self._valid,
            n_iters, self.eps, self.damping, self.absorb_at, self.accurate,
            self.exp_lo, self.exp_hi, **tol,
        )
        self.absorptions += int(out[2][0])
        self.log_updates += int(out[2][1])
        return out[:2] if len(out) == 3 else (out[0], out[1], out[3], out[4])

    def solve(self, n_iters: int, tol: float | None, warm: bool, norm: int):
        """With ``tol`` on the CPU: the whole loop and its checks in the native call (each
        problem stops on its own after a block of CHECK_EVERY iterations, as in run_sinkhorn;
        a check is one mat-vec). Otherwise None: run_sinkhorn drives :meth:`iterate`."""
        if (tol is None or warm or not native_stabilised_available(self.cost)
                or bool(self.log_mode.any())):
            return None
        f, g, iterations, converged = self._native_iterate(
            self.initial_f_state(), n_iters, tol=tol, norm=norm, check_every=CHECK_EVERY)
        return LoopResult(f, g, iterations, converged=converged)

    # ----- what the loss and the gradient need -----

    def plan_factors(self, f, g):
        return self.cost, self.log_a + f / self.eps, self.log_b + g / self.eps, -1.0 / self.eps

    def loss(self, f, g):
        """<P, C - lo> + lo sum(a): after a row update P's mass is sum(a) exactly (balanced; lo = 0
        otherwise), and the rounded sum of the plan times a large offset would not be. On the
        CPU one native pass (benchmarks/NOTES.md, O21)."""
        if native_stabilised_available(self.cost):
            transport = transport_cost(self.cost, self.a, self.b, f, g, self.eps, self.exp_lo,
                                       self.exp_hi)
        else:
            p = self.plan(f, g)
            # +inf costs (forbidden pairs): P = 0 adds 0; a NaN P stays NaN, as natively
            transport = torch.where(p > 0, p * self.cost, p * 0.0).sum((1, 2))
        return transport + self.shift * self.a.sum(1)


def stabilised_softmin(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                       tau: float | None = None) -> StabilisedSoftMin:
    """The stabilised primitive for ``cost`` (B, n, m) with weights a (B, n), b (B, m).

    Same iterates as ``dense_softmin(cost, a, b, eps, "log", tau)`` at mat-vec cost per
    half-iteration (see the module docstring). Reads a few numbers back to the host here.
    """
    cost, lo, _ = sanitised_cost_range(cost, a, b)
    shift = lo if tau is None else torch.zeros_like(lo)
    return StabilisedSoftMin(cost, a, b, eps, damping(eps, tau), shift)
