"""The grid runner: cached states per task, then every run, resumable, then the report.

    python -m optical_ops.training grid --config experiments/clir.toml [--out DIR] [--prepare]
        [--shard I/N] [--report]

``--shard I/N`` runs only the runs whose position in the grid is I modulo N, so that N
processes (e.g. one per core with ``OMP_NUM_THREADS=1``) share a grid; each writes its own runs'
records, and the report covers every finished run.

1. Per task, when its first pending run needs them, the states of :mod:`.features` (computed
   once, then read from the cache): the student's layer-k states of the training texts (and of
   their perturbed copies when a strategy trains on them), the teacher's states of the English
   training texts, the documents' embeddings, and the queries' layer-k states under every
   condition of the task (clean, and each perturbation, drawn once with :data:`~.tasks.POOL_SEED`
   so every run meets identical queries; code-switching with the task's FreeDict dictionary
   into English, read before anything is computed, so a missing one stops the grid at once
   and names its package). ``--prepare`` stops after this step.
2. Each run: skipped if ``<out>/runs/<run id>.json`` records it ``done`` with the same settings;
   otherwise the top layers are copied from the teacher, trained (:func:`.train_head.train_head`;
   no step for ``none``) and evaluated: per query and condition, the measures of
   :mod:`.ranking`, kept in the record for the bootstrap. A failing run records its error and
   the grid goes on (retried on the next invocation).
3. The report of :mod:`.report` on every ``done`` record (``--report``: only this step, on the
   runs finished so far).
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...bitext.dictionaries import DICTD_DIR, english_lexicon
from ...distillation.config import NO_PERTURBATION, TrainConfig
from ...distillation.perturb import LEXICON_KINDS, Lexicon, perturb
from ...evaluation.evaluate import DOCUMENT_PREFIX
from ...evaluation.robustness import CLEAN
from ...models.encoders import Encoder, load_teacher, resolve_model_dir
from ..runner import write_json_atomically
from .config import GridConfig, GridRun, dictionary_language, load_grid, run_settings
from .features import (
    FeatureCache,
    RaggedStates,
    compute_embeddings,
    compute_states,
    model_fingerprint,
)
from .ranking import SCORERS, query_measures
from .tasks import POOL_SEED, Task, load_tasks
from .top_layers import TopLayers
from .train_head import encode_queries, train_head

DONE, FAILED = "done", "failed"


@dataclass
class TaskStates:
    """The cached inputs of one task's runs (see the module docstring), by the prefixes and
    perturbations the runs use."""

    student: dict[tuple[str, str], RaggedStates] = field(default_factory=dict)  # (prefix, kind)
    teacher: dict[str, RaggedStates] = field(default_factory=dict)  # prefix
    documents: torch.Tensor | None = None
    queries: dict[tuple[str, str], RaggedStates] = field(default_factory=dict)  # (prefix, cond.)


def training_texts(config: TrainConfig) -> tuple[str, str]:
    """The key of the student states a run trains on: its prefix and text perturbation."""
    return config.student_prefix, config.adversarial_input


def task_lexicons(
    grid: GridConfig, tasks: Iterable[str], dictd_dir: Path = DICTD_DIR
) -> dict[str, Lexicon]:
    """Task -> the lexicon of its code-switched queries, for those of ``tasks`` that have them;
    :class:`~...bitext.dictionaries.DictionaryNotFoundError` names a missing one's package."""
    return {
        task: english_lexicon(dictionary_language(task), dictd_dir)
        for task in tasks
        if any(p.kind in LEXICON_KINDS for p in grid.task_perturbations(task))
    }


