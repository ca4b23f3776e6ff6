r"""Cost tiles computed on chip from raw embeddings: the one cost helper of every kernel.

Two costs between token embeddings x (B, n, d) and y (B, m, d), and a given dense cost:

* cosine:      C_ij = 1 - <x_i, y_j> rx_i ry_j,          rx_i = 1 / max(|x_i|, floor)
* sqeuclidean: C_ij = max(qx_i + qy_j - 2 <x_i, y_j>, 0), qx_i = |x_i|^2
* dense:       C_ij read from a (B, n, m) tensor.

The per-token statistics (rx, qx) are computed once per call in fp32 (O(B (n + m) d) reads), so
a tile costs one ``tl.dot`` chain over d: 2 * BLOCK_N * BLOCK_M * d FLOPs, and
(BLOCK_N + BLOCK_M) * d elements read. fp16/bf16 embeddings are multiplied as they are on the
tensor cores with fp32 accumulation (their products are exact in fp32). fp32 embeddings use
:data:`DOT_PRECISION` = ``"tf32x3"``: each operand is split into a TF32 head and a TF32 tail and
three TF32 products are summed, which keeps the cost at fp32 accuracy at 3x the TF32
tensor-core work. Plain TF32 (10 mantissa bits) errs by ~1e-4 on a cosine of d = 768 tokens,
which the exponent (g_j - C_ij) / eps turns into ~1e-3 relative on the plan at eps = 0.05 (and
on the gradient): more than fp16 inputs cost (see tests/test_triton_kernels.py).
Massless tokens (weight 0, padding) are loaded as zeros, so whatever they hold (NaN padding
included) gives a finite cost: 1 for cosine, |y_j|^2 or |x_i|^2 for sqeuclidean, 0 for dense.
A dense tile is loaded under a bounds mask only and the massless entries are zeroed after the
load (``tl.where``): a mask that depends on loaded weights is different in every lane, which
forces 4-byte loads, where a bounds mask lets Triton issue 16-byte ones (rows of 16 entries).
NaN in a token that carries mass propagates to its costs on the GPU and under the interpreter
alike (the squared-distance clamp is a select, not ``tl.maximum``, whose NaN handling differs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._triton_version import require_triton

require_triton()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from ._launch import check_tensor, pow2_at_least  # noqa: E402

# The COST argument of every kernel (Python ints for the launchers, constexprs for the kernels).
DENSE, COSINE, SQEUCLIDEAN = 0, 1, 2
COST_DENSE = tl.constexpr(DENSE)
COST_COSINE = tl.constexpr(COSINE)
COST_KINDS = {"cosine": COSINE, "sqeuclidean": SQEUCLIDEAN}
HALF_OR_FLOAT = (torch.float16, torch.bfloat16, torch.float32)

DOT_PRECISION = tl.constexpr("tf32x3")
# Mixed fp16/bf16 embeddings meet in fp32; both fit TF32 exactly (10 explicit mantissa bits,
# fp32's exponent range), so one TF32 product is exact where 3xTF32 would triple the work and
# the registers (the fp16 x bf16 resident tiles spilled on sm_80 with it).
HALF_AS_TF32 = tl.constexpr("tf32")

# Triton's interpreter (3.9) stores bf16 as uint16 and its tl.dot multiplies those bits as
# integers; under it bf16 operands are widened to fp32 first, which gives the same products.
_INTERPRETED = tl.constexpr(bool(triton.knobs.runtime.interpret))

# Feature chunk of the cost dot product, by embedding element size: x and y chunks of
# BLOCK_D * itemsize = 64 bytes per row (16 fp32 or 32 half values) are staged in shared
# memory per pipeline stage. 128-byte chunks spill in the streaming kernels on sm_80 for fp32
# (the 3xTF32 split holds three copies of each operand fragment).
DOT_CHUNK_BYTES = 64


@triton.jit
def cost_tile(x_ptr, stride_xn, stride_xd, y_ptr, stride_ym, stride_yd, xs_ptr, ys_ptr,
              rows, cols, row_in, col_in, row_ok, col_ok, d,
              COST: tl.constexpr, BLOCK_D: tl.constexpr):
    """fp32 tile C[rows, cols] of one problem (pointers already offset to the problem).

    ``row_in``/``col_in``: indices within the problem (rows < n, cols < m); ``row_ok``/
    ``col_ok``: tokens that exist and carry mass; the others are read as zeros.
    COST_DENSE: x_ptr is C with row/column strides (stride_xn, stride_xd); y and stats unused;
    ``d`` is the readable width of a row (>= m, see :func:`dense_operands`): columns up to it
    are loaded (a width divisible by 16 lets the loads vectorise) and those past m zeroed.
    """
    rows64 = rows.to(tl.int64)
    cols64 = cols.to(tl.int64)
    if COST == COST_DENSE:
        c = tl.load(x_ptr + rows64[:, None] * stride_xn + cols64[None, :] * stride_xd,
                    mask=row_in[:, None] & (cols < d)[None, :], other=0.0).to(tl.float32)
        c = tl.where(row_ok[:, None] & col_ok[None, :], c, 0.0)
    else:
        dots = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
        for k in range(0, d, BLOCK_D):
            feats = k + tl.arange(0, BLOCK_D)
            in_d = feats < d
            xk = tl.load(x_ptr + rows64[:, None] * stride_xn + feats[None, :] * stride_xd,
                         mask=row_ok[:, None] & in_d[None, :], other=0.0)
            yk = tl.load(y_ptr + cols64[:, None] * stride_ym + feats[None, :] * stride_yd,
                         mask=col_ok[:, None] & in_d[None, :], other=0.0)
            if xk.dtype != yk.dtype or (_INTERPRETED and xk.dtype == tl.bfloat16):
                halves = xk.dtype != tl.float32 and yk.dtype != tl.float32
                xk = xk.to(tl.float32)  # mixed types meet in fp32
                yk = yk.to(tl.float32)
                if halves:  # fp16/bf16 values are exact in TF32: one product, not three
                    dots = tl.dot(xk, tl.trans(yk), dots, input_precision=HALF_AS_TF32)
                else:
                    dots = tl.dot(xk, tl.trans(yk), dots, input_precision=DOT_PRECISION)
            else:
                dots = tl.dot(xk, tl.trans(yk), dots, input_precision=DOT_PRECISION)
        xs = tl.load(xs_ptr + rows, mask=row_ok, other=0.0)
        ys = tl.load(ys_ptr + cols, mask=col_ok, other=0.0)
        if COST == COST_COSINE:
            c = 1.0 - dots * xs[:, None] * ys[None, :]
        else:
            c = xs[:, None] + ys[None, :] - 2.0 * dots
            c = tl.where(c < 0.0, 0.0, c)  # NaN stays NaN, as in torch.clamp_min
    return c


@dataclass(frozen=True)
class CostOperands:
    """What the kernels need to rebuild any tile of C (B, n, m).

    Embedding costs (kind COSINE or SQEUCLIDEAN): ``x`` (B, n, d) and ``y`` (B, m, d) in the
    caller's dtype (fp16/bf16/fp32) and strides, and the per-token statistics ``x_stat`` (B, n),
    ``y_stat`` (B, m), fp32 contiguous (1 / |t| for cosine, |t|^2 for sqeuclidean).
    Dense (kind DENSE): ``x`` is C itself (:attr:`cost`), read through ``dense_strides``
    (batch, row, column), and ``y``, ``x_stat``, ``y_stat`` are None; ``d`` is the width up
    to which each row may be read (m, or the padded row of :func:`dense_operands`). The
    transposed cost swaps the row and column strides (and reads exactly its m), so the column
    soft-min is the row soft-min of :meth:`transposed`.

    :meth:`args` is the kernels' view: ten arguments (x_ptr, its three strides, y_ptr, its
    three strides, xs_ptr, ys_ptr) whatever the kind; for a dense cost the unused pointers
    repeat C (never read: the kernels branch on the COST constexpr).
    """

    kind: int
    x: torch.Tensor
    y: torch.Tensor | None
    x_stat: torch.Tensor | None
    y_stat: torch.Tensor | None
    n: int
    m: int
    d: int
    dense_strides: tuple[int, int, int] = (0, 0, 0)

    @property
    def cost(self) -> torch.Tensor:
        """The dense cost (as stored: its strides are ``dense_strides`` for this view)."""
        if self.kind != DENSE:
            raise AttributeError("embedding operands hold no dense cost")
        return self.x

    def transposed(self) -> CostOperands:
        if self.kind == DENSE:
            sb, sn, sm = self.dense_strides
            return CostOperands(self.kind, self.x, None, None, None, self.m, self.n, self.n,
                                (sb, sm, sn))
        return CostOperands(self.kind, self.y, self.x, self.y_stat, self.x_stat, self.m, self.n,
                            self.d)

    def args(self) -> tuple:
        """(x_ptr, stride_xb, stride_xn, stride_xd, y_ptr, stride_yb, stride_ym, stride_yd,
        xs_ptr, ys_ptr)."""
        if self.kind == DENSE:
            return (self.x, *self.dense_strides, self.x, *self.dense_strides, self.x, self.x)
        return (self.x, *self.x.stride(), self.y, *self.y.stride(), self.x_stat, self.y_stat)

    def check(self) -> torch.device:
        """Shapes, dtypes and devices as the kernels index them (metadata only); returns the
        device. Raises ValueError with the operand's name."""
        dev = self.x.device
        if self.kind == DENSE:
            check_tensor("the dense cost", self.x, (None, None, None), HALF_OR_FLOAT,
                         contiguous=False)
            sb, sn, sm = self.dense_strides
            stored = (tuple(self.x.shape[1:]), tuple(self.x.stride()[1:]))
            views = (((self.n, self.m), (sn, sm)), ((self.m, self.n), (sm, sn)))  # C or C^T
            if sb != self.x.stride(0) or stored not in views or self.d < self.m:
                raise ValueError(f"dense operands of {self.n} x {self.m} with strides "
                                 f"{self.dense_strides} do not describe a cost of shape "
                                 f"{tuple(self.x.shape)}, strides {self.x.stride()}")
            return dev
        batch = self.x.shape[0]
        check_tensor("x", self.x, (batch, self.n, self.d), HALF_OR_FLOAT, contiguous=False)
        check_tensor("y", self.y, (batch, self.m, self.d), HALF_OR_FLOAT, dev, contiguous=False)
        check_tensor("x_stat", self.x_stat, (batch, self.n), torch.float32, dev)
        check_tensor("y_stat", self.y_stat, (batch, self.m), torch.float32, dev)
        return dev

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def features(self) -> int:
        """The embedding dimension d (0 for a dense cost): what the block sizes depend on."""
        return 0 if self.kind == DENSE else self.d

    @property
    def dot_dtype(self) -> torch.dtype:
        """The dtype the cost dot multiplies in: the embeddings' own, fp32 when they differ
        (block sizes follow it: an fp32 operand chunk is twice the bytes of a half one)."""
        if self.kind == DENSE or self.y is None or self.y.dtype == self.x.dtype:
            return self.x.dtype
        return torch.float32


