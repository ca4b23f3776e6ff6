r"""Streaming Sinkhorn kernels for large problems: the cost is never stored.

One half-iteration is the soft-min (here the row update; the column update is the same kernel
on the transposed operands, :meth:`~.cost_tile.CostOperands.transposed`):

    out_i = -eps * LSE_j( log w_j + (pot_j - C_ij) / eps ).

Each program owns BLOCK_N rows and sweeps the columns in tiles of BLOCK_M, recomputing every
cost tile from the embeddings (``cost_tile``) and folding it into an online log-sum-exp, as
flash-attention does for the softmax. Memory is O(B (n + m) d); per half-iteration a program
reads its rows once and all m columns (from L2 after the first program), i.e.
B (n d + ceil(n / BLOCK_N) m d) elements, and does 2 B n m d FLOPs and B n m exp2.

:func:`transport_cost` evaluates <P, C> the same way, one partial sum per row (no atomics: the
result is deterministic), optionally writing the dense plan. When the dense cost fits in memory
the caller may build it once with :func:`cost_matrix` and stream over it instead: a
half-iteration then reads B n m fp32 (from L2 when it fits there) and does no dot products.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import Config, launch, pow2_at_least
from .cost_tile import CostOperands, cost_tile, dot_block_d
from .lse import LOG2E, log2_potential, lse2_fold, plan_tile, softmin_from_lse2

# Row and column tile of the streaming kernels: a 64 x 64 fp32 cost tile is 16 registers per
# thread at 8 warps, leaving room for the dot operands and the online-LSE state (~130-240
# registers, no spills on sm_80/sm_90, see compile_report; at 4 warps sm_80 spills for fp32),
# and 64-row programs give n / 64 programs per problem.
STREAM_BLOCK = 64
STREAM_WARPS = 8
# Row stride of the dense cost built by cost_matrix, in entries: a multiple of Triton's
# divisibility specialisation (16).
ROW_ALIGN = 16


@triton.jit
def _softmin_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, own_logw_ptr, logw_ptr, pot_ptr, out_ptr, n, m, d, eps,
    COST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = tl.load(own_logw_ptr + pid_b * n + rows, mask=rows < n,
                     other=float("-inf")) > float("-inf")
    x_ptr += pid_b * stride_xb
    y_ptr += pid_b * stride_yb
    xs_ptr += pid_b * n
    ys_ptr += pid_b * m
    scale = LOG2E / eps
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, m, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        log_w = tl.load(logw_ptr + pid_b * m + cols, mask=cols < m, other=float("-inf"))
        pot = tl.load(pot_ptr + pid_b * m + cols, mask=cols < m, other=0.0)
        c = cost_tile(x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
                      rows, cols, row_ok, log_w > float("-inf"), d, COST, BLOCK_D)
        z = log2_potential(log_w, pot, eps)[None, :] - c * scale
        run_max, run_sum = lse2_fold(run_max, run_sum, z, 1)
    tl.store(out_ptr + pid_b * n + rows, softmin_from_lse2(run_max, run_sum, eps), mask=rows < n)


@triton.jit
def _cost_matrix_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, loga_ptr, logb_ptr, out_ptr, stride_ob, stride_on, n, m, d,
    COST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = tl.load(loga_ptr + pid_b * n + rows, mask=rows < n,
                     other=float("-inf")) > float("-inf")
    col_ok = tl.load(logb_ptr + pid_b * m + cols, mask=cols < m,
                     other=float("-inf")) > float("-inf")
    c = cost_tile(x_ptr + pid_b * stride_xb, stride_xn, stride_xd,
                  y_ptr + pid_b * stride_yb, stride_ym, stride_yd,
                  xs_ptr + pid_b * n, ys_ptr + pid_b * m, rows, cols, row_ok, col_ok, d,
                  COST, BLOCK_D)
    out = out_ptr + pid_b * stride_ob + rows.to(tl.int64)[:, None] * stride_on + cols[None, :]
    tl.store(out, c, mask=(rows < n)[:, None] & (cols < m)[None, :])


@triton.jit
def _plan_cost_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, loga_ptr, logb_ptr, f_ptr, g_ptr, partial_ptr, plan_ptr, n, m, d, eps,
    COST: tl.constexpr, WRITE_PLAN: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    log_a = tl.load(loga_ptr + pid_b * n + rows, mask=rows < n, other=float("-inf"))
    row_h = log2_potential(log_a, tl.load(f_ptr + pid_b * n + rows, mask=rows < n, other=0.0),
                           eps)
    x_ptr += pid_b * stride_xb
    y_ptr += pid_b * stride_yb
    xs_ptr += pid_b * n
    ys_ptr += pid_b * m
    scale = LOG2E / eps
    partial = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, m, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        log_b = tl.load(logb_ptr + pid_b * m + cols, mask=cols < m, other=float("-inf"))
        g = tl.load(g_ptr + pid_b * m + cols, mask=cols < m, other=0.0)
        c = cost_tile(x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
                      rows, cols, log_a > float("-inf"), log_b > float("-inf"), d, COST,
                      BLOCK_D)
        p = plan_tile(c, row_h, log2_potential(log_b, g, eps), scale)
        partial += tl.sum(p * c, axis=1)
        if WRITE_PLAN:
            out = plan_ptr + pid_b * n * m + rows.to(tl.int64)[:, None] * m + cols[None, :]
            tl.store(out, p, mask=(rows < n)[:, None] & (cols < m)[None, :])
    tl.store(partial_ptr + pid_b * n + rows, partial, mask=rows < n)


def streaming_config(n: int, m: int, d: int, dtype: torch.dtype) -> Config:
    """Blocks of the streaming kernels (shrunk to the problem for tiny n or m)."""
    return Config(min(STREAM_BLOCK, pow2_at_least(n)), min(STREAM_BLOCK, pow2_at_least(m)),
                  dot_block_d(dtype, d), num_warps=STREAM_WARPS, num_stages=2)


def softmin(ops: CostOperands, own_log_w: torch.Tensor, log_w: torch.Tensor, pot: torch.Tensor,
            eps: float) -> torch.Tensor:
    """Row soft-min  -eps LSE_j(log w_j + (pot_j - C_ij) / eps)  (B, n) fp32.

    own_log_w (B, n), log_w and pot (B, m): fp32 contiguous; own_log_w marks the rows with
    mass (the others are computed against a zero embedding, as the PyTorch backend does).
    """
    cfg = streaming_config(ops.n, ops.m, ops.d, ops.dtype)
    out = torch.empty(ops.batch, ops.n, dtype=torch.float32, device=pot.device)
    args = (*ops.args(), own_log_w, log_w, pot, out, ops.n, ops.m, ops.d, float(eps))
    launch(_softmin_kernel, (triton.cdiv(ops.n, cfg.block_n), ops.batch), args,
           dict(COST=ops.kind, **cfg.meta()))
    return out


def cost_matrix(ops: CostOperands, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """The dense cost C (B, n, m) fp32, one tile per program (2 B n m d FLOPs, writes B n m):
    when it fits in memory, the soft-min and the fused strips read it (``dense_operands``)
    instead of recomputing it every half-iteration. Massless tokens are read as zeros, so every
    entry is finite. Rows are padded to ROW_ALIGN entries (a strided view): every row then
    starts 64-byte aligned, which Triton's alignment specialisation turns into 4-wide
    per-thread layouts for the kernels that read C (half the registers of the fused strips)."""
    cfg = streaming_config(ops.n, ops.m, ops.d, ops.dtype)
    width = triton.cdiv(ops.m, ROW_ALIGN) * ROW_ALIGN
    out = torch.empty(ops.batch, ops.n, width, dtype=torch.float32,
                      device=log_a.device)[:, :, :ops.m]
    grid = (triton.cdiv(ops.n, cfg.block_n), triton.cdiv(ops.m, cfg.block_m), ops.batch)
    launch(_cost_matrix_kernel, grid, (*ops.args(), log_a, log_b, out, out.stride(0),
                                       out.stride(1), ops.n, ops.m, ops.d),
           dict(COST=ops.kind, **cfg.meta()))
    return out


def transport_cost(ops: CostOperands, log_a, log_b, f, g, eps: float, write_plan: bool = False):
    """(<P, C> (B,) fp32, the plan (B, n, m) fp32 or None) for the potentials f, g."""
    cfg = streaming_config(ops.n, ops.m, ops.d, ops.dtype)
    dev = f.device
    partial = torch.empty(ops.batch, ops.n, dtype=torch.float32, device=dev)
    plan = (torch.empty(ops.batch, ops.n, ops.m, dtype=torch.float32, device=dev)
            if write_plan else partial)
    args = (*ops.args(), log_a, log_b, f, g, partial, plan, ops.n, ops.m, ops.d, float(eps))
    launch(_plan_cost_kernel, (triton.cdiv(ops.n, cfg.block_n), ops.batch), args,
           dict(COST=ops.kind, WRITE_PLAN=write_plan, **cfg.meta()))
    return partial.sum(1), plan if write_plan else None
