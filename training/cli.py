"""Command line: ``python -m optical_ops.training {train,evaluate,demo} ...``.

    train     distil a student on UDHR languages (their train split) or a TSV bitext;
              under ``torchrun --nproc-per-node N`` it runs DistributedDataParallel
    evaluate  CLIR metrics and TREC run/qrels files for a checkpoint or any encoder folder,
              on UDHR languages (test articles) or a local collection (JSONL + TREC qrels)
    demo      before / OPTICAL / mean-pooled MSE on UDHR, end to end (:mod:`.experiments.demo`)
    experiments  a grid of strategies × languages × seeds × encoders from a TOML config,
              resumable, with tables and plots (:mod:`.experiments.runner`)
    grid      a grid on the large corpora with the student's lower layers frozen and their
              states cached: thousands of queries, bootstrap intervals (:mod:`.experiments.grid`)

Every :class:`~.distillation.config.TrainConfig` field is a flag of ``train`` and ``demo``
(``--batch-size``, ``--no-freeze-word-embeddings``, ``--student-layers none``...). Usage errors exit
with status 2, bad data or models with status 1 and a message naming the file (and line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from .distillation.config import TrainConfig

_NONE = "none"
TRAIN_DEFAULTS = TrainConfig(languages=("swh", "som", "fin"))


def _optional(convert):
    """An argparse type: ``none`` is None, anything else ``convert(text)``."""

    def parse(text: str):
        return None if text.lower() == _NONE else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error messages
    return parse


_TYPES = {  # TrainConfig annotation -> argparse options
    "str": {"type": str},
    "str | None": {"type": str},
    "int": {"type": int},
    "int | None": {"type": _optional(int), "metavar": "N|none"},
    "float": {"type": float},
    "float | None": {"type": _optional(float), "metavar": "X|none"},
    "bool": {"action": argparse.BooleanOptionalAction},
    "tuple[str, ...]": {"nargs": "+", "metavar": "CODE"},
}


def add_config_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """One flag per TrainConfig field; unset flags are absent from the parsed namespace."""
    group = parser.add_argument_group("training (defaults in brackets)")
    for field in dataclasses.fields(TrainConfig):
        default = getattr(defaults, field.name)
        shown = " ".join(default) if isinstance(default, tuple) else default
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            default=argparse.SUPPRESS,
            help=f"{field.metadata['help']} [{_NONE if shown is None else shown}]",
            choices=field.metadata["choices"],
            **_TYPES[field.type],
        )


def config_from_args(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """``base`` with the fields given on the command line replaced."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if hasattr(args, f.name)}  # fmt: skip
    if given.get("bitext") is not None and "languages" not in given:
        given["languages"] = ()
    return dataclasses.replace(base, **given)


def _add_collection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("collection (UDHR languages, or all three files)")
    group.add_argument("--queries", type=Path, help="JSONL queries (in the student's language)")
    group.add_argument("--corpus", type=Path, help="JSONL corpus (in the teacher's language)")
    group.add_argument("--qrels", type=Path, help="TREC qrels")
    group.add_argument("--name", default="collection", help="the collection's name in reports")


def build_parser() -> argparse.ArgumentParser:
    from .experiments.demo import DEMO_CONFIG

    parser = argparse.ArgumentParser(
        prog="python -m optical_ops.training",
        description="OPTICAL distillation and cross-lingual retrieval evaluation, offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="distil a student")
    train.add_argument("--out", type=Path, required=True, help="folder for checkpoints, history")
    train.add_argument("--resume", type=Path, help="checkpoint (file or folder) to continue from")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(train, TRAIN_DEFAULTS)
    _add_collection_arguments(train)

    evaluate = commands.add_parser("evaluate", help="CLIR metrics and TREC run files")
    student = evaluate.add_mutually_exclusive_group()
    student.add_argument("--checkpoint", type=Path, help="a training checkpoint (file or folder)")
    student.add_argument("--student", type=Path, help="an encoder folder (default: the teacher)")
    evaluate.add_argument("--teacher", type=Path, help="teacher folder (default: the "
                          "checkpoint's, else multilingual-e5-small)")  # fmt: skip
    evaluate.add_argument("--languages", nargs="+", metavar="CODE", help="UDHR languages")
    evaluate.add_argument("--out", type=Path, required=True, help="folder for runs and metrics")
    evaluate.add_argument("--tag", default="student", help="run tag and file name")
    _add_collection_arguments(evaluate)

    demo = commands.add_parser("demo", help="before / OPTICAL / MSE on UDHR, end to end")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="[runs/demo]")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(demo, DEMO_CONFIG)

    experiments = commands.add_parser(
        "experiments", help="a grid of runs from a TOML config, with tables and plots"
    )
    experiments.add_argument("--config", type=Path, required=True, help="the experiment's TOML")
    experiments.add_argument("--out", type=Path, help="[runs/experiments/<name of the config>]")
    experiments.add_argument("--no-progress", action="store_true", help="no progress bars")

    grid = commands.add_parser(
        "grid", help="a grid on cached frozen-layer states, with bootstrap intervals"
    )
    grid.add_argument("--config", type=Path, required=True, help="the grid's TOML")
    grid.add_argument("--out", type=Path, help="[experiments/results/<name of the config>]")
    grid.add_argument("--prepare", action="store_true",
                      help="only compute and cache the states the runs need")  # fmt: skip
    grid.add_argument("--report", action="store_true",
                      help="only write the report of the runs finished so far")  # fmt: skip
    grid.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N",
                      help="only the runs at positions I mod N of the grid")  # fmt: skip
    return parser


