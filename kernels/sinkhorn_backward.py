r"""Plan-times-matrix products for the backward pass, with the plan recomputed tile by tile.

The envelope gradient of L = <P, C> pushes dL/dC = P through C(x, y). For the factorised costs
(C_ij = r_i + c_j - s <x'_i, y'_j>) it needs

    P y'  (B, n, d),   P^T x'  (B, m, d),   P 1  (B, n),   P^T 1  (B, m),

with P_ij = exp((log a_i + f_i / eps) + (log b_j + g_j / eps) - C_ij / eps) rebuilt from the
final potentials; P is never stored. :func:`plan_matmul` computes  out_i = sum_j P_ij s_j v_j
and the row sums; the column side is the same kernel on the transposed operands. With v = y
and s_j = 1 / |y_j| (the cosine statistic) the product is P y' through the normalised
embeddings without materialising them.

The grid splits rows (axis 0: problem x row block, so the batch is not bound by the 65,535
programs of the other axes) and the feature dimension of v (axis 1, BLOCK_DV per program), so
each program
keeps a (BLOCK_N, BLOCK_DV) fp32 accumulator and rebuilds its plan tiles nb = ceil(dv /
BLOCK_DV) times: from a dense cost when the caller built one (``dense_operands``: nb B n m 4
bytes read) or from the embeddings (2 nb B n m d FLOPs). Then 2 B n m dv FLOPs for P v and
nb B n m exp2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import Config, check_tensor, launch, pow2_at_least
from .cost_tile import (
    DOT_PRECISION,
    HALF_OR_FLOAT,
    CostOperands,
    check_vectors,
    cost_tile,
    dot_block_d,
)
from .lse import LOG2E, log2_potential, plan_tile
from .sinkhorn_streaming import _problem_and_rows, _problem_operands

# Rows x columns x accumulator width per program, at 8 warps: the 32 x 128 fp32 accumulator is
# 16 registers per thread beside the 32 x 32 cost and plan tiles; 100-230 registers, no spills
# on sm_80/sm_90 (compile_report). 64 x 32 x 128 and 64 x 32 x 64 spill on sm_80 (255 registers,
# 8-48 B), where P @ v runs as 3xTF32 mma.sync beside the cost dot.
BWD_BLOCK_N = 32
BWD_BLOCK_M = 32
BWD_BLOCK_DV = 128
BWD_WARPS = 8


@triton.jit
def _plan_matmul_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, loga_ptr, logb_ptr, f_ptr, g_ptr,
    v_ptr, stride_vb, stride_vm, stride_vd, vs_ptr, out_ptr, rowsum_ptr,
    n, m, d, dv, inv_eps,
    COST: tl.constexpr, HAS_SCALE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_b, rows = _problem_and_rows(n, BLOCK_N)
    pid_v = tl.program_id(1)
    feats = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    log_a = tl.load(loga_ptr + pid_b * n + rows, mask=rows < n, other=float("-inf"))
    row_h = log2_potential(log_a, tl.load(f_ptr + pid_b * n + rows, mask=rows < n, other=0.0),
                           inv_eps)
    x_ptr, y_ptr, xs_ptr, ys_ptr = _problem_operands(x_ptr, stride_xb, y_ptr, stride_yb, xs_ptr,
                                                     ys_ptr, pid_b, n, m, COST)
    v_ptr += pid_b * stride_vb
    scale = inv_eps * LOG2E
    acc = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    rowsum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, m, BLOCK_M):
        cols = start + tl.arange(0, BLOCK_M)
        log_b = tl.load(logb_ptr + pid_b * m + cols, mask=cols < m, other=float("-inf"))
        col_ok = log_b > float("-inf")
        g = tl.load(g_ptr + pid_b * m + cols, mask=cols < m, other=0.0)
        c = cost_tile(x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
                      rows, cols, rows < n, cols < m, log_a > float("-inf"), col_ok, d, COST,
                      BLOCK_D)
        p = plan_tile(c, row_h, log2_potential(log_b, g, inv_eps), scale)
        rowsum += tl.sum(p, axis=1)
        if HAS_SCALE:
            p = p * tl.load(vs_ptr + pid_b * m + cols, mask=col_ok, other=0.0)[None, :]
        # Massless columns are read as zeros: padding may hold NaN, and 0 * NaN is NaN.
        v = tl.load(v_ptr + cols.to(tl.int64)[:, None] * stride_vm + feats[None, :] * stride_vd,
                    mask=col_ok[:, None] & (feats < dv)[None, :], other=0.0)
        acc = tl.dot(p, v.to(tl.float32), acc, input_precision=DOT_PRECISION)
    out = out_ptr + (pid_b * n + rows.to(tl.int64))[:, None] * dv + feats[None, :]
    tl.store(out, acc, mask=(rows < n)[:, None] & (feats < dv)[None, :])
    if pid_v == 0:
        tl.store(rowsum_ptr + pid_b * n + rows, rowsum, mask=rows < n)


def backward_config(n: int, m: int, d: int, dtype: torch.dtype) -> Config:
    """Row, column and cost-dot blocks; the accumulator width is :func:`backward_block_dv`."""
    return Config(min(BWD_BLOCK_N, pow2_at_least(n)), min(BWD_BLOCK_M, pow2_at_least(m)),
                  dot_block_d(dtype, d), num_warps=BWD_WARPS, num_stages=2)


def backward_block_dv(dv: int) -> int:
    return min(BWD_BLOCK_DV, pow2_at_least(dv))


def plan_matmul(ops: CostOperands, log_a, log_b, f, g, eps: float, v: torch.Tensor,
                v_scale: torch.Tensor | None = None):
    """(P diag(s) v  (B, n, dv) fp32,  P 1  (B, n) fp32) with P rebuilt from f, g.

    Args:
        ops: the cost; log_a (B, n), log_b (B, m), f (B, n), g (B, m): fp32 contiguous;
            eps the regularisation of the solve that gave f and g.
        v: (B, m, dv), any float dtype and strides (read in place).
        v_scale: optional (B, m) fp32 contiguous column scale s (default 1).
    """
    dev = ops.check()
    batch = ops.batch
    check_vectors(dev, log_a=(log_a, batch, ops.n), log_b=(log_b, batch, ops.m),
                  f=(f, batch, ops.n), g=(g, batch, ops.m))
    check_tensor("v", v, (batch, ops.m, None), HALF_OR_FLOAT, dev, contiguous=False)
    if v_scale is not None:
        check_vectors(dev, v_scale=(v_scale, batch, ops.m))
    dv = v.shape[2]
    cfg = backward_config(ops.n, ops.m, ops.features, ops.dot_dtype)
    block_dv = backward_block_dv(dv)
    out = torch.empty(batch, ops.n, dv, dtype=torch.float32, device=dev)
    rowsum = torch.empty(batch, ops.n, dtype=torch.float32, device=dev)
    args = (*ops.args(), log_a, log_b, f, g, v, *v.stride(),
            log_a if v_scale is None else v_scale, out, rowsum,
            ops.n, ops.m, ops.d, dv, 1.0 / eps)
    grid = (batch * triton.cdiv(ops.n, cfg.block_n), triton.cdiv(dv, block_dv))
    launch(_plan_matmul_kernel, grid, args,
           dict(COST=ops.kind, HAS_SCALE=v_scale is not None, BLOCK_DV=block_dv, **cfg.meta()))
    return out, rowsum
