r"""Ground costs between two token sets, in factorised form, with their input gradients.

Both supported costs are affine in a scaled inner product of the raw embeddings:

    C_ij = r_i + c_j - s * sigma_i * tau_j * <x_i, y_j>

* ``"cosine"``:      sigma = 1/|x|, tau = 1/|y|, r = c = 1/2, s = 1  ->  C = 1 - cos(x_i, y_j)
* ``"sqeuclidean"``: sigma = tau = 1, r = |x|^2, c = |y|^2, s = 2    ->  C = |x_i - y_j|^2

A dense cost is one batched matrix product of the RAW embeddings followed by O(B n m) scaling,
so nothing of size (B, n, d) is written for the cosine normalisation. The squared Euclidean
form loses absolute precision ~ ulp * |x|^2 to cancellation (as POT's ``ot.dist``); it is
clamped at 0.

Gradient. With G = dL/dC (B, n, m), x' = sigma x and y' = tau y (the effective factors):

    cosine:       dL/dx_i = -s sigma_i (g_i - x'_i <x'_i, g_i>),   g = G y'
    sqeuclidean:  dL/dx_i = 2 x_i (G 1)_i - s (G y)_i

and symmetrically for y with G^T. A solver supplies (G y', G^T x', G 1, G^T 1).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ._validation import check_choice, check_float_tensor, compute_dtype
from .kernels.cpu_dense_cost import (
    RowUpdate,
    cost_row_gradients,
    native_dense_cost_available,
    native_row_gradients_available,
    row_norms,
    separate_rows,
)

COSTS = ("cosine", "sqeuclidean")

# Same floor as torch.nn.functional.normalize: a zero vector maps to zero.
NORM_FLOOR = 1e-12


@contextmanager
def full_fp32_products():
    """Float32 matrix products in full precision inside the block, whatever the caller set
    (``torch.set_float32_matmul_precision("high")`` / ``allow_tf32`` turn CUDA fp32 GEMMs into
    TF32: ~1e-4 on a cosine cost, ~1e-3 on the plan at eps = 0.05, since the exponent is C / eps).
    The setting is restored on exit."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@contextmanager
def exact_numerics(device: torch.device):
    """No autocast (the op picks its own compute dtype) and full-precision fp32 products."""
    with torch.autocast(device_type=device.type, enabled=False), full_fp32_products():
        yield


