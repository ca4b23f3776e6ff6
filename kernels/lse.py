r"""Log-domain helpers shared by the Sinkhorn kernels, in base 2.

The kernels work with exp2/log2 (one MUFU instruction each) on exponents pre-multiplied by
log2(e): with h_j = (log w_j + pot_j / eps) log2(e) and scale = log2(e) / eps,

    soft-min_i = -eps ln(2) * LSE2_j(h_j - scale * C_ij),
    P_ij       = exp2(hr_i + hc_j - scale * C_ij)       (hr, hc: the row and column h).

The log-sum-exp is accumulated online over column tiles, flash-attention style: a running max M
and a running sum S of exp2(z - M), so any number of tiles costs O(rows) state.

No division on the device: the launchers pass ``inv_eps`` = 1 / eps computed on the host in
double precision (rounded once to fp32), and the kernels multiply by it. A device ``pot / eps``
compiles to the approximate ``div.full.f32`` (2 ulp), which the interpreter does not show.
Still approximate on the GPU, and stated in the README: ``tl.exp2`` is ``ex2.approx.ftz.f32``
(relative error ~2^-22, subnormal results flushed to 0: weights below 2^-126 vanish),
``tl.log2`` is ``lg2.approx``, and ptxas contracts multiply-adds into FMAs
(``enable_fp_fusion``), which the interpreter's numpy evaluates in two roundings.
"""

from __future__ import annotations

from ._triton_version import require_triton

require_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def log2_potential(log_w, pot, inv_eps):
    """h = (log w + pot / eps) log2(e) with inv_eps = 1 / eps; -inf where the weight is 0."""
    return (log_w + pot * inv_eps) * LOG2E


@triton.jit
def lse2_fold(run_max, run_sum, z, AXIS: tl.constexpr):
    """Fold the tile z into the running (max, sum) of exp2 along AXIS."""
    new_max = tl.maximum(run_max, tl.max(z, axis=AXIS))
    # Where everything so far is -inf (massless tokens), use 0 as the reference so that
    # exp2(-inf - ref) is 0 and not NaN.
    ref = tl.where(new_max == float("-inf"), 0.0, new_max)
    run_sum = run_sum * tl.exp2(run_max - ref) + tl.sum(tl.exp2(z - tl.expand_dims(ref, AXIS)),
                                                        axis=AXIS)
    return new_max, run_sum


@triton.jit
def softmin_from_lse2(run_max, run_sum, eps):
    """-eps * LSE in natural units from the folded state."""
    # Tensor first: under the interpreter a float times a constexpr stays a constexpr.
    return (run_max + tl.log2(run_sum)) * (-LN2 * eps)


@triton.jit
def plan_tile(c, row_h, col_h, scale):
    """P = exp2(row_h_i + col_h_j - scale * C_ij); 0 where a weight is 0."""
    return tl.exp2(row_h[:, None] + col_h[None, :] - c * scale)