def check_vectors(device, **vectors) -> None:
    """fp32 contiguous (B, length) vectors of the launchers: name=(tensor, B, length)."""
    for name, (t, batch, length) in vectors.items():
        check_tensor(name, t, (batch, length), torch.float32, device)


def token_stat(t: torch.Tensor, valid: torch.Tensor, kind: int, norm_floor: float):
    """(B, n) fp32: 1 / max(|t_i|, norm_floor) for cosine, |t_i|^2 for sqeuclidean; 0 where
    ``valid`` is False (padding may hold NaN). Reads B * n * d."""
    norm = torch.linalg.vector_norm(t, dim=-1, dtype=torch.float32)
    stat = 1.0 / norm.clamp_min(norm_floor) if kind == COSINE else norm * norm
    return torch.where(valid, stat, torch.zeros((), dtype=stat.dtype, device=stat.device))


def embedding_operands(x, y, cost: str, row_valid, col_valid, norm_floor: float) -> CostOperands:
    """Operands of ``cost`` ("cosine" | "sqeuclidean") between x (B, n, d) and y (B, m, d).

    x and y are used in place, whatever their strides (unit stride along d is the fast case).
    ``row_valid``/``col_valid`` (B, n)/(B, m) bool mark the tokens with mass.
    """
    kind = COST_KINDS[cost]
    return CostOperands(kind, x, y, token_stat(x, row_valid, kind, norm_floor),
                        token_stat(y, col_valid, kind, norm_floor),
                        x.shape[1], y.shape[1], x.shape[2])


def readable_width(cost: torch.Tensor) -> int:
    """How far each row of C (B, n, m) may be read: its padded width when the rows are
    contiguous, padded by less than 16 entries (the cost ``cost_matrix`` builds), and the
    storage holds the padding of the last row too; else m. Metadata only."""
    batch, n, m = cost.shape
    s_b, s_n, s_m = cost.stride()
    if s_m != 1 or not m < s_n < m + 16 or batch * n == 0:
        return m
    end = cost.storage_offset() + (batch - 1) * s_b + n * s_n
    return s_n if end * cost.element_size() <= cost.untyped_storage().nbytes() else m


def dense_operands(cost: torch.Tensor) -> CostOperands:
    """Operands that read C (B, n, m) in place (rows up to :func:`readable_width`)."""
    return CostOperands(DENSE, cost, None, None, None, cost.shape[1], cost.shape[2],
                        readable_width(cost), tuple(cost.stride()))


def dot_block_d(dtype: torch.dtype, d: int) -> int:
    """Feature chunk of the cost dot product (see :data:`DOT_CHUNK_BYTES`)."""
    return min(pow2_at_least(d), DOT_CHUNK_BYTES // dtype.itemsize)
