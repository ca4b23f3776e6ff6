r"""Streaming Sinkhorn kernels for large problems: the cost is never stored.

One half-iteration is the soft-min (here the row update; the column update is the same kernel
on the transposed operands, :meth:`~.cost_tile.CostOperands.transposed`):

    out_i = -eps * LSE_j( log w_j + (pot_j - C_ij) / eps ).

Each program owns BLOCK_N rows of one problem (the grid's axis 0 is problem x row block, so a
batch may exceed CUDA's 65,535 limit of the other axes) and sweeps the columns in tiles of
BLOCK_M, recomputing every
cost tile from the embeddings (``cost_tile``) and folding it into an online log-sum-exp, as
flash-attention does for the softmax. Memory is O(B (n + m) d); per half-iteration a program
reads its rows once and all m columns (from L2 after the first program), i.e.
B (n d + ceil(n / BLOCK_N) m d) elements, and does 2 B n m d FLOPs and B n m exp2.

:func:`transport_cost` evaluates <P, C> the same way, one partial sum per row (no atomics: the
result is deterministic), optionally writing the dense plan. When the dense cost fits in memory
the caller may build it once with :func:`cost_matrix` and stream over it instead: a
half-iteration then reads B n m fp32 (from L2 when it fits there) and does no dot products;
those reads go through a two-stage ``cp.async`` pipeline (``tl.range(num_stages=2)``: Triton
pipelines on its own only the loads that feed a ``tl.dot``).

What stays host-side: one launch per half-iteration (~5 us each eager; W3-W5 run 2 T + 1
launches, so below ~10 us of work per launch the loop is launch-bound: capture it in a CUDA
graph, tol=None has no host sync), and with ``tol`` the loop reads one flag every CHECK_EVERY
iterations (:mod:`optical_ops.sinkhorn_loop`). Fusing the iterations into one persistent
launch needs a grid-wide barrier between the row and the column update, which Triton does not
offer portably (ROOFLINE.md, "What the GPU check measures").
"""

from __future__ import annotations

from dataclasses import replace

import torch
import triton
import triton.language as tl

from ._launch import Config, launch, pow2_at_least
from .cost_tile import COST_DENSE, DENSE, CostOperands, check_vectors, cost_tile, dot_block_d
from .lse import LOG2E, log2_potential, lse2_fold, plan_tile, softmin_from_lse2

# Row and column tile of the streaming kernels: a 64 x 64 fp32 cost tile is 16 registers per
# thread at 8 warps, leaving room for the dot operands and the online-LSE state (~130-240
# registers, no spills on sm_80/sm_90, see compile_report; at 4 warps sm_80 spills for fp32),
# and 64-row programs give n / 64 programs per problem.
STREAM_BLOCK = 64
STREAM_WARPS = 8
# Fewer than this many programs leaves SMs idle (W3: 1 x 1024 rows = 16 programs of 64 rows on
# 132 SMs): then the row block shrinks to 32 or 16 (more programs, each re-reading the columns
# from L2). The launchers read the SM count of the tensors' GPU; meta/CPU tensors use an H100's.
DEFAULT_SMS = 132
# Column block of the cost kernel for fp32 (3xTF32) dots: the 64 x 64 tile takes 128 registers
# at 8 warps and spills 4 B on sm_80 (runtime ptxas); 64 x 32 takes 100, and the kernel runs
# once per solve.
COST_BLOCK_M_FP32 = 32
# Row stride of the dense cost built by cost_matrix, in entries: a multiple of Triton's
# divisibility specialisation (16).
ROW_ALIGN = 16
# cp.async stages of the loop over a dense cost (1: no pipeline; the embedding path's loads
# feed tl.dot and are pipelined by Triton inside the cost dot loop).
DENSE_LOOP_STAGES = 2


@triton.jit
def _problem_and_rows(n, BLOCK_N: tl.constexpr):
    """(problem, row indices) of this program: axis 0 is problem * row blocks + row block."""
    pid = tl.program_id(0).to(tl.int64)
    blocks = tl.cdiv(n, BLOCK_N)
    return pid // blocks, (pid % blocks).to(tl.int32) * BLOCK_N + tl.arange(0, BLOCK_N)


@triton.jit
def _problem_operands(x_ptr, stride_xb, y_ptr, stride_yb, xs_ptr, ys_ptr, pid_b, n, m,
                      COST: tl.constexpr):
    """The cost operands of problem ``pid_b``: its embeddings (or its dense cost) and, for an
    embedding cost, its per-token statistics."""
    x_ptr += pid_b * stride_xb
    y_ptr += pid_b * stride_yb
    if COST != COST_DENSE:
        xs_ptr += pid_b * n
        ys_ptr += pid_b * m
    return x_ptr, y_ptr, xs_ptr, ys_ptr


