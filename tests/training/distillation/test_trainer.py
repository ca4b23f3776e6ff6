"""The distillation trainer on a tiny random BERT: loss, determinism, freezing, errors."""

import dataclasses
import re

import pytest
import torch
from tiny_model import tiny_bitext, tiny_config

from optical_ops.training.distillation.config import TrainConfig
from optical_ops.training.distillation.losses import PairStates, pair_losses
from optical_ops.training.distillation.trainer import DistillationTrainer
from optical_ops.training.models.encoders import ModelDirectoryError, load_student


def losses_of(config):
    trainer = DistillationTrainer(config, tiny_bitext())
    return trainer, [record["loss"] for record in trainer.fit(progress=False)]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"token_weights": "idf"},
        {"cost": "sqeuclidean", "eps": 1.0},
        {"teacher_layer": 1},
        {"strategy": "mse"},
    ],
    ids=["optical", "optical-idf", "optical-sqeuclidean", "teacher-layer-1", "mse"],
)
def test_loss_decreases(tiny_model, changes):
    # Full batches: every step sees all 12 pairs, so the loss is a function of the weights.
    config = tiny_config(tiny_model, batch_size=12, micro_batch_size=5, lr=1e-2)
    _, losses = losses_of(dataclasses.replace(config, **changes))
    assert losses[-1] < 0.8 * losses[0], losses


def test_runs_are_deterministic(tiny_model):
    config = tiny_config(tiny_model, steps=4, dropout=0.1)
    first, first_losses = losses_of(config)
    second, second_losses = losses_of(config)
    assert first_losses == second_losses
    for name, value in first.trainable.items():
        assert torch.equal(value, second.trainable[name]), name


def test_only_trainable_parameters_move(tiny_model):
    trainer = DistillationTrainer(tiny_config(tiny_model, steps=3), tiny_bitext())
    before = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    trainer.fit(progress=False)
    moved = {n for n, p in trainer.student.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(trainer.trainable)
    assert "embeddings.word_embeddings.weight" not in moved
    assert any(name.startswith("encoder.layer.0.") for name in moved)


def test_trainable_layers_freeze_everything_below(tiny_model):
    student = load_student(tiny_model, trainable_layers=1)
    trainable = {n for n, p in student.model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("encoder.layer.1.") for name in trainable)
    with pytest.raises(ValueError, match="trainable_layers=3"):
        load_student(tiny_model, trainable_layers=3)
    with pytest.raises(ValueError, match="keep 1 to 2 layers"):
        load_student(tiny_model, num_layers=5)


def test_mse_is_the_squared_error_of_mean_pooled_states():
    student = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    teacher = torch.tensor([[[0.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0]])
    loss = pair_losses("mse", PairStates(student, mask, teacher, torch.tensor([[1]])))
    # mean-pooled student (2, 3) against (0, 1): ((2)^2 + (2)^2) / 2
    assert loss.tolist() == [4.0]


def test_missing_model_directory_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    config = TrainConfig(bitext="x.tsv", teacher=str(missing))
    message = re.escape(f"teacher model directory {missing} does not exist")
    with pytest.raises(ModelDirectoryError, match=message):
        DistillationTrainer(config, tiny_bitext())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirectoryError, match=r"has no config\.json"):
        load_student(tmp_path / "empty")


def test_config_errors():
    with pytest.raises(ValueError, match="either UDHR languages or a bitext"):
        TrainConfig()
    with pytest.raises(ValueError, match="strategy must be one of"):
        TrainConfig(languages=("swh",), strategy="kl")
    with pytest.raises(ValueError, match="micro_batch_size must be >= 1"):
        TrainConfig(languages=("swh",), micro_batch_size=0)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"languages": ["swh"], "learning_rate": 1})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 2.5, "steps must be an integer, got 2.5"),
        ("sinkhorn_iters", 10.5, "sinkhorn_iters must be an integer, got 10.5"),
        ("debias", "no", "debias must be true or false, got 'no'"),
        ("memoise_teacher", 1, "memoise_teacher must be true or false, got 1"),
        ("eps", "0.1", "eps must be a number, got '0.1'"),
        ("lr", True, "lr must be a number, got True"),
        ("tau", "big", "tau must be a number or none, got 'big'"),
        ("student_layers", 2.0, "student_layers must be an integer or none, got 2.0"),
        ("languages", "swh", "languages must be a list of strings, got 'swh'"),
        ("teacher_prefix", 3, "teacher_prefix must be a string, got 3"),
    ],
)
def test_field_types_are_checked_on_construction(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**{"languages": ("swh",), field: value})


def test_config_values_are_normalised(tmp_path):
    config = TrainConfig(languages=["swh"], eps=1, teacher=tmp_path)
    assert config.languages == ("swh",) and config.teacher == str(tmp_path)
    assert type(config.eps) is float and TrainConfig.from_dict(config.to_dict()) == config


def test_empty_bitext_is_refused(tiny_model):
    with pytest.raises(ValueError, match="no training pairs"):
        DistillationTrainer(tiny_config(tiny_model), [])
