"""Length buckets: solve a padded batch in groups padded only to their own longest problem.

A batch of sentence pairs padded to (n, m) costs B n m per cost entry pass and B n m d per
product, but only sum_b n_b m_b entries carry mass (n_b, m_b: each problem's extent, up to its
last token with positive weight). Problems are independent, so sorting them by n_b m_b and
splitting into a few groups, each trimmed to its own extent, removes much of the padded work;
the solver then runs once per group (a handful of batched calls, never one per problem).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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


def extents(weights: torch.Tensor) -> torch.Tensor:
    """(B,) one past the last index with positive weight, per problem."""
    positions = torch.arange(1, weights.shape[1] + 1, device=weights.device)
    return ((weights > 0) * positions).amax(dim=1)


def _split(order: list[int], groups: int) -> list[list[int]]:
    bounds = [round(g * len(order) / groups) for g in range(groups + 1)]
    return [order[lo:hi] for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


def length_buckets(a: torch.Tensor, b: torch.Tensor) -> list[Bucket]:
    """Groups for weights a (B, n), b (B, m); one host sync.

    Candidates: the problems sorted by n_b m_b, by n_b or by m_b, cut into 1 to
    :data:`MAX_BUCKETS` groups of equal count; the one with the fewest padded entries plus
    :data:`BUCKET_OVERHEAD` per group wins. A single bucket (the batch trimmed to its largest
    extents) is kept unless the groups save at least :data:`MIN_SAVING` of the entries.
    """
    batch = a.shape[0]
    rows, cols = (t.tolist() for t in torch.stack([extents(a), extents(b)]).cpu())
    whole = Bucket(None, max(rows), max(cols))
    # No split pads less than the real entries: skip the search when even they are too many.
    if sum(map(int.__mul__, rows, cols)) > (1.0 - MIN_SAVING) * batch * whole.n * whole.m:
        return [whole]

    def padded(parts):
        return sum(len(p) * max(rows[i] for i in p) * max(cols[i] for i in p) for p in parts)

    keys = (lambda p: rows[p] * cols[p], lambda p: rows[p], lambda p: cols[p])
    candidates = [
        _split(sorted(range(batch), key=key, reverse=True), groups)
        for key in keys for groups in range(2, min(MAX_BUCKETS, batch) + 1)
    ]
    if not candidates:
        return [whole]
    best = min(candidates, key=lambda parts: padded(parts) + BUCKET_OVERHEAD * len(parts))
    if padded(best) > (1.0 - MIN_SAVING) * batch * whole.n * whole.m:
        return [whole]
    return [
        Bucket(torch.tensor(sorted(p), device=a.device), max(rows[i] for i in p),
               max(cols[i] for i in p))
        for p in best
    ]