@triton.jit
def _softmin_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, own_logw_ptr, logw_ptr, pot_ptr, out_ptr, n, m, d, eps, inv_eps,
    COST: tl.constexpr, LOOP_STAGES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b, rows = _problem_and_rows(n, BLOCK_N)
    row_ok = tl.load(own_logw_ptr + pid_b * n + rows, mask=rows < n,
                     other=float("-inf")) > float("-inf")
    x_ptr, y_ptr, xs_ptr, ys_ptr = _problem_operands(x_ptr, stride_xb, y_ptr, stride_yb, xs_ptr,
                                                     ys_ptr, pid_b, n, m, COST)
    scale = inv_eps * LOG2E
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in tl.range(0, m, BLOCK_M, num_stages=LOOP_STAGES):
        cols = start + tl.arange(0, BLOCK_M)
        log_w = tl.load(logw_ptr + pid_b * m + cols, mask=cols < m, other=float("-inf"))
        pot = tl.load(pot_ptr + pid_b * m + cols, mask=cols < m, other=0.0)
        c = cost_tile(x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
                      rows, cols, rows < n, cols < m, row_ok, log_w > float("-inf"), d, COST,
                      BLOCK_D)
        z = log2_potential(log_w, pot, inv_eps)[None, :] - c * scale
        run_max, run_sum = lse2_fold(run_max, run_sum, z, 1)
    tl.store(out_ptr + pid_b * n + rows, softmin_from_lse2(run_max, run_sum, eps), mask=rows < n)


