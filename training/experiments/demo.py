"""The end-to-end demo: UDHR cross-lingual retrieval before and after distillation.

    python -m optical_ops.training demo [--out runs/demo] [any train flag, e.g. --steps 60]

1. builds (first use, ~5 s) or loads the offline multilingual-e5-small: the frozen teacher;
2. reads the UDHR bitext of :data:`DEMO_LANGUAGES`, trains on the train split and evaluates on
   the test articles (:mod:`..bitext.pairs`, :mod:`..evaluation.evaluate`);
3. ``before``: CLIR with the student at initialisation;
4. ``optical``: the student distilled with the OT loss, then evaluated; ``mse``: the same from
   the same initialisation with the mean-pooled MSE loss, every other setting equal;
5. ``teacher``: the teacher as its own query encoder, when the student is smaller;
6. prints one table per measure (nDCG@10, MRR, P@1, MAP; rows = languages, the high- and
   low-resource means and their gap; columns = systems) and writes ``results.md``,
   ``results.json``, ``run-<system>.trec`` + ``qrels.txt`` and, per strategy, the training
   history and final checkpoint to ``--out``.

Sizes (:data:`DEMO_CONFIG`), chosen to end in under 10 minutes on 2 shared CPU cores: the
student is the whole 12-layer model with only its top 2 layers trained (3.5 M parameters) at
a learning rate of 1e-5; 8 languages trained jointly (314 pairs); 30 steps of 16 pairs (about
1.5 epochs); texts cut to 96 tokens. A student cut to 4 layers (``--student-layers 4
--trainable-layers none``, 7.3 M parameters) costs as much per step but starts from a space
unaligned with the teacher's, which a few hundred pairs do not fix; more trainable layers or a
larger learning rate (4 layers, 5e-5) pull the student away from the teacher's alignment
faster than these pairs teach it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from ..bitext.pairs import TEST_ARTICLES, load_udhr, udhr_training_pairs
from ..distillation.config import TrainConfig
from ..distillation.trainer import DistillationTrainer
from ..evaluation.evaluate import (
    DOCUMENT_PREFIX,
    QUERY_PREFIX,
    DocumentIndex,
    TextEncoder,
    evaluate_queries,
    udhr_collection,
    write_trec_files,
)
from ..evaluation.report import TABLE_MEASURES, markdown_table, summarise
from ..models.encoders import load_teacher
from ..models.teacher_states import TeacherStates

DEMO_LANGUAGES = ("swh", "som", "hau", "yor", "amh", "fin", "bul", "ind")
DEMO_CONFIG = TrainConfig(
    languages=DEMO_LANGUAGES,
    student_layers=None,
    trainable_layers=2,
    steps=30,
    batch_size=16,
    micro_batch_size=8,
    lr=1e-5,
    max_length=96,
)


def run_demo(config: TrainConfig, out_dir: Path, progress: bool = True) -> dict:
    """Run the demo with ``config`` (its ``strategy`` is ignored: both are trained); returns
    what ``results.json`` holds."""
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 1)
        return now

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clock = started
    teacher = load_teacher(config.teacher)
    clock = lap("load teacher", clock)
    bitext = load_udhr(config.languages)
    documents, query_sets = udhr_collection(bitext)
    index = DocumentIndex.build(
        documents, TextEncoder(teacher.model, teacher.tokenizer, DOCUMENT_PREFIX)
    )
    clock = lap("encode documents", clock)
    pairs = udhr_training_pairs(bitext)
    teacher_states = TeacherStates(
        teacher.model, config.teacher_layer, memoise=config.memoise_teacher
    )
    systems: dict[str, dict] = {}

    def score(name: str, model, tokenizer) -> None:
        results = evaluate_queries(index, query_sets, TextEncoder(model, tokenizer, QUERY_PREFIX))
        write_trec_files(out_dir, results, query_sets, name)
        systems[name] = summarise({code: r.evaluation.mean for code, r in results.items()})

    histories = {}
    for strategy in ("optical", "mse"):
        run_config = dataclasses.replace(config, strategy=strategy)
        trainer = DistillationTrainer(
            run_config, pairs, teacher=teacher, teacher_states=teacher_states
        )
        if not systems:
            score("before", trainer.student, trainer.student_tokenizer)
            clock = lap("evaluate before", clock)
        shutil.rmtree(out_dir / strategy, ignore_errors=True)
        histories[strategy] = trainer.fit(out_dir=out_dir / strategy, progress=progress)
        clock = lap(f"train {strategy}", clock)
        score(strategy, trainer.student, trainer.student_tokenizer)
        clock = lap(f"evaluate {strategy}", clock)
    if config.student_layers is not None:
        score("teacher", teacher.model, teacher.tokenizer)
        clock = lap("evaluate teacher", clock)
    timings["total"] = round(time.perf_counter() - started, 1)

    summary = {
        "config": config.to_dict(),
        "train_pairs": len(pairs),
        "test_articles": sorted(TEST_ARTICLES),
        "queries": {code: len(query_set.queries) for code, query_set in query_sets.items()},
        "documents": len(documents),
        "systems": systems,
        "final_loss": {s: h[-1]["loss"] for s, h in histories.items() if h},
        "seconds": timings,
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    tables = "\n\n".join(markdown_table(systems, measure) for measure in TABLE_MEASURES)
    header = (
        f"# UDHR CLIR: {', '.join(config.languages)} queries, {len(documents)} English "
        f"paragraphs\n\n{len(pairs)} training pairs; test articles {sorted(TEST_ARTICLES)}; "
        f"{config.steps} steps of {config.batch_size} pairs; wall time {timings['total']} s "
        f"({', '.join(f'{k} {v} s' for k, v in timings.items() if k != 'total')}).\n"
    )
    (out_dir / "results.md").write_text(header + "\n" + tables + "\n")
    print(header + "\n" + tables + f"\n\nresults: {out_dir / 'results.md'}")
    return summary
