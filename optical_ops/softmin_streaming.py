r"""Streaming soft-min: the cost is never stored; each half-iteration recomputes it in chunks.

With the factorised cost C_ij = r_i + c_j - s <x'_i, y'_j> (:mod:`.costs`; the scaled factors
x' = sigma x and y' = tau y are written out once, O((n + m) d)), the row update is

    f_i = r_i - eps * LSE_j( log b_j + (g_j - c_j) / eps + (s / eps) <x'_i, y'_j> )

A chunk of rows costs one ``baddbmm`` (2 B rows m d FLOPs) into a reused (B, rows, m) scratch
buffer and an in-place log-sum-exp over it (max, subtract-and-exp, sum: three passes over a
cache-resident chunk, B rows m exps); the column update is the same with the roles swapped.
Memory: O(B (n + m) d) plus two chunks, allocated once per solve (fresh pages are expensive).
"""

from __future__ import annotations

import torch

from .costs import FactorisedCost
from .logsumexp import logsumexp_
from .sinkhorn_loop import SoftMin
from .softmin_dense import col_error_from_log_ratio

# Bytes of one (B, rows, m) chunk: small enough to stay in L2 (1 MiB per core here) while the
# log-sum-exp makes its passes over it, large enough to keep the per-chunk op overhead low.
DEFAULT_CHUNK_BYTES = 2 * 2**20


class StreamingSoftMin(SoftMin):
    """Log-domain updates that recompute the cost from its factors. States: f (B, n), g (B, m)."""

    def __init__(self, fc: FactorisedCost, a: torch.Tensor, b: torch.Tensor, eps: float,
                 damping: float = 1.0, chunk_bytes: int | None = None):
        self.fc, self.eps, self.damping = fc.with_unit_scales(), eps, damping
        self.a, self.b = a, b
        self.log_a, self.log_b = a.log(), b.log()
        self.chunk_bytes = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
        self._scratch: list[torch.Tensor] = []

    def for_backward(self) -> StreamingSoftMin:
        self._scratch = []
        return self

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

    def initial_f_state(self) -> torch.Tensor:
        return self.a.new_zeros(self.a.shape)

    def update_cols(self, f):
        fc = self.fc
        return self._softmin(fc.y, fc.x, self.log_a, f, fc.col_offset, fc.row_offset)

    def update_rows(self, g):
        fc = self.fc
        return self._softmin(fc.x, fc.y, self.log_b, g, fc.row_offset, fc.col_offset)

    def col_error(self, g, next_g):
        return col_error_from_log_ratio(self.b, (g - next_g) / self.eps)

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

    def marginals(self, f, g):
        rows_sum = self.a.new_empty(self.a.shape)
        cols_sum = self.b.new_zeros(self.b.shape)
        for rows, p, _ in self._plan_tiles(f, g):
            rows_sum[:, rows] = p.sum(2)
            cols_sum += p.sum(1)
        return rows_sum, cols_sum

    def loss(self, f, g):
        total = self.a.new_zeros(self.a.shape[0])
        for _, p, c in self._plan_tiles(f, g):
            total += p.mul_(c).sum((1, 2))
        return total

    def plan_products(self, f, g, x, y, x_scale, y_scale):
        x, y = x * x_scale[..., None], y * y_scale[..., None]
        p_y = x.new_empty(x.shape[:2] + y.shape[2:])
        p_x = y.new_zeros(y.shape[:2] + x.shape[2:])
        rows_sum = self.a.new_empty(self.a.shape)
        cols_sum = self.b.new_zeros(self.b.shape)
        for rows, p, _ in self._plan_tiles(f, g):
            p_y[:, rows] = torch.bmm(p, y)
            p_x.baddbmm_(p.transpose(1, 2), x[:, rows])
            rows_sum[:, rows] = p.sum(2)
            cols_sum += p.sum(1)
        self._scratch = []
        return p_y, p_x, rows_sum, cols_sum
