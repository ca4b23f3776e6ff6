"""Seeded global batches, rank shards, length-sorted micro-batches and padding."""

import pytest
import torch

from optical_ops.training.distillation.batching import global_batch, micro_batches, pad, shard


def test_each_epoch_visits_every_pair_once_in_a_seeded_order():
    batches = [global_batch(step, 12, 4, seed=7) for step in range(6)]
    first_epoch = [i for batch in batches[:3] for i in batch]
    second_epoch = [i for batch in batches[3:] for i in batch]
    assert sorted(first_epoch) == sorted(second_epoch) == list(range(12))
    assert first_epoch != second_epoch  # reshuffled
    assert batches == [global_batch(step, 12, 4, seed=7) for step in range(6)]
    assert batches != [global_batch(step, 12, 4, seed=8) for step in range(6)]


def test_batches_run_across_epoch_boundaries():
    stream = [i for step in range(3) for i in global_batch(step, 5, 4, seed=0)]
    assert sorted(stream[:5]) == sorted(stream[5:10]) == list(range(5))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_shards_partition_the_global_batch(world_size):
    batch = global_batch(3, 20, 7, seed=1)
    shards = [shard(batch, rank, world_size) for rank in range(world_size)]
    assert sorted(i for part in shards for i in part) == sorted(batch)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_micro_batches_group_similar_lengths():
    lengths = [5, 1, 9, 3, 7, 3]
    assert micro_batches([0, 1, 2, 3, 4, 5], lengths, 4) == [[1, 3, 5, 0], [4, 2]]
    assert micro_batches([2, 0], lengths, 8) == [[0, 2]]


def test_pad_right_pads_ids_and_masks():
    input_ids, mask = pad([[5, 6, 7], [8]], pad_id=1)
    assert input_ids.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert input_ids.dtype == mask.dtype == torch.long


def test_global_batch_rejects_empty_data():
    with pytest.raises(ValueError, match="num_pairs"):
        global_batch(0, 0, 4, seed=0)
