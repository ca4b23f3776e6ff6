"""Two CPU processes under torchrun (gloo, loopback) reach what one process reaches."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_model import tiny_bitext

from optical_ops.training.bitext.formats import write_bitext
from optical_ops.training.cli import main
from optical_ops.training.distillation.checkpoint import load_checkpoint


def train_arguments(tiny_model, bitext, out):
    return [
        "train", "--bitext", str(bitext), "--teacher", str(tiny_model), "--student-layers", "1",
        "--steps", "3", "--batch-size", "6", "--micro-batch-size", "2", "--lr", "3e-3",
        "--seed", "5", "--no-progress", "--out", str(out),
    ]  # fmt: skip


def losses(out):
    lines = (out / "history.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_two_processes_match_one(tiny_model, tmp_path):
    bitext = tmp_path / "tiny.tsv"
    write_bitext(bitext, tiny_bitext())
    env = {
        **os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "optical_ops.training", *train_arguments(tiny_model, bitext, tmp_path / "two"),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr or b""  # bytes, even with text=True
        tail = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        pytest.fail(f"torchrun did not finish in 300 s; its stderr ends:\n{tail[-4000:]}")
    assert done.returncode == 0, done.stderr[-4000:]
    assert main(train_arguments(tiny_model, bitext, tmp_path / "one")) == 0

    two = load_checkpoint(tmp_path / "two" / "checkpoints")
    one = load_checkpoint(tmp_path / "one" / "checkpoints")
    assert two.step == one.step == 3
    torch.testing.assert_close(
        torch.tensor(losses(tmp_path / "two")), torch.tensor(losses(tmp_path / "one")),
        rtol=1e-6, atol=1e-7,
    )  # fmt: skip
    for name, value in one.model.items():
        torch.testing.assert_close(two.model[name], value, rtol=1e-5, atol=1e-6, msg=name)
