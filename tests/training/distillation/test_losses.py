"""The strategies' losses on hand-checkable cases, and no distillation leaving the student alone."""

import pytest
import torch
from tiny_model import tiny_bitext, tiny_config

from optical_ops import ot_distill_loss
from optical_ops.training.distillation.config import TrainConfig
from optical_ops.training.distillation.losses import (
    LOSSES,
    STRATEGIES,
    OTOptions,
    PairStates,
    pair_losses,
)
from optical_ops.training.distillation.trainer import DistillationTrainer


def test_hard_aligned_token_mse_by_hand():
    # Student tokens (1, 0) and (0, 3), then padding; teacher tokens: a masked (5, 0) that
    # would tie with (2, 0) for the first student token, then (2, 0), (0, 1), (1, 1).
    student = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [9.0, 9.0]]], requires_grad=True)
    teacher = torch.tensor([[[5.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    states = PairStates(student, torch.tensor([[1, 1, 0]]), teacher, torch.tensor([[0, 1, 1, 1]]))
    loss = pair_losses("token-mse", states)
    # (1,0) -> (2,0): |(-1, 0)|^2 / 2 = 0.5; (0,3) -> (0,1): |(0, 2)|^2 / 2 = 2; mean 1.25.
    assert loss.tolist() == [1.25]
    loss.sum().backward()
    # d/dx_i of (1/n) sum_i (1/d)|x_i - y|^2 = 2 (x_i - y) / (n d), n = d = 2; padding: 0.
    assert student.grad.tolist() == [[[-0.5, 0.0], [0.0, 1.0], [0.0, 0.0]]]


def test_debiased_ot_is_zero_for_identical_token_sets_where_ot_is_not():
    torch.manual_seed(0)
    tokens = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.long)
    states = PairStates(tokens, mask, tokens.clone(), mask)
    plain = pair_losses("optical", states, OTOptions(eps=0.5, n_iters=200))
    debiased = pair_losses("optical", states, OTOptions(eps=0.5, n_iters=200, debias=True))
    assert (plain > 1e-2).all()  # the entropic plan blurs: mass is sent to other tokens too
    assert debiased.abs().max() < 1e-9


def test_unbalanced_ot_lets_an_unmatched_token_shed_mass():
    # Student: two tokens on the teacher's two, and an outlier opposite to both.
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    student = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]], dtype=torch.float64)
    states = PairStates(student, torch.ones(1, 3), teacher, torch.ones(1, 2))
    balanced = pair_losses("optical", states, OTOptions(eps=0.05, n_iters=500))
    loose = pair_losses("optical", states, OTOptions(eps=0.05, n_iters=500, tau=0.1))
    tight = pair_losses("optical", states, OTOptions(eps=0.05, n_iters=500, tau=1e4))
    # Balanced: the outlier's 1/3 of the mass travels at cost 1 - cos(135°) = 1.707.
    assert balanced.item() == pytest.approx(1.707 / 3, rel=0.02)
    assert loose.item() < 0.2 * balanced.item()
    assert tight.item() == pytest.approx(balanced.item(), rel=1e-3)


def test_optical_passes_every_option_to_the_op():
    torch.manual_seed(1)
    student, teacher = torch.randn(3, 4, 6), torch.randn(3, 5, 6)
    mask_s, mask_t = torch.ones(3, 4), torch.tensor([[1, 1, 1, 0, 0]] * 3)
    weights_s, weights_t = torch.rand(3, 4) + 0.1, torch.rand(3, 5) + 0.1
    options = OTOptions(cost="sqeuclidean", eps=2.0, n_iters=7, tau=0.5)
    got = pair_losses("optical", PairStates(student, mask_s, teacher, mask_t, weights_s,
                                            weights_t), options)  # fmt: skip
    expected = ot_distill_loss(
        student, teacher, mask_s, mask_t, student_weights=weights_s, teacher_weights=weights_t,
        cost="sqeuclidean", eps=2.0, n_iters=7, tau=0.5, reduction="none",
    )  # fmt: skip
    assert torch.equal(got, expected)
    assert not torch.equal(got, pair_losses("optical", PairStates(student, mask_s, teacher,
                                                                  mask_t), options))  # fmt: skip


def test_registry_and_errors():
    assert STRATEGIES == (*LOSSES, "none")
    states = PairStates(
        torch.zeros(1, 1, 2), torch.ones(1, 1), torch.zeros(1, 1, 2), torch.ones(1, 1)
    )
    with pytest.raises(ValueError, match="strategy 'none' does not distil"):
        pair_losses("none", states)
    with pytest.raises(ValueError, match="strategy 'kl' unknown; losses: "):
        pair_losses("kl", states)
    with pytest.raises(ValueError, match="tau and debias apply to the optical strategy only"):
        TrainConfig(languages=("swh",), strategy="mse", tau=0.1, debias=True)
    with pytest.raises(ValueError, match="debias is defined for balanced OT only"):
        TrainConfig(languages=("swh",), tau=0.1, debias=True)
    with pytest.raises(ValueError, match="tau must be none"):
        TrainConfig(languages=("swh",), tau=0.0)
    with pytest.raises(ValueError, match="adversarial training needs a distillation loss"):
        TrainConfig(languages=("swh",), strategy="none", adversarial_input="typo")


def test_no_distillation_does_no_update(tiny_model):
    trainer = DistillationTrainer(tiny_config(tiny_model, strategy="none"), tiny_bitext())
    before = {name: p.detach().clone() for name, p in trainer.student.named_parameters()}
    assert trainer.fit(progress=False) == []
    assert trainer.step == 0
    assert all(torch.equal(p, before[name]) for name, p in trainer.student.named_parameters())


@pytest.mark.parametrize("strategy", ["token-mse", "optical"])
def test_new_strategies_train(tiny_model, strategy):
    changes = {"debias": True} if strategy == "optical" else {}
    config = tiny_config(tiny_model, batch_size=12, micro_batch_size=5, lr=1e-2,
                         strategy=strategy, **changes)  # fmt: skip
    losses = [record["loss"] for record in DistillationTrainer(config, tiny_bitext()).fit(
        progress=False)]  # fmt: skip
    assert losses[-1] < 0.8 * losses[0], losses
