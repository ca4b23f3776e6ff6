"""The experiment runner: every run of a grid (:mod:`.config`), resumable, then the
results as tables and plots.

    python -m optical_ops.training experiments --config experiments/default.toml [--out DIR]

For each run, in grid order:

1. if ``<out>/runs/<run id>.json`` records it ``"done"`` with the same settings (its
   TrainConfig and how it is evaluated), skip it; a missing, failed or stale record is (re)run;
2. train the student with :class:`~..distillation.trainer.DistillationTrainer` (no step for
   ``none``) on the UDHR train split of the run's languages, or on the ``[train] bitext``;
3. evaluate it (:func:`~..evaluation.robustness.evaluate_conditions`): the queries of each of its
   languages, clean and perturbed, encoded once per condition and ranked by every scorer
   against the teacher's documents;
4. write the record atomically: metrics, loss per step, seconds, the machine's load average.
   An exception writes a ``"failed"`` record with the error and its traceback instead (retried
   on the next invocation) and the grid goes on.

The teacher, its memoised token states and the documents' token states are built once per
encoder, when its first pending run needs them. Then every ``done`` record of the grid is
aggregated (:mod:`.aggregate`) into ``results.csv``, ``results.md`` and PNG plots
(:mod:`.plots`) in ``<out>``. Without matplotlib the tables are written and the plots left out,
which the command says before the grid starts and again at the end.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..bitext.pairs import load_udhr, tsv_training_pairs, udhr_training_pairs
from ..distillation.trainer import DistillationTrainer
from ..evaluation.evaluate import QuerySet, udhr_collection
from ..evaluation.robustness import (
    CLEAN,
    DocumentTokens,
    Metrics,
    evaluate_conditions,
    merge_metrics,
    query_lexicons,
)
from ..evaluation.scoring import TokenEncoder
from ..models.encoders import Encoder, load_teacher
from ..models.teacher_states import TeacherStates
from .aggregate import aggregate
from .config import READERS, ExperimentConfig, Run, load_experiment
from .report import markdown_tables, write_csv

DONE, FAILED = "done", "failed"


@dataclass
class Collection:
    """The evaluation data: per language, its queries and the key of its documents."""

    documents: dict[str, dict[str, str]]  # documents key -> {doc id: text}
    queries: dict[str, tuple[str, QuerySet]]  # language -> (documents key, query set)

    @classmethod
    def load(cls, experiment: ExperimentConfig) -> Collection:
        """The UDHR test articles of the languages, or the ``[collection]`` benchmark."""
        if experiment.collection is None:
            documents, query_sets = udhr_collection(load_udhr(experiment.languages))
            queries = {code: ("udhr", query_set) for code, query_set in query_sets.items()}
            return cls({"udhr": documents}, queries)
        options = dict(experiment.collection)
        reader, root = READERS[options.pop("reader")], options.pop("root", None)
        collection = cls({}, {})
        for code in experiment.languages:
            read = reader(root, code, **options)
            collection.documents.setdefault(read.document_language, read.documents)
            query_set = QuerySet(read.queries, read.qrels)
            collection.queries[code] = (read.document_language, query_set)
        return collection


@dataclass
class EncoderResources:
    """What every run of one encoder shares: the teacher, its states, the documents' tokens."""

    teacher: Encoder
    teacher_states: dict[int, TeacherStates] = field(default_factory=dict)  # by teacher layer
    documents: dict[tuple[str, str], DocumentTokens] = field(default_factory=dict)

    def states(self, layer: int) -> TeacherStates:
        if layer not in self.teacher_states:
            self.teacher_states[layer] = TeacherStates(self.teacher.model, layer)
        return self.teacher_states[layer]

    def document_tokens(self, key: str, texts: Mapping[str, str], prefix: str) -> DocumentTokens:
        if (key, prefix) not in self.documents:
            encoder = TokenEncoder(self.teacher.model, self.teacher.tokenizer, prefix)
            self.documents[key, prefix] = DocumentTokens(list(texts), encoder(list(texts.values())))
        return self.documents[key, prefix]


def run_settings(run: Run, experiment: ExperimentConfig) -> dict:
    """What decides a run's result: a finished run with other settings is stale."""
    return {
        "train": run.config.to_dict(),
        "evaluation": {
            "scorers": list(experiment.scorers),
            "perturbations": [p.name for p in experiment.perturbations],
            "document_prefix": run.document_prefix,
            "collection": experiment.collection,
        },
    }


