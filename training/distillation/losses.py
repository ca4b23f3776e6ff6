r"""The distillation losses, per pair, in one registry (:data:`LOSSES`), and the no-loss baseline.

For a pair with student token states x_1..x_n (the other language) and teacher token states
y_1..y_m (English), masks removing padding, token weights a (n,) and b (m,) (uniform, or IDF,
:mod:`.idf`):

* ``"optical"`` (Huang, Yu, Allan, WSDM 2023): the entropic OT cost <P*, C> with
  C_ij = 1 - cos(x_i, y_j) or |x_i - y_j|^2 (:func:`optical_ops.ot_distill_loss`). Its
  :class:`OTOptions`: ``tau`` relaxes the marginals to penalties tau KL(P 1 | a) +
  tau KL(P^T 1 | b) (unbalanced OT: a token with no counterpart may shed its mass rather than
  be matched at any cost); ``debias`` gives the Sinkhorn divergence
  S = OT(x, y) - OT(x, x)/2 - OT(y, y)/2 (Feydy et al., AISTATS 2019), which is 0 when the two
  token sets coincide, where OT(x, y) itself is not: the entropic blur no longer rewards a
  student whose tokens collapse onto the teacher's mean;
* ``"mse"`` (sentence-embedding distillation, Reimers & Gurevych 2020):
  (1/d) |mean_i x_i - mean_j y_j|^2, the squared error of the mean-pooled embeddings that
  retrieval compares (token weights and OT options do not apply);
* ``"token-mse"`` (token-level distillation with a hard alignment): each student token is
  matched to its most similar teacher token, j(i) = argmax_j cos(x_i, y_j), and the loss is
  (1/n) sum_i (1/d) |x_i - y_{j(i)}|^2 over the n unmasked student tokens. The alignment is a
  constant of the step (no gradient flows through the argmax); it is OT's plan made hard and
  one-sided (a teacher token may receive many student tokens, or none);
* ``"none"`` (:data:`NO_DISTILLATION`): no loss and no training; the student stays at its
  initialisation, the baseline every distilled student is compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from optical_ops import ot_distill_loss

from ..models.e5_model import mean_pool


class PairStates(NamedTuple):
    """A micro-batch of pairs: (B, n, d) student and (B, m, d) teacher token states, their
    (B, n) / (B, m) attention masks, and optional (B, n) / (B, m) token weights."""

    student: torch.Tensor
    student_mask: torch.Tensor
    teacher: torch.Tensor
    teacher_mask: torch.Tensor
    student_weights: torch.Tensor | None = None
    teacher_weights: torch.Tensor | None = None


@dataclass(frozen=True)
class OTOptions:
    """The options of the ``"optical"`` loss (see the module docstring)."""

    cost: str = "cosine"
    eps: float = 0.05
    n_iters: int = 50
    tau: float | None = None
    debias: bool = False


def optical_losses(states: PairStates, options: OTOptions) -> torch.Tensor:
    return ot_distill_loss(
        states.student, states.teacher, states.student_mask, states.teacher_mask,
        student_weights=states.student_weights, teacher_weights=states.teacher_weights,
        cost=options.cost, eps=options.eps, n_iters=options.n_iters, tau=options.tau,
        debias=options.debias, reduction="none",
    )  # fmt: skip


def mean_pooled_mse(states: PairStates, options: OTOptions) -> torch.Tensor:
    difference = mean_pool(states.student, states.student_mask) - mean_pool(
        states.teacher, states.teacher_mask
    )
    return difference.pow(2).mean(dim=-1)


def hard_aligned_token_mse(states: PairStates, options: OTOptions) -> torch.Tensor:
    student, teacher = states.student, states.teacher
    with torch.no_grad():
        similarity = torch.nn.functional.normalize(student, dim=-1) @ torch.nn.functional.normalize(
            teacher, dim=-1
        ).transpose(1, 2)
        similarity.masked_fill_(~states.teacher_mask.bool()[:, None, :], -torch.inf)
        aligned = similarity.argmax(dim=-1)  # (B, n)
    matched = teacher.gather(1, aligned[..., None].expand_as(student))
    mask = states.student_mask.to(student.dtype)
    per_token = (student - matched).pow(2).mean(dim=-1)
    return (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


LOSSES: dict[str, Callable[[PairStates, OTOptions], torch.Tensor]] = {
    "optical": optical_losses,
    "mse": mean_pooled_mse,
    "token-mse": hard_aligned_token_mse,
}
"""Strategy name -> ``loss(states, options) -> (B,)``, the loss of each pair."""

NO_DISTILLATION = "none"
STRATEGIES = (*LOSSES, NO_DISTILLATION)


def distils(strategy: str) -> bool:
    """Whether ``strategy`` trains the student (every strategy but ``"none"``)."""
    return strategy in LOSSES


def pair_losses(
    strategy: str, states: PairStates, options: OTOptions = OTOptions()
) -> torch.Tensor:
    """(B,) loss of each pair of ``states`` under ``strategy`` (a key of :data:`LOSSES`)."""
    if strategy not in LOSSES:
        reason = "does not distil: it has no loss" if strategy == NO_DISTILLATION else "unknown"
        raise ValueError(f"strategy {strategy!r} {reason}; losses: {sorted(LOSSES)}")
    return LOSSES[strategy](states, options)
