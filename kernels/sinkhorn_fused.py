r"""Fused Sinkhorn: the whole solve of each problem in one program, every iteration in one launch.

For a batch of problems of up to 256 x 256 tokens (the distillation case) one program per
problem runs every log-domain iteration

    g_j = -eps LSE_i(log a_i + (f_i - C_ij) / eps),   f_i = -eps LSE_j(log b_j + (g_j - C_ij) / eps)

from f = 0 (column update first, as in :mod:`optical_ops.sinkhorn_loop`), and writes f, g, the
transport cost <P, C>, the iteration count (and the plan), all in one launch. With ``tol`` the
L1 column error  sum_j b_j |exp((g_j - g'_j) / eps) - 1|  is checked every ``check_every``
iterations and each program stops on its own: no host sync, and a converged problem frees its SM.

**One sweep per iteration.** The program reads C in row strips of BLOCK_N x BLOCK_M with
BLOCK_M >= m, so a strip holds whole rows and g (all m columns) stays in registers. For each
strip it computes the strip's row update f_s from g (an LSE along the row, in registers) and
folds f_s at once into an online LSE down the columns (:func:`~.lse.lse2_fold`); after the last
strip that LSE is the next column update g'. So f never has to be stored, each entry of C is
read once per iteration (not once per half-iteration), and the g' that the ``tol`` check needs
is the next iteration's column update anyway. After the loop one more sweep recomputes f from
the final g and writes f, the plan (if asked) and <P, C>.

**Two modes** (the RESIDENT constexpr), chosen by :func:`fused_config` / :func:`strip_config`:

* resident: the whole tile (padded BLOCK_N x BLOCK_M <= :data:`MAX_TILE` = 64 x 128) is one
  strip, computed once from the embeddings with ``tl.dot`` (or read from a dense cost) and kept
  in registers: no memory traffic at all per iteration.
* strips: up to :data:`MAX_STRIP_ROWS` x :data:`MAX_STRIP_COLS` tokens, too large for the
  register file. Each sweep re-reads the strips from a dense cost (B, n, m) in memory, built
  once by :func:`~.sinkhorn_streaming.cost_matrix` (or given), fp32 ones through a two-stage
  cp.async pipeline (the next strip is in flight while this one is reduced): 4 n m bytes per
  iteration, from L1 when they fit beside the pipeline buffers (~190 KB on an H100, i.e. up
  to ~220 x 220 tokens), else from L2.

The resident mode is the strip mode's special case of one strip held in registers; it is kept
because for small tiles it moves nothing per iteration and needs no cost launch (W1:
ROOFLINE.md). Work per problem (on the padded strips): 2 n m d FLOPs for the cost (resident:
here; strips: the cost kernel); n m exp2 for the first column update, then per iteration
2 n m exp2 and ~10 n m other FP32 operations; 2 n m exp2 for the final f and the plan: in all
2 n m (T + 1.5) exp2 for T iterations, one iteration's worth more than the loop's updates and
plan (the price of never storing f). Memory: reads (n + m) d embedding elements (resident) or
n m cost entries per sweep (strips), n + m log-weights; writes n + m + 2 (plus n m with the
plan).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import MIN_DOT, Config, launch, pow2_at_least
from .cost_tile import DENSE, CostOperands, check_vectors, cost_tile, dot_block_d
from .lse import LOG2E, log2_potential, lse2_fold, plan_tile, softmin_from_lse2

# Largest BLOCK_N * BLOCK_M held in registers, at 8 warps: 32 tile entries per thread, and
# 180-255 of the 255 registers a thread may use, without spilling (ptxas, sm_80/sm_90, all
# dtypes; the cost dot's operand fragments and the soft-min temporaries take the rest).
# A 128 x 128 tile needs 16 warps, where a thread may only use 128 registers, and spills
# ~1 KB per thread (see ROOFLINE.md); such problems take the strip mode.
MAX_TILE = 64 * 128
# num_warps = tile / (32 * ENTRIES_PER_THREAD), clamped to [MIN_WARPS, MAX_WARPS]: 4 warps up
# to 4096 entries, 8 for 64 x 128.
ENTRIES_PER_THREAD = 32
MIN_WARPS, MAX_WARPS = 4, 8
# Left to itself ptxas caps a thread at 128 (8 warps) or 168 (4 warps) registers to fit 2-3
# blocks per SM, and some tiles then spill 8-36 B (sm_80 and sm_90). A fused program holds a
# whole problem and runs ~1 per SM, so registers matter more than occupancy: allow all 255.
MAX_REGISTERS = 255

# Strip mode. A strip holds whole rows, so its width BLOCK_M = pow2(m) bounds m: up to 256
# columns, g and the column LSE state are a few registers per thread beside the strip. The row
# bound is a latency trade: a sweep runs on one SM, at best n m / 8 cycles (2 n m exp2 at the
# MUFU's 16 per cycle; 4-7 us per iteration at 256 x 256 on an H100), under the streaming
# kernels' two launches per iteration eager (~10 us) and about level with them in a CUDA
# graph, even for B = 1; beyond it the streaming grid spreads a problem over more SMs.
MAX_STRIP_COLS = 256
MAX_STRIP_ROWS = 256
# Strip entries, 32 per thread at 8 warps (32 x 256, 64 x 128, 128 x 64), when the cost's rows
# are 16-entry aligned (rows_aligned: always for the cost built by cost_matrix): 162-233
# registers, no spills (sm_80/sm_90, fp32/fp16/bf16 costs). Unaligned rows (a user's dense
# cost) get 1-wide layouts that replicate the row vectors 4x more: a quarter of the strip
# (UNALIGNED_SHRINK), 111-154 registers (half a strip needs 237-255, no margin left).
# One program per SM (MAX_REGISTERS), on purpose: the costs of the 132 problems running at
# once then take 132 x 4 n m <= 34 MB, within an H100's 50 MB L2, where two per SM (4096-entry
# strips fit 128 registers) would need 67 MB at 256 x 256 and stream C from HBM (ROOFLINE.md).
STRIP_TILE = 8192
UNALIGNED_SHRINK = 4
STRIP_WARPS = 8


@triton.jit
def _row_softmin(c, log_b, g, eps, inv_eps, scale):
    """f_i = -eps LSE_j(log b_j + (g_j - C_ij) / eps) for the rows of a strip (whole rows)."""
    z = log2_potential(log_b, g, inv_eps)[None, :] - c * scale
    run_max = tl.full([c.shape[0]], float("-inf"), tl.float32)
    run_max, run_sum = lse2_fold(run_max, tl.zeros_like(run_max), z, 1)
    return softmin_from_lse2(run_max, run_sum, eps)


@triton.jit
def _strip(c_res, x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
           loga_ptr, start, n, m, d, cols, col_ok,
           COST: tl.constexpr, RESIDENT: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_D: tl.constexpr):
    """Log-weights and cost strip of rows start .. start + BLOCK_N: the resident tile
    ``c_res``, or built by ``cost_tile``."""
    rows = start + tl.arange(0, BLOCK_N)
    log_a = tl.load(loga_ptr + rows, mask=rows < n, other=float("-inf"))
    if RESIDENT:
        c = c_res
    else:
        c = cost_tile(x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
                      rows, cols, rows < n, cols < m, log_a > float("-inf"), col_ok, d, COST,
                      BLOCK_D)
    return log_a, c


@triton.jit
def _sweep(c_res, x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
           loga_ptr, row_lo, row_hi, n, m, d, cols, log_b, g, eps, inv_eps, scale,
           COST: tl.constexpr, RESIDENT: tl.constexpr, ROW_UPDATE: tl.constexpr,
           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The column update g' = -eps LSE_i(log a_i + (f_i - C_ij) / eps) for f the row update
    of g, strip by strip (ROW_UPDATE), or for f = 0."""
    col_max = tl.full(cols.shape, float("-inf"), tl.float32)
    col_sum = tl.zeros(cols.shape, tl.float32)
    # Two stages: the next strip is copied to shared memory (cp.async) while this one is
    # reduced (Triton pipelines only dot operands unless asked).
    for start in tl.range(row_lo, row_hi, BLOCK_N, num_stages=2):
        log_a, c = _strip(c_res, x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd,
                          xs_ptr, ys_ptr, loga_ptr, start, n, m, d, cols, log_b > float("-inf"),
                          COST, RESIDENT, BLOCK_N, BLOCK_D)
        if ROW_UPDATE:
            f = _row_softmin(c, log_b, g, eps, inv_eps, scale)
        else:
            f = tl.zeros([BLOCK_N], tl.float32)
        z = log2_potential(log_a, f, inv_eps)[:, None] - c * scale
        col_max, col_sum = lse2_fold(col_max, col_sum, z, 0)
    return softmin_from_lse2(col_max, col_sum, eps)


