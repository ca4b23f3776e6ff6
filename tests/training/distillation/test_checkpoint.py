"""Checkpoints: atomic safetensors + JSON, exact resume, integrity, no unpickling, pruning and
leftover removal that touch nothing else, the umask's file mode."""

import dataclasses
import json
import os
import pickle
import stat

import pytest
import safetensors.torch
import torch
from tiny_model import tiny_bitext, tiny_config

from optical_ops.training.distillation import checkpoint as checkpoint_module
from optical_ops.training.distillation.checkpoint import (
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    remove_leftovers,
    save_checkpoint,
)
from optical_ops.training.distillation.trainer import DistillationTrainer, student_from_checkpoint


def run(config, **fit_options):
    trainer = DistillationTrainer(config, tiny_bitext(), resume=fit_options.pop("resume", None))
    return trainer, [record["loss"] for record in trainer.fit(progress=False, **fit_options)]


def test_resume_continues_exactly(tiny_model, tmp_path):
    config = tiny_config(tiny_model, steps=4)
    straight, straight_losses = run(config)
    _, first_losses = run(dataclasses.replace(config, steps=2), out_dir=tmp_path)
    resumed, resumed_losses = run(config, resume=tmp_path / "checkpoints")
    assert first_losses + resumed_losses == straight_losses
    for name, value in straight.trainable.items():
        assert torch.equal(value, resumed.trainable[name]), name
    straight_state, resumed_state = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for index, state in straight_state["state"].items():
        for key, value in state.items():
            assert torch.equal(value, resumed_state["state"][index][key]), (index, key)


def test_trained_student_loads_from_its_checkpoint(tiny_model, tmp_path):
    trainer, _ = run(tiny_config(tiny_model, steps=2), out_dir=tmp_path)
    student, config = student_from_checkpoint(tmp_path / "checkpoints")
    assert config == trainer.config
    for name, value in student.model.state_dict().items():
        assert torch.equal(value, trainer.student.state_dict()[name]), name


def test_resume_refuses_other_settings(tiny_model, tmp_path):
    run(tiny_config(tiny_model, steps=1), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"other settings for \['lr'\]"):
        run(tiny_config(tiny_model, steps=2, lr=1e-3), resume=tmp_path / "checkpoints")


def test_checkpoint_files_and_pruning(tiny_model, tmp_path):
    trainer, _ = run(tiny_config(tiny_model, steps=3, checkpoint_every=1), out_dir=tmp_path)
    sidecars = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in sidecars] == ["step-00000002.json", "step-00000003.json"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000002.json", "step-00000002.safetensors",
        "step-00000003.json", "step-00000003.safetensors",
    ]  # fmt: skip
    sidecar = json.loads(sidecars[-1].read_text())
    assert sidecar["step"] == 3 and sidecar["config"] == trainer.config.to_dict()
    history = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [1, 2, 3]


def test_failed_write_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch):
    model = {"w": torch.arange(3.0)}
    optimizer = {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1}]}
    save_checkpoint(tmp_path, 1, {"seed": 0}, model, optimizer)

    def crash(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, {"seed": 0}, {"w": torch.ones(3)}, optimizer)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000001.json", "step-00000001.safetensors",
    ]  # fmt: skip
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 1 and torch.equal(loaded.model["w"], torch.arange(3.0))
    assert loaded.optimizer["state"][0]["step"] == 1.0


def save(directory, step, config=None, keep=0):
    optimizer = {"state": {}, "param_groups": []}
    return save_checkpoint(directory, step, config or {}, {"w": torch.zeros(2)}, optimizer, keep)


def test_pruning_deletes_only_older_checkpoints(tmp_path):
    for step in (1, 2, 4, 5):
        save(tmp_path, step)
    save(tmp_path, 3, keep=2)  # a later checkpoint (4, 5) is never pruned, nor the one written
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [2, 3, 4, 5]
    save(tmp_path, 6, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000006.json", "step-00000006.safetensors",
    ]  # fmt: skip


def test_files_get_the_umask_mode_and_no_staging_names(tmp_path):
    previous = os.umask(0o027)
    try:
        save(tmp_path, 1)
    finally:
        os.umask(previous)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {
        "step-00000001.json": 0o640, "step-00000001.safetensors": 0o640,
    }  # fmt: skip


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    save(tmp_path, 1)
    ours = [
        ".step-00000002.safetensors.4242.partial",
        ".step-00000002.json.17.partial",
        "step-00000003.safetensors",
    ]  # the last: its sidecar was never written
    foreign = ["notes.txt", ".tmpa1b2c3", ".step-00000002.safetensors.x8Kz.partial",
               ".results.json.17.partial", "step-3.safetensors"]  # fmt: skip
    for name in ours + foreign:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in remove_leftovers(tmp_path)) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*foreign, "step-00000001.json", "step-00000001.safetensors"]
    )


def test_a_folder_of_two_runs_is_refused(tmp_path):
    save(tmp_path, 2, {"seed": 0, "steps": 2})
    save(tmp_path, 4, {"seed": 0, "steps": 8})  # one run: only the schedule differs
    assert load_checkpoint(tmp_path).step == 4
    save(tmp_path, 6, {"seed": 1, "steps": 8})
    with pytest.raises(ValueError, match=r"checkpoints of 2 runs with different settings"):
        load_checkpoint(tmp_path)
    assert load_checkpoint(tmp_path / "step-00000004.json").step == 4  # a file is explicit


@pytest.mark.parametrize("key", ["tensors_sha256", "trainable", "optimizer_scalars"])
def test_an_incomplete_sidecar_is_named(tmp_path, key):
    sidecar = save(tmp_path, 1)
    values = json.loads(sidecar.read_text())
    del values[key]
    sidecar.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=rf"not a complete .* missing or malformed \['{key}'\]"):
        load_checkpoint(sidecar)


def test_tampered_or_foreign_files_are_refused(tmp_path):
    optimizer = {"state": {}, "param_groups": []}
    sidecar = save_checkpoint(tmp_path, 5, {}, {"w": torch.zeros(2)}, optimizer)
    tensors = sidecar.with_suffix(".safetensors")
    safetensors.torch.save_file({"model.w": torch.ones(2)}, str(tensors))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        load_checkpoint(sidecar)
    sidecar.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not an optical-ot-checkpoint-1 sidecar"):
        load_checkpoint(tensors)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_loading_never_unpickles(tiny_model, tmp_path, monkeypatch):
    run(tiny_config(tiny_model, steps=1), out_dir=tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint must not be unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load_checkpoint(tmp_path / "checkpoints").step == 1
    assert checkpoint_module.FORMAT in (tmp_path / "checkpoints" / "step-00000001.json").read_text()
