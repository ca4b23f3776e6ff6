r"""Robustness evaluation: CLIR metrics on clean and on perturbed queries, and their drops.

A *condition* is ``clean`` or a perturbation ``<kind>@<rate>`` of the queries
(:mod:`..distillation.perturb`: ``noise``, ``typo`` or ``codeswitch``, a ``rate`` fraction of the
words edited). Under a
condition every query of a language is perturbed with the run's seed (the same query gets the
same perturbation in every run of that seed, so strategies are compared on identical inputs),
encoded by the student and scored against the teacher's documents by each scorer
(:mod:`.scoring`). Code-switching replaces words by their English translation (FreeDict); a
language without a dictionary (Somali) has no code-switching condition: absent, not a zero
drop.

The drop of a measure M under a condition c, per language:

    drop = M(clean) - M(c)

so a positive drop is the damage the perturbation does, and a robust student's drop is small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from ..distillation.perturb import LEXICON_KINDS, Lexicon, codeswitch_lexicon, perturb
from .evaluate import RETRIEVAL_DEPTH, QuerySet
from .metrics import evaluate
from .scoring import SCORERS, TokenSets, ranked_run

CLEAN = "clean"
Metrics = dict[str, dict[str, dict[str, dict[str, float]]]]
"""scorer -> condition -> language -> measure -> value."""


class Perturbation(NamedTuple):
    kind: str
    rate: float

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.rate:g}"


class DocumentTokens(NamedTuple):
    """The documents' ids and their token states, encoded once by the teacher."""

    ids: list[str]
    tokens: TokenSets


def query_lexicons(languages: Iterable[str], target: str = "en") -> dict[str, Lexicon]:
    """Query language -> its word -> ``target`` translations (empty without a dictionary)."""
    return {code: codeswitch_lexicon(code, target, missing="skip") for code in languages}


def _condition_queries(
    query_set: QuerySet, perturbation: Perturbation, seed: int, lexicon: Lexicon
) -> QuerySet | None:
    """The query set perturbed, or ``None`` where the perturbation cannot apply (no lexicon)."""
    if perturbation.kind in LEXICON_KINDS and not lexicon:
        return None
    ids = list(query_set.queries)
    texts = perturb(
        [query_set.queries[query] for query in ids], *perturbation, seed=seed, lexicon=lexicon
    )
    return QuerySet(dict(zip(ids, texts)), query_set.qrels)


def evaluate_conditions(
    encode_queries: Callable[[Sequence[str]], TokenSets],
    documents: DocumentTokens,
    query_sets: Mapping[str, QuerySet],
    *,
    perturbations: Sequence[Perturbation] = (),
    scorers: Sequence[str] = ("mean",),
    seed: int = 0,
    lexicons: Mapping[str, Lexicon] | None = None,
    k: int = RETRIEVAL_DEPTH,
) -> Metrics:
    """Mean metrics of every scorer, condition (clean, then each perturbation) and language.

    Each condition's queries are encoded once, whatever the number of scorers. ``lexicons``
    (query language -> lexicon, :func:`query_lexicons`) is needed for code-switching.
    """
    metrics: Metrics = {scorer: {} for scorer in scorers}
    conditions: list[tuple[str, Perturbation | None]] = [(CLEAN, None)]
    conditions += [(perturbation.name, perturbation) for perturbation in perturbations]
    for name, perturbation in conditions:
        for language, query_set in query_sets.items():
            if perturbation is not None:
                lexicon = (lexicons or {}).get(language, {})
                query_set = _condition_queries(query_set, perturbation, seed, lexicon)
                if query_set is None:
                    continue
            ids = list(query_set.queries)
            queries = encode_queries([query_set.queries[query] for query in ids])
            for scorer in scorers:
                scores = SCORERS[scorer](queries, documents.tokens)
                run = ranked_run(scores, ids, documents.ids, k)
                by_language = metrics[scorer].setdefault(name, {})
                by_language[language] = evaluate(run, query_set.qrels).mean
    return metrics


def merge_metrics(into: Metrics, metrics: Metrics) -> None:
    """Add the languages of ``metrics`` to ``into``, in place."""
    for scorer, conditions in metrics.items():
        for condition, by_language in conditions.items():
            into.setdefault(scorer, {}).setdefault(condition, {}).update(by_language)


def drops(clean: Mapping[str, float], perturbed: Mapping[str, float]) -> dict[str, float]:
    """``{measure: clean - perturbed}``: what the perturbation costs."""
    return {measure: clean[measure] - perturbed[measure] for measure in perturbed}

