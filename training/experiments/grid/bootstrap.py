r"""Paired bootstrap confidence intervals over queries (Efron & Tibshirani 1993; for IR,
Sakai, SIGIR 2006).

For a strategy A and a baseline B evaluated on the same Q queries, with a_q and b_q a query's
measure averaged over each one's seeds, d_q = a_q - b_q and the observed difference
Δ = (1/Q) Σ_q d_q. Each of R resamples draws Q queries with replacement (the same draws for
every strategy, measure and baseline of a task: :func:`resample`) and takes the mean of their
d; the 95% interval is the 2.5th and 97.5th percentiles of the R means. An interval that
excludes 0 says the difference is unlikely to be the luck of which queries were drawn; it says
nothing of the variation between training seeds, which the reports give separately (the
standard deviation over seeds).

A difference of group means (the high/low-resource gap) resamples each task's queries
independently and combines the tasks' resampled means the way the statistic combines them.
"""

from __future__ import annotations

import torch

CONFIDENCE = 0.95


def resample(num_queries: int, samples: int, seed: int) -> torch.Tensor:
    """(samples, num_queries) query indices drawn with replacement."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(num_queries, (samples, num_queries), generator=generator)


def interval(resampled: torch.Tensor) -> tuple[float, float]:
    """The central :data:`CONFIDENCE` percentile interval of resampled statistics."""
    tail = (1 - CONFIDENCE) / 2
    low, high = torch.quantile(
        resampled.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)
    )
    return float(low), float(high)


def resampled_means(per_query: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(samples,) means of ``per_query`` (Q,) over each resample of ``indices``."""
    return per_query.double()[indices].mean(dim=1)