def record_path(out_dir: Path, run: Run) -> Path:
    return Path(out_dir) / "runs" / f"{run.id}.json"


def write_json_atomically(path: Path, value: object, indent: int | None = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(value, indent=indent) + "\n", encoding="utf-8")
    os.replace(staging, path)


def pending_reason(path: Path, settings: dict) -> str | None:
    """Why the run must (re)run: ``"new"``, ``"failed"`` or ``"stale"``; None when done."""
    if not path.is_file():
        return "new"
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("status") != DONE:
        return "failed"
    return None if record.get("settings") == settings else "stale"


def execute_run(
    run: Run,
    experiment: ExperimentConfig,
    resources: EncoderResources,
    collection: Collection,
    lexicons: Mapping,
    progress: bool = True,
) -> dict:
    """Train and evaluate one run; the ``metrics``, ``losses`` and ``seconds`` of its record."""
    config = run.config
    started = time.perf_counter()
    if config.bitext is not None:
        pairs = tsv_training_pairs(Path(config.bitext), config.source_column, config.target_column)
    else:
        pairs = udhr_training_pairs(load_udhr(config.languages))
    trainer = DistillationTrainer(
        config, pairs, teacher=resources.teacher,
        teacher_states=resources.states(config.teacher_layer),
    )  # fmt: skip
    try:
        history = trainer.fit(progress=progress)
    finally:
        trainer.close()
    trained = time.perf_counter()
    encode_queries = TokenEncoder(trainer.student, trainer.student_tokenizer, config.student_prefix)
    metrics: Metrics = {}
    for key in dict.fromkeys(collection.queries[code][0] for code in run.languages):
        documents = resources.document_tokens(key, collection.documents[key], run.document_prefix)
        query_sets = {
            code: collection.queries[code][1]
            for code in run.languages
            if collection.queries[code][0] == key
        }
        merge_metrics(metrics, evaluate_conditions(
            encode_queries, documents, query_sets, perturbations=experiment.perturbations,
            scorers=experiment.scorers, seed=run.seed, lexicons=lexicons,
        ))  # fmt: skip
    return {
        "metrics": metrics,
        "losses": [record["loss"] for record in history],
        "seconds": {
            "train": round(trained - started, 1),
            "evaluate": round(time.perf_counter() - trained, 1),
        },
    }


def _run_summary(run: Run) -> dict:
    return {"id": run.id, "encoder": run.encoder, "strategy": run.strategy,
            "languages": list(run.languages), "seed": run.seed}  # fmt: skip


