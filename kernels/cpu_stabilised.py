"""Launcher for the native CPU stabilised scaling loop (``csrc/sinkhorn_stabilised_cpu.cpp``).

The extension is optional: when it was not built (no C++ compiler at install time) the PyTorch
primitive (:mod:`optical_ops.softmin_stabilised`) runs its iterations op by op instead, with the
same result up to round-off.
"""

from __future__ import annotations

import torch

from ._native import check_buffers, load, runs_on

_stabilised_cpu = load("_stabilised_cpu")  # None when not built: callers fall back to PyTorch ops


def native_stabilised_available(cost: torch.Tensor) -> bool:
    return runs_on(_stabilised_cpu, cost)


def stabilised_iterate(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    f: torch.Tensor,
    kernel: torch.Tensor,
    fbar: torch.Tensor,
    gbar: torch.Tensor,
    valid: torch.Tensor,
    n_iters: int,
    eps: float,
    damping: float,
    absorb: float,
    accurate: float,
    exp_lo: float,
    exp_hi: float,
    tol: float | None = None,
    norm: int = 1,
    check_every: int = 10,
) -> tuple[torch.Tensor, ...]:
    """``n_iters`` Sinkhorn iterations (column then row update) from the potentials ``f``.

    With ``tol``, each problem runs in blocks of ``check_every`` iterations and stops after the
    first block whose plan has a column-marginal error (L1, or L2 with ``norm=2``) <= tol, as
    :func:`optical_ops.sinkhorn_loop.run_sinkhorn` does; then the result also has (iterations
    (B,) int64, converged (B,) bool).

    cost: (B, n, m) contiguous, sanitised (massless entries: one value per problem); a, f: (B, n);
    b: (B, m); one float dtype, CPU. The absorption cache kernel (2, B, n, m) contiguous (K~,
    then K~^T laid out (B, m, n)), fbar
    (B, n), gbar (B, m) and valid (B,) int32 (0: no kernel yet, 1: kernel at (fbar, gbar),
    2: the problem runs in the log domain) are read and updated in place; ``f`` is not.
    Returns (f, g, counts): the new potentials (massless ones recomputed by log-sum-exp, as the
    log-domain loop has them) and int64 (absorptions, log-domain half-iterations).
    """
    if not native_stabilised_available(cost):
        raise RuntimeError("the native CPU stabilised loop is not available for this tensor")
    batch, n, m = cost.shape
    buffers = (("cost", cost, (batch, n, m)), ("kernel", kernel, (2, batch, n, m)),
               ("a", a, (batch, n)), ("b", b, (batch, m)), ("f", f, (batch, n)),
               ("fbar", fbar, (batch, n)), ("gbar", gbar, (batch, m)))
    check_buffers(cost, buffers)
    for name, t, _ in buffers:  # read in place (the cache is written too)
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if valid.dtype != torch.int32 or tuple(valid.shape) != (batch,) or not valid.is_contiguous():
        raise ValueError(f"valid must be contiguous torch.int32 of shape ({batch},)")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    f = f.to(cost.dtype).contiguous().clone()
    g = cost.new_empty(batch, m)
    counts = torch.zeros(2, dtype=torch.int64)
    iterations = torch.full((batch,), n_iters, dtype=torch.int64)
    converged = torch.zeros(batch, dtype=torch.bool)
    if check_every < 1 or norm not in (1, 2):
        raise ValueError(f"check_every must be >= 1 and norm 1 or 2, got {check_every}, {norm}")
    _stabilised_cpu.stabilised_iterate(
        cost.data_ptr(), a.data_ptr(), b.data_ptr(), f.data_ptr(), g.data_ptr(),
        kernel.data_ptr(), fbar.data_ptr(), gbar.data_ptr(), valid.data_ptr(), counts.data_ptr(),
        iterations.data_ptr(), converged.data_ptr(), batch, n, m, n_iters, float(eps),
        float(damping), float(absorb), float(accurate), float(exp_lo), float(exp_hi),
        -1.0 if tol is None else float(tol), norm, check_every,
        cost.dtype == torch.float64, torch.get_num_threads(),
    )
    if tol is None:
        return f, g, counts
    return f, g, counts, iterations, converged


def transport_cost(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor,
                   g: torch.Tensor, eps: float, exp_lo: float, exp_hi: float) -> torch.Tensor:
    """(B,) sum_ij P_ij C_ij with P_ij = exp(z_ij), z_ij = log a_i + f_i/eps + log b_j + g_j/eps
    - C_ij/eps: P_ij = 0 where z_ij < exp_lo (pairs without mass and +inf costs among them),
    z_ij capped at exp_hi.

    cost: (B, n, m) as :func:`stabilised_iterate` takes it; a, f: (B, n); b, g: (B, m); one
    float dtype, CPU.
    """
    if not native_stabilised_available(cost):
        raise RuntimeError("the native CPU stabilised loop is not available for this tensor")
    batch, n, m = cost.shape
    vectors = (("a", a, (batch, n)), ("b", b, (batch, m)), ("f", f, (batch, n)),
               ("g", g, (batch, m)))
    check_buffers(cost, vectors)
    vectors = [t.contiguous() for _, t, _ in vectors]
    if not cost.is_contiguous():
        raise ValueError("cost must be contiguous")
    out = cost.new_empty(batch)
    _stabilised_cpu.transport_cost(
        cost.data_ptr(), *(t.data_ptr() for t in vectors), out.data_ptr(), batch, n, m,
        float(eps), float(exp_lo), float(exp_hi), cost.dtype == torch.float64,
        torch.get_num_threads(),
    )
    return out
