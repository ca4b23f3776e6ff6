r"""The student's trainable top: the last layers of a BERT encoder, run on cached states.

With the lower :math:`k` layers frozen, the student is :math:`S = T_{top} \circ F_k` and
:math:`F_k(x)` (the hidden states after layer :math:`k`) never changes during training, so it is
computed once per text (:mod:`.features`) and only :math:`T_{top}` runs at every step. This module
is :math:`T_{top}`: post-LayerNorm BERT layers,

    h = LN(x + W_o · MHA(x W_q, x W_k, x W_v; mask)),    out = LN(h + W_2 · gelu(W_1 h)),

with their own parameters, initialised as copies of the model's (no dropout: the grid trains
with dropout 0, as the trainer's default). It runs on padded (B, L, d) states with a (B, L)
attention mask and does not need ``transformers`` at run time; ``test_grid`` checks it against
the model's own forward.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class TopLayer(nn.Module):
    """One post-LN BERT layer with the weights of a ``transformers`` ``BertLayer``."""

    def __init__(self, bert_layer: nn.Module, num_heads: int, layer_norm_eps: float):
        super().__init__()
        attention = bert_layer.attention
        self.query = copy.deepcopy(attention.self.query)
        self.key = copy.deepcopy(attention.self.key)
        self.value = copy.deepcopy(attention.self.value)
        self.attention_out = copy.deepcopy(attention.output.dense)
        self.attention_norm = copy.deepcopy(attention.output.LayerNorm)
        self.intermediate = copy.deepcopy(bert_layer.intermediate.dense)
        self.output = copy.deepcopy(bert_layer.output.dense)
        self.output_norm = copy.deepcopy(bert_layer.output.LayerNorm)
        self.num_heads = num_heads
        for norm in (self.attention_norm, self.output_norm):
            norm.eps = layer_norm_eps

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, L, d) states, (B, 1, 1, L) bool keys to attend to -> (B, L, d)."""
        q, k, v = (self._heads(proj(x)) for proj in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        attended = attended.transpose(1, 2).reshape(x.shape)
        h = self.attention_norm(x + self.attention_out(attended))
        return self.output_norm(h + self.output(F.gelu(self.intermediate(h))))


class TopLayers(nn.Module):
    """``top(states (B, L, d), mask (B, L)) -> (B, L, d)``: the last ``count`` layers of the
    BERT-family ``model`` (a ``transformers`` ``BertModel``), as trainable copies."""

    def __init__(self, model: nn.Module, count: int):
        super().__init__()
        layers = model.encoder.layer
        if not 1 <= count <= len(layers):
            raise ValueError(
                f"count must be in [1, {len(layers)}] (the model's layers), got {count}"
            )
        config = model.config
        self.layers = nn.ModuleList(
            TopLayer(layer, config.num_attention_heads, config.layer_norm_eps)
            for layer in layers[len(layers) - count :]
        )
        self.requires_grad_(True)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.bool()[:, None, None, :]
        for layer in self.layers:
            states = layer(states, keep)
        return states
