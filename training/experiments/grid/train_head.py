"""Training the student's top layers on cached states, and encoding queries with them.

One step, for the pairs of global batch s (:func:`~...distillation.batching.global_batch`: a
seeded epoch order, the same as the trainer's), with the student's layer-k states X (cached), the
teacher's English states Y (cached) and the top layers T:

    loss_s = (1/B) Σ_b L(T(X_b), Y_b)

with L the strategy's :func:`~...distillation.losses.pair_losses`, then AdamW with the global
gradient norm clipped, as :class:`~...distillation.trainer.DistillationTrainer` does. Only the
strategy's loss, the learning rate and the seed differ between the runs of a grid. Not supported
here, with a clear error: FGSM (``adversarial_epsilon``, which needs the word embeddings'
gradient, below the cache) and dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...distillation.batching import global_batch
from ...distillation.config import TrainConfig
from ...distillation.idf import idf_table
from ...distillation.losses import PairStates, distils, pair_losses
from ...models.e5_model import mean_pool
from .features import RaggedStates


def check_grid_config(config: TrainConfig) -> None:
    """What a grid run cannot do, named (see the module docstring)."""
    if config.adversarial_epsilon > 0:
        raise ValueError(
            "adversarial_epsilon (FGSM on word embeddings) is not available on "
            "cached states; use adversarial_input"
        )
    if config.dropout > 0:
        raise ValueError(f"dropout must be 0 on cached states, got {config.dropout}")
    if config.student_layers is not None:
        raise ValueError("student_layers must be none: the grid's student is the whole teacher")
    if config.trainable_layers is None:
        raise ValueError("trainable_layers must be set: the layers below them are cached")


def train_head(
    head: nn.Module,
    config: TrainConfig,
    student: RaggedStates,
    teacher: RaggedStates,
    vocab_size: int,
) -> list[float]:
    """Train ``head`` in place on the pairs (``student[i]``, ``teacher[i]``); the loss per step.
    ``student`` holds the texts the strategy trains on (perturbed ones for
    ``adversarial_input``)."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student texts but {len(teacher)} teacher texts")
    if not distils(config.strategy):
        return []
    torch.manual_seed(config.seed)
    idf = None
    if config.token_weights == "idf":
        idf = (
            idf_table(student.token_ids(), vocab_size),
            idf_table(teacher.token_ids(), vocab_size),
        )
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    head.train()
    losses = []
    for step in range(config.steps):
        rows = global_batch(step, len(student), config.batch_size, config.seed)
        x, x_mask, x_ids = student.batch(rows)
        y, y_mask, y_ids = teacher.batch(rows)
        weights = (None, None) if idf is None else (idf[0][x_ids], idf[1][y_ids])
        states = PairStates(head(x, x_mask), x_mask, y, y_mask, *weights)
        loss = pair_losses(config.strategy, states, config.ot_options()).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@torch.inference_mode()
def encode_queries(head: nn.Module, queries: RaggedStates, batch_size: int = 128) -> torch.Tensor:
    """(Q, d) mean-pooled, L2-normalised outputs of ``head`` on the queries' cached states."""
    head.eval()
    order = torch.argsort(queries.lengths()).tolist()
    embeddings = torch.zeros((len(queries), queries.states.shape[1]))
    for start in range(0, len(order), batch_size):
        rows: Sequence[int] = order[start : start + batch_size]
        x, mask, _ = queries.batch(rows)
        embeddings[rows] = nn.functional.normalize(mean_pool(head(x, mask), mask), dim=-1)
    return embeddings