@dataclass
class FactorisedCost:
    """C_ij = row_offset_i + col_offset_j - scale * row_scale_i * col_scale_j * <x_i, y_j>.

    x: (B, n, d), y: (B, m, d) raw embeddings (padding zeroed); offsets and scales: (B, n)
    and (B, m).
    """

    kind: str
    x: torch.Tensor
    y: torch.Tensor
    row_offset: torch.Tensor
    col_offset: torch.Tensor
    row_scale: torch.Tensor
    col_scale: torch.Tensor
    scale: float
    unit_scales: bool = False  # row_scale and col_scale are all ones: skip them
    finite: bool = False  # known: every row with mass has finite factors (check_finite passes)

    def tile(self, rows: slice = slice(None), cols: slice = slice(None),
             out: torch.Tensor | None = None) -> torch.Tensor:
        """C[:, rows, cols]: one batched matmul (2 B n m d FLOPs) and O(B n m) scaling.

        In place on the product (written to ``out`` when given) unless autograd records it
        (``cost_matrix``).
        """
        row_offset, col_offset = self.row_offset[:, rows, None], self.col_offset[:, None, cols]
        y_t = self.y[:, cols].transpose(1, 2)
        if self.unit_scales:
            c = torch.baddbmm(col_offset, self.x[:, rows], y_t, alpha=-self.scale, out=out)
            c.add_(row_offset)
        else:
            c = torch.bmm(self.x[:, rows], y_t, out=out)
            row_scale = self.row_scale[:, rows, None] * -self.scale
            col_scale = self.col_scale[:, None, cols]
            if c.requires_grad:
                c = c * row_scale * col_scale + row_offset + col_offset
                return c.clamp_min(0.0) if self.kind == "sqeuclidean" else c
            c.mul_(row_scale).mul_(col_scale).add_(row_offset).add_(col_offset)
        return c.clamp_min_(0.0) if self.kind == "sqeuclidean" else c

    def dense(self) -> torch.Tensor:
        return self.tile()

    def with_unit_scales(self) -> FactorisedCost:
        """The same cost with x' = sigma x and y' = tau y written out and unit scales."""
        return FactorisedCost(
            self.kind, self.x * self.row_scale[..., None], self.y * self.col_scale[..., None],
            self.row_offset, self.col_offset, torch.ones_like(self.row_scale),
            torch.ones_like(self.col_scale), self.scale, unit_scales=True,
        )

    def row_updates(self, grad_loss: torch.Tensor, dtype: torch.dtype, need_x: bool,
                    need_y: bool) -> tuple[RowUpdate | None, RowUpdate | None]:
        """The chain rule's coefficients per side (None for a side not needed), in ``dtype``:
        with G = P y' (or P^T x'), z = x (or y) and mass = P 1 (or P^T 1), each problem's
        gradient row is

            dL/dz_i = alpha_i (G_i + beta_i <z_i, G_i> z_i) + gamma_i mass_i z_i,

        with w the upstream gradient of the problem's loss: cosine, alpha = -s w sigma and
        beta = -sigma^2 (dL/dz = -s w sigma (G - sigma^2 <z, G> z)); squared Euclidean,
        alpha = -s w and gamma = 2 w (dL/dz = w (2 z mass - s G)).
        """
        w = grad_loss.to(dtype)[:, None]
        sides = ((need_x, self.row_scale), (need_y, self.col_scale))
        if self.kind == "cosine":
            # A zero vector (|z| at the floor) has a constant cost row, cos = 0 whatever y: its
            # gradient is taken as 0, not the 1/NORM_FLOOR of the formula (inf in fp16).
            return tuple(
                RowUpdate(torch.where(sigma < 1.0 / NORM_FLOOR, -self.scale * w * sigma, 0.0),
                          -sigma * sigma, None) if need else None
                for need, sigma in sides)
        return tuple(RowUpdate((-self.scale * w).expand_as(sigma), None,
                               (2.0 * w).expand_as(sigma)) if need else None
                     for need, sigma in sides)

    def input_grads(self, g_y, g_x, rows, cols, grad_loss, need_x: bool, need_y: bool):
        """(dL/dx, dL/dy) from P's products g_y = P y', g_x = P^T x', rows = P 1,
        cols = P^T 1 and the upstream gradient grad_loss (B,) of the per-problem losses, taken
        in the products' dtype (a product not needed may be None): :meth:`row_updates`.

        g_y and g_x are the solver's own buffers: the gradients are formed in them, in place.
        """
        dtype = (g_y if g_y is not None else g_x).dtype
        x_update, y_update = self.row_updates(grad_loss, dtype, need_x, need_y)
        return (_update_rows(self.x, g_y, x_update, rows) if need_x else None,
                _update_rows(self.y, g_x, y_update, cols) if need_y else None)

    def finite_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n) and (B, m) masks of the embeddings with no NaN or inf entry.

        Read off the factors (a NaN or inf entry makes the norm NaN or inf), so it costs
        O(B (n + m)) instead of a pass over the embeddings.
        """
        if self.kind == "cosine":  # 1/|x| is NaN for NaN entries, 0 for inf entries
            return tuple(torch.isfinite(z) & (z > 0) for z in (self.row_scale, self.col_scale))
        return torch.isfinite(self.row_offset), torch.isfinite(self.col_offset)

    def check_finite(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Raise unless the embeddings are finite at every token with mass (a_i > 0, b_j > 0);
        one host sync for both sides (a second one only to word an error), none when the
        factorisation already knows (``finite``)."""
        if self.finite:
            return
        finite_x, finite_y = self.finite_rows()
        bad_x, bad_y = ~finite_x & (a > 0), ~finite_y & (b > 0)
        found = torch.stack([bad_x.any(), bad_y.any()]).tolist()
        for name, z, bad, is_bad in zip(("student", "teacher"), (self.x, self.y),
                                        (bad_x, bad_y), found):
            if not is_bad:
                continue
            if bool(torch.isfinite(z[bad]).all()):
                raise ValueError(
                    f"{name} has finite tokens whose squared norm overflows {z.dtype} (|x| > "
                    f"{torch.finfo(z.dtype).max ** 0.5:.2g}): scale the embeddings down or "
                    "pass float64")
            raise ValueError(f"{name} contains NaN or inf at unmasked positions")


def _update_rows(z: torch.Tensor, g: torch.Tensor, update: RowUpdate,
                 mass: torch.Tensor) -> torch.Tensor:
    """g_i <- alpha_i (g_i + beta_i <z_i, g_i> z_i) + gamma_i mass_i z_i in place, for rows
    z_i, g_i of z, g (B, n, d), the ``update``'s coefficients and the plan marginal ``mass``
    (B, n) (beta or gamma None: 0). alpha multiplies beta's term last: for the cosine cost
    alpha beta would reach s w sigma^3 and overflow near the norm floor. On the CPU one native
    pass, each row in L1 between its dot and its update (benchmarks/NOTES.md, O19), that skips
    the rows whose ``mass`` is 0 (their g and update are 0: O27); the PyTorch ops update them
    too, to 0."""
    alpha, beta, gamma = update
    gamma = None if gamma is None else gamma * mass
    if g.dim() == 3 and separate_rows(g) and native_row_gradients_available(z, g):
        return cost_row_gradients(z, g, alpha, beta, gamma, mass)
    along = 0 if beta is None else alpha * (beta * _row_dots(z, g))
    along = along if gamma is None else along + gamma
    return g.mul_(alpha[..., None]).addcmul_(z, along[..., None])