class StateBuilder:
    """Computes (or reads from the cache) a task's :class:`TaskStates`; ``lexicons`` as
    :func:`task_lexicons`."""

    def __init__(
        self,
        grid: GridConfig,
        teacher: Encoder,
        cache: FeatureCache,
        model_key: str,
        lexicons: Mapping[str, Lexicon],
    ):
        self.grid, self.teacher, self.cache, self.lexicons = grid, teacher, cache, lexicons
        self.layers = len(teacher.model.encoder.layer)
        if not 1 <= grid.trainable_layers <= self.layers:
            raise ValueError(
                f"trainable_layers must be in [1, {self.layers}] (the model's "
                f"layers), got {grid.trainable_layers}"
            )
        self.frozen = self.layers - grid.trainable_layers
        self.settings = {"model": model_key, "max_length": grid.runs[0].config.max_length}

    def _states(self, texts, prefix: str, num_layers: int) -> RaggedStates:
        settings = {**self.settings, "prefix": prefix, "layers": num_layers}
        model, tokenizer = self.teacher
        return self.cache.get(
            "states",
            settings,
            texts,
            lambda: compute_states(
                model,
                tokenizer,
                texts,
                prefix=prefix,
                num_layers=num_layers,
                max_length=self.settings["max_length"],
            ),
        )

    def build(self, task: Task) -> TaskStates:
        configs = [run.config for run in self.grid.runs if run.task == task.name]
        other = [pair.other for pair in task.train]
        english = [pair.english for pair in task.train]
        states = TaskStates()
        for config in configs:
            key = training_texts(config)
            if key not in states.student:
                texts = other
                if config.adversarial_input != NO_PERTURBATION:
                    kind, rate = config.adversarial_input, config.adversarial_rate
                    texts = perturb(other, kind, rate, seed=POOL_SEED)
                states.student[key] = self._states(texts, config.student_prefix, self.frozen)
            if config.teacher_prefix not in states.teacher:
                prefix = config.teacher_prefix
                states.teacher[prefix] = self._states(english, prefix, self.layers)
        documents = task.evaluation.documents
        model, tokenizer = self.teacher
        settings = {**self.settings, "prefix": DOCUMENT_PREFIX}
        states.documents = self.cache.get(
            "embeddings",
            settings,
            documents,
            lambda: compute_embeddings(
                model,
                tokenizer,
                documents,
                prefix=DOCUMENT_PREFIX,
                max_length=self.settings["max_length"],
            ),
        )
        queries, lexicon = task.evaluation.queries, self.lexicons.get(task.name)
        for prefix in dict.fromkeys(config.student_prefix for config in configs):
            for condition in (None, *self.grid.task_perturbations(task.name)):
                texts = queries
                if condition is not None:
                    texts = perturb(queries, *condition, seed=POOL_SEED, lexicon=lexicon)
                name = CLEAN if condition is None else condition.name
                states.queries[prefix, name] = self._states(texts, prefix, self.frozen)
        return states


def execute(run: GridRun, task: Task, states: TaskStates, teacher: Encoder) -> dict:
    """Train and evaluate one run: its record's ``metrics`` (scorer -> condition -> measure ->
    per-query values), ``losses`` and ``seconds``."""
    started = time.perf_counter()
    config = run.config
    head = TopLayers(teacher.model, config.trainable_layers)
    losses = train_head(
        head,
        config,
        states.student[training_texts(config)],
        states.teacher[config.teacher_prefix],
        len(teacher.tokenizer),
    )
    trained = time.perf_counter()
    collection = task.evaluation
    metrics = {scorer: {} for scorer in SCORERS}
    for (prefix, condition), query_states in states.queries.items():
        if prefix != config.student_prefix:
            continue
        queries = encode_queries(head, query_states)
        for scorer, scores in SCORERS.items():
            measures = query_measures(
                scores(queries, states.documents), collection.relevant, collection.document_ids
            )
            metrics[scorer][condition] = {
                measure: [round(v, 6) for v in values.tolist()]
                for measure, values in measures.items()
            }
    return {
        "metrics": metrics,
        "losses": [round(loss, 6) for loss in losses],
        "seconds": {
            "train": round(trained - started, 1),
            "evaluate": round(time.perf_counter() - trained, 1),
        },
    }


def record_path(out_dir: Path, run: GridRun) -> Path:
    return Path(out_dir) / "runs" / f"{run.id}.json"