def _collection(args: argparse.Namespace, parser: argparse.ArgumentParser, languages):
    """``(documents, {name: QuerySet})`` from UDHR ``languages`` or the three collection files."""
    from .bitext.pairs import load_udhr
    from .evaluation.evaluate import load_collection, udhr_collection

    files = (args.queries, args.corpus, args.qrels)
    if any(files):
        if not all(files) or languages:
            parser.error("give --queries, --corpus and --qrels together, and no --languages")
        documents, query_set = load_collection(*files)
        return documents, {args.name: query_set}
    if not languages:
        parser.error("give UDHR --languages or a collection (--queries, --corpus, --qrels)")
    return udhr_collection(load_udhr(languages))


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from .bitext.pairs import load_udhr, tsv_training_pairs, udhr_training_pairs
    from .distillation.checkpoint import load_checkpoint, resolve_checkpoint
    from .distillation.trainer import DistillationTrainer, check_run_folder
    from .evaluation.evaluate import DOCUMENT_PREFIX, DocumentIndex, TextEncoder, student_evaluator
    from .models.encoders import load_teacher

    # A folder that holds another run is refused before any model loads (RunFolderError).
    check_run_folder(args.out, resolve_checkpoint(args.resume) if args.resume is not None
                     else None)
    if args.resume is not None:
        base = TrainConfig.from_dict(load_checkpoint(args.resume).config)
    else:
        base = TRAIN_DEFAULTS
    try:
        config = config_from_args(args, base)
    except ValueError as error:
        parser.error(str(error))
    if config.bitext is not None:
        pairs = tsv_training_pairs(Path(config.bitext), config.source_column, config.target_column)
    else:
        pairs = udhr_training_pairs(load_udhr(config.languages))
    if config.eval_every:
        documents, query_sets = _collection(args, parser, config.languages)
    teacher = load_teacher(config.teacher)
    trainer = DistillationTrainer(config, pairs, teacher=teacher, resume=args.resume)
    evaluator = None
    if trainer.dist.is_main and config.eval_every:
        doc_encoder = TextEncoder(teacher.model, teacher.tokenizer, DOCUMENT_PREFIX)
        index = DocumentIndex.build(documents, doc_encoder)
        evaluator = student_evaluator(index, query_sets, trainer.student_tokenizer)
    try:
        history = trainer.fit(evaluate=evaluator, out_dir=args.out, progress=not args.no_progress)
    finally:
        trainer.close()
    if trainer.dist.is_main and history:
        print(f"step {history[-1]['step']}: loss {history[-1]['loss']:.4f}; "
              f"checkpoint {history[-1].get('checkpoint')}")  # fmt: skip


def _evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from .distillation.trainer import student_from_checkpoint
    from .evaluation.evaluate import (
        DOCUMENT_PREFIX,
        QUERY_PREFIX,
        DocumentIndex,
        TextEncoder,
        evaluate_queries,
        write_trec_files,
    )
    from .evaluation.report import TABLE_MEASURES, markdown_table, summarise
    from .models.encoders import load_teacher

    if args.checkpoint is not None:
        student, config = student_from_checkpoint(args.checkpoint)
        teacher = load_teacher(args.teacher or config.teacher)
    else:
        teacher = load_teacher(args.teacher)
        # Any encoder folder, loaded frozen like a teacher; by default the teacher itself.
        student = teacher if args.student is None else load_teacher(args.student)
    documents, query_sets = _collection(args, parser, args.languages)
    index = DocumentIndex.build(
        documents, TextEncoder(teacher.model, teacher.tokenizer, DOCUMENT_PREFIX)
    )
    results = evaluate_queries(
        index, query_sets, TextEncoder(student.model, student.tokenizer, QUERY_PREFIX)
    )
    run_path, qrels_path = write_trec_files(args.out, results, query_sets, args.tag)
    summary = summarise({name: r.evaluation.mean for name, r in results.items()})
    (args.out / f"metrics-{args.tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    for measure in TABLE_MEASURES:
        print(markdown_table({args.tag: summary}, measure) + "\n")
    print(f"run: {run_path}\nqrels: {qrels_path}")


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from .experiments.demo import DEMO_CONFIG, run_demo

    try:
        config = config_from_args(args, DEMO_CONFIG)
    except ValueError as error:
        parser.error(str(error))
    if config.bitext is not None:
        parser.error("the demo trains and evaluates on UDHR languages, not a bitext file")
    run_demo(config, args.out, progress=not args.no_progress)


def _experiments(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .experiments.runner import run_experiment

    return run_experiment(args.config, args.out, progress=not args.no_progress)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def _grid(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .experiments.grid.runner import run_grid_command

    return run_grid_command(args.config, args.out, prepare_only=args.prepare,
                            report_only=args.report, shard=args.shard)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from .bitext.formats import DataFormatError
    from .models.encoders import ModelDirectoryError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": _train, "evaluate": _evaluate, "demo": _demo, "experiments": _experiments,
                "grid": _grid}
    try:
        status = commands[args.command](args, parser)
    except (DataFormatError, ModelDirectoryError, FileNotFoundError, ValueError) as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 1
    return status or 0
