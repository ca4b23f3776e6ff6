"""Global batches of a seeded pair stream, each rank's shard of them, and padded id tensors.

The data order is a pure function of (seed, step): the stream is the concatenation of one
seeded permutation of the N pairs per epoch, and step s takes its positions
[s G, (s + 1) G) for the global batch size G. Rank r of W takes every W-th pair of that global
batch, so W processes see exactly the pairs 1 process sees, and a resumed run the pairs the
uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

_EPOCH_STRIDE = 1_000_003  # a prime, so (seed, epoch) pairs map to distinct generator seeds


@lru_cache(maxsize=4)
def _epoch_order(num_pairs: int, seed: int, epoch: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed * _EPOCH_STRIDE + epoch)
    return tuple(torch.randperm(num_pairs, generator=generator).tolist())


def global_batch(step: int, num_pairs: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the pairs in global batch ``step`` (0-based)."""
    if num_pairs < 1 or batch_size < 1 or step < 0:
        raise ValueError(f"need num_pairs, batch_size >= 1 and step >= 0, got "
                         f"{num_pairs}, {batch_size}, {step}")
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [_epoch_order(num_pairs, seed, p // num_pairs)[p % num_pairs] for p in positions]


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s share of a global batch: every ``world_size``-th index from ``rank``."""
    return list(indices[rank::world_size])


def micro_batches(indices: Sequence[int], lengths: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` sorted by ``lengths[i]`` (then index) and cut into chunks of ``size``.

    Pairs of similar length share a micro-batch, so little of each forward pass is padding.
    """
    ordered = sorted(indices, key=lambda i: (lengths[i], i))
    return [ordered[start : start + size] for start in range(0, len(ordered), size)]


def pad(id_lists: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, (B, L) int64 each, L the longest list, right-padded."""
    width = max(len(ids) for ids in id_lists)
    input_ids = torch.full((len(id_lists), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(id_lists), width), dtype=torch.long)
    for row, ids in enumerate(id_lists):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask
