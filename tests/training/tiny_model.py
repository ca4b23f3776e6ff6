"""A tiny random BERT with a word-level tokenizer, saved as a Hugging Face folder.

Small enough that a training step takes milliseconds; used instead of multilingual-e5-small
wherever the test is about plumbing, not about the model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from optical_ops.training.distillation.config import TrainConfig

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
WORDS = (
    "query: all human beings are born free and equal in dignity rights everyone has the right to "
    "life liberty security of person watu wote wamezaliwa huru sawa kwa heshima haki kila mtu "
    "ana uhai uhuru usalama wake kaikki ihmiset syntyvät vapaina tasavertaisina arvoltaan"
).split()


def tiny_bitext() -> list[tuple[str, str]]:
    """Twelve (english, other) pairs over the tiny vocabulary, of different lengths."""
    english, other = WORDS[1:25], WORDS[25:]
    return [
        (" ".join(english[k : k + 2 + k % 5]), " ".join(other[k % 9 : k % 9 + 1 + k % 4]))
        for k in range(12)
    ]


def tiny_config(tiny_model: Path, **changes) -> TrainConfig:
    """A short, fast run of a 1-layer student of the tiny model on :func:`tiny_bitext`."""
    config = TrainConfig(
        bitext="tiny.tsv", teacher=str(tiny_model), student_layers=1, steps=10,
        batch_size=4, micro_batch_size=2, lr=3e-3, seed=3,
    )  # fmt: skip
    return dataclasses.replace(config, **changes)


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write config, random weights and tokenizer of a 2-layer, 16-wide BERT into ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tokens = SPECIAL_TOKENS + tuple(dict.fromkeys(WORDS))
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
        cls_token="[CLS]", sep_token="[SEP]", model_max_length=64,
    )  # fmt: skip
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