ROW_DOT_BLOCK = 1 << 16  # entries per block of _row_dots: a 256 KB float32 temporary


def _row_dots(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """<z_i, g_i> over the last dim, (..., d) -> (...) in the promoted dtype, as a multiply
    and a sum over blocks of :data:`ROW_DOT_BLOCK` entries: one ``(z * g).sum(-1)`` would write
    a temporary the size of z (fresh pages cost ~2.6 us each here), a batch of 1 x d x 1
    products pays a matrix-product call per row (benchmarks/NOTES.md, O11)."""
    shape, d = z.shape[:-1], z.shape[-1]
    z, g = z.reshape(-1, d), g.reshape(-1, d)
    out = torch.empty(z.shape[0], dtype=torch.promote_types(z.dtype, g.dtype), device=z.device)
    rows = max(1, ROW_DOT_BLOCK // d)
    for start in range(0, z.shape[0], rows):
        block = slice(start, start + rows)
        torch.sum(z[block] * g[block], dim=-1, out=out[block])
    return out.view(shape)


def _row_norms(z: torch.Tensor, valid: torch.Tensor | None, sync_ok: bool):
    """(z, |z_i|, safe): |z_i| in the compute dtype, rows outside ``valid`` zeroed when one of
    them is not finite; ``safe``: every row in ``valid`` is known to have a finite norm and
    squared norm (False: not known).

    Padding with finite values needs no copy: it carries no mass, so its cost entries are
    replaced downstream and its gradient rows are zero. NaN or inf padding would poison the
    products, so those rows are zeroed: after one host sync to know whether any is, or, when
    ``sync_ok`` is False, always (a copy of z, no sync). On the CPU, outside autograd, one
    native pass gives the norms and both answers.
    """
    recorded = z.requires_grad and torch.is_grad_enabled()  # cost_matrix differentiates
    if sync_ok and not recorded and z.shape[-1] > 0 and native_dense_cost_available(z):
        norm, padding_not_finite, valid_not_safe = row_norms(z, valid)
        safe = not valid_not_safe
    else:
        norm = torch.linalg.vector_norm(z, dim=-1, dtype=compute_dtype(z.dtype))
        padding_not_finite = valid is not None and (
            not sync_ok or bool((~torch.isfinite(norm) & ~valid).any()))
        safe = False
    if valid is not None and padding_not_finite:
        z = torch.where(valid[..., None], z, torch.zeros((), dtype=z.dtype, device=z.device))
        norm = torch.where(valid, norm, torch.zeros((), dtype=norm.dtype, device=norm.device))
    return z, norm, safe


def factorise(
    x: torch.Tensor,
    y: torch.Tensor,
    cost: str,
    row_valid: torch.Tensor | None = None,
    col_valid: torch.Tensor | None = None,
    sync_ok: bool = True,
) -> FactorisedCost:
    """Factors of ``cost`` between x (B, n, d) and y (B, m, d).

    x and y are kept in their dtype (the PyTorch solvers cast them to the compute dtype first,
    the Triton kernels read half precision as it is); offsets and scales are in the compute
    dtype. ``row_valid``/``col_valid`` (B, n)/(B, m) mark the tokens with mass; the others may
    hold anything, NaN included (see :func:`_row_norms`; ``sync_ok=False``: no host sync).
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    x, norm_x, safe_x = _row_norms(x, row_valid, sync_ok)
    y, norm_y, safe_y = _row_norms(y, col_valid, sync_ok)
    if cost == "cosine":
        return FactorisedCost(
            "cosine", x, y, torch.full_like(norm_x, 0.5), torch.full_like(norm_y, 0.5),
            norm_x.clamp_min(NORM_FLOOR).reciprocal(), norm_y.clamp_min(NORM_FLOOR).reciprocal(),
            scale=1.0, finite=safe_x and safe_y,
        )
    return FactorisedCost(
        "sqeuclidean", x, y, norm_x * norm_x, norm_y * norm_y, torch.ones_like(norm_x),
        torch.ones_like(norm_y), scale=2.0, finite=safe_x and safe_y,
    )


def cost_matrix(x: torch.Tensor, y: torch.Tensor, cost: str = "cosine") -> torch.Tensor:
    """Cost matrix between two token sets (differentiable with autograd).

    Args:
        x: (n, d) or (B, n, d) float tensor.
        y: (m, d) or (B, m, d) float tensor, same batch and feature size as ``x``.
        cost: ``"cosine"`` for C_ij = 1 - cos(x_i, y_j) (OPTICAL), or ``"sqeuclidean"`` for
            C_ij = |x_i - y_j|^2.

    Returns:
        C of shape (n, m) or (B, n, m) in the promoted dtype of x and y (half precision inputs
        are multiplied in fp32 and rounded once; inside autocast too).
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
    with exact_numerics(x.device):
        c = factorise(xb.to(dtype), yb.to(dtype), cost).dense().to(out_dtype)
    return c[0] if single else c
