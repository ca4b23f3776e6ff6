"""Token states of the frozen teacher, memoised per text.

The teacher is frozen and in eval mode, so its states for a text never change: each distinct
text is encoded once, alone (see ``_encode``), and kept as an (L, d) tensor on the teacher's
device (UDHR: every language pairs with the same ~60 English paragraphs). With
``memoise=False`` states are recomputed every time, for corpora too large to keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TeacherStates:
    """``states(id_lists) -> (hidden (B, m, d), attention_mask (B, m))`` of layer ``layer``.

    ``layer`` indexes the hidden states as transformers returns them: 0 is the embedding
    output, ``k`` the output of layer k, -1 (default) the last layer.
    """

    def __init__(self, model: nn.Module, layer: int = -1, memoise: bool = True):
        self.model = model
        self.layer = layer
        self.memo: dict[tuple[int, ...], torch.Tensor] | None = {} if memoise else None

    @torch.no_grad()
    def _encode(self, ids: Sequence[int]) -> torch.Tensor:
        # One text at a time: with no padding and no batch, a text's states are bitwise the
        # same whichever batch asked for them, so resumed and sharded runs see the same teacher.
        device = next(self.model.parameters()).device
        input_ids = torch.as_tensor([ids], dtype=torch.long, device=device)
        output = self.model(input_ids=input_ids, output_hidden_states=self.layer != -1)
        hidden = output.last_hidden_state if self.layer == -1 else output.hidden_states[self.layer]
        return hidden[0]

    def __call__(self, id_lists: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.memo is None:
            states = [self._encode(ids) for ids in id_lists]
        else:
            keys = [tuple(ids) for ids in id_lists]
            for key in keys:
                if key not in self.memo:
                    self.memo[key] = self._encode(key)
            states = [self.memo[key] for key in keys]
        width = max(s.shape[0] for s in states)
        hidden = states[0].new_zeros((len(states), width, states[0].shape[1]))
        mask = torch.zeros((len(states), width), dtype=torch.long, device=hidden.device)
        for row, s in enumerate(states):
            hidden[row, : s.shape[0]] = s
            mask[row, : s.shape[0]] = 1
        return hidden, mask
