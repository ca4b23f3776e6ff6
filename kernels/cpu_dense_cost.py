"""Launchers for the native CPU dense cost, its plan's products and its chain rule
(``kernels/csrc/dense_cost_cpu.cpp``).

The extension is optional: when it was not built (no C++ compiler at install time) the solver
forms the cost with a batched matrix product and masks it with PyTorch ops instead
(:func:`optical_ops.softmin_dense.sanitised_cost_range`), the plan's products are batched
matrix products, and the gradient's row update runs as
PyTorch ops (:meth:`optical_ops.costs.FactorisedCost.input_grads`), with the same results up to
round-off.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._native import EXP_RANGE, check_buffers, load, runs_on

_dense_cost_cpu = load("_dense_cost_cpu")  # None when not built: callers use PyTorch ops


class RowUpdate(NamedTuple):
    """The cost's chain-rule coefficients (B, n) for one side of the row update
    g_i <- alpha_i (g_i + beta_i <z_i, g_i> z_i) + gamma_i mass_i z_i (beta or gamma None: 0;
    ``optical_ops.costs.FactorisedCost.row_updates``)."""

    alpha: torch.Tensor
    beta: torch.Tensor | None
    gamma: torch.Tensor | None


def native_dense_cost_available(x: torch.Tensor) -> bool:
    return runs_on(_dense_cost_cpu, x)


def _has_contiguous_rows(z: torch.Tensor) -> bool:
    """z (B, n, d) has contiguous rows (a batch stride of its own is fine)."""
    return z.stride(2) == 1 and z.stride(1) == z.shape[2]


def _rows_contiguous(z: torch.Tensor) -> torch.Tensor:
    """z (B, n, d) with contiguous rows: itself, or a contiguous copy."""
    return z if _has_contiguous_rows(z) else z.contiguous()


def dense_cost(
    x: torch.Tensor,
    y: torch.Tensor,
    row_offset: torch.Tensor,
    col_offset: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float,
    clamp: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C, lo, hi): C_ij = r_i + c_j - scale sigma_i tau_j <x_i, y_j> (clamped at 0 with
    ``clamp``) on the pairs with a_i > 0 and b_j > 0, lo and hi (B,) its minimum and maximum
    there, and lo at every other pair. Rows past a problem's last row (column) with mass are
    never multiplied.

    x: (B, n, d), y: (B, m, d); row_offset, row_scale, a: (B, n); col_offset, col_scale, b:
    (B, m); one float dtype, CPU.
    """
    if not native_dense_cost_available(x):
        raise RuntimeError("the native CPU dense cost is not available for this tensor")
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(f"x and y must be (B, n, d) and (B, m, d), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    batch, n, d = x.shape
    m = y.shape[1]
    factors = (("row_offset", row_offset, (batch, n)), ("col_offset", col_offset, (batch, m)),
               ("row_scale", row_scale, (batch, n)), ("col_scale", col_scale, (batch, m)),
               ("a", a, (batch, n)), ("b", b, (batch, m)))
    check_buffers(x, (("y", y, (batch, m, d)), *factors))
    x, y = _rows_contiguous(x), _rows_contiguous(y)
    factors = [t.contiguous() for _, t, _ in factors]
    out = x.new_empty(batch, n, m)
    lo, hi = x.new_empty(batch), x.new_empty(batch)
    _dense_cost_cpu.dense_cost(
        x.data_ptr(), y.data_ptr(), x.stride(0), y.stride(0), *(t.data_ptr() for t in factors),
        float(scale), clamp, batch, n, m, d, out.data_ptr(), lo.data_ptr(), hi.data_ptr(),
        x.dtype == torch.float64, torch.get_num_threads(),
    )
    return out, lo, hi


def native_row_gradients_available(z: torch.Tensor, g: torch.Tensor) -> bool:
    """The native row update takes z and g: one float dtype on the CPU, g (B, n, d) with
    contiguous rows that no two problems share (else :func:`cost_row_gradients` refuses it)."""
    return runs_on(_dense_cost_cpu, g) and z.dtype == g.dtype and z.device == g.device


def separate_rows(g: torch.Tensor) -> bool:
    """g (B, n, d) has contiguous rows and its problems do not overlap (it is written)."""
    batch, n, d = g.shape
    return _has_contiguous_rows(g) and (batch == 1 or g.stride(0) >= n * d)


def cost_row_gradients(z: torch.Tensor, g: torch.Tensor, alpha: torch.Tensor,
                       beta: torch.Tensor | None, gamma: torch.Tensor | None,
                       mass: torch.Tensor | None = None) -> torch.Tensor:
    """g_i <- alpha_i (g_i + beta_i <z_i, g_i> z_i) + gamma_i z_i for every row, in place;
    ``beta`` or ``gamma`` None: 0 (no dot product without beta). With ``mass`` (the plan's
    marginal on this side), rows where it is 0 are left as they are: their plan row is 0, so
    g_i is, and so is the update (z finite there).

    z, g: (B, n, d) with contiguous rows (g the solver's own product buffer); alpha, beta,
    gamma, mass: (B, n); one float dtype, CPU. Returns g.
    """
    if not native_row_gradients_available(z, g):
        raise RuntimeError("the native CPU row gradients are not available for these tensors")
    if z.dim() != 3 or z.shape != g.shape or not separate_rows(g):
        raise ValueError(f"z and g must be (B, n, d) of one shape, g with contiguous rows that "
                         f"no two problems share; got {tuple(z.shape)} and {tuple(g.shape)}")
    batch, n, d = g.shape
    z = _rows_contiguous(z)
    if alpha is None:
        raise ValueError("alpha is required")
    names = ("alpha", "beta", "gamma", "mass")
    given = [(name, t, (batch, n)) for name, t in zip(names, (alpha, beta, gamma, mass))
             if t is not None]
    check_buffers(g, given)
    coefficients = {name: t.contiguous() for name, t, _ in given}  # alive through the call
    addresses = [coefficients[name].data_ptr() if name in coefficients else 0 for name in names]
    _dense_cost_cpu.cost_row_gradients(
        z.data_ptr(), z.stride(0), g.data_ptr(), g.stride(0), *addresses, batch, n, d,
        g.dtype == torch.float64, torch.get_num_threads(),
    )
    return g


def plan_products(
    matrix: torch.Tensor,
    row_factor: torch.Tensor | None,
    col_factor: torch.Tensor | None,
    x: torch.Tensor | None,
    x_scale: torch.Tensor | None,
    y: torch.Tensor | None,
    y_scale: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    log_scale: float | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(P y', P^T x', P 1, P^T 1) for the plan P_ij = r_i M_ij c_j, or with ``log_scale`` k
    P_ij = exp(r_i + c_j + k M_ij) (exponents below :data:`EXP_RANGE`'s floor give 0, above
    its ceiling are capped), y'_j = ys_j y_j and x'_i = xs_i x_i, reading only the block up
    to each problem's last row and column with a_i > 0, b_j > 0 (the plan must be 0 past it,
    as every primitive's is); a product whose embeddings are None is not formed.

    matrix: (B, n, m); row_factor, x_scale, a: (B, n); col_factor, y_scale, b: (B, m) (a factor
    or scale None: 1; both factors given with ``log_scale``); x (B, n, d), y (B, m, d); one
    float dtype, CPU.
    """
    if x is None and y is None:
        raise ValueError("plan_products: x or y must be given")
    return _products(matrix, row_factor, col_factor, x, x_scale, y, y_scale, a, b, log_scale,
                     y is not None, x is not None, None, None)


def plan_gradients(
    matrix: torch.Tensor,
    row_factor: torch.Tensor | None,
    col_factor: torch.Tensor | None,
    x: torch.Tensor,
    x_scale: torch.Tensor | None,
    y: torch.Tensor,
    y_scale: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    log_scale: float | None,
    x_update: RowUpdate | None,
    y_update: RowUpdate | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dy): :func:`plan_products`' P y' and P^T x' turned into gradients by the chain
    rule's row update inside the same pass, while each problem is in cache: for an update
    (alpha, beta, gamma) of (B, n) coefficients (beta, gamma None: 0)

        dx_i = alpha_i ((P y')_i + beta_i <x_i, (P y')_i> x_i) + gamma_i (P 1)_i x_i

    on the rows with plan mass (the others 0), and dy likewise from P^T x', y and P^T 1 with
    ``y_update`` ((B, m) coefficients). A side whose update is None is not formed.
    """
    if x is None or y is None or (x_update is None and y_update is None):
        raise ValueError("plan_gradients: x and y must be given, and an update for one side")
    p_y, p_x, _, _ = _products(matrix, row_factor, col_factor, x, x_scale, y, y_scale, a, b,
                               log_scale, x_update is not None, y_update is not None, x_update,
                               y_update)
    return p_y, p_x


def _products(matrix, row_factor, col_factor, x, x_scale, y, y_scale, a, b, log_scale,
              form_p_y: bool, form_p_x: bool, x_update: RowUpdate | None,
              y_update: RowUpdate | None):
    if not native_dense_cost_available(matrix):
        raise RuntimeError("the native CPU plan products are not available for this tensor")
    if matrix.dim() != 3:
        raise ValueError(f"matrix must be (B, n, m), got shape {tuple(matrix.shape)}")
    if log_scale is not None and (row_factor is None or col_factor is None):
        raise ValueError("the log form (log_scale) takes both row_factor and col_factor")
    batch, n, m = matrix.shape
    d = (x if y is None else y).shape[-1]
    coefficients = []
    for side, update, length in (("x", x_update, n), ("y", y_update, m)):
        if update is not None:
            if update[0] is None:
                raise ValueError(f"{side}_update needs alpha")
            coefficients += [(f"{side}_{part}", t, (batch, length))
                             for part, t in zip(("alpha", "beta", "gamma"), update)]
    given = [(name, t, shape) for name, t, shape in (
        ("row_factor", row_factor, (batch, n)), ("col_factor", col_factor, (batch, m)),
        ("x", x, (batch, n, d)), ("x_scale", x_scale, (batch, n)), ("y", y, (batch, m, d)),
        ("y_scale", y_scale, (batch, m)), ("a", a, (batch, n)), ("b", b, (batch, m)),
        *coefficients) if t is not None]
    check_buffers(matrix, given)
    operands = {name: (_rows_contiguous(t) if name in ("x", "y") else t.contiguous())
                for name, t, _ in given}  # alive through the call
    matrix = matrix.contiguous()
    p_y = matrix.new_empty(batch, n, d) if form_p_y else None
    p_x = matrix.new_empty(batch, m, d) if form_p_x else None
    rows, cols = matrix.new_empty(batch, n), matrix.new_empty(batch, m)

    def address(t):
        return 0 if t is None else t.data_ptr()

    _dense_cost_cpu.plan_products(
        matrix.data_ptr(), *(address(operands.get(name)) for name in (
            "row_factor", "col_factor", "x", "x_scale", "y", "y_scale", "a", "b")),
        0 if x is None else operands["x"].stride(0), 0 if y is None else operands["y"].stride(0),
        address(p_y), address(p_x), rows.data_ptr(), cols.data_ptr(),
        *(address(operands.get(f"{side}_{part}")) for side in "xy"
          for part in ("alpha", "beta", "gamma")),
        batch, n, m, d, log_scale is not None, float(log_scale or 0.0), *EXP_RANGE[matrix.dtype],
        matrix.dtype == torch.float64, torch.get_num_threads(),
    )
    return p_y, p_x, rows, cols


def row_norms(z: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, bool, bool]:
    """(|z_i| (B, n), padding_not_finite, valid_not_safe) for z (B, n, d) with contiguous rows:
    whether a row outside ``valid`` (B, n) bool (None: none is) has a non-finite norm, and
    whether a row inside it has a norm whose square is not finite. One float dtype, CPU."""
    if not native_dense_cost_available(z):
        raise RuntimeError("the native CPU row norms are not available for this tensor")
    if z.dim() != 3:
        raise ValueError(f"z must be (B, n, d), got shape {tuple(z.shape)}")
    batch, n, d = z.shape
    if valid is not None and (valid.dtype != torch.bool or tuple(valid.shape) != (batch, n)):
        raise ValueError(f"valid must be a bool tensor of shape {(batch, n)}")
    z = _rows_contiguous(z)
    valid = None if valid is None else valid.contiguous()
    out = z.new_empty(batch, n)
    padding, inside = _dense_cost_cpu.row_norms(
        z.data_ptr(), z.stride(0), 0 if valid is None else valid.data_ptr(), out.data_ptr(),
        batch, n, d, z.dtype == torch.float64, torch.get_num_threads())
    return out, padding, inside


def extents(weights: torch.Tensor) -> list[int]:
    """One past the last index with positive weight, per row of ``weights`` (B, n): float32 or
    float64, CPU."""
    if not native_dense_cost_available(weights) or weights.dim() != 2:
        raise ValueError("extents takes (B, n) float32 or float64 CPU weights")
    weights = weights.contiguous()
    return _dense_cost_cpu.extents(weights.data_ptr(), weights.shape[0], weights.shape[1],
                                   weights.dtype == torch.float64)
