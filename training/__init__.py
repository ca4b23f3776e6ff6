"""The OPTICAL trainer and CLIR evaluator; its command line is :mod:`.cli`
(``python -m optical_ops.training``). By concern:

* :mod:`.bitext`: the texts and their file formats (UDHR, TSV/JSONL/TREC, benchmarks, dictionaries);
* :mod:`.corpora`: the large parallel corpora, and CLIR benchmarks built on them;
* :mod:`.models`: the teacher and the student encoders;
* :mod:`.distillation`: the trainer, its config, losses, strategies and checkpoints;
* :mod:`.evaluation`: retrieval, metrics, scoring, robustness and result tables;
* :mod:`.experiments`: the demo, the experiment grids, their aggregates, tables and plots.
"""
