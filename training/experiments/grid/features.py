"""Token states that never change during a grid, computed once and cached on disk.

With the student's lower k layers frozen (and the teacher frozen whole), these are fixed for
every strategy and seed of a grid: the student's layer-k states of its training texts and of
the test queries (clean and perturbed), the teacher's last-layer states of the English training
texts, and the teacher's mean-pooled, L2-normalised embeddings of the English documents.

A :class:`RaggedStates` keeps N texts' token states unpadded in float16 (half the disk and
memory; the head and the loss compute in float32). A cache file is named by the SHA-256 of
everything that decides its contents (the model's files, the layer, prefix, length limit and the
texts themselves), written atomically, and never shared between different inputs: a changed
corpus or model is computed anew, never read stale.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...distillation.batching import pad
from ...models.e5_model import default_cache_dir, mean_pool

FEATURES_VERSION = 1
"""Bumped when the cached format or the computation changes: older files are not read."""


@dataclass(frozen=True)
class RaggedStates:
    """Token states of N texts: text i's (L_i, d) states are ``states[offsets[i]:offsets[i+1]]``
    and its token ids ``ids[offsets[i]:offsets[i+1]]``."""

    states: torch.Tensor  # (sum L_i, d) float16
    ids: torch.Tensor  # (sum L_i,) int32
    offsets: torch.Tensor  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``rows`` right-padded: float32 states (B, L, d), mask (B, L), ids (B, L)."""
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]
        width = max(stop - start for start, stop in spans)
        states = torch.zeros((len(rows), width, self.states.shape[1]))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (start, stop) in enumerate(spans):
            states[row, : stop - start] = self.states[start:stop].float()
            ids[row, : stop - start] = self.ids[start:stop]
            mask[row, : stop - start] = 1
        return states, mask, ids

    def token_ids(self) -> list[list[int]]:
        """Each text's token ids, as lists."""
        return [
            self.ids[start:stop].tolist()
            for start, stop in zip(self.offsets[:-1], self.offsets[1:])
        ]


def shallow_encoder(model: nn.Module, num_layers: int) -> nn.Module:
    """``model`` (BERT family) cut after its first ``num_layers`` layers; the parameters are
    shared, not copied, and ``model`` itself is unchanged."""
    layers = model.encoder.layer
    if not 0 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be in [0, {len(layers)}], got {num_layers}")
    cut = copy.copy(model)
    cut._modules = dict(model._modules)
    cut.encoder = copy.copy(model.encoder)
    cut.encoder._modules = dict(model.encoder._modules)
    cut.encoder.layer = nn.ModuleList(list(layers)[:num_layers])
    return cut


@torch.inference_mode()
def _forward_sorted(
    model: nn.Module,
    id_lists: list[list[int]],
    pad_id: int,
    batch_size: int,
    store: Callable[[list[int], torch.Tensor, torch.Tensor], None],
) -> None:
    """Run ``model`` on batches of texts of similar length; ``store(rows, hidden, mask)``."""
    order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
    model.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = pad([id_lists[i] for i in rows], pad_id)
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        store(rows, hidden.float(), mask)


def _token_ids(tokenizer, texts: Sequence[str], prefix: str, max_length: int) -> list[list[int]]:
    return tokenizer([prefix + text for text in texts], truncation=True, max_length=max_length)[
        "input_ids"
    ]


def compute_states(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    prefix: str,
    num_layers: int,
    max_length: int,
    batch_size: int = 32,
) -> RaggedStates:
    """The states after layer ``num_layers`` of ``prefix + text`` for each of ``texts``."""
    id_lists = _token_ids(tokenizer, texts, prefix, max_length)
    lengths = torch.tensor([len(ids) for ids in id_lists])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    states = torch.zeros((int(offsets[-1]), model.config.hidden_size), dtype=torch.float16)
    ids = torch.tensor([i for row in id_lists for i in row], dtype=torch.int32)

    def store(rows, hidden, mask):
        for row, h in zip(rows, hidden):
            start, stop = int(offsets[row]), int(offsets[row + 1])
            states[start:stop] = h[: stop - start].half()

    _forward_sorted(
        shallow_encoder(model, num_layers), id_lists, tokenizer.pad_token_id, batch_size, store
    )
    return RaggedStates(states, ids, offsets)


def compute_embeddings(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    prefix: str,
    max_length: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """(N, d) float32 mean-pooled, L2-normalised last-layer embeddings of ``prefix + text``."""
    embeddings = torch.zeros((len(texts), model.config.hidden_size))

    def store(rows, hidden, mask):
        embeddings[rows] = nn.functional.normalize(mean_pool(hidden, mask), dim=-1)

    id_lists = _token_ids(tokenizer, texts, prefix, max_length)
    _forward_sorted(model, id_lists, tokenizer.pad_token_id, batch_size, store)
    return embeddings


def _stored(value: RaggedStates | torch.Tensor) -> dict | torch.Tensor:
    """Plain tensors on disk (loaded with ``weights_only``; no class path to go stale)."""
    if isinstance(value, RaggedStates):
        return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    return value


def _loaded(value: dict | torch.Tensor) -> RaggedStates | torch.Tensor:
    return RaggedStates(**value) if isinstance(value, dict) else value


def model_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of a model folder's files."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


class FeatureCache:
    """``cache.get(kind, settings, texts, compute)``: the cached result of ``compute()`` for
    these settings and texts, computed and saved on first use. Files live in ``folder``
    (default ``~/.cache/optical-ot/features``), one per distinct input."""

    def __init__(self, folder: Path | None = None, log: Callable[[str], None] = print):
        self.folder = Path(folder) if folder is not None else default_cache_dir() / "features"
        self.log = log

    def path(self, kind: str, settings: dict, texts: Sequence[str]) -> Path:
        digest = hashlib.sha256(
            json.dumps(
                {"version": FEATURES_VERSION, "kind": kind, **settings}, sort_keys=True
            ).encode()
        )
        for text in texts:
            digest.update(text.encode() + b"\0")
        return self.folder / f"{kind}-{digest.hexdigest()[:24]}.pt"

    def get(
        self, kind: str, settings: dict, texts: Sequence[str],
        compute: Callable[[], RaggedStates | torch.Tensor],
    ) -> RaggedStates | torch.Tensor:  # fmt: skip
        path = self.path(kind, settings, texts)
        if path.is_file():
            return _loaded(torch.load(path, weights_only=True))
        started = time.perf_counter()
        value = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(_stored(value), staging)
        os.replace(staging, path)
        self.log(
            f"  cached {kind} of {len(texts)} texts in "
            f"{time.perf_counter() - started:.0f} s: {path.name}"
        )
        return value
