"""Everything that defines a distillation run, checked on construction and saved with it.

A run is reproducible from its :class:`TrainConfig` alone (data order, dropout and sharding are
functions of the seed and the step). On resume only the :data:`SCHEDULE_FIELDS` (how long to
train, how often to evaluate and checkpoint, whether to memoise teacher states) may differ from
the checkpoint's config.

Prefix convention (multilingual-e5): the student learns to be a *query* encoder in the other
language, so both sides of a training pair get ``"query: "``: the student's output for the
other-language query is pulled onto the teacher's output for the English query. At retrieval
the student encodes queries with ``"query: "`` and the teacher English documents with
``"passage: "``, as e5 was trained (:mod:`..evaluation.evaluate`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from optical_ops.costs import COSTS

from .losses import STRATEGIES, OTOptions, distils
from .perturb import LEXICON_KINDS, PERTURBATIONS

TOKEN_WEIGHTS = ("uniform", "idf")
NO_PERTURBATION = "none"
INPUT_PERTURBATIONS = (NO_PERTURBATION, *PERTURBATIONS)
SCHEDULE_FIELDS = frozenset(
    {"steps", "eval_every", "checkpoint_every", "keep_checkpoints", "memoise_teacher"}
)


def _option(default, help_text: str, choices: tuple[str, ...] | None = None):
    """A config field with its command-line help and allowed values (read by :mod:`..cli`)."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """One distillation run. Model paths of ``None`` mean the offline multilingual-e5-small."""

    languages: tuple[str, ...] = _option((), "UDHR languages to train on (their train split)")
    bitext: str | None = _option(None, "a TSV bitext to train on instead of UDHR")
    source_column: str | None = _option(None, "bitext header column of the teacher (English)")
    target_column: str | None = _option(None, "bitext header column of the student")
    teacher: str | None = _option(None, "teacher model folder (default: multilingual-e5-small)")
    student_init: str | None = _option(None, "student's initial model folder (default: teacher)")
    student_layers: int | None = _option(4, "keep the first N layers of the student (none: all)")
    freeze_word_embeddings: bool = _option(True, "freeze the student's word embeddings")
    trainable_layers: int | None = _option(None, "train only the top N layers (none: all)")
    dropout: float = _option(0.0, "student dropout; 0 keeps 1 and N processes identical")
    teacher_layer: int = _option(-1, "teacher hidden-state index (0: embeddings, -1: last)")
    teacher_prefix: str = _option("query: ", "prefix of the teacher's (English) texts")
    student_prefix: str = _option("query: ", "prefix of the student's texts")
    max_length: int = _option(96, "tokens per text, prefix and special tokens included")
    strategy: str = _option(
        "optical",
        "loss: optical (token-level OT), mse (mean-pooled), token-mse (hard-aligned tokens) "
        "or none (no distillation)",
        STRATEGIES,
    )
    cost: str = _option("cosine", "OT cost: cosine (1 - cos) or sqeuclidean", COSTS)
    eps: float = _option(0.05, "entropic regularisation, in cost units")
    sinkhorn_iters: int = _option(50, "Sinkhorn iterations")
    token_weights: str = _option(
        "uniform", "OT marginals: uniform or idf (of the train bitext)", TOKEN_WEIGHTS
    )
    tau: float | None = _option(None, "unbalanced OT: KL penalty on the marginals (none: balanced)")
    debias: bool = _option(False, "OT: the debiased Sinkhorn divergence (balanced OT only)")
    adversarial_input: str = _option(
        NO_PERTURBATION, "perturb the student's training texts (none: clean)", INPUT_PERTURBATIONS
    )
    adversarial_rate: float = _option(0.1, "fraction of a student text's words perturbed")
    adversarial_epsilon: float = _option(0.0, "FGSM step on student input embeddings (0: off)")
    adversarial_weight: float = _option(1.0, "weight of the loss on the FGSM input")
    steps: int = _option(100, "optimiser steps")
    batch_size: int = _option(16, "pairs per step over all processes")
    micro_batch_size: int = _option(8, "pairs per forward pass (gradients accumulate)")
    lr: float = _option(1e-4, "AdamW learning rate (constant)")
    weight_decay: float = _option(0.01, "AdamW weight decay")
    max_grad_norm: float = _option(1.0, "clip the global gradient norm to this")
    seed: int = _option(0, "seed of the data order, initialisation and dropout")
    eval_every: int = _option(0, "evaluate every N steps and at the end (0: never)")
    checkpoint_every: int = _option(0, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _option(2, "keep the newest N checkpoints (0: all)")
    memoise_teacher: bool = _option(True, "keep the teacher's states of each text in memory")

    def __post_init__(self):
        self._check_types()
        if bool(self.languages) == (self.bitext is not None):
            raise ValueError("give either UDHR languages or a bitext file, not both or neither")
        if (self.source_column is None) != (self.target_column is None):
            raise ValueError("name both the source and the target column, or neither")
        for field in dataclasses.fields(self):
            allowed = field.metadata["choices"]
            if allowed and getattr(self, field.name) not in allowed:
                raise ValueError(
                    f"{field.name} must be one of {allowed}, got {getattr(self, field.name)!r}"
                )
        positive = ("steps", "batch_size", "micro_batch_size", "sinkhorn_iters", "max_length")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eps", "lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "keep_checkpoints", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError(f"trainable_layers must be >= 1, got {self.trainable_layers}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self._check_strategy_options()

    def _check_types(self) -> None:
        """Each field of its annotated type, so that a value from a TOML or JSON file fails
        here, not when the models have loaded (``steps = 2.5``, ``debias = "no"``). An int is a
        float; paths become strings; ``languages`` a tuple of strings."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = field.type.removesuffix(" | None")
            if value is None and kind != field.type:
                continue
            if kind == "tuple[str, ...]":
                ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
                value, expected = tuple(value) if ok else value, "a list of strings"
            elif kind == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value, expected = float(value) if ok else value, "a number"
            elif kind == "int":
                ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
            elif kind == "bool":
                ok, expected = isinstance(value, bool), "true or false"
            else:
                ok = isinstance(value, (str, os.PathLike))
                value, expected = os.fspath(value) if ok else value, "a string"
            if not ok:
                expected += " or none" if kind != field.type else ""
                raise ValueError(f"{field.name} must be {expected}, got {value!r}")
            object.__setattr__(self, field.name, value)

    def _check_strategy_options(self) -> None:
        if self.tau is not None and not self.tau > 0:
            raise ValueError(f"tau must be none (balanced OT) or > 0, got {self.tau}")
        ot_options = {"tau": self.tau is not None, "debias": self.debias}
        used = [name for name, on in ot_options.items() if on]
        if used and self.strategy != "optical":
            verb = "applies" if len(used) == 1 else "apply"
            raise ValueError(f"{' and '.join(used)} {verb} to the optical strategy only, "
                             f"not {self.strategy!r}")  # fmt: skip
        if self.debias and self.tau is not None:
            raise ValueError("debias is defined for balanced OT only: leave tau none")
        if not 0 <= self.adversarial_rate <= 1:
            raise ValueError(f"adversarial_rate must be in [0, 1], got {self.adversarial_rate}")
        for name in ("adversarial_epsilon", "adversarial_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        adversarial = self.adversarial_input != NO_PERTURBATION or self.adversarial_epsilon > 0
        if adversarial and not distils(self.strategy):
            raise ValueError(f"adversarial training needs a distillation loss, not "
                             f"strategy {self.strategy!r}")  # fmt: skip
        if self.adversarial_input in LEXICON_KINDS and not self.languages:
            raise ValueError(f"adversarial_input {self.adversarial_input!r} needs UDHR languages "
                             "(their bilingual dictionaries), not a bitext file")  # fmt: skip

    def ot_options(self) -> OTOptions:
        """The options of the optical loss."""
        return OTOptions(self.cost, self.eps, self.sinkhorn_iters, self.tau, self.debias)

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return {**dataclasses.asdict(self), "languages": list(self.languages)}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
        return cls(**values)

    def differences(self, other: TrainConfig) -> list[str]:
        """Names of the non-schedule fields where ``self`` and ``other`` differ."""
        return [
            field.name
            for field in dataclasses.fields(self)
            if field.name not in SCHEDULE_FIELDS
            and getattr(self, field.name) != getattr(other, field.name)
        ]
