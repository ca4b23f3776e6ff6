"""Ground costs between two token sets, in factorised form.

Both supported costs are affine in the inner product of (transformed) embeddings:

    C_ij = r_i + c_j - s * <x'_i, y'_j>

* ``"cosine"``:      x' = x / |x|, y' = y / |y|, r = c = 1/2, s = 1   ->  C = 1 - cos(x_i, y_j)
* ``"sqeuclidean"``: x' = x, y' = y, r = |x|^2, c = |y|^2, s = 2       ->  C = |x_i - y_j|^2

so a dense cost is one batched matrix product, and a streaming solver can recompute any tile
of C from the factors. The squared Euclidean form loses absolute precision ~ ulp * |x|^2 to
cancellation (as in POT's ``ot.dist``); it is clamped at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validation import check_choice, check_float_tensor, compute_dtype

COSTS = ("cosine", "sqeuclidean")

# Same floor as torch.nn.functional.normalize: a zero vector maps to zero.
NORM_FLOOR = 1e-12


@dataclass
class FactorisedCost:
    """C_ij = row_offset_i + col_offset_j - scale * <x_i, y_j>, batched.

    x: (B, n, d), y: (B, m, d), row_offset: (B, n), col_offset: (B, m).
    """

    x: torch.Tensor
    y: torch.Tensor
    row_offset: torch.Tensor
    col_offset: torch.Tensor
    scale: float
    clamp_at_zero: bool

    def tile(self, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        """C[:, rows, cols] from the factors: one batched matmul (2*B*n*m*d FLOPs)."""
        offsets = self.row_offset[:, rows, None] + self.col_offset[:, None, cols]
        c = torch.baddbmm(offsets, self.x[:, rows], self.y[:, cols].transpose(1, 2),
                          alpha=-self.scale)
        return c.clamp_min_(0.0) if self.clamp_at_zero else c

    def dense(self) -> torch.Tensor:
        return self.tile()


def factorise(
    x: torch.Tensor,
    y: torch.Tensor,
    cost: str,
    row_valid: torch.Tensor | None = None,
    col_valid: torch.Tensor | None = None,
) -> FactorisedCost:
    """Factors of ``cost`` between x (B, n, d) and y (B, m, d), differentiable w.r.t. x and y.

    Rows/columns where ``row_valid``/``col_valid`` (B, n)/(B, m) are False are zeroed, so
    padding (even NaN padding) gives finite costs and zero gradients.
    """
    if row_valid is not None:
        x = torch.where(row_valid[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    if col_valid is not None:
        y = torch.where(col_valid[..., None], y, torch.zeros((), dtype=y.dtype, device=y.device))
    if cost == "cosine":
        xn = x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
        yn = y / y.norm(dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
        half = 0.5
        return FactorisedCost(
            xn, yn,
            torch.full(x.shape[:-1], half, dtype=x.dtype, device=x.device),
            torch.full(y.shape[:-1], half, dtype=y.dtype, device=y.device),
            scale=1.0, clamp_at_zero=False,
        )
    if cost == "sqeuclidean":
        return FactorisedCost(
            x, y, (x * x).sum(-1), (y * y).sum(-1), scale=2.0, clamp_at_zero=True
        )
    raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")


def cost_matrix(x: torch.Tensor, y: torch.Tensor, cost: str = "cosine") -> torch.Tensor:
    """Cost matrix between two token sets (differentiable).

    Args:
        x: (n, d) or (B, n, d) float tensor.
        y: (m, d) or (B, m, d) float tensor, same batch and feature size as ``x``.
        cost: ``"cosine"`` for C_ij = 1 - cos(x_i, y_j) (OPTICAL), or ``"sqeuclidean"`` for
            C_ij = |x_i - y_j|^2.

    Returns:
        C of shape (n, m) or (B, n, m) in the promoted dtype of x and y (half precision inputs
        are multiplied in fp32 and rounded once).
    """
    check_choice("cost", cost, COSTS)
    check_float_tensor("x", x)
    check_float_tensor("y", y)
    if x.dim() != y.dim() or x.dim() not in (2, 3):
        raise ValueError(
            f"x and y must both be (n, d) or both (B, n, d), got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[-1] != y.shape[-1] or x.shape[:-2] != y.shape[:-2]:
        raise ValueError(
            f"x {tuple(x.shape)} and y {tuple(y.shape)} must share the batch size and d"
        )
    out_dtype = torch.promote_types(x.dtype, y.dtype)
    dtype = compute_dtype(out_dtype)
    single = x.dim() == 2
    xb, yb = (x[None], y[None]) if single else (x, y)
    c = factorise(xb.to(dtype), yb.to(dtype), cost).dense().to(out_dtype)
    return c[0] if single else c
