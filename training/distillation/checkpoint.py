"""Training checkpoints: safetensors for tensors, a JSON sidecar for the rest; no pickle.

A checkpoint at step s is two files in one folder::

    step-0000000s.safetensors   "model.<name>": each trainable student parameter
                                "optimizer.<i>.<key>": each tensor of the optimiser state of
                                parameter i (AdamW: step, exp_avg, exp_avg_sq)
    step-0000000s.json          format, step, config, the trainable names in order, the
                                optimiser's param_groups and non-tensor state, and the SHA-256
                                of the safetensors file

Each file is written to a *partial* name in the same folder (``.<name>.<pid>.partial``),
flushed to disk and renamed into place (``os.replace`` is atomic), the JSON last: a checkpoint
exists once its JSON does, and the hash catches a tensors file that does not belong to it. Files
get the mode the umask gives (0666 & ~umask), like any other file the run writes. A process killed
while writing leaves partial files, or a tensors file without its JSON; the run that owns the
folder removes them when it starts (:func:`remove_leftovers`), and no other name is ever deleted.
Pruning (``keep``) deletes only checkpoints older than the one just written. Loading reads only
safetensors and JSON, so a checkpoint cannot run code. Frozen parameters are not stored: they are
rebuilt from the config's model folder. There is no RNG state to store: data order and dropout
seeds are functions of (seed, step, rank) (:mod:`.batching`, :mod:`.trainer`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

FORMAT = "optical-ot-checkpoint-1"
_NAME = re.compile(r"^step-(\d{8})\.json$")
_TENSORS_NAME = re.compile(r"^step-(\d{8})\.safetensors$")
_ANY_NAME = re.compile(r"^step-(\d{8})\.(json|safetensors)$")
PARTIAL = re.compile(r"^\.(.+)\.(\d+)\.partial$")  # .<final name>.<pid>.partial
_SIDECAR_KEYS = {
    "format": str, "step": int, "config": dict, "trainable": list,
    "optimizer_param_groups": list, "optimizer_scalars": dict, "tensors_sha256": str,
}  # fmt: skip


@dataclass
class Checkpoint:
    """A loaded checkpoint; ``optimizer`` is in ``torch.optim.Optimizer.state_dict()`` form."""

    step: int
    config: dict
    model: dict[str, torch.Tensor]
    optimizer: dict
    path: Path


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: a name :data:`PARTIAL`
    matches, with this process's id (two writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to :func:`partial_path`, fsync, rename onto ``path``, fsync the folder.
    The file gets the umask's mode (``open(..., 0o666)``, not ``mkstemp``'s 0600)."""
    temporary = partial_path(path)
    temporary.unlink(missing_ok=True)  # left by a killed process that had this id
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_partial_files(directory: Path, final_names: re.Pattern) -> list[Path]:
    """Remove the partial files (:func:`partial_path`) in ``directory`` of the names
    ``final_names`` matches: what killed writers left. Returns the removed paths."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for path in sorted(directory.iterdir()):
        partial = PARTIAL.match(path.name)
        if partial and final_names.fullmatch(partial[1]) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_leftovers(directory: Path) -> list[Path]:
    """Remove what killed writers left in the checkpoint folder ``directory``: partial
    checkpoint files, and tensors files without their sidecar (written, or half pruned, when
    the process died). Call it only on a folder the current run owns. Returns the removed
    paths."""
    removed = remove_partial_files(directory, _ANY_NAME)
    for path in sorted(Path(directory).glob("step-*.safetensors")):
        if _TENSORS_NAME.match(path.name) and not path.with_suffix(".json").exists():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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


def checkpoint_step(sidecar: Path) -> int:
    """The step in a sidecar's name."""
    return int(_NAME.match(Path(sidecar).name)[1])


def save_checkpoint(
    directory: Path,
    step: int,
    config: dict,
    model: dict[str, torch.Tensor],
    optimizer_state: dict,
    keep: int = 0,
) -> Path:
    """Write the checkpoint at ``step``; then, with ``keep`` > 0, delete the checkpoints before
    it but the newest ``keep`` - 1 (never a later one). Returns the sidecar path.
    ``optimizer_state`` is ``optimizer.state_dict()``; its parameter indices must follow the
    order of ``model``."""
    # safetensors' save_file stages the file under its own name (.tmpXXXXXX, mode 0600), which
    # a killed process would leave behind; serialise here and write it ourselves.
    from safetensors.torch import save

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
    data = save(tensors)
    write_atomically(tensors_path, data)
    sidecar = {
        "format": FORMAT,
        "step": step,
        "config": config,
        "trainable": list(model),
        "optimizer_param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "tensors_sha256": hashlib.sha256(data).hexdigest(),
        "torch_version": torch.__version__,
    }
    text = json.dumps(sidecar, indent=2) + "\n"
    del data
    write_atomically(sidecar_path, text.encode("utf-8"))
    if keep:
        written = [p for p in list_checkpoints(directory) if checkpoint_step(p) <= step]
        for old in written[:-keep]:
            old.unlink()  # the sidecar first: a half-deleted checkpoint is not complete
            old.with_suffix(".safetensors").unlink(missing_ok=True)
    return sidecar_path


def _check_one_run(sidecars: list[Path]) -> None:
    """Refuse a folder whose checkpoints come from runs with different settings (only the
    schedule may differ along one run): its newest would silently stand for all of them."""
    from .config import SCHEDULE_FIELDS

    settings = {}
    for sidecar in sidecars:
        try:
            config = json.loads(sidecar.read_text(encoding="utf-8")).get("config")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue  # load_checkpoint names what is wrong with the one it loads
        if isinstance(config, dict):
            key = {name: value for name, value in config.items() if name not in SCHEDULE_FIELDS}
            settings.setdefault(json.dumps(key, sort_keys=True), []).append(sidecar.name)
    if len(settings) > 1:
        runs = "; ".join(", ".join(names) for names in settings.values())
        raise ValueError(f"{sidecars[0].parent} holds checkpoints of {len(settings)} runs with "
                         f"different settings ({runs}): name the checkpoint file")  # fmt: skip


def resolve_checkpoint(path: Path) -> Path:
    """The sidecar for ``path``: a checkpoint folder (its newest), a sidecar or a tensors file."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"no complete checkpoint (step-*.json) in {path}")
        _check_one_run(found)
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
    bad = [key for key, kind in _SIDECAR_KEYS.items() if not isinstance(sidecar.get(key), kind)]
    if bad:
        raise ValueError(f"{sidecar_path}: not a complete {FORMAT} sidecar: missing or "
                         f"malformed {bad}")  # fmt: skip
    tensors_path = sidecar_path.with_suffix(".safetensors")
    if not tensors_path.is_file():
        raise FileNotFoundError(f"{tensors_path} is missing (checkpoint {sidecar_path})")
    if _sha256(tensors_path) != sidecar["tensors_sha256"]:
        raise ValueError(f"{tensors_path} does not match the SHA-256 in {sidecar_path}")
    tensors = load_file(str(tensors_path))
    missing = [name for name in sidecar["trainable"] if f"model.{name}" not in tensors]
    if missing:
        raise ValueError(f"{tensors_path} lacks the parameters {missing} its sidecar lists")
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
