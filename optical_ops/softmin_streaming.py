r"""Streaming soft-min: the cost is never stored; it is recomputed from its factors in chunks.

With the factorised cost C_ij = r_i + c_j - s <x'_i, y'_j> (:mod:`.costs`; the scaled factors
x' = sigma x and y' = tau y are written out once, O((n + m) d)), the row update is

    f_i = r_i - eps * LSE_j( log b_j + (g_j - c_j) / eps + (s / eps) <x'_i, y'_j> )

A chunk of rows costs one ``baddbmm`` (2 B rows m d FLOPs) into a reused (B, rows, m) scratch
buffer and an in-place log-sum-exp over it (max, subtract-and-exp, sum: three passes over the
chunk, B rows m exps); the column update is the same with the roles swapped.
Memory: O(B (n + m) d) plus two chunks, allocated once per solve (fresh pages are expensive).

On the CPU with the native extension (:mod:`optical_ops.kernels.cpu_streaming`) a row strip of
the product is computed as (B, T, R, W) column tiles by one broadcast ``matmul`` (W-wide
tiles keep the thin K = d GEMM near the machine's peak) and the log-sum-exp runs in one native
call per strip, vectorised exp included. That call also folds the fresh rows f_i into the
*next* column update (a running maximum and rescaled sum per column), so ``iterate`` computes
the product once per iteration instead of once per half-iteration:

    g^1 = cols(f^0);  (f^k, g^{k+1}) = sweep(g^k) for k < n;  f^n = rows(g^n)

n + 1 products for n iterations instead of 2n; the same iterates up to the order of the sums.
In float32 on x86-64-v4 CPUs a sweep runs fused instead (:func:`fused_softmin`): the product
formed by a register-tiled kernel of its own into a strip that stays in L2, and one exp per
entry for both updates, E_ij = exp(Z_ij - max_j Z_ij), which leaves the potentials to per-row
and per-column weights. Its range is narrower (every row and column needs a term within the exp
floor of those shifts: cosine costs at eps >= ~0.01 pass), so each sum is checked, and a sweep
that fails is redone by the strips, which the solve then keeps (benchmarks/NOTES.md, O36).
A strip's plan needs only that strip's fresh rows, so when the last iterate is the final state
(``tol`` None: :meth:`SoftMin.prepare_final`) the last row update also forms the plan's sums
(the loss) and, for the sides the backward will want, P y' and P^T x': n + 1 products in all,
and a backward that forms none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .costs import FactorisedCost
from .kernels.cpu_streaming import (
    FUSED_TILE,
    MAX_STRIP_ROWS,
    MAX_TILE_WIDTH,
    fused_softmin,
    native_streaming_available,
    strip_plan,
    strip_softmin,
)
from .logsumexp import logsumexp_
from .sinkhorn_loop import SoftMin

# Bytes of one (B, rows, m) chunk. The log-sum-exp passes are compute-bound and L3 feeds them,
# while the strip's GEMM (M = rows, K = d) runs faster the more rows it has: measured on 2
# cores, 16 MiB sweeps 8-35 % faster than the 2 MiB that stays in L2 (benchmarks/NOTES.md, O35).
DEFAULT_CHUNK_BYTES = 16 * 2**20

# Column tile of the native path: a GEMM output tile (R, W) and one strip row's tile stay in
# L1/L2 while the passes read them (measured on W5: W = 512 at R = 32-64 ran the d = 64 GEMM at
# ~160 GFLOP/s, full-width 32-row chunks at ~110).
NATIVE_TILE_WIDTH = 512

# Rows of the fused sweep's per-thread strip (the product's exps, read back for the column
# sums): as many as fit in 256 KiB of L2 beside the packed tiles of y' streaming through, but
# at least two tiles' (each strip streams all of y'), and at most 96 (a strip is one thread's
# unit of work: small problems still split). Measured in benchmarks/NOTES.md, O36.
FUSED_STRIP_BYTES = 256 * 2**10
FUSED_MAX_ROWS = 96


def _fused_rows(width: int) -> int:
    """Rows of a fused sweep's strip against ``width`` padded columns (FUSED_STRIP_BYTES)."""
    tile_rows = FUSED_TILE[0]
    rows = FUSED_STRIP_BYTES // (4 * width) // tile_rows * tile_rows
    return min(FUSED_MAX_ROWS, max(2 * tile_rows, rows))