def read_record(path: Path, settings: dict) -> dict | None:
    """The run's record if it is done with these settings, else None (to be run)."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record if record.get("status") == DONE and record.get("settings") == settings else None


def run_grid(
    grid: GridConfig,
    out_dir: Path,
    *,
    prepare_only: bool = False,
    model: Path | None = None,
    shard: tuple[int, int] = (0, 1),
    tasks: Mapping[str, Task] | None = None,
    cache: FeatureCache | None = None,
    dictd_dir: Path = DICTD_DIR,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run every pending run of ``grid`` (``prepare_only``: only cache the states); returns
    ``{run id: "done" | "failed" | "skipped"}``. ``model`` is the teacher's folder (default:
    the offline multilingual-e5-small), ``shard`` = (I, N) runs the runs at positions I mod N,
    ``tasks`` default to :func:`.tasks.load_tasks`'s, ``dictd_dir`` holds the FreeDict
    dictionaries."""
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    pending = [
        run
        for position, run in enumerate(grid.runs)
        if position % count == index
        and read_record(record_path(out_dir, run), run_settings(run, grid)) is None
    ]
    outcome = {run.id: "skipped" for run in grid.runs[index::count] if run not in pending}
    log(f"{len(outcome)} runs of this shard done; {len(pending)} to run")
    if not pending:
        return outcome
    lexicons = task_lexicons(grid, dict.fromkeys(run.task for run in pending), dictd_dir)
    if tasks is None:
        tasks = load_tasks(sorted({run.task for run in pending}), split=grid.split, **grid.pool)
    teacher = load_teacher(model)
    cache = cache or FeatureCache(log=log)
    model_key = model_fingerprint(resolve_model_dir(model, "teacher"))
    builder = StateBuilder(grid, teacher, cache, model_key, lexicons)
    states: dict[str, TaskStates] = {}
    for number, run in enumerate(pending, 1):
        if run.task not in states:
            log(
                f"{run.task}: states of {len(tasks[run.task].train)} pairs, "
                f"{len(tasks[run.task].evaluation.queries)} queries, "
                f"{len(tasks[run.task].evaluation.documents)} documents"
            )
            states = {run.task: builder.build(tasks[run.task])}  # one task's states in memory
        if prepare_only:
            continue
        record = {
            "run": {"id": run.id, "task": run.task, "strategy": run.strategy, "seed": run.seed},
            "settings": run_settings(run, grid),
        }
        try:
            record.update(status=DONE, **execute(run, tasks[run.task], states[run.task], teacher))
            clean = record["metrics"]["cosine"][CLEAN]["nDCG@10"]
            log(
                f"[{number}/{len(pending)}] {run.id}: nDCG@10 {sum(clean) / len(clean):.4f} "
                f"({sum(record['seconds'].values()):.0f} s)"
            )
        except Exception as error:  # recorded, retried on the next invocation
            record.update(
                status=FAILED,
                error=f"{type(error).__name__}: {error}",
                traceback=traceback.format_exc(),
            )
            log(f"[{number}/{len(pending)}] {run.id}: FAILED: {record['error']}")
        record.update(
            load_average=[round(x, 2) for x in os.getloadavg()],
            threads=torch.get_num_threads(),
            machine=platform.node(),
            finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        # per-query lists: no indent
        write_json_atomically(record_path(out_dir, run), record, indent=None)
        outcome[run.id] = record["status"]
    return outcome


def finished_records(grid: GridConfig, out_dir: Path) -> list[dict]:
    records = (read_record(record_path(out_dir, run), run_settings(run, grid)) for run in grid.runs)
    return [record for record in records if record is not None]


def run_grid_command(
    config_path: Path,
    out_dir: Path | None = None,
    *,
    prepare_only: bool = False,
    report_only: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> int:
    """The ``grid`` command; returns the exit status (1 if a run failed). ``report_only``
    writes the report of the runs finished so far and runs nothing."""
    from .report import write_report

    grid = load_grid(config_path)
    out_dir = Path(out_dir or Path("experiments") / "results" / grid.name)
    if report_only:
        records = finished_records(grid, out_dir)
        print(f"{len(records)} of {len(grid.runs)} runs finished")
        for path in write_report(grid, records, out_dir):
            print(f"written: {path}")
        return 0
    started = time.perf_counter()
    outcome = run_grid(grid, out_dir, prepare_only=prepare_only, shard=shard)
    seconds = time.perf_counter() - started
    print(
        f"grid {grid.name}: {seconds:.0f} s on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads)"
    )
    if prepare_only:
        return 0
    for path in write_report(grid, finished_records(grid, out_dir), out_dir):
        print(f"written: {path}")
    failed = sum(status == FAILED for status in outcome.values())
    if failed:
        print(
            f"{failed} runs failed (their records in {out_dir / 'runs'} hold the error); "
            "run the command again to retry them"
        )
    return 1 if failed else 0
