"""Launcher for the native log-sum-exp passes of the streaming soft-min
(``kernels/csrc/streaming_softmin_cpu.cpp``).

Optional like the scaling loop (:mod:`.cpu_scaling`): when the extension was not built, the
streaming primitive runs its log-sum-exp with PyTorch ops instead, with the same result.
"""

from __future__ import annotations

import torch

from ._native import check_buffers, load, runs_on

_streaming_cpu = load("_streaming_cpu")  # None when not built: callers fall back to PyTorch ops

# Limits of one strip (the native side keeps per-row and per-column scratch on the stack).
MAX_STRIP_ROWS = 256
MAX_TILE_WIDTH = 1024

# (tile rows, tile columns) of the fused float32 sweep, None where this machine or build has none.
# (A build from before the fused sweep has no fused_info: the strips then run every sweep.)
FUSED_TILE = getattr(_streaming_cpu, "fused_info", lambda: None)()


def native_streaming_available(x: torch.Tensor) -> bool:
    return runs_on(_streaming_cpu, x)


def _check_buffers(name: str, first: str, z: torch.Tensor, same: list[torch.Tensor],
                   double: list[torch.Tensor]) -> None:
    """z (called ``first``) and ``same`` contiguous CPU tensors of one float dtype, ``double``
    of float64."""
    groups = (([z, *same], z.dtype, f"{first}'s dtype"), (double, torch.float64, "float64"))
    for group, dtype, what in groups:
        if not all(t.is_contiguous() and t.dtype == dtype and t.device.type == "cpu"
                   for t in group):
            raise ValueError(f"{name}: every buffer must be a contiguous CPU tensor of {what}")


def strip_softmin(
    z: torch.Tensor,
    m: int,
    hc: torch.Tensor,
    log_w: torch.Tensor,
    offset: torch.Tensor,
    f: torch.Tensor,
    r0: int,
    eps: float,
    damping: float,
    col_state: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    r"""Row soft-min of one strip into ``f``, and optionally its fold into the column state.

    z: (B, T, R, W) contiguous, Z_ij = (s / eps) <x'_i, y'_j> of rows r0 .. r0 + R, columns
    j = t W + w (only j < m is read). hc: (B, m) = log b + (g - c) / eps. log_w, offset, f:
    (B, n), the strip's own weights, offsets r and output rows:

        f_i = damping (r_i - eps LSE_j(hc_j + Z_ij))

    col_state: ``(M, S)``, each (B, T W), M of z's dtype and S float64 (sums of up to n terms
    run in double), updated in place so that after every strip has been folded
    LSE_i(log w_i + (f_i - r_i) / eps + Z_ij) = M_j + log S_j (start from -inf and 0).
    """
    batch, tiles, rows, width = z.shape
    _check_buffers("strip_softmin", "z", z, [hc, log_w, offset, f, *(col_state or ())[:1]],
                   list(col_state or ())[1:])
    if col_state is not None and any(t.shape != (batch, tiles * width) for t in col_state):
        shape = (batch, tiles * width)
        raise ValueError(f"strip_softmin: the column state must be of shape {shape}")
    cmax, csum = col_state if col_state is not None else (z, z)  # unread without a fold
    _streaming_cpu.strip_softmin(
        z.data_ptr(), hc.data_ptr(), log_w.data_ptr(), offset.data_ptr(), f.data_ptr(),
        cmax.data_ptr(), csum.data_ptr(), batch, tiles, rows, width, m, f.shape[1], r0,
        eps, damping, col_state is not None, z.dtype == torch.float64, torch.get_num_threads(),
    )


def strip_plan(
    z: torch.Tensor,
    m: int,
    hr: torch.Tensor,
    hc: torch.Tensor,
    rowsum: torch.Tensor,
    colsum: torch.Tensor,
    pz: torch.Tensor,
    r0: int,
) -> None:
    r"""The plan of one strip, in place of ``z``, with its sums.

    z: (B, T, R, W) as in :func:`strip_softmin`; hr: (B, n) = log a + (f - r) / eps;
    hc: (B, m) = log b + (g - c) / eps. Writes P_ij = exp(hr_i + hc_j + Z_ij) over z (columns
    j < m), rowsum[:, r0:r0 + R] = P 1 and pz[:, r0:r0 + R] = sum_j P_ij Z_ij (rowsum, pz: (B, n));
    adds P^T 1 to colsum (B, T W), float64.
    """
    batch, tiles, rows, width = z.shape
    _check_buffers("strip_plan", "z", z, [hr, hc, rowsum, pz], [colsum])
    if colsum.shape != (batch, tiles * width):
        raise ValueError(f"strip_plan: colsum must be of shape {(batch, tiles * width)}")
    _streaming_cpu.strip_plan(
        z.data_ptr(), hr.data_ptr(), hc.data_ptr(), rowsum.data_ptr(), colsum.data_ptr(),
        pz.data_ptr(), batch, tiles, rows, width, m, hr.shape[1], r0,
        z.dtype == torch.float64, torch.get_num_threads(),
    )


def fused_softmin(
    lhs: torch.Tensor,
    ypack: torch.Tensor,
    m: int,
    hc: torch.Tensor,
    log_w: torch.Tensor,
    offset: torch.Tensor,
    f: torch.Tensor,
    eps: float,
    damping: float,
    col_state: tuple[torch.Tensor, torch.Tensor],
    strip_rows: int,
) -> bool:
    r"""The row soft-min and its fold into the next column update, as :func:`strip_softmin` with a
    column state, in one fused float32 pass that forms the product itself.

    lhs: (B, n, d) = (s / eps) x'; ypack: (B, T, d, N), y' zero-padded to T N >= m columns and
    packed by tiles of N = ``FUSED_TILE[1]`` columns; hc, log_w, offset, f, eps, damping as in
    :func:`strip_softmin`;
    col_state: (M, S), each (B, T N), float32 and float64, overwritten (not accumulated).
    strip_rows: rows formed per pass, a multiple of ``FUSED_TILE[0]``. Returns False when a row
    or column sum fell out of the range its single exp covers (small eps, far-off potentials)
    or a problem has no row or no column mass: the outputs are then unusable and the caller
    runs :func:`strip_softmin` instead.
    """
    batch, n, d = lhs.shape
    tiles = ypack.shape[1]
    cmax, csum = col_state
    width = tiles * FUSED_TILE[1]
    if lhs.dtype != torch.float32:
        raise ValueError(f"fused_softmin: lhs must be float32, got {lhs.dtype}")
    check_buffers(lhs, (("ypack", ypack, (batch, tiles, d, FUSED_TILE[1])), ("hc", hc, (batch, m)),
                        ("log_w", log_w, (batch, n)), ("offset", offset, (batch, n)),
                        ("f", f, (batch, n)), ("col_state[0]", cmax, (batch, width))))
    if csum.shape != (batch, width):
        raise ValueError(f"fused_softmin: col_state[1] must be of shape {(batch, width)}")
    _check_buffers("fused_softmin", "lhs", lhs, [ypack, hc, log_w, offset, f, cmax], [csum])
    return _streaming_cpu.fused_softmin(
        lhs.data_ptr(), ypack.data_ptr(), hc.data_ptr(), log_w.data_ptr(), offset.data_ptr(),
        f.data_ptr(), cmax.data_ptr(), csum.data_ptr(), batch, n, m, d, tiles, strip_rows,
        eps, damping, torch.get_num_threads(),
    )
