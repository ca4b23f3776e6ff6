"""Run folders under crashes: a real ``train`` process killed in the middle of a checkpoint
write, then resumed; and a second run into a folder that holds one.

The killed process is this file run as a script: it wraps ``os.replace`` so that the rename
of one checkpoint file signals (a marker file) and waits, then runs the command line's
``train``; the test SIGKILLs it there. So the kill lands between a file's write and its rename,
the window a crash leaves partial files in, with no hook in the trainer itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_model import tiny_bitext, tiny_config

from optical_ops.training.bitext.formats import write_bitext
from optical_ops.training.cli import main
from optical_ops.training.distillation.trainer import DistillationTrainer

UMASK = 0o027  # files 0640: neither mkstemp's 0600 nor the test runner's usual 0644
START_TIMEOUT_S = 180  # a cold interpreter importing torch and transformers on a busy machine


def train_argv(tiny_model: Path, bitext: Path, out: Path, *options: str) -> list[str]:
    return [
        "train", "--bitext", str(bitext), "--source-column", "en", "--target-column", "sw",
        "--teacher", str(tiny_model), "--student-layers", "1", "--batch-size", "4",
        "--micro-batch-size", "2", "--lr", "3e-3", "--seed", "3", "--no-progress",
        "--out", str(out), *options,
    ]  # fmt: skip


@pytest.fixture
def bitext(tmp_path) -> Path:
    path = tmp_path / "bitext.tsv"
    write_bitext(path, [(other, english) for english, other in tiny_bitext()], header=("sw", "en"))
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def history_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "history.jsonl").read_text().splitlines()]


@contextlib.contextmanager
def paused_train(name: str, argv: list[str], marker: Path):
    """Run ``train`` in a child process until it is about to rename the file ``name`` into
    place; SIGKILL it when the block ends."""
    command = [sys.executable, __file__, name, str(marker), oct(UMASK), *argv]
    log = marker.with_suffix(".log")
    with open(log, "wb") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the child ended ({child.returncode}) before renaming {name}:\n"
                            f"{log.read_text()}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"the child did not reach the rename of {name}")
            time.sleep(0.05)
        yield child
    finally:
        child.send_signal(signal.SIGKILL)  # a no-op once the child has been reaped
        child.wait()


@pytest.mark.parametrize("killed_at", ["step-00000004.safetensors", "step-00000004.json"])
def test_resume_after_a_kill_in_a_checkpoint_write(tmp_path, tiny_model, bitext, capsys, killed_at):
    out = tmp_path / "run"
    argv = train_argv(tiny_model, bitext, out, "--steps", "6", "--checkpoint-every", "2")
    resume = [*argv, "--resume", str(out / "checkpoints")]
    with paused_train(killed_at, argv, tmp_path / "paused"):
        assert main(resume) == 1  # the child holds the folder
        assert f"another process is training into {out}" in capsys.readouterr().err

    left = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert [name for name in left if name.startswith(f".{killed_at}.")]  # the kill's leftover
    assert history_steps(out) == [1, 2, 3, 4]  # logged before the checkpoint, which has step 2
    assert main(train_argv(tiny_model, bitext, out, "--steps", "6")) == 1
    assert "already holds a run" in capsys.readouterr().err  # a fresh run may not take it over

    previous = os.umask(UMASK)
    try:
        assert main(resume) == 0
    finally:
        os.umask(previous)
    assert history_steps(out) == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 are not logged twice
    files = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in files] == [
        "step-00000004.json", "step-00000004.safetensors",
        "step-00000006.json", "step-00000006.safetensors",
    ]  # no partial file left, and the step-2 checkpoint pruned  # fmt: skip
    for path in [*files, out / "history.jsonl"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path

    # The history of the killed and resumed run is the uninterrupted run's.
    config = tiny_config(tiny_model, steps=6, checkpoint_every=2)
    straight = DistillationTrainer(config, tiny_bitext()).fit(progress=False)
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == [r["loss"] for r in straight]


def test_a_run_never_deletes_or_shadows_another_runs_files(tmp_path, tiny_model, bitext, capsys):
    out, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    assert main(train_argv(tiny_model, bitext, out, "--steps", "4", "--checkpoint-every", "1")) == 0
    assert main(train_argv(tiny_model, bitext, elsewhere, "--steps", "1")) == 0
    before = snapshot(out)
    capsys.readouterr()

    # A shorter run into the folder would prune its own new checkpoint (step 2 < 3, 4) and
    # leave the old run's step 4 to `evaluate --checkpoint run/checkpoints`.
    assert main(train_argv(tiny_model, bitext, out, "--steps", "2")) == 1
    assert "already holds a run" in capsys.readouterr().err
    for resume in (elsewhere / "checkpoints", out / "checkpoints" / "step-00000003.json"):
        argv = [*train_argv(tiny_model, bitext, out, "--steps", "6"), "--resume", str(resume)]
        assert main(argv) == 1
        assert "holds checkpoints up to step 4" in capsys.readouterr().err
    assert snapshot(out) == before

    argv = train_argv(tiny_model, bitext, out, "--steps", "5")
    assert main([*argv, "--resume", str(out / "checkpoints")]) == 0
    assert history_steps(out) == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (out / "checkpoints").glob("*.json")) == [
        "step-00000004.json", "step-00000005.json",
    ]  # fmt: skip


def test_a_fresh_run_removes_only_what_killed_writers_left(tmp_path, tiny_model):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    ours = ["checkpoints/.step-00000001.safetensors.99.partial",
            "checkpoints/step-00000002.safetensors", ".history.jsonl.7.partial"]  # fmt: skip
    foreign = ["notes.md", "checkpoints/README", "checkpoints/.tmpx1y2z3",
               ".history.jsonl.bak.7.partial", "checkpoints/.step-00000001.json.tmp"]  # fmt: skip
    for name in ours + foreign:
        (out / name).write_bytes(b"x")
    config = tiny_config(tiny_model, steps=1)
    DistillationTrainer(config, tiny_bitext()).fit(out_dir=out, progress=False)
    assert sorted(snapshot(out)) == sorted([
        *foreign, "history.jsonl", "checkpoints/step-00000001.json",
        "checkpoints/step-00000001.safetensors",
    ])  # fmt: skip


if __name__ == "__main__":
    # The child of paused_train: python test_run_safety.py NAME MARKER UMASK ARGV...
    import torch

    from optical_ops.training import cli

    name, marker, umask, *argv = sys.argv[1:]
    os.umask(int(umask, 8))
    torch.set_num_threads(1)
    rename = os.replace

    def replace(source, destination):
        if Path(destination).name == name:
            Path(marker).write_text(str(os.getpid()))
            time.sleep(3600)
        rename(source, destination)

    os.replace = replace
    sys.exit(cli.main(argv))
