r"""Streaming soft-min: the cost is never stored; each half-iteration recomputes it in chunks.

With the factorised cost C_ij = r_i + c_j - s <x'_i, y'_j> (:mod:`.costs`; the scaled factors
x' = sigma x and y' = tau y are written out once, O((n + m) d)), the row update is

    f_i = r_i - eps * LSE_j( log b_j + (g_j - c_j) / eps + (s / eps) <x_i, y_j> )

so a chunk of rows costs one ``baddbmm`` (2*B*rows*m*d FLOPs) into a (B, rows, m) buffer and a
log-sum-exp over it; the column update is the same with the roles swapped. Memory is
O(B*(n + m)*d) plus one chunk; the work per half-iteration is 2*B*n*m*d FLOPs and B*n*m exps.
"""

from __future__ import annotations

import torch

from .costs import FactorisedCost
from .sinkhorn_loop import SoftMin
from .softmin_dense import col_error_from_log_ratio

# Bytes of one (B, rows, m) chunk of the cost; a few such buffers are live at once.
DEFAULT_CHUNK_BYTES = 32 * 2**20


def chunk_rows(batch: int, cols: int, itemsize: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // (batch * cols * itemsize))


class StreamingSoftMin(SoftMin):
    """Log-domain updates that recompute the cost from its factors. States: f (B, n), g (B, m)."""

    def __init__(self, fc: FactorisedCost, a: torch.Tensor, b: torch.Tensor, eps: float,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        self.fc, self.eps = fc.with_unit_scales(), eps
        self.a, self.b = a, b
        self.log_a, self.log_b = a.log(), b.log()
        self.chunk_bytes = chunk_bytes

    def _chunks(self, length: int, other: int):
        step = chunk_rows(self.a.shape[0], other, self.a.element_size(), self.chunk_bytes)
        return (slice(i, min(i + step, length)) for i in range(0, length, step))

    def _softmin(self, x, y, log_w, pot, own_offset, other_offset):
        """-eps LSE_j(log_w_j + (pot_j - other_offset_j)/eps + (s/eps)<x_i, y_j>) + own_offset_i."""
        h = (log_w + (pot - other_offset) / self.eps)[:, None, :]
        out = torch.empty_like(own_offset)
        for rows in self._chunks(x.shape[1], y.shape[1]):
            z = torch.baddbmm(h, x[:, rows], y.transpose(1, 2), alpha=self.fc.scale / self.eps)
            out[:, rows] = own_offset[:, rows] - self.eps * torch.logsumexp(z, dim=2)
        return out

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
        """Yield (rows, plan tile (B, rows, m), cost tile) chunk by chunk."""
        row = self.log_a + f / self.eps
        col = (self.log_b + g / self.eps)[:, None, :]
        for rows in self._chunks(self.a.shape[1], self.b.shape[1]):
            cost = self.fc.tile(rows)
            yield rows, torch.exp(col + row[:, rows, None] - cost / self.eps), cost

    def plan(self, f, g):
        return torch.cat([p for _, p, _ in self._plan_tiles(f, g)], dim=1)

    def loss(self, f, g):
        return sum((p * c).sum((1, 2)) for _, p, c in self._plan_tiles(f, g))

    def plan_products(self, f, g, x, y, x_scale, y_scale):
        x, y = x * x_scale[..., None], y * y_scale[..., None]
        py = x.new_empty(x.shape[:2] + y.shape[2:])
        ptx = y.new_zeros(y.shape[:2] + x.shape[2:])
        rows_sum = self.a.new_empty(self.a.shape)
        cols_sum = self.b.new_zeros(self.b.shape)
        for rows, p, _ in self._plan_tiles(f, g):
            py[:, rows] = torch.bmm(p, y)
            ptx += torch.bmm(p.transpose(1, 2), x[:, rows])
            rows_sum[:, rows] = p.sum(2)
            cols_sum += p.sum(1)
        return py, ptx, rows_sum, cols_sum