# n bounds the rows only (stores vectorise along the columns): not specialised, so a new length
# reuses the binary. The soft-min keeps it: on the transposed dense cost its rows are the
# contiguous axis, where a length divisible by 16 lets the loads vectorise.
@triton.jit(do_not_specialize=["n"])
def _cost_matrix_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, loga_ptr, logb_ptr, out_ptr, stride_ob, stride_on, n, m, d,
    COST: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b, rows = _problem_and_rows(n, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = tl.load(loga_ptr + pid_b * n + rows, mask=rows < n,
                     other=float("-inf")) > float("-inf")
    col_ok = tl.load(logb_ptr + pid_b * m + cols, mask=cols < m,
                     other=float("-inf")) > float("-inf")
    c = cost_tile(x_ptr + pid_b * stride_xb, stride_xn, stride_xd,
                  y_ptr + pid_b * stride_yb, stride_ym, stride_yd,
                  xs_ptr + pid_b * n, ys_ptr + pid_b * m, rows, cols, rows < n, cols < m,
                  row_ok, col_ok, d, COST, BLOCK_D)
    out = out_ptr + pid_b * stride_ob + rows.to(tl.int64)[:, None] * stride_on + cols[None, :]
    tl.store(out, c, mask=(rows < n)[:, None] & (cols < m)[None, :])


@triton.jit(do_not_specialize=["n"])
def _plan_cost_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, loga_ptr, logb_ptr, f_ptr, g_ptr, partial_ptr, plan_ptr, n, m, d, inv_eps,
    COST: tl.constexpr, WRITE_PLAN: tl.constexpr, LOOP_STAGES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b, rows = _problem_and_rows(n, BLOCK_N)
    log_a = tl.load(loga_ptr + pid_b * n + rows, mask=rows < n, other=float("-inf"))
    row_h = log2_potential(log_a, tl.load(f_ptr + pid_b * n + rows, mask=rows < n, other=0.0),
                           inv_eps)
    x_ptr, y_ptr, xs_ptr, ys_ptr = _problem_operands(x_ptr, stride_xb, y_ptr, stride_yb, xs_ptr,
                                                     ys_ptr, pid_b, n, m, COST)
    scale = inv_eps * LOG2E
    partial = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in tl.range(0, m, BLOCK_M, num_stages=LOOP_STAGES):
        cols = start + tl.arange(0, BLOCK_M)
        log_b = tl.load(logb_ptr + pid_b * m + cols, mask=cols < m, other=float("-inf"))
        g = tl.load(g_ptr + pid_b * m + cols, mask=cols < m, other=0.0)
        c = cost_tile(x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
                      rows, cols, rows < n, cols < m, log_a > float("-inf"),
                      log_b > float("-inf"), d, COST, BLOCK_D)
        p = plan_tile(c, row_h, log2_potential(log_b, g, inv_eps), scale)
        partial += tl.sum(p * c, axis=1)
        if WRITE_PLAN:
            out = plan_ptr + pid_b * n * m + rows.to(tl.int64)[:, None] * m + cols[None, :]
            tl.store(out, p, mask=(rows < n)[:, None] & (cols < m)[None, :])
    tl.store(partial_ptr + pid_b * n + rows, partial, mask=rows < n)


def sm_count(device: torch.device | None) -> int:
    """Streaming multiprocessors of a CUDA device (DEFAULT_SMS for others)."""
    if device is None or device.type != "cuda":
        return DEFAULT_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def stream_block_n(n: int, batch: int, sms: int = DEFAULT_SMS) -> int:
    """STREAM_BLOCK rows per program, halved (down to 16) while the grid has fewer programs
    than ``sms``: only three sizes, so a new length or batch compiles at most two variants."""
    block = min(STREAM_BLOCK, pow2_at_least(n))
    while block > 16 and batch * triton.cdiv(n, block) < sms:
        block //= 2
    return block


def streaming_config(n: int, m: int, d: int, dtype: torch.dtype, batch: int = 1 << 30,
                     sms: int = DEFAULT_SMS) -> Config:
    """Blocks of the streaming kernels (shrunk to the problem for tiny n or m, and the row
    block to fill ``sms`` SMs with ``batch`` problems, see :func:`stream_block_n`)."""
    return Config(stream_block_n(n, batch, sms), min(STREAM_BLOCK, pow2_at_least(m)),
                  dot_block_d(dtype, d), num_warps=STREAM_WARPS, num_stages=2)


def _rows_grid(batch: int, n: int, cfg: Config, *rest: int) -> tuple:
    return (batch * triton.cdiv(n, cfg.block_n), *rest)


def _loop_stages(ops: CostOperands) -> int:
    return DENSE_LOOP_STAGES if ops.kind == DENSE else 1


def softmin(ops: CostOperands, own_log_w: torch.Tensor, log_w: torch.Tensor, pot: torch.Tensor,
            eps: float) -> torch.Tensor:
    """Row soft-min  -eps LSE_j(log w_j + (pot_j - C_ij) / eps)  (B, n) fp32.

    own_log_w (B, n), log_w and pot (B, m): fp32 contiguous; own_log_w marks the rows with
    mass (the others are computed against a zero embedding, as the PyTorch backend does).
    """
    dev = ops.check()
    batch = ops.batch
    check_vectors(dev, own_log_w=(own_log_w, batch, ops.n), log_w=(log_w, batch, ops.m),
                  pot=(pot, batch, ops.m))
    cfg = streaming_config(ops.n, ops.m, ops.features, ops.dot_dtype, batch, sm_count(dev))
    out = torch.empty(batch, ops.n, dtype=torch.float32, device=dev)
    args = (*ops.args(), own_log_w, log_w, pot, out, ops.n, ops.m, ops.d, float(eps), 1.0 / eps)
    launch(_softmin_kernel, _rows_grid(batch, ops.n, cfg), args,
           dict(COST=ops.kind, LOOP_STAGES=_loop_stages(ops), **cfg.meta()))
    return out


def cost_matrix(ops: CostOperands, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """The dense cost C (B, n, m) fp32, one tile per program (2 B n m d FLOPs, writes B n m):
    when it fits in memory, the soft-min and the fused strips read it (``dense_operands``)
    instead of recomputing it every half-iteration. Massless tokens are read as zeros, so every
    entry is finite. Rows are padded to ROW_ALIGN entries (a strided view): every row then
    starts 64-byte aligned, which Triton's alignment specialisation turns into 4-wide
    per-thread layouts for the kernels that read C (half the registers of the fused strips)."""
    dev = ops.check()
    batch = ops.batch
    check_vectors(dev, log_a=(log_a, batch, ops.n), log_b=(log_b, batch, ops.m))
    cfg = streaming_config(ops.n, ops.m, ops.features, ops.dot_dtype)
    if ops.kind != DENSE and ops.dot_dtype == torch.float32:
        cfg = replace(cfg, block_m=min(cfg.block_m, COST_BLOCK_M_FP32))
    width = triton.cdiv(ops.m, ROW_ALIGN) * ROW_ALIGN
    out = torch.empty(batch, ops.n, width, dtype=torch.float32, device=dev)[:, :, :ops.m]
    grid = _rows_grid(batch, ops.n, cfg, triton.cdiv(ops.m, cfg.block_m))
    launch(_cost_matrix_kernel, grid, (*ops.args(), log_a, log_b, out, out.stride(0),
                                       out.stride(1), ops.n, ops.m, ops.d),
           dict(COST=ops.kind, **cfg.meta()))
    return out


def transport_cost(ops: CostOperands, log_a, log_b, f, g, eps: float, write_plan: bool = False):
    """(<P, C> (B,) fp32, the plan (B, n, m) fp32 or None) for the potentials f, g.

    log_a, f (B, n) and log_b, g (B, m): fp32 contiguous."""
    dev = ops.check()
    batch = ops.batch
    check_vectors(dev, log_a=(log_a, batch, ops.n), log_b=(log_b, batch, ops.m),
                  f=(f, batch, ops.n), g=(g, batch, ops.m))
    cfg = streaming_config(ops.n, ops.m, ops.features, ops.dot_dtype, batch, sm_count(dev))
    partial = torch.empty(batch, ops.n, dtype=torch.float32, device=dev)
    plan = (torch.empty(batch, ops.n, ops.m, dtype=torch.float32, device=dev)
            if write_plan else partial)
    args = (*ops.args(), log_a, log_b, f, g, partial, plan, ops.n, ops.m, ops.d, 1.0 / eps)
    launch(_plan_cost_kernel, _rows_grid(batch, ops.n, cfg), args,
           dict(COST=ops.kind, WRITE_PLAN=write_plan, LOOP_STAGES=_loop_stages(ops),
                **cfg.meta()))
    return partial.sum(1), plan if write_plan else None
