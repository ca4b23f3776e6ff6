"""IDF token weights, checked by hand."""

import math

import pytest
import torch

from optical_ops.training.distillation.idf import idf_table


def test_idf_by_hand():
    # 3 texts over a vocabulary of 5: token 0 in all, 1 in two (twice in one), 2 in one.
    table = idf_table([[0, 1, 1], [0, 1, 2], [0]], vocab_size=5)
    expected = [
        math.log(4 / 4) + 1,  # df 3
        math.log(4 / 3) + 1,  # df 2: repeats within a text count once
        math.log(4 / 2) + 1,  # df 1
        math.log(4 / 1) + 1,  # never seen
        math.log(4 / 1) + 1,
    ]
    assert table.dtype == torch.float32
    assert table.tolist() == pytest.approx(expected)


def test_idf_needs_texts():
    with pytest.raises(ValueError, match="at least one text"):
        idf_table([], vocab_size=3)
