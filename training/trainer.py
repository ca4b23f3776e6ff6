r"""Distillation of a frozen teacher into a student on bitext, with a loss of :mod:`.losses`.

For a global batch B of G pairs (english_k, other_k), the student S is trained to minimise

    L = (1/G) sum_{k in B} loss(S(other_k), T(english_k))

with ``loss`` per pair from :mod:`.losses` (token-level OT for OPTICAL), T the frozen teacher
(its gradient is never needed, so it runs under ``no_grad`` and its states are memoised), AdamW
at a constant learning rate and the global gradient norm clipped.

Scale-out (``torchrun``, DistributedDataParallel): rank r of W takes its shard of each global
batch (:mod:`.batching`) and back-propagates (W/G) * (sum of its pair losses); DDP averages the
gradients over the W ranks, which gives exactly the gradient of L above, so W processes follow
the trajectory of 1 process up to floating-point summation order. Within a rank, pairs are
processed in length-sorted micro-batches whose gradients accumulate (synchronised once).

Randomness is a pure function of (seed, step, rank): the data order (:mod:`.batching`), the
dropout seed set before each step and the perturbations of adversarial training
(:mod:`.adversarial`), so a resumed run repeats the uninterrupted one exactly. The strategy
``"none"`` (no distillation) trains nothing: :meth:`DistillationTrainer.fit` runs no step.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .adversarial import InputPerturbation, fgsm_pair_losses
from .batching import global_batch, micro_batches, pad, shard
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import NO_PERTURBATION, TrainConfig
from .distributed import init_distributed
from .idf import idf_table
from .losses import PairStates, distils, pair_losses
from .models import Encoder, load_student, load_teacher, trainable_parameters
from .teacher_states import TeacherStates

Evaluator = Callable[[nn.Module], dict]


def tokenize(tokenizer, texts: Sequence[str], prefix: str, max_length: int) -> list[list[int]]:
    """Token ids of ``prefix + text`` for each text, special tokens included, truncated."""
    encoded = tokenizer([prefix + text for text in texts], truncation=True, max_length=max_length)
    return encoded["input_ids"]


def build_student(config: TrainConfig) -> Encoder:
    """The student at initialisation, as ``config`` describes it (weights the initial model
    lacks, such as an unused pooler, are drawn from ``config.seed``)."""
    torch.manual_seed(config.seed)
    return load_student(
        config.student_init or config.teacher,
        num_layers=config.student_layers,
        freeze_word_embeddings=config.freeze_word_embeddings,
        trainable_layers=config.trainable_layers,
        dropout=config.dropout,
    )


def _restore_parameters(parameters: dict[str, nn.Parameter], checkpoint: Checkpoint) -> None:
    if list(checkpoint.model) != list(parameters):
        raise ValueError(f"{checkpoint.path} holds other trainable parameters than the student")
    with torch.no_grad():
        for name, value in checkpoint.model.items():
            parameters[name].copy_(value)


def student_from_checkpoint(path: Path) -> tuple[Encoder, TrainConfig]:
    """The trained student of a checkpoint (file or folder) and the config it was trained with."""
    checkpoint = load_checkpoint(path)
    config = TrainConfig.from_dict(checkpoint.config)
    student = build_student(config)
    _restore_parameters(trainable_parameters(student.model), checkpoint)
    return student, config


def step_seed(seed: int, step: int, rank: int) -> int:
    """The dropout seed of ``step`` on ``rank``: well mixed, distinct per (seed, step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class DistillationTrainer:
    """Trains a student on ``pairs`` of (teacher text, student text) as ``config`` says.

    ``teacher`` (an already loaded frozen teacher) and ``teacher_states`` (its memoised states)
    may be shared between runs with the same teacher and ``teacher_layer``; ``resume`` is a
    checkpoint (file or folder) to continue from.
    """

    def __init__(
        self,
        config: TrainConfig,
        pairs: Sequence[tuple[str, str]],
        *,
        teacher: Encoder | None = None,
        teacher_states: TeacherStates | None = None,
        resume: Path | None = None,
    ):
        if not pairs:
            raise ValueError("no training pairs")
        self.config = config
        self.dist = init_distributed()
        if config.batch_size < self.dist.world_size:
            raise ValueError(
                f"batch_size {config.batch_size} is smaller than the {self.dist.world_size} "
                "processes: every process needs a pair per step"
            )
        self.teacher = teacher or load_teacher(config.teacher)
        student = build_student(config)
        teacher_size = self.teacher.model.config.hidden_size
        if student.model.config.hidden_size != teacher_size:
            raise ValueError(
                f"student hidden size {student.model.config.hidden_size} differs from the "
                f"teacher's {teacher_size}: token states must live in the same space"
            )
        self.student, self.student_tokenizer = student.model.to(self.dist.device), student.tokenizer
        self.teacher.model.to(self.dist.device)
        self.teacher_states = teacher_states or TeacherStates(
            self.teacher.model, config.teacher_layer, memoise=config.memoise_teacher
        )

        teacher_texts, student_texts = zip(*pairs)
        self.teacher_ids = tokenize(
            self.teacher.tokenizer, teacher_texts, config.teacher_prefix, config.max_length
        )
        self.student_ids = tokenize(
            self.student_tokenizer, student_texts, config.student_prefix, config.max_length
        )
        self.student_lengths = [len(ids) for ids in self.student_ids]
        self.student_texts = student_texts
        self.input_perturbation = None
        if config.adversarial_input != NO_PERTURBATION:
            self.input_perturbation = InputPerturbation(
                config.adversarial_input, config.adversarial_rate, config.seed, config.languages
            )
        self.idf = None
        if config.token_weights == "idf":
            self.idf = (
                idf_table(self.student_ids, len(self.student_tokenizer)).to(self.dist.device),
                idf_table(self.teacher_ids, len(self.teacher.tokenizer)).to(self.dist.device),
            )

        self.trainable = trainable_parameters(self.student)
        self.optimizer = torch.optim.AdamW(
            self.trainable.values(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.step = 0
        if resume is not None:
            self._restore(resume)
        self.ddp = None
        if self.dist.world_size > 1:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.student, device_ids=device_ids)

    def _restore(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        differences = TrainConfig.from_dict(checkpoint.config).differences(self.config)
        if differences:
            raise ValueError(
                f"{checkpoint.path} was trained with other settings for {differences}; only "
                "the schedule (steps, evaluation, checkpoints) may change on resume"
            )
        _restore_parameters(self.trainable, checkpoint)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.step = checkpoint.step

    def _student_id_lists(self, indices: list[int]) -> list[list[int]]:
        """The student's token ids of the pairs, of their texts perturbed under adversarial
        input training."""
        if self.input_perturbation is None:
            return [self.student_ids[i] for i in indices]
        texts = self.input_perturbation([self.student_texts[i] for i in indices], self.step)
        config = self.config
        return tokenize(self.student_tokenizer, texts, config.student_prefix, config.max_length)

    def _pair_losses(self, indices: list[int]) -> torch.Tensor:
        config, device = self.config, self.dist.device
        student_ids, student_mask = (
            t.to(device)
            for t in pad(self._student_id_lists(indices), self.student_tokenizer.pad_token_id)
        )
        teacher_id_lists = [self.teacher_ids[i] for i in indices]
        teacher, teacher_mask = self.teacher_states(teacher_id_lists)
        teacher_weights = None
        if self.idf is not None:
            teacher_ids = pad(teacher_id_lists, self.teacher.tokenizer.pad_token_id)[0].to(device)
            teacher_weights = self.idf[1][teacher_ids]
        student_weights = None if self.idf is None else self.idf[0][student_ids]
        options = config.ot_options()

        def losses(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            pair = PairStates(states, mask, teacher, teacher_mask, student_weights, teacher_weights)
            return pair_losses(config.strategy, pair, options)

        model = self.ddp or self.student
        if config.adversarial_epsilon > 0:
            return fgsm_pair_losses(
                self.student, model, student_ids, student_mask, losses,
                config.adversarial_epsilon, config.adversarial_weight,
            )  # fmt: skip
        student = model(input_ids=student_ids, attention_mask=student_mask).last_hidden_state
        return losses(student, student_mask)

    def train_step(self) -> float:
        """One optimiser step on the next global batch; returns its mean pair loss."""
        config, dist = self.config, self.dist
        torch.manual_seed(step_seed(config.seed, self.step, dist.rank))
        batch = global_batch(self.step, len(self.student_ids), config.batch_size, config.seed)
        micros = micro_batches(
            shard(batch, dist.rank, dist.world_size), self.student_lengths, config.micro_batch_size
        )
        scale = dist.world_size / config.batch_size
        loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
        for position, micro in enumerate(micros):
            last = position == len(micros) - 1
            context = self.ddp.no_sync() if self.ddp and not last else contextlib.nullcontext()
            with context:
                losses = self._pair_losses(micro)
                (losses.sum() * scale).backward()
            loss_sum += losses.detach().sum().double()
        torch.nn.utils.clip_grad_norm_(self.trainable.values(), config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(dist.all_reduce_sum(loss_sum)) / config.batch_size

    def close(self) -> None:
        """Release DDP, then leave the process group: a DDP reducer destroyed after its group
        can hang the process at exit."""
        self.ddp = None
        self.dist.close()

    def save(self, directory: Path) -> Path:
        """Checkpoint the current step into ``directory`` (see :mod:`.checkpoint`)."""
        return save_checkpoint(
            directory,
            self.step,
            self.config.to_dict(),
            self.trainable,
            self.optimizer.state_dict(),
            keep=self.config.keep_checkpoints,
        )

    def fit(
        self,
        *,
        evaluate: Evaluator | None = None,
        out_dir: Path | None = None,
        progress: bool = True,
    ) -> list[dict]:
        """Train up to ``config.steps`` (none with the strategy ``"none"``); returns one record
        per step run here.

        Every ``eval_every`` steps and at the last step, the main process calls
        ``evaluate(student)`` and adds its metrics to the record. With ``out_dir``, the main
        process appends the records to ``out_dir/history.jsonl`` and checkpoints into
        ``out_dir/checkpoints`` every ``checkpoint_every`` steps and at the end.
        """
        from tqdm.auto import tqdm

        config, main = self.config, self.dist.is_main
        if not distils(config.strategy):
            return []
        bar = tqdm(
            total=config.steps, initial=self.step, unit="step", disable=not (progress and main),
            desc=config.strategy, dynamic_ncols=True,
        )  # fmt: skip
        history = []
        while self.step < config.steps:
            started = time.perf_counter()
            loss = self.train_step()
            pairs_per_second = config.batch_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss:.4f}", pairs_s=f"{pairs_per_second:.1f}")
            bar.update()
            record = {"step": self.step, "loss": loss, "pairs_per_s": pairs_per_second}
            final = self.step == config.steps
            if main and evaluate and config.eval_every and (
                self.step % config.eval_every == 0 or final
            ):
                record["eval"] = evaluate(self.student)
                summary = ", ".join(f"{k} {v:.3f}" for k, v in record["eval"].items())
                bar.write(f"step {self.step}: {summary}")
            if main and out_dir is not None:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                every = config.checkpoint_every
                if final or (every and self.step % every == 0):
                    record["checkpoint"] = str(self.save(Path(out_dir) / "checkpoints"))
                with open(Path(out_dir) / "history.jsonl", "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            history.append(record)
        bar.close()
        return history