def run_grid(
    experiment: ExperimentConfig,
    out_dir: Path,
    collection: Collection,
    *,
    execute: Callable[..., dict] = execute_run,
    load_encoder: Callable[[str | None], Encoder] = load_teacher,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run every pending run of ``experiment``; returns ``{run id: "done" | "failed" |
    "skipped"}``. ``execute`` and ``load_encoder`` are the steps above (replaceable in tests)."""
    lexicons = None
    resources: dict[str, EncoderResources] = {}
    outcome = {}
    for number, run in enumerate(experiment.runs, 1):
        path, settings = record_path(out_dir, run), run_settings(run, experiment)
        reason = pending_reason(path, settings)
        heading = f"[{number}/{len(experiment.runs)}] {run.id}"
        if reason is None:
            log(f"{heading}: done, skipped")
            outcome[run.id] = "skipped"
            continue
        log(f"{heading}: running ({reason})")
        record = {"run": _run_summary(run), "settings": settings}
        try:
            if lexicons is None:
                kinds = {p.kind for p in experiment.perturbations}
                lexicons = query_lexicons(experiment.languages) if "codeswitch" in kinds else {}
            if run.encoder not in resources:
                resources[run.encoder] = EncoderResources(load_encoder(run.config.teacher))
            result = execute(run, experiment, resources[run.encoder], collection, lexicons,
                             progress)  # fmt: skip
            record.update(status=DONE, **result)
        except Exception as error:  # recorded, and retried on the next invocation
            record.update(status=FAILED, error=f"{type(error).__name__}: {error}",
                          traceback=traceback.format_exc())  # fmt: skip
            log(f"{heading}: FAILED: {record['error']}")
        record.update(
            load_average=[round(load, 2) for load in os.getloadavg()],
            threads=torch.get_num_threads(), machine=platform.node(),
            finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
        write_json_atomically(path, record)
        outcome[run.id] = record["status"]
    return outcome


def finished_records(experiment: ExperimentConfig, out_dir: Path) -> list[dict]:
    """The ``done`` records of the grid's runs with their current settings, in grid order."""
    records = []
    for run in experiment.runs:
        path = record_path(out_dir, run)
        if pending_reason(path, run_settings(run, experiment)) is None:
            records.append(json.loads(path.read_text(encoding="utf-8")))
    return records


def write_results(
    experiment: ExperimentConfig, out_dir: Path, notes: Sequence[str] = (), plots: bool = True
) -> list[Path]:
    """Aggregate the finished runs into ``results.csv``, ``results.md`` and (with ``plots``)
    the plots."""
    from .plots import write_plots

    out_dir = Path(out_dir)
    records = finished_records(experiment, out_dir)
    rows = aggregate(records)
    conditions = [CLEAN, *(p.name for p in experiment.perturbations)]
    layout = dict(
        encoders=experiment.encoders, strategies=experiment.strategies,
        scorers=experiment.scorers, languages=experiment.languages, conditions=conditions,
    )  # fmt: skip
    write_csv(out_dir / "results.csv", rows)
    seconds = sum(sum(record["seconds"].values()) for record in records)
    header = [
        f"# Experiment {experiment.name}",
        "",
        f"{len(records)} of {len(experiment.runs)} runs finished ({seconds:.0f} s of training "
        f"and evaluation); cells are mean ± sample standard deviation over the seeds "
        f"{list(experiment.seeds)}.",
        *notes,
    ]
    tables = markdown_tables(rows, **layout, measures=experiment.measures)
    (out_dir / "results.md").write_text("\n".join(header) + "\n\n" + tables + "\n")
    drawn = [
        path
        for measure in (experiment.measures[:1] if plots else ())
        for path in write_plots(rows, out_dir, **layout, measure=measure)
    ]
    return [out_dir / "results.csv", out_dir / "results.md", *drawn]


def _invocation_log(out_dir: Path, entry: dict) -> list[str]:
    """Append ``entry`` to ``<out>/invocations.jsonl``; one line of text per invocation."""
    path = out_dir / "invocations.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        lines.append(
            f"- {e['started']}: {e[DONE]} runs done, {e[FAILED]} failed, {e['skipped']} skipped "
            f"in {e['seconds']:.0f} s on {e['machine']} ({e['cpus']} CPUs, {e['threads']} "
            f"threads; 1-minute load average {e['load_before']:.1f} before, "
            f"{e['load_after']:.1f} after)"
        )
    return lines


def run_experiment(config_path: Path, out_dir: Path | None = None, *, progress: bool = True) -> int:
    """The ``experiments`` command: run the grid of ``config_path``, write the results into
    ``out_dir`` (default ``runs/experiments/<name>``) and print them; returns the exit status,
    1 if a run of the grid failed."""
    from .plots import plotting_unavailable

    experiment = load_experiment(config_path)
    out_dir = Path(out_dir or Path("runs") / "experiments" / experiment.name)
    no_plots = plotting_unavailable()  # said before the grid, not found out after it
    if no_plots:
        print(f"note: {no_plots}")
    collection = Collection.load(experiment)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    begun = time.strftime("%Y-%m-%d %H:%M:%S")
    outcome = list(run_grid(experiment, out_dir, collection, progress=progress).values())
    invocation = {
        "started": begun, "seconds": round(time.perf_counter() - started, 1),
        **{status: outcome.count(status) for status in (DONE, FAILED, "skipped")},
        "machine": platform.node(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }  # fmt: skip
    queries = {code: len(query_set.queries) for code, (_, query_set) in collection.queries.items()}
    documents = {key: len(texts) for key, texts in collection.documents.items()}
    notes = [
        f"Queries per language {queries}; documents {documents}.",
        "",
        "Invocations of the grid:",
        "",
        *_invocation_log(out_dir, invocation),
    ]
    paths = write_results(experiment, out_dir, notes, plots=no_plots is None)
    print((out_dir / "results.md").read_text())
    print("written: " + ", ".join(map(str, paths)))
    if no_plots:
        print(f"note: {no_plots}")
    if invocation[FAILED]:
        print(f"{invocation[FAILED]} runs failed (their records in {out_dir / 'runs'} hold the "
              "error); run the command again to retry them")  # fmt: skip
    return 1 if invocation[FAILED] else 0
