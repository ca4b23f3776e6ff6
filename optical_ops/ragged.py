"""Length buckets: solve a padded batch in groups padded only to their own longest problem.

A batch of sentence pairs padded to (n, m) costs B n m per cost entry pass and B n m d per
product, but only sum_b n_b m_b entries carry mass (n_b, m_b: each problem's extent, up to its
last token with positive weight). Problems are independent, so sorting them by n_b m_b and
splitting into a few groups, each trimmed to its own extent, removes much of the padded work;
the solver then runs once per group (a handful of batched calls, never one per problem).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .kernels.cpu_dense_cost import extents as native_extents
from .kernels.cpu_dense_cost import native_dense_cost_available

# At most this many groups, only when they save at least this fraction of the padded work; each
# group costs about as much fixed work (launches, gathers) as this many cost entries.
MAX_BUCKETS = 8
MIN_SAVING = 0.25
BUCKET_OVERHEAD = 12_000


@dataclass(frozen=True)
class Bucket:
    """Problems ``index`` (None: the whole batch, in order) trimmed to n rows and m columns."""

    index: torch.Tensor | None
    n: int
    m: int

    def take(self, x, y, a, b) -> list[torch.Tensor]:
        """x (B, n, d), y (B, m, d), a (B, n), b (B, m) restricted to the bucket (views unless
        problems are selected)."""
        return [self.trim(x, self.n), self.trim(y, self.m), self.trim(a, self.n),
                self.trim(b, self.m)]

    def trim(self, t: torch.Tensor | None, extent: int) -> torch.Tensor | None:
        """t (B, extent', ...) cut to ``extent`` along dim 1, for the bucket's problems."""
        if t is None:
            return None
        t = t[:, :extent] if extent < t.shape[1] else t
        return t if self.index is None else t.index_select(0, self.index)

    def is_whole(self, n: int, m: int) -> bool:
        return self.index is None and (self.n, self.m) == (n, m)


def host_extents(a: torch.Tensor, b: torch.Tensor) -> tuple[list[int], list[int]]:
    """One past the last index with positive weight, per problem, of a (B, n) and b (B, m),
    on the host: a native scan of the CPU weights, else three ops per side and one sync."""
    if native_dense_cost_available(a) and native_dense_cost_available(b):
        return native_extents(a), native_extents(b)

    def extents(weights):
        positions = torch.arange(1, weights.shape[1] + 1, device=weights.device)
        return ((weights > 0) * positions).amax(dim=1)

    rows, cols = torch.stack([extents(a), extents(b)]).tolist()
    return rows, cols


def length_buckets(a: torch.Tensor, b: torch.Tensor) -> list[Bucket]:
    """Groups for weights a (B, n), b (B, m); one host sync.

    Candidates: the problems sorted by n_b m_b, by n_b or by m_b (descending, ties in batch
    order), cut into 2 to :data:`MAX_BUCKETS` groups of equal count; the one with the fewest
    padded entries plus :data:`BUCKET_OVERHEAD` per group wins (the first such; no split pads
    below the real entries, so an ordering's group counts stop where that bound reaches the
    best score). A single bucket (the batch trimmed to its largest extents) is kept unless the
    groups save at least :data:`MIN_SAVING` of the entries. The search runs on every ragged
    call, so it is part of every small batch's fixed cost: plain lists, each ordering sorted
    once.
    """
    batch = a.shape[0]
    rows, cols = host_extents(a, b)
    whole = Bucket(None, max(rows), max(cols))
    budget = (1.0 - MIN_SAVING) * batch * whole.n * whole.m
    # No split pads less than the real entries: skip the search when even they are too many.
    real = sum(map(int.__mul__, rows, cols))
    if real > budget:
        return [whole]
    best, best_score = None, math.inf
    for key in (lambda i: rows[i] * cols[i], rows.__getitem__, cols.__getitem__):
        order = sorted(range(batch), key=key, reverse=True)
        n_sorted, m_sorted = [rows[i] for i in order], [cols[i] for i in order]
        for groups in range(2, min(MAX_BUCKETS, batch) + 1):
            if real + BUCKET_OVERHEAD * groups >= best_score:  # a bound of every score from here
                break
            bounds = [round(g * batch / groups) for g in range(groups + 1)]
            parts = [(lo, hi, max(n_sorted[lo:hi]), max(m_sorted[lo:hi]))
                     for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
            padded = sum((hi - lo) * n * m for lo, hi, n, m in parts)
            if padded + BUCKET_OVERHEAD * len(parts) < best_score:
                best_score, best = padded + BUCKET_OVERHEAD * len(parts), (padded, order, parts)
    if best is None or best[0] > budget:
        return [whole]
    _, order, parts = best
    return [Bucket(torch.tensor(sorted(order[lo:hi]), device=a.device), n, m)
            for lo, hi, n, m in parts]