class _NativeSide:
    """One direction of the native soft-min: rows of ``own`` against the columns of ``other``.

    lhs: own * (s / eps), (B, n, d); tiles: other zero-padded to T W rows, (B, T, d, W).
    Sweeps with a fold run fused where they can (float32, :data:`FUSED_TILE`) until one falls
    out of the fused sweep's range: :meth:`fused_pack`.
    """

    def __init__(self, own: torch.Tensor, other: torch.Tensor, alpha: float, chunk_bytes: int):
        batch, m = other.shape[:2]
        self.m, self.width = m, min(m, NATIVE_TILE_WIDTH, MAX_TILE_WIDTH)
        self.tiles = self._pack(other, self.width)
        self.lhs = (own * alpha).unsqueeze(1)
        per_row = batch * self.tiles.shape[1] * self.width * own.element_size()
        self.rows = max(1, min(MAX_STRIP_ROWS, own.shape[1], chunk_bytes // per_row))
        self.z = own.new_empty(batch, self.tiles.shape[1], self.rows, self.width)
        fused = FUSED_TILE is not None and own.dtype == torch.float32
        self._other, self._packed = (other if fused else None), None

    @staticmethod
    def _pack(other: torch.Tensor, width: int) -> torch.Tensor:
        """other (B, m, d) zero-padded to T width rows, as (B, T, d, width) tiles (a view)."""
        batch, m, d = other.shape
        tiles = -(-m // width)
        padded = other.new_zeros(batch, tiles * width, d)
        padded[:, :m] = other
        return padded.view(batch, tiles, width, d).transpose(2, 3)

    def fused_pack(self) -> torch.Tensor | None:
        """other for the fused sweep, (B, T', d, N) by tiles of N = FUSED_TILE[1] columns (built
        on first use), or None where the fused sweep does not run."""
        if self._packed is None and self._other is not None:
            self._packed = self._pack(self._other, FUSED_TILE[1]).contiguous()
        return self._packed

    def stop_fusing(self) -> None:
        self._other = self._packed = None

    def softmin(self, hc, log_w, offset, eps, damping, fold: bool):
        """f (B, n) = damping (offset - eps LSE_j(hc_j + Z_ij)); with ``fold`` also the column
        state (M, S) of the next update (see :func:`strip_softmin`)."""
        batch, n = offset.shape
        f = torch.empty_like(offset)
        packed = self.fused_pack() if fold else None
        if packed is not None:
            width = packed.shape[1] * FUSED_TILE[1]
            state = (offset.new_empty(batch, width),
                     offset.new_empty(batch, width, dtype=torch.float64))
            if fused_softmin(self.lhs[:, 0], packed, self.m, hc, log_w, offset, f, eps,
                             damping, state, _fused_rows(width)):
                return f, state
            self.stop_fusing()  # out of its range at this eps: the strips from here on
        state = None
        if fold:
            width = self.tiles.shape[1] * self.width
            state = (offset.new_full((batch, width), float("-inf")),
                     offset.new_zeros(batch, width, dtype=torch.float64))
        for r0, z in self._strips(n):
            strip_softmin(z, self.m, hc, log_w, offset, f, r0, eps, damping, state)
        return f, state

    def plan(self, hr, hc, visit=None, before=None):
        """(P 1 (B, n), P^T 1 (B, m), sum_ij P_ij Z_ij (B,)) at hr = log a + (f - r) / eps,
        hc = log b + (g - c) / eps (see :func:`strip_plan`); ``visit(r0, P strip (B, T, R, W))``
        is called on each strip of the plan while it is in cache, ``before(r0, Z strip)`` on
        each strip of Z before the plan overwrites it (it may fill that strip's rows of hr)."""
        batch, n = hr.shape
        rowsum, pz = torch.empty_like(hr), torch.empty_like(hr)
        colsum = hr.new_zeros(batch, self.tiles.shape[1] * self.width, dtype=torch.float64)
        for r0, z in self._strips(n):
            if before is not None:
                before(r0, z)
            strip_plan(z, self.m, hr, hc, rowsum, colsum, pz, r0)
            if visit is not None:
                visit(r0, z)
        return rowsum, colsum[:, : self.m].to(hr.dtype), pz.sum(1)

    def softmin_and_plan(self, hc, log_w, offset, eps, damping, visit=None):
        """f as :meth:`softmin` (without the fold), and :meth:`plan` at that f, from the same
        strips: a strip's plan needs only its own fresh rows, so the last row update and the
        plan share one product. Returns (f, (P 1, P^T 1, <P, Z>))."""
        f, hr = torch.empty_like(offset), torch.empty_like(offset)

        def row_update(r0, z):
            strip_softmin(z, self.m, hc, log_w, offset, f, r0, eps, damping, None)
            rows = slice(r0, r0 + z.shape[2])
            hr[:, rows] = log_w[:, rows] + (f[:, rows] - offset[:, rows]) / eps

        return f, self.plan(hr, hc, visit, before=row_update)

    def _strips(self, n: int):
        """Yield (r0, Z strip) with Z = lhs[rows] @ tiles, in the reused buffer."""
        for r0 in range(0, n, self.rows):
            rows = min(self.rows, n - r0)
            z = self.z if rows == self.rows else self.z[:, :, :rows].contiguous()
            torch.matmul(self.lhs[:, :, r0:r0 + rows], self.tiles, out=z)
            yield r0, z


def _identity(t: torch.Tensor) -> tuple:
    """What makes a tensor the same values as another: memory, shape, strides and version (the
    count of in-place writes)."""
    return t.data_ptr(), t.shape, t.stride(), t._version


@dataclass
class _LastSweep:
    """What the native path's last row update formed at its state (f, g): the plan's sums
    P 1, P^T 1, <P, Z> and, when the backward will want them, P y' and P^T x'. f and g are held
    so that their memory stays theirs; ``state`` is their identity at the sweep."""

    f: torch.Tensor
    g: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    pz: torch.Tensor
    p_y: torch.Tensor | None = None
    p_x: torch.Tensor | None = None

    def __post_init__(self):
        self.state = _identity(self.f), _identity(self.g)

    def at(self, f: torch.Tensor, g: torch.Tensor) -> bool:
        return (_identity(f), _identity(g)) == self.state


class StreamingSoftMin(SoftMin):
    """Log-domain updates that recompute the cost from its factors. States: f (B, n), g (B, m)."""

    def __init__(self, fc: FactorisedCost, a: torch.Tensor, b: torch.Tensor, eps: float,
                 damping: float = 1.0, chunk_bytes: int | None = None):
        self.fc, self.eps, self.damping = fc.with_unit_scales(), eps, damping
        self.a, self.b = a, b
        self.log_a, self.log_b = a.log(), b.log()
        self.chunk_bytes = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        self._scratch: list[torch.Tensor] = []
        self.native = native_streaming_available(self.fc.x)
        self._sides: dict[str, _NativeSide] = {}
        self._final: tuple[bool, bool] | None = None  # (need_x, need_y) of prepare_final
        self._last: _LastSweep | None = None

    def for_backward(self) -> StreamingSoftMin:
        self._scratch, self._sides = [], {}
        return self

    def _side(self, name: str) -> _NativeSide:
        if name not in self._sides:
            own, other = (self.fc.x, self.fc.y) if name == "rows" else (self.fc.y, self.fc.x)
            self._sides[name] = _NativeSide(own.contiguous(), other, self.fc.scale / self.eps,
                                            self.chunk_bytes)
        return self._sides[name]

    def _row_terms(self, f):
        """hr = log a + (f - r) / eps (B, n), contiguous for the native passes."""
        return (self.log_a + (f - self.fc.row_offset) / self.eps).contiguous()

    def _col_terms(self, g):
        """hc = log b + (g - c) / eps (B, m), contiguous for the native passes."""
        return (self.log_b + (g - self.fc.col_offset) / self.eps).contiguous()

    def _native_rows(self, g, fold: bool):
        """f from g on the native path; with ``fold`` also the next g (from that f)."""
        fc, eps = self.fc, self.eps
        hc = self._col_terms(g)
        f, state = self._side("rows").softmin(hc, self.log_a.contiguous(),
                                              fc.row_offset.contiguous(), eps, self.damping, fold)
        if not fold:
            return f, None
        top, total = (t[:, : self.b.shape[1]] for t in state)
        lse = total.log_().add_(top).to(top.dtype)  # in double: log S is large where M is one shift
        return f, (fc.col_offset - eps * lse).mul_(self.damping)

    def _native_cols(self, f):
        fc, eps = self.fc, self.eps
        hc = self._row_terms(f)
        g, _ = self._side("cols").softmin(hc, self.log_b.contiguous(),
                                          fc.col_offset.contiguous(), eps, self.damping, False)
        return g

    def prepare_final(self, need_x, need_y):
        self._final = (need_x, need_y)

    def _last_rows(self, g):
        """f from g on the native path, and the plan at (f, g) from the same products: its
        sums and, when the backward will want them, P y' and P^T x' (kept in ``_last``)."""
        fc, eps = self.fc, self.eps
        hc = self._col_terms(g)
        need_x, need_y = self._final
        visit = products = None
        if need_x or need_y:
            visit, products = self._products_visitor(fc.x if need_y else None,
                                                     fc.y if need_x else None)
        f, sums = self._side("rows").softmin_and_plan(
            hc, self.log_a.contiguous(), fc.row_offset.contiguous(), eps, self.damping, visit)
        self._last = _LastSweep(f, g, *sums, *(products() if products else ()))
        return f

    def iterate(self, f, n_iters):
        if not self.native:
            return super().iterate(f, n_iters)
        g = self._native_cols(f)
        for _ in range(n_iters - 1):
            f, g = self._native_rows(g, fold=True)
        if self._final is None:
            return self._native_rows(g, fold=False)[0], g
        return self._last_rows(g), g

    def _chunks(self, length: int, other: int):
        per_row = self.a.shape[0] * other * self.a.element_size()
        step = max(1, self.chunk_bytes // per_row)
        return [slice(i, min(i + step, length)) for i in range(0, length, step)]

    def _buffers(self, rows: slice, other: int, count: int) -> list[torch.Tensor]:
        """``count`` scratch views (B, len(rows), other), reusing the solve's allocations."""
        length = rows.stop - rows.start
        numel = self.a.shape[0] * length * other
        if len(self._scratch) < count or self._scratch[0].numel() < numel:
            size = max(numel, self.chunk_bytes // self.a.element_size())
            self._scratch = [self.a.new_empty(size) for _ in range(count)]
        return [s[:numel].view(self.a.shape[0], length, other) for s in self._scratch[:count]]

    def _softmin(self, x, y, log_w, pot, own_offset, other_offset):
        """own_offset_i - eps LSE_j(log_w_j + (pot_j - other_offset_j)/eps + (s/eps)<x_i, y_j>)."""
        h = (log_w + (pot - other_offset) / self.eps)[:, None, :]
        out = torch.empty_like(own_offset)
        for rows in self._chunks(x.shape[1], y.shape[1]):
            (z,) = self._buffers(rows, y.shape[1], 1)
            torch.baddbmm(h, x[:, rows], y.transpose(1, 2), alpha=self.fc.scale / self.eps, out=z)
            out[:, rows] = own_offset[:, rows] - self.eps * logsumexp_(z, dim=2)
        return out.mul_(self.damping)

    def update_cols(self, f):
        if self.native:
            return self._native_cols(f)
        fc = self.fc
        return self._softmin(fc.y, fc.x, self.log_a, f, fc.col_offset, fc.row_offset)

    def update_rows(self, g):
        if self.native:
            return self._native_rows(g, fold=False)[0]
        fc = self.fc
        return self._softmin(fc.x, fc.y, self.log_b, g, fc.row_offset, fc.col_offset)

    def potentials(self, f, g):
        return f, g

    def _plan_tiles(self, f, g):
        """Yield (rows, plan tile, cost tile), each (B, rows, m), in scratch buffers."""
        row = (self.log_a + f / self.eps)[:, :, None]
        col = (self.log_b + g / self.eps)[:, None, :]
        for rows in self._chunks(self.a.shape[1], self.b.shape[1]):
            plan, cost = self._buffers(rows, self.b.shape[1], 2)
            self.fc.tile(rows, out=cost)
            torch.mul(cost, -1.0 / self.eps, out=plan)
            yield rows, plan.add_(row[:, rows]).add_(col).exp_(), cost

    def plan(self, f, g):
        return torch.cat([p.clone() for _, p, _ in self._plan_tiles(f, g)], dim=1)

    def _native_plan(self, f, g, visit=None):
        """:meth:`_NativeSide.plan` of the rows side at (f, g); the last sweep's sums when it
        was at (f, g) and nothing is to be visited."""
        if visit is None and self._last is not None and self._last.at(f, g):
            return self._last.rows, self._last.cols, self._last.pz
        return self._side("rows").plan(self._row_terms(f), self._col_terms(g), visit)

    def marginals(self, f, g):
        if self.native:
            return self._native_plan(f, g)[:2]
        rows_sum = self.a.new_empty(self.a.shape)
        cols_sum = self.b.new_zeros(self.b.shape)
        for rows, p, _ in self._plan_tiles(f, g):
            rows_sum[:, rows] = p.sum(2)
            cols_sum += p.sum(1)
        return rows_sum, cols_sum

    def loss(self, f, g):
        if self.native:  # <P, C> = <P 1, r> + <P^T 1, c> - eps <P, Z>
            rows, cols, pz = self._native_plan(f, g)
            fc = self.fc
            return (rows * fc.row_offset).sum(1) + (cols * fc.col_offset).sum(1) - self.eps * pz
        total = self.a.new_zeros(self.a.shape[0])
        for _, p, c in self._plan_tiles(f, g):
            total += p.mul_(c).sum((1, 2))
        return total

    def plan_products(self, f, g, x, y, x_scale, y_scale):
        x = None if x is None else x * x_scale[..., None]
        y = None if y is None else y * y_scale[..., None]
        if self.native:
            return self._native_plan_products(f, g, x, y)
        (batch, n), m = self.a.shape, self.b.shape[1]
        p_y = None if y is None else y.new_empty(batch, n, y.shape[2])
        p_x = None if x is None else x.new_zeros(batch, m, x.shape[2])
        rows_sum = self.a.new_empty(self.a.shape)
        cols_sum = self.b.new_zeros(self.b.shape)
        for rows, p, _ in self._plan_tiles(f, g):
            if p_y is not None:
                p_y[:, rows] = torch.bmm(p, y)
            if p_x is not None:
                p_x.baddbmm_(p.transpose(1, 2), x[:, rows])
            rows_sum[:, rows] = p.sum(2)
            cols_sum += p.sum(1)
        self._scratch = []
        return p_y, p_x, rows_sum, cols_sum

    def input_grads(self, f, g, fc, grad_loss, need_x, need_y):
        """From the last sweep's P y', P^T x' when it formed them at (f, g), else the default
        (a pass of its own). The chain rule works in place, on copies: a second backward
        through the same graph finds the products as they were."""
        last = self._last
        if (last is None or not last.at(f, g) or (need_x and last.p_y is None)
                or (need_y and last.p_x is None)):
            return super().input_grads(f, g, fc, grad_loss, need_x, need_y)
        p_y, p_x = (t.clone() if need else None
                    for t, need in ((last.p_y, need_x), (last.p_x, need_y)))
        return fc.input_grads(p_y, p_x, last.rows, last.cols, grad_loss, need_x, need_y)

    def _products_visitor(self, x, y):
        """(visit, products): ``visit(r0, P strip)`` (for :meth:`_NativeSide.plan`) adds the
        strip's share of P y and P^T x by column tile; ``products()`` -> (P y, P^T x), each
        None when its ``y`` / ``x`` is."""
        side = self._side("rows")
        (batch, n), m = self.a.shape, self.b.shape[1]
        tiles, width = side.tiles.shape[1], side.width
        p_y = p_x = y_tiles = None
        if y is not None:
            y_tiles = y.new_zeros(batch, tiles * width, y.shape[2])
            y_tiles[:, :m] = y
            y_tiles = y_tiles.view(batch, tiles, width, -1)
            p_y = y.new_empty(batch, n, y.shape[2])
        if x is not None:
            p_x = x.new_zeros(batch, tiles, width, x.shape[2])

        def visit(r0, p):
            rows = slice(r0, r0 + p.shape[2])
            if p_y is not None:
                p_y[:, rows] = torch.matmul(p, y_tiles).sum(1)
            if p_x is not None:  # accumulated inside the GEMM: no (B, T, W, d) temporary
                strip = x[:, None, rows].expand(-1, tiles, -1, -1).reshape(batch * tiles,
                                                                          -1, x.shape[2])
                p_x.view(batch * tiles, width, -1).baddbmm_(
                    p.view(batch * tiles, -1, width).transpose(1, 2), strip)

        def products():
            return p_y, None if p_x is None else p_x.view(batch, tiles * width, -1)[:, :m]

        return visit, products

    def _native_plan_products(self, f, g, x, y):
        """plan_products on the native path: P y' and P^T x' strip by strip, by column tile."""
        visit, products = self._products_visitor(x, y)
        rows_sum, cols_sum, _ = self._native_plan(f, g, visit)
        self._sides = {}
        return (*products(), rows_sum, cols_sum)
