"""Training checkpoints: safetensors for tensors, a JSON sidecar for the rest; no pickle.

A checkpoint at step s is two files in one folder::

    step-0000000s.safetensors   "model.<name>": each trainable student parameter
                                "optimizer.<i>.<key>": each tensor of the optimiser state of
                                parameter i (AdamW: step, exp_avg, exp_avg_sq)
    step-0000000s.json          format, step, config, the trainable names in order, the
                                optimiser's param_groups and non-tensor state, and the SHA-256
                                of the safetensors file

Each file is written to a temporary name in the same folder, flushed to disk and renamed into
place (``os.replace`` is atomic), the JSON last: a checkpoint exists once its JSON does, and the
hash catches a tensors file that does not belong to it. Loading reads only safetensors and JSON,
so a checkpoint cannot run code. Frozen parameters are not stored: they are rebuilt from the
config's model folder. There is no RNG state to store: data order and dropout seeds are
functions of (seed, step, rank) (:mod:`.batching`, :mod:`.trainer`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT = "optical-ot-checkpoint-1"
_NAME = re.compile(r"^step-(\d{8})\.json$")


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``optimizer`` is in ``torch.optim.Optimizer.state_dict()`` form."""

    step: int
    config: dict
    model: dict[str, torch.Tensor]
    optimizer: dict
    path: Path


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(temporary path)``, fsync, then rename onto ``path``."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_paths(directory: Path, step: int) -> tuple[Path, Path]:
    """``(tensors, sidecar)`` paths of the checkpoint at ``step`` in ``directory``."""
    stem = Path(directory) / f"step-{step:08d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def list_checkpoints(directory: Path) -> list[Path]:
    """The sidecars of the complete checkpoints in ``directory``, oldest first."""
    if not Path(directory).is_dir():
        return []
    return sorted(p for p in Path(directory).iterdir() if _NAME.match(p.name))


def save_checkpoint(
    directory: Path,
    step: int,
    config: dict,
    model: dict[str, torch.Tensor],
    optimizer_state: dict,
    keep: int = 0,
) -> Path:
    """Write the checkpoint at ``step``; keep only the newest ``keep`` (0: all). Returns the
    sidecar path. ``optimizer_state`` is ``optimizer.state_dict()``; its parameter indices must
    follow the order of ``model``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{name}": t.detach().cpu().contiguous() for name, t in model.items()}
    scalars: dict[str, dict] = {}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors_path, sidecar_path = checkpoint_paths(directory, step)
    _write_atomically(tensors_path, lambda temporary: save_file(tensors, temporary))
    sidecar = {
        "format": FORMAT,
        "step": step,
        "config": config,
        "trainable": list(model),
        "optimizer_param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "tensors_sha256": _sha256(tensors_path),
        "torch_version": torch.__version__,
    }
    text = json.dumps(sidecar, indent=2) + "\n"
    _write_atomically(sidecar_path, lambda temporary: Path(temporary).write_text(text))
    if keep:
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink()  # the sidecar first: a half-deleted checkpoint is not complete
            old.with_suffix(".safetensors").unlink(missing_ok=True)
    return sidecar_path


def resolve_checkpoint(path: Path) -> Path:
    """The sidecar for ``path``: a checkpoint folder (its newest), a sidecar or a tensors file."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"no complete checkpoint (step-*.json) in {path}")
        return found[-1]
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"checkpoint {sidecar} does not exist")
    return sidecar


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (see :func:`resolve_checkpoint`)."""
    from safetensors.torch import load_file

    sidecar_path = resolve_checkpoint(path)
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{sidecar_path}: not a checkpoint sidecar ({error})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise ValueError(f"{sidecar_path}: not an {FORMAT} sidecar")
    tensors_path = sidecar_path.with_suffix(".safetensors")
    if not tensors_path.is_file():
        raise FileNotFoundError(f"{tensors_path} is missing (checkpoint {sidecar_path})")
    if _sha256(tensors_path) != sidecar["tensors_sha256"]:
        raise ValueError(f"{tensors_path} does not match the SHA-256 in {sidecar_path}")
    tensors = load_file(str(tensors_path))
    model = {name: tensors[f"model.{name}"] for name in sidecar["trainable"]}
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in sidecar["optimizer_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return Checkpoint(
        step=sidecar["step"],
        config=sidecar["config"],
        model=model,
        optimizer={"state": state, "param_groups": sidecar["optimizer_param_groups"]},
        path=sidecar_path,
    )
