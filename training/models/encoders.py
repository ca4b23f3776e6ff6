"""The teacher and the student: Hugging Face encoders loaded offline from local folders.

* teacher: any ``AutoModel`` folder (default: the offline multilingual-e5-small,
  :func:`~.e5_model.ensure_e5_model`), in eval mode with every parameter frozen;
* student: an ``AutoModel`` initialised from a folder (default: the teacher's), optionally cut
  to its first ``num_layers`` layers, with its word embeddings optionally frozen, optionally
  only its top ``trainable_layers`` layers trained, and its dropout set. multilingual-e5-small
  cut to 4 layers with frozen word embeddings trains ~7.3 M parameters; kept whole with its
  top 4 layers trainable, ~7.1 M.

Neither uses a pooler (sentence embeddings are mean-pooled token states), so a pooler the
architecture builds is frozen: it must not count as an unused trainable parameter under DDP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from torch import nn

from .e5_model import ensure_e5_model

# Dropout names of the BERT family (BERT, RoBERTa, XLM-R, e5).
DROPOUT_ATTRIBUTES = ("hidden_dropout_prob", "attention_probs_dropout_prob")


class ModelDirectoryError(FileNotFoundError):
    """A model path that is not a Hugging Face model folder."""


class Encoder(NamedTuple):
    model: nn.Module
    tokenizer: object


def resolve_model_dir(path: str | Path | None, role: str) -> Path:
    """``path`` checked to be a Hugging Face folder; ``None`` is the offline e5 folder."""
    if path is None:
        return ensure_e5_model()
    folder = Path(path)
    if not folder.is_dir():
        raise ModelDirectoryError(
            f"{role} model directory {folder} does not exist (expected a Hugging Face model "
            "folder with config.json, weights and tokenizer files)"
        )
    if not (folder / "config.json").is_file():
        raise ModelDirectoryError(
            f"{role} model directory {folder} has no config.json: not a Hugging Face model folder"
        )
    return folder


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence load reports (a cut student drops layers on purpose) and progress bars."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _freeze(module: nn.Module | None) -> None:
    if module is not None:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def load_teacher(path: str | Path | None) -> Encoder:
    """The frozen teacher and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_model_dir(path, "teacher")
    with _quiet_transformers():
        model = AutoModel.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    _freeze(model)
    return Encoder(model.eval(), tokenizer)


def load_student(
    path: str | Path | None,
    *,
    num_layers: int | None = None,
    freeze_word_embeddings: bool = True,
    trainable_layers: int | None = None,
    dropout: float | None = None,
) -> Encoder:
    """The student and its tokenizer, in train mode.

    ``num_layers`` keeps the first layers of the initial model (``None``: all of them);
    ``trainable_layers`` freezes everything but the top layers (``None``: all train; needs the
    BERT-family ``encoder.layer`` list); ``dropout`` replaces the BERT-family dropout
    probabilities (``None``: keep the config's).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = resolve_model_dir(path, "student")
    config = AutoConfig.from_pretrained(folder)
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise ValueError(
                f"the student can keep 1 to {config.num_hidden_layers} layers of {folder}, "
                f"not {num_layers}"
            )
        config.num_hidden_layers = num_layers
    if dropout is not None:
        for name in DROPOUT_ATTRIBUTES:
            if hasattr(config, name):
                setattr(config, name, dropout)
    with _quiet_transformers():
        model = AutoModel.from_pretrained(folder, config=config)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    _freeze(getattr(model, "pooler", None))
    if freeze_word_embeddings:
        _freeze(model.get_input_embeddings())
    if trainable_layers is not None:
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if layers is None or not 1 <= trainable_layers <= len(layers):
            raise ValueError(
                f"trainable_layers={trainable_layers} needs a BERT-family student with at least "
                f"that many layers in model.encoder.layer ({folder})"
            )
        trainable = {id(p) for layer in layers[-trainable_layers:] for p in layer.parameters()}
        for parameter in model.parameters():
            parameter.requires_grad_(parameter.requires_grad and id(parameter) in trainable)
    return Encoder(model.train(), tokenizer)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the parameters that require grad, in module order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}