# Lengths bound loops and masks across rows only (never the vectorised axis), and iteration
# counts are plain loop bounds: not specialised, so a new length or n_iters reuses the binary.
@triton.jit(do_not_specialize=["n", "n_iters", "check_every"])
def _sinkhorn_fused_kernel(
    x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
    xs_ptr, ys_ptr, loga_ptr, logb_ptr, span_ptr,
    f_ptr, g_ptr, loss_ptr, iters_ptr, plan_ptr,
    n, m, d, eps, inv_eps, n_iters, tol, check_every,
    COST: tl.constexpr, HAS_TOL: tl.constexpr, WRITE_PLAN: tl.constexpr,
    RESIDENT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    x_ptr += pid * stride_xb
    y_ptr += pid * stride_yb
    xs_ptr += pid * n
    ys_ptr += pid * m
    loga_ptr += pid * n
    cols = tl.arange(0, BLOCK_M)
    log_b = tl.load(logb_ptr + pid * m + cols, mask=cols < m, other=float("-inf"))
    col_ok = log_b > float("-inf")
    # The iterations sweep only the strips from the first to the last row with mass (a ragged
    # batch's padding costs nothing there); the final sweep covers every row, so f and the plan
    # are written everywhere.
    row_lo = tl.load(span_ptr + 2 * pid) // BLOCK_N * BLOCK_N
    row_hi = tl.load(span_ptr + 2 * pid + 1)
    scale = inv_eps * LOG2E
    if RESIDENT:  # the one strip, built once
        _, c_res = _strip(None, x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd,
                          xs_ptr, ys_ptr, loga_ptr, 0, n, m, d, cols, col_ok, COST, False,
                          BLOCK_N, BLOCK_D)
    else:
        c_res = None

    g = _sweep(c_res, x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
               loga_ptr, row_lo, row_hi, n, m, d, cols, log_b, None, eps, inv_eps, scale, COST,
               RESIDENT, False, BLOCK_N, BLOCK_D)
    it = 0
    go = it < n_iters
    while go:
        # f = row update of g (iteration it + 1), and g_next its column update.
        g_next = _sweep(c_res, x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd,
                        xs_ptr, ys_ptr, loga_ptr, row_lo, row_hi, n, m, d, cols, log_b, g, eps,
                        inv_eps, scale, COST, RESIDENT, True, BLOCK_N, BLOCK_D)
        it += 1
        go = it < n_iters
        if HAS_TOL:
            # The loop's check: err of the plan (f, g); (f, g) frozen once err <= tol.
            col_term = tl.exp(log_b) * tl.abs(tl.exp((g - g_next) * inv_eps) - 1.0)
            err = tl.sum(tl.where(col_ok, col_term, 0.0))
            go = go & ((it % check_every != 0) | (err > tol))
        g = tl.where(go, g_next, g)

    # f from the final g, the plan and <P, C>.
    g_h = log2_potential(log_b, g, inv_eps)
    partial = tl.zeros([BLOCK_N], tl.float32)
    for start in tl.range(0, n, BLOCK_N, num_stages=2):
        log_a, c = _strip(c_res, x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd,
                          xs_ptr, ys_ptr, loga_ptr, start, n, m, d, cols, col_ok, COST,
                          RESIDENT, BLOCK_N, BLOCK_D)
        rows = start + tl.arange(0, BLOCK_N)
        f = _row_softmin(c, log_b, g, eps, inv_eps, scale)
        tl.store(f_ptr + pid * n + rows, f, mask=rows < n)
        p = plan_tile(c, log2_potential(log_a, f, inv_eps), g_h, scale)
        partial += tl.sum(p * c, axis=1)
        if WRITE_PLAN:
            out = plan_ptr + pid * n * m + rows.to(tl.int64)[:, None] * m + cols[None, :]
            tl.store(out, p, mask=(rows < n)[:, None] & (cols < m)[None, :])
    tl.store(loss_ptr + pid, tl.sum(partial, axis=0))
    tl.store(iters_ptr + pid, it.to(tl.int64))
    tl.store(g_ptr + pid * m + cols, g, mask=cols < m)


def fused_config(n: int, m: int, d: int, dtype: torch.dtype) -> Config | None:
    """Blocks of the resident mode, or None when the tile does not fit in registers."""
    block_n, block_m = pow2_at_least(n), pow2_at_least(m)
    if block_n * block_m > MAX_TILE:
        return None
    warps = max(MIN_WARPS, min(MAX_WARPS, block_n * block_m // (32 * ENTRIES_PER_THREAD)))
    return Config(block_n, block_m, dot_block_d(dtype, d), num_warps=warps, num_stages=2,
                  max_registers=MAX_REGISTERS)


def strip_config(n: int, m: int, aligned: bool = True) -> Config | None:
    """Blocks of the strip mode (whole rows, STRIP_TILE entries, fewer on unaligned rows, see
    :func:`rows_aligned`), or None beyond its bounds."""
    block_m = pow2_at_least(m)
    if block_m > MAX_STRIP_COLS or n > MAX_STRIP_ROWS:
        return None
    entries = STRIP_TILE if aligned else STRIP_TILE // UNALIGNED_SHRINK
    block_n = min(pow2_at_least(n, 1), max(1, entries // block_m))
    return Config(block_n, block_m, MIN_DOT, num_warps=STRIP_WARPS, num_stages=2,
                  max_registers=MAX_REGISTERS)


def rows_aligned(ops: CostOperands) -> bool:
    """Unit stride along a row, the other strides multiples of 16 and a 16-byte aligned base:
    what Triton's specialisation needs to lay a strip out 4 columns per thread."""
    stride_b, stride_n, stride_m = ops.dense_strides
    return (stride_m == 1 and stride_n % 16 == 0 and stride_b % 16 == 0
            and ops.x.data_ptr() % 16 == 0)


def row_span(log_a: torch.Tensor) -> torch.Tensor:
    """(B, 2) int32: per problem the first row with mass and one past the last (n, 0 when none):
    the rows the iterations sweep. A few (B, n) device ops, no host sync."""
    n = log_a.shape[1]
    rows = torch.arange(n, device=log_a.device, dtype=torch.int32)
    valid = log_a > float("-inf")
    first = torch.where(valid, rows, n).amin(1)
    last = torch.where(valid, rows + 1, 0).amax(1)
    return torch.stack([first, last], 1).to(torch.int32)


def sinkhorn_fused(ops: CostOperands, log_a: torch.Tensor, log_b: torch.Tensor, eps: float,
                   n_iters: int, tol: float | None, check_every: int, write_plan: bool = False,
                   resident: bool | None = None):
    """All Sinkhorn iterations of every problem in one launch.

    Args:
        ops: the cost (:mod:`.cost_tile`), B problems of n x m: any cost when the tile fits
            :func:`fused_config` (resident), else a dense cost within :func:`strip_config`.
        resident: the mode, as the dispatch plan chose it (``triton-fused``: the tile in
            registers; ``triton-strips``: strips over a dense cost); None: resident whenever
            the tile fits.
        log_a, log_b: (B, n), (B, m) fp32 contiguous log-weights (-inf for massless tokens).
        eps, n_iters, tol, check_every: as in :func:`optical_ops.sinkhorn_loop.run_sinkhorn`
            (n_iters >= 1).
        write_plan: also return the dense plan (B, n, m) fp32.

    Returns:
        f (B, n), g (B, m) fp32 potentials (P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)),
        loss (B,) fp32 = <P, C>, iterations (B,) int64, and the plan or None.
    """
    cfg = fused_config(ops.n, ops.m, ops.features, ops.dot_dtype)
    if resident and cfg is None:
        raise ValueError(f"a {ops.n} x {ops.m} tile does not fit the registers "
                         "(fused_config): use the strips over a dense cost")
    resident = cfg is not None if resident is None else resident
    if not resident:
        cfg = strip_config(ops.n, ops.m, ops.kind == DENSE and rows_aligned(ops))
        if cfg is None or ops.kind != DENSE:
            raise ValueError(f"a {ops.n} x {ops.m} problem needs a dense cost within "
                             f"{MAX_STRIP_ROWS} x {MAX_STRIP_COLS} tokens for the fused kernel")
    dev = ops.check()
    batch = ops.batch
    check_vectors(dev, log_a=(log_a, batch, ops.n), log_b=(log_b, batch, ops.m))
    if n_iters < 1 or check_every < 1:
        raise ValueError(f"n_iters and check_every must be >= 1, got {n_iters}, {check_every}")
    f = torch.empty(batch, ops.n, dtype=torch.float32, device=dev)
    g = torch.empty(batch, ops.m, dtype=torch.float32, device=dev)
    loss = torch.empty(batch, dtype=torch.float32, device=dev)
    iters = torch.empty(batch, dtype=torch.int64, device=dev)
    plan = torch.empty(batch, ops.n, ops.m, dtype=torch.float32, device=dev) if write_plan else f
    args = (*ops.args(), log_a, log_b, row_span(log_a), f, g, loss, iters, plan,
            ops.n, ops.m, ops.d, float(eps), 1.0 / eps, n_iters, 0.0 if tol is None else float(tol),
            check_every)
    launch(_sinkhorn_fused_kernel, (batch,), args,
           dict(COST=ops.kind, HAS_TOL=tol is not None, WRITE_PLAN=write_plan,
                RESIDENT=resident, **cfg.meta()))
    return f, g, loss, iters, plan if write_plan else None
