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

A run folder (``out_dir``) belongs to one run: a run that does not resume refuses a folder that
holds a checkpoint or a history, a resumed run one whose newest checkpoint is not the one it
resumed from, and two processes never train into one folder at once (an ``flock`` on it, which
dies with the process). So pruning and the newest checkpoint of the folder are always this
run's, and what a killed process left there (partial files, history records after the
checkpoint resumed from) is removed when the run starts again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..models.encoders import Encoder, load_student, load_teacher, trainable_parameters
from ..models.teacher_states import TeacherStates
from .adversarial import InputPerturbation, fgsm_pair_losses
from .batching import global_batch, micro_batches, pad, shard
from .checkpoint import (
    Checkpoint,
    checkpoint_paths,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    remove_leftovers,
    remove_partial_files,
    save_checkpoint,
    write_atomically,
)
from .config import NO_PERTURBATION, TrainConfig
from .distributed import init_distributed
from .idf import idf_table
from .losses import PairStates, distils, pair_losses

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

Evaluator = Callable[[nn.Module], dict]
HISTORY = "history.jsonl"
CHECKPOINTS = "checkpoints"


class RunFolderError(ValueError):
    """An ``out_dir`` that holds another run's files, or that another process trains into."""


@contextlib.contextmanager
def _locked(directory: Path):
    """Hold an exclusive ``flock`` on ``directory`` (the kernel drops it if the process dies)."""
    if fcntl is None:
        yield
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(f"another process is training into {directory}") from None
        yield
    finally:
        os.close(descriptor)


def check_run_folder(out_dir: Path, resumed_from: Path | None) -> None:
    """Raise :class:`RunFolderError` unless ``out_dir`` holds no run (no checkpoint, no
    history) or, for a run resumed from the sidecar ``resumed_from``, that run: its newest
    checkpoint is ``resumed_from``. Read-only: callers may check before loading any model."""
    out_dir = Path(out_dir)
    checkpoints = list_checkpoints(out_dir / CHECKPOINTS)
    history = out_dir / HISTORY
    held = [str(p) for p in [*checkpoints[-1:], history] if p.exists()]
    if resumed_from is None:
        if held:
            raise RunFolderError(
                f"{out_dir} already holds a run ({', '.join(held)}): continue it with --resume "
                f"{out_dir / CHECKPOINTS}, or train into another (empty) folder"
            )
    elif checkpoints and checkpoints[-1].resolve() != Path(resumed_from).resolve():
        raise RunFolderError(
            f"{out_dir} holds checkpoints up to step {checkpoint_step(checkpoints[-1])} that a "
            f"run resumed from {resumed_from} would not continue: resume from "
            f"{checkpoints[-1]}, or train into another (empty) folder"
        )
    elif not checkpoints and history.exists():
        raise RunFolderError(
            f"{history} is the history of a run with no checkpoint in {out_dir}: a run resumed "
            "from elsewhere would not continue it; train into another folder"
        )


def truncate_history(path: Path, step: int) -> None:
    """Keep the records of ``path`` (``history.jsonl``) up to ``step``, atomically: the steps
    a killed run logged after its last checkpoint are run, and logged, again on resume. A
    line cut short by the kill is dropped too."""
    kept, changed = [], False
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            if record["step"] <= step:
                kept.append(line + "\n")
                continue
        changed = True
    if changed:
        write_atomically(Path(path), "".join(kept).encode("utf-8"))


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
        self.resumed_from: Path | None = None  # the sidecar resumed from
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
        self.resumed_from = checkpoint.path

    def _claim_out_dir(self, out_dir: Path) -> None:
        """Check ``out_dir`` (:func:`check_run_folder`), then remove what a killed process of
        this run left there and cut its history back to the step resumed from."""
        check_run_folder(out_dir, self.resumed_from)
        remove_leftovers(out_dir / CHECKPOINTS)
        remove_partial_files(out_dir, re.compile(re.escape(HISTORY)))
        if (out_dir / HISTORY).exists():
            truncate_history(out_dir / HISTORY, self.step)

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
        ``out_dir/checkpoints`` every ``checkpoint_every`` steps and at the end; ``out_dir``
        must hold no other run (:func:`check_run_folder`).
        """
        main = self.dist.is_main
        if not distils(self.config.strategy):
            return []
        with contextlib.ExitStack() as stack:
            if out_dir is not None:
                out_dir = Path(out_dir)
                if main:
                    out_dir.mkdir(parents=True, exist_ok=True)
                    stack.enter_context(_locked(out_dir))
                    self._claim_out_dir(out_dir)
                else:  # the same verdict on every rank of a shared folder, before any step
                    check_run_folder(out_dir, self.resumed_from)
            return self._fit(evaluate, out_dir if main else None, progress and main)

    def _fit(
        self, evaluate: Evaluator | None, out_dir: Path | None, progress: bool
    ) -> list[dict]:
        from tqdm.auto import tqdm

        config, main = self.config, self.dist.is_main
        bar = tqdm(
            total=config.steps, initial=self.step, unit="step", disable=not progress,
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
            if out_dir is not None:
                every = config.checkpoint_every
                checkpoint = final or (every and self.step % every == 0)
                if checkpoint:
                    record["checkpoint"] = str(checkpoint_paths(out_dir / CHECKPOINTS,
                                                                self.step)[1])  # fmt: skip
                # The record before the checkpoint: a kill between the two leaves the history
                # ahead of the last checkpoint, which the resumed run cuts back, not behind it.
                with open(out_dir / HISTORY, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                if checkpoint:
                    self.save(out_dir / CHECKPOINTS)
            history.append(record)
        bar.close()
        return history
