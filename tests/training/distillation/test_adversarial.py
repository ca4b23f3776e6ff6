"""Adversarial training: perturbed student texts, and the FGSM step on input embeddings."""

import dataclasses

import pytest
import torch
from tiny_model import tiny_bitext, tiny_config

from optical_ops.training.bitext.dictionaries import DICTD_DIR
from optical_ops.training.distillation.adversarial import (
    InputPerturbation,
    fgsm_pair_losses,
    training_lexicon,
)
from optical_ops.training.distillation.losses import PairStates, pair_losses
from optical_ops.training.distillation.trainer import DistillationTrainer, tokenize
from optical_ops.training.models.encoders import load_student

TEXTS = ["watu wote wamezaliwa huru", "kila mtu ana haki ya uhai", "kaikki ihmiset syntyvät"]


def test_input_perturbation_edits_the_rate_of_words_freshly_each_step():
    typos = InputPerturbation("typo", 1.0, seed=3)
    first = typos(TEXTS, step=0)
    for clean, perturbed in zip(TEXTS, first):
        assert all(a != b for a, b in zip(clean.split(), perturbed.split())), perturbed
    assert typos(TEXTS, step=0) == first  # a pure function of (seed, step)
    assert typos(TEXTS, step=1) != first
    assert InputPerturbation("typo", 1.0, seed=4)(TEXTS, step=0) != first
    assert InputPerturbation("noise", 0.0, seed=3)(TEXTS, step=0) == TEXTS


@pytest.mark.skipif(
    not (DICTD_DIR / "freedict-swh-eng.index").is_file(),
    reason="apt-get install dict-freedict-swh-eng",
)
def test_codeswitching_uses_the_dictionaries_of_the_run_languages():
    lexicon = training_lexicon(["som", "swh"])  # Somali has no dictionary: it adds nothing
    assert lexicon["maji"][0] == "water"
    switched = InputPerturbation("codeswitch", 1.0, 0, ["som", "swh"])(["Mtoto anakunywa maji."], 0)
    assert switched == ["Child anakunywa water."]
    assert InputPerturbation("codeswitch", 1.0, 0, ["som"])(["Mtoto maji."], 0) == ["Mtoto maji."]


def test_trainer_perturbs_the_student_side_only(tiny_model):
    config = tiny_config(tiny_model, adversarial_input="typo", adversarial_rate=1.0)
    trainer = DistillationTrainer(config, tiny_bitext())
    clean = DistillationTrainer(dataclasses.replace(config, adversarial_input="none"),
                                tiny_bitext())  # fmt: skip
    indices = list(range(len(tiny_bitext())))
    perturbed_ids = trainer._student_id_lists(indices)
    expected_texts = trainer.input_perturbation(trainer.student_texts, step=0)
    assert perturbed_ids == tokenize(trainer.student_tokenizer, expected_texts, "query: ", 96)
    assert perturbed_ids != clean._student_id_lists(indices)
    assert trainer.teacher_ids == clean.teacher_ids
    losses = [record["loss"] for record in trainer.fit(progress=False)]
    assert len(losses) == config.steps


def _tiny_pair(tiny_model):
    torch.manual_seed(0)
    student = load_student(tiny_model, num_layers=1, dropout=0.0).model
    input_ids = torch.tensor([[2, 5, 9, 3, 0], [2, 7, 3, 0, 0]])
    mask = (input_ids != 0).long()
    teacher = torch.randn(2, 4, 16)
    teacher_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])

    def losses(states, attention_mask):
        return pair_losses("optical", PairStates(states, attention_mask, teacher, teacher_mask))

    return student, input_ids, mask, losses


def test_fgsm_adds_the_loss_at_the_gradient_sign_step(tiny_model):
    student, input_ids, mask, losses = _tiny_pair(tiny_model)
    calls = []
    student.register_forward_hook(lambda module, args, output: calls.append(1))
    got = fgsm_pair_losses(student, student, input_ids, mask, losses, epsilon=0.05, weight=0.5)
    assert len(calls) == 2  # the probe for the gradient, then clean and perturbed together

    embeddings = student.get_input_embeddings()(input_ids).detach().requires_grad_()
    clean = losses(student(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state, mask)
    (gradient,) = torch.autograd.grad(clean.sum(), embeddings)
    moved = embeddings.detach() + 0.05 * gradient.sign() * mask[..., None]
    adversarial = losses(student(inputs_embeds=moved, attention_mask=mask).last_hidden_state, mask)
    torch.testing.assert_close(got, clean + 0.5 * adversarial)
    # Ascent on the loss: the perturbed input is worse, for a small enough step.
    assert (adversarial > clean).all(), (adversarial, clean)


def test_fgsm_trains_through_the_trainer(tiny_model):
    config = tiny_config(tiny_model, batch_size=12, micro_batch_size=5, lr=1e-2,
                         adversarial_epsilon=0.01, adversarial_weight=1.0)  # fmt: skip
    trainer = DistillationTrainer(config, tiny_bitext())
    losses = [record["loss"] for record in trainer.fit(progress=False)]
    assert losses[-1] < 0.8 * losses[0], losses
    plain = DistillationTrainer(dataclasses.replace(config, adversarial_epsilon=0.0), tiny_bitext())
    first_plain = plain.train_step()
    # Step 0 from the same weights: clean + perturbed loss, larger than the clean loss alone.
    assert losses[0] > 2 * first_plain
