"""Launcher for the native CPU scaling loop (``kernels/csrc/sinkhorn_scaling_cpu.cpp``).

The extension is optional: when it was not built (no C++ compiler at install time) the
PyTorch primitive runs its iterations op by op instead, with the same result.
"""

from __future__ import annotations

import torch

from ._native import check_buffers, load, runs_on

_sinkhorn_cpu = load("_sinkhorn_cpu")  # None when not built: callers fall back to PyTorch ops


def native_scaling_available(kernel: torch.Tensor) -> bool:
    return runs_on(_sinkhorn_cpu, kernel)


def scaling_iterate(
    kernel: torch.Tensor, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, n_iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_iters`` Sinkhorn iterations t <- K^T (a / s), s <- K (b / t) from the state ``s``.

    kernel: (B, n, m) contiguous; a, s: (B, n); b: (B, m); one float dtype, CPU.
    Returns the new (s, t). Reads K n_iters + 1 times (one fused pass per iteration).
    """
    if not native_scaling_available(kernel):
        raise RuntimeError("the native CPU scaling loop is not available for this tensor")
    if not kernel.is_contiguous():
        raise ValueError("kernel must be contiguous (it is built by the solver, never by users)")
    batch, n, m = kernel.shape
    a, b = a.contiguous(), b.contiguous()
    s = s.to(kernel.dtype).contiguous().clone()
    t = kernel.new_empty(batch, m)
    check_buffers(kernel, (("a", a, (batch, n)), ("b", b, (batch, m)), ("s", s, (batch, n))))
    _sinkhorn_cpu.scaling_iterate(
        kernel.data_ptr(), a.data_ptr(), b.data_ptr(), s.data_ptr(), t.data_ptr(),
        batch, n, m, n_iters, kernel.dtype == torch.float64, torch.get_num_threads(),
    )
    return s, t


def transport_cost(kernel: torch.Tensor, cost: torch.Tensor, u: torch.Tensor,
                   v: torch.Tensor) -> torch.Tensor:
    """(B,) sum_ij u_i K_ij C_ij v_j, the transport cost of P = diag(u) K diag(v); entries with
    K_ij = 0 add nothing (a forbidden pair, C = +inf, has K = 0).

    kernel, cost: (B, n, m); u: (B, n); v: (B, m); one float dtype, CPU.
    """
    if not native_scaling_available(kernel):
        raise RuntimeError("the native CPU scaling loop is not available for this tensor")
    batch, n, m = kernel.shape
    buffers = (("kernel", kernel, (batch, n, m)), ("cost", cost, (batch, n, m)),
               ("u", u, (batch, n)), ("v", v, (batch, m)))
    check_buffers(kernel, buffers)
    buffers = [t.contiguous() for _, t, _ in buffers]
    out = kernel.new_empty(batch)
    _sinkhorn_cpu.transport_cost(*(t.data_ptr() for t in buffers), out.data_ptr(), batch, n, m,
                                 kernel.dtype == torch.float64, torch.get_num_threads())
    return out
