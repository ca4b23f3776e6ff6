r"""Fused Sinkhorn for small problems: the whole solve of one problem in one program.

For a batch of small problems (the distillation case: n m <= 64 x 128 tokens, any d) one program
per problem computes its cost tile C (BLOCK_N, BLOCK_M) with ``tl.dot``, keeps it in registers,
runs every log-domain iteration

    g_j = -eps LSE_i(log a_i + (f_i - C_ij) / eps),   f_i = -eps LSE_j(log b_j + (g_j - C_ij) / eps)

from f = 0 (column update first, as in :mod:`optical_ops.sinkhorn_loop`), and writes f, g, the
transport cost <P, C> and the iteration count, all in one launch. With ``tol`` the L1 column
error  sum_j b_j |exp((g_j - g'_j) / eps) - 1|  is checked every ``check_every`` iterations and
each program stops on its own: no host sync, and a converged problem frees its SM.

Memory traffic per problem: (n + m) d embedding reads once, n + m weights, writes n + m + 2
(plus n m with the plan). Work: 2 n m d FLOPs for the cost, then per iteration 2 n m exp2 and
~8 n m other FLOPs, all from registers (on the padded tile).

The tile must fit in the register file: :func:`fused_config` returns None beyond
:data:`MAX_TILE` entries and the caller streams instead (see ROOFLINE.md for the numbers).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import Config, launch, pow2_at_least
from .cost_tile import CostOperands, cost_tile, dot_block_d
from .lse import LOG2E, log2_potential, lse2_fold, plan_tile, softmin_from_lse2

# Largest BLOCK_N * BLOCK_M held in registers, at 8 warps: 32 tile entries per thread, and
# 185-250 of the 255 registers a thread may use (ptxas, sm_80/sm_90, fp32 and bf16; the cost
# dot's operand fragments and the soft-min temporaries take the rest). A 128 x 128 tile needs
# 16 warps, where a thread may only use 128 registers, and spills ~1 KB per thread (see
# ROOFLINE.md); such problems take the streaming path.
MAX_TILE = 64 * 128
# num_warps = tile / (32 * ENTRIES_PER_THREAD), clamped to [MIN_WARPS, MAX_WARPS]: 4 warps up
# to 4096 entries, 8 for 64 x 128.
ENTRIES_PER_THREAD = 32
MIN_WARPS, MAX_WARPS = 4, 8
# Left to itself ptxas caps a thread at 128 (8 warps) or 168 (4 warps) registers to fit 2-3
# blocks per SM, and some tiles then spill 8-36 B (sm_80 and sm_90). A fused program holds a
# whole problem and runs ~1 per SM, so registers matter more than occupancy: allow all 255.
MAX_REGISTERS = 255


@triton.jit
def _tile_softmin(c, log_w, pot, eps, scale, AXIS: tl.constexpr):
    """Soft-min over AXIS of the whole tile: AXIS=0 gives g from (log a, f), AXIS=1 f from
    (log b, g)."""
    h = log2_potential(log_w, pot, eps)
    z = tl.expand_dims(h, 1 - AXIS) - c * scale
    run_max = tl.full([c.shape[1 - AXIS]], float("-inf"), tl.float32)
    run_max, run_sum = lse2_fold(run_max, tl.zeros_like(run_max), z, AXIS)
    return softmin_from_lse2(run_max, run_sum, eps)


@triton.jit
def _sinkhorn_fused_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, loga_ptr, logb_ptr,
    f_ptr, g_ptr, loss_ptr, iters_ptr, plan_ptr,
    n, m, d, eps, n_iters, tol, check_every,
    COST: tl.constexpr, HAS_TOL: tl.constexpr, WRITE_PLAN: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    log_a = tl.load(loga_ptr + pid * n + rows, mask=rows < n, other=float("-inf"))
    log_b = tl.load(logb_ptr + pid * m + cols, mask=cols < m, other=float("-inf"))
    c = cost_tile(x_ptr + pid * stride_xb, stride_xn, stride_xd,
                  y_ptr + pid * stride_yb, stride_ym, stride_yd,
                  xs_ptr + pid * n, ys_ptr + pid * m, rows, cols,
                  log_a > float("-inf"), log_b > float("-inf"), d, COST, BLOCK_D)
    scale = LOG2E / eps

    f = tl.zeros([BLOCK_N], dtype=tl.float32)
    g = _tile_softmin(c, log_a, f, eps, scale, 0)
    f = _tile_softmin(c, log_b, g, eps, scale, 1)
    it = 1
    go = it < n_iters
    while go:
        g_next = _tile_softmin(c, log_a, f, eps, scale, 0)
        if HAS_TOL:
            # The loop's check: err of the plan (f, g), frozen (f, g) once err <= tol.
            col_term = tl.exp(log_b) * tl.abs(tl.exp((g - g_next) / eps) - 1.0)
            err = tl.sum(tl.where(log_b > float("-inf"), col_term, 0.0))
            stop = (it % check_every == 0) & (err <= tol)
            g = tl.where(stop, g, g_next)
            f = tl.where(stop, f, _tile_softmin(c, log_b, g, eps, scale, 1))
            it += tl.where(stop, 0, 1)
            go = (it < n_iters) & (not stop)
        else:
            g = g_next
            f = _tile_softmin(c, log_b, g, eps, scale, 1)
            it += 1
            go = it < n_iters

    p = plan_tile(c, log2_potential(log_a, f, eps), log2_potential(log_b, g, eps), scale)
    tl.store(loss_ptr + pid, tl.sum(tl.sum(p * c, axis=1), axis=0))
    tl.store(iters_ptr + pid, it.to(tl.int64))
    tl.store(f_ptr + pid * n + rows, f, mask=rows < n)
    tl.store(g_ptr + pid * m + cols, g, mask=cols < m)
    if WRITE_PLAN:
        out = plan_ptr + pid * n * m + rows[:, None] * m + cols[None, :]
        tl.store(out, p, mask=(rows < n)[:, None] & (cols < m)[None, :])


def fused_config(n: int, m: int, d: int, dtype: torch.dtype) -> Config | None:
    """Blocks for one problem per program, or None when the tile does not fit on chip."""
    block_n, block_m = pow2_at_least(n), pow2_at_least(m)
    if block_n * block_m > MAX_TILE:
        return None
    warps = max(MIN_WARPS, min(MAX_WARPS, block_n * block_m // (32 * ENTRIES_PER_THREAD)))
    return Config(block_n, block_m, dot_block_d(dtype, d), num_warps=warps, num_stages=2,
                  max_registers=MAX_REGISTERS)


def sinkhorn_fused(ops: CostOperands, log_a: torch.Tensor, log_b: torch.Tensor, eps: float,
                   n_iters: int, tol: float | None, check_every: int, write_plan: bool = False):
    """All Sinkhorn iterations of every problem in one launch.

    Args:
        ops: the cost (:mod:`.cost_tile`), B problems of n x m; :func:`fused_config` must fit.
        log_a, log_b: (B, n), (B, m) fp32 contiguous log-weights (-inf for massless tokens).
        eps, n_iters, tol, check_every: as in :func:`optical_ops.sinkhorn_loop.run_sinkhorn`.
        write_plan: also return the dense plan (B, n, m) fp32.

    Returns:
        f (B, n), g (B, m) fp32 potentials (P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)),
        loss (B,) fp32 = <P, C>, iterations (B,) int64, and the plan or None.
    """
    cfg = fused_config(ops.n, ops.m, ops.d, ops.dtype)
    if cfg is None:
        raise ValueError(f"a {ops.n} x {ops.m} tile does not fit the fused kernel")
    batch, dev = ops.batch, log_a.device
    f = torch.empty(batch, ops.n, dtype=torch.float32, device=dev)
    g = torch.empty(batch, ops.m, dtype=torch.float32, device=dev)
    loss = torch.empty(batch, dtype=torch.float32, device=dev)
    iters = torch.empty(batch, dtype=torch.int64, device=dev)
    plan = torch.empty(batch, ops.n, ops.m, dtype=torch.float32, device=dev) if write_plan else f
    args = (*ops.args(), log_a, log_b, f, g, loss, iters, plan,
            ops.n, ops.m, ops.d, float(eps), n_iters, 0.0 if tol is None else float(tol),
            check_every)
    launch(_sinkhorn_fused_kernel, (batch,), args,
           dict(COST=ops.kind, HAS_TOL=tol is not None, WRITE_PLAN=write_plan, **cfg.meta()))
    return f, g, loss, iters, plan if write_plan else None
