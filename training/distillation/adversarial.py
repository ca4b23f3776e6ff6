r"""Adversarial training of the student on perturbed inputs, at the text or the embedding level.

Input level (``adversarial_input`` = ``noise`` | ``typo`` | ``codeswitch``, :mod:`.perturb`): at
step s the student's side of every pair is replaced by ``perturb(text, kind, rate, seed_s)``,
a ``rate`` fraction of its words edited; the teacher's (English) side stays clean. The draw is
fresh at every step and a pure function of (seed, s) (:func:`perturbation_seed`), so resumed and
sharded runs see the texts an uninterrupted single-process run sees. Code-switching replaces
words by their English translation from the FreeDict dictionaries of the run's languages
(:func:`training_lexicon`); a language without one (Somali) keeps its texts clean.

Embedding level (``adversarial_epsilon`` ε > 0; FGSM, Goodfellow et al., ICLR 2015): with e the
student's (B, n, d) input word embeddings of a micro-batch, L the distillation loss of each pair
and m the attention mask,

    δ = ε · sign(∇_e Σ_k L_k(S(e), T)) · m,       loss_k = L_k(S(e), T) + w · L_k(S(e + δ), T)

with w = ``adversarial_weight``. δ costs one extra forward and backward through the whole
student, down to its inputs (through frozen layers too: they pass the gradient on); it is a
constant of the step (no gradient flows through the attack), and the clean and perturbed inputs
then share one forward pass of twice the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .perturb import LEXICON_KINDS, Lexicon, codeswitch_lexicon, gradient_sign_attack, perturb

StateLosses = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``losses(student_states (B, n, d), attention_mask (B, n)) -> (B,)`` against fixed targets."""

_TEACHER_LANGUAGE = "en"


def perturbation_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s text perturbations: well mixed, distinct per (seed, step)."""
    return int(np.random.SeedSequence([seed, step, 0x5EED]).generate_state(1)[0])


def training_lexicon(languages: Iterable[str]) -> dict[str, list[str]]:
    """Word -> English translations, over the dictionaries of ``languages`` (the first language
    with a word wins); languages without a dictionary contribute nothing."""
    merged: dict[str, list[str]] = {}
    for language in languages:
        for word, translations in codeswitch_lexicon(
            language, _TEACHER_LANGUAGE, missing="skip"
        ).items():
            merged.setdefault(word, translations)
    return merged


class InputPerturbation:
    """``perturbation(texts, step) -> texts``: the student's texts of a step, perturbed."""

    def __init__(self, kind: str, rate: float, seed: int, languages: Sequence[str] = ()):
        self.kind, self.rate, self.seed = kind, rate, seed
        self.lexicon: Lexicon | None = (
            training_lexicon(languages) if kind in LEXICON_KINDS else None
        )

    def __call__(self, texts: Sequence[str], step: int) -> list[str]:
        return perturb(
            texts, self.kind, self.rate, perturbation_seed(self.seed, step), self.lexicon
        )


def fgsm_pair_losses(
    student: nn.Module,
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    losses: StateLosses,
    epsilon: float,
    weight: float,
) -> torch.Tensor:
    """(B,) clean plus ``weight`` times FGSM-perturbed loss of each pair (module docstring).

    ``student`` is the bare Hugging Face encoder (it computes the attack direction, outside any
    DistributedDataParallel bookkeeping); ``model`` is what trains, ``student`` or its DDP
    wrapper. ``input_ids`` and ``attention_mask`` are (B, n).
    """
    embeddings = student.get_input_embeddings()(input_ids)
    probe = embeddings.detach().requires_grad_()
    probe_states = student(inputs_embeds=probe, attention_mask=attention_mask).last_hidden_state
    (gradient,) = torch.autograd.grad(losses(probe_states, attention_mask).sum(), probe)
    perturbed = gradient_sign_attack(embeddings, gradient, attention_mask, epsilon)
    states = model(
        inputs_embeds=torch.cat([embeddings, perturbed]),
        attention_mask=torch.cat([attention_mask, attention_mask]),
    ).last_hidden_state
    clean, adversarial = states.split(input_ids.shape[0])
    return losses(clean, attention_mask) + weight * losses(adversarial, attention_mask)
