r"""The two distillation losses, per pair: OPTICAL (token-level OT) and mean-pooled MSE.

For a pair with student token states x_1..x_n (the other language) and teacher token states
y_1..y_m (English), masks removing padding:

* ``"optical"`` (Huang, Yu, Allan, WSDM 2023): the entropic OT cost
  <P*, C> with C_ij = 1 - cos(x_i, y_j) (or |x_i - y_j|^2), marginals uniform over the tokens
  or their IDF (:mod:`.idf`); :func:`optical_ops.ot_distill_loss`;
* ``"mse"`` (standard sentence-embedding distillation, Reimers & Gurevych 2020):
  (1/d) |mean_i x_i - mean_j y_j|^2, the squared error of the mean-pooled embeddings that
  retrieval compares (token weights do not apply).
"""

from __future__ import annotations

import torch

from optical_ops import ot_distill_loss

from .e5_model import mean_pool

STRATEGIES = ("optical", "mse")


def pair_losses(
    strategy: str,
    student: torch.Tensor,
    student_mask: torch.Tensor,
    teacher: torch.Tensor,
    teacher_mask: torch.Tensor,
    *,
    student_weights: torch.Tensor | None = None,
    teacher_weights: torch.Tensor | None = None,
    cost: str = "cosine",
    eps: float = 0.05,
    n_iters: int = 50,
) -> torch.Tensor:
    """(B,) loss of each pair. ``student`` (B, n, d) and ``teacher`` (B, m, d) token states with
    their (B, n) / (B, m) attention masks; optional (B, n) / (B, m) token weights (OPTICAL)."""
    if strategy == "optical":
        return ot_distill_loss(
            student, teacher, student_mask, teacher_mask,
            student_weights=student_weights, teacher_weights=teacher_weights,
            cost=cost, eps=eps, n_iters=n_iters, reduction="none",
        )  # fmt: skip
    if strategy == "mse":
        difference = mean_pool(student, student_mask) - mean_pool(teacher, teacher_mask)
        return difference.pow(2).mean(dim=-1)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
