"""The grid's tasks: one corpus and language each, with its fixed training pool and test queries.

A task ``"<corpus>/<language>"`` (``bible/ny``, ``quran/bn``, ``libreoffice/km``) takes the
corpus's fixed train/test split (:func:`~...corpora.split_corpus`) and:

* ``train``: the first ``train_pairs`` pairs of the train split in a shuffle seeded by
  :data:`POOL_SEED` (the same pool for every strategy and seed; the seeds only change the order);
* ``dev``: the next ``dev_pairs`` of that shuffle, as a CLIR collection of its own: model
  selection (learning rate, ε) is done on it, never on the test split;
* ``test``: the test split's CLIR collection (:func:`~...corpora.clir_collection`: queries in the
  language, every English candidate of the held-out units, duplicates relevant), its queries
  subsampled to ``max_queries`` by the same fixed seed where there are more.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ...corpora import AlignedPair, ParallelCorpus, clir_collection, load_corpora, split_corpus
from ...corpora.cache import CORPORA

POOL_SEED = 20_231_203
SPLITS = ("test", "dev")


@dataclass(frozen=True)
class Collection:
    """Queries (ids, texts), English documents (ids, texts) and the (Q, D) relevance mask."""

    query_ids: list[str]
    queries: list[str]
    document_ids: list[str]
    documents: list[str]
    relevant: torch.Tensor  # (Q, D) bool


@dataclass(frozen=True)
class Task:
    name: str  # "<corpus>/<language>"
    language: str
    train: list[AlignedPair]
    evaluation: Collection


def parse_task(name: str) -> tuple[str, str]:
    corpus, _, language = name.partition("/")
    if corpus not in CORPORA or not language:
        raise ValueError(
            f"a task is '<corpus>/<language>' with corpus one of {list(CORPORA)}, got {name!r}"
        )
    return corpus, language


def _collection(pairs: Sequence[AlignedPair], language: str, max_queries: int) -> Collection:
    clir = clir_collection(pairs, language)
    query_ids = list(clir.queries)
    if len(query_ids) > max_queries:
        query_ids = sorted(
            random.Random(POOL_SEED).sample(query_ids, max_queries), key=query_ids.index
        )
    document_ids = list(clir.documents)
    column = {doc: index for index, doc in enumerate(document_ids)}
    relevant = torch.zeros((len(query_ids), len(document_ids)), dtype=torch.bool)
    for row, query in enumerate(query_ids):
        relevant[row, [column[doc] for doc, rel in clir.qrels[query].items() if rel > 0]] = True
    return Collection(
        query_ids,
        [clir.queries[q] for q in query_ids],
        document_ids,
        [clir.documents[d] for d in document_ids],
        relevant,
    )


def make_task(
    corpus: ParallelCorpus, *, train_pairs: int, split: str, max_queries: int, dev_pairs: int
) -> Task:
    """The task of ``corpus`` (see the module docstring); ``split`` is ``test`` or ``dev``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    fixed = split_corpus(corpus)
    shuffled = random.Random(POOL_SEED).sample(fixed.train, len(fixed.train))
    needed = train_pairs + (dev_pairs if split == "dev" else 0)
    if len(shuffled) < needed:
        raise ValueError(
            f"{corpus.name}/{corpus.language} has {len(shuffled)} train pairs, "
            f"fewer than the {needed} asked for"
        )
    held_out = shuffled[train_pairs:needed] if split == "dev" else fixed.test
    return Task(
        f"{corpus.name}/{corpus.language}",
        corpus.language,
        shuffled[:train_pairs],
        _collection(held_out, corpus.language, max_queries),
    )


def load_tasks(names: Sequence[str], cache=None, **options) -> Mapping[str, Task]:
    """``{name: Task}`` of ``"<corpus>/<language>"`` names, read from the corpora cache;
    ``options`` as :func:`make_task`."""
    wanted = [parse_task(name) for name in names]
    corpora = {
        (corpus.name, corpus.language): corpus
        for corpus in load_corpora(sorted({c for c, _ in wanted}), cache)
    }
    missing = [f"{c}/{lang}" for c, lang in wanted if (c, lang) not in corpora]
    if missing:
        raise ValueError(
            f"unknown tasks {missing}; the corpora hold "
            f"{sorted(f'{c}/{lang}' for c, lang in corpora)}"
        )
    return {name: make_task(corpora[key], **options) for name, key in zip(names, wanted)}
