r"""Mean ± standard deviation over seeds of the runs' metrics, the gap and the robustness drop.

The records of one (encoder, strategy, seed) are merged first (with ``train_languages = "each"``
every language is a run of its own), so that each seed's summaries cover all the languages:

* ``score``: a measure per language under each condition (clean or perturbed), and over the
  languages (:func:`~..evaluation.report.summarise`): ``mean``, ``high`` and ``low`` (the high- and
  low-resource means) and ``gap`` = high - low;
* ``drop``: clean - perturbed per language (:func:`~..evaluation.robustness.drops`), and the same
  summaries over the languages that the perturbation applies to.

Each value is then a sample over the n seeds, reported as its mean x̄ = (1/n) Σ_s x_s and sample
standard deviation sqrt(Σ_s (x_s - x̄)² / (n - 1)) (none for a single seed).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ..evaluation.report import summarise
from ..evaluation.robustness import CLEAN, Metrics, drops, merge_metrics

GROUPS = {"mean": "mean", "high": "high_resource", "low": "low_resource", "gap": "gap"}
"""Row label of a summary over languages -> its key in :func:`~..evaluation.report.summarise`."""


class Row(NamedTuple):
    encoder: str
    strategy: str
    scorer: str
    condition: str
    quantity: str  # "score" or "drop"
    language: str  # a language code or a key of GROUPS
    measure: str
    mean: float
    std: float | None
    seeds: int


def mean_std(sample: list[float]) -> tuple[float, float | None]:
    """The mean and sample standard deviation (None for one value) of ``sample``."""
    return statistics.fmean(sample), statistics.stdev(sample) if len(sample) > 1 else None


def _merge(records: Iterable[Mapping]) -> dict[tuple[str, str], dict[int, Metrics]]:
    """(encoder, strategy) -> seed -> the metrics of all its records, languages merged."""
    cells: dict[tuple[str, str], dict[int, Metrics]] = {}
    for record in records:
        run = record["run"]
        merged = cells.setdefault((run["encoder"], run["strategy"]), {}).setdefault(run["seed"], {})
        merge_metrics(merged, record["metrics"])
    return cells


def _summaries(per_language: Mapping[str, Mapping[str, float]]) -> dict[str, Mapping[str, float]]:
    summary = summarise(per_language)
    groups = {label: summary[key] for label, key in GROUPS.items() if summary[key] is not None}
    return {**summary["per_language"], **groups}


def seed_values(metrics: Metrics) -> dict[tuple[str, str, str, str, str], float]:
    """(scorer, condition, quantity, language, measure) -> value, for one seed's metrics."""
    values = {}
    for scorer, conditions in metrics.items():
        clean = conditions[CLEAN]
        for condition, by_language in conditions.items():
            quantities = {"score": by_language}
            if condition != CLEAN:
                quantities["drop"] = {
                    language: drops(clean[language], measures)
                    for language, measures in by_language.items()
                }
            for quantity, per_language in quantities.items():
                for language, measures in _summaries(per_language).items():
                    for measure, value in measures.items():
                        values[scorer, condition, quantity, language, measure] = value
    return values


def aggregate(records: Iterable[Mapping]) -> list[Row]:
    """One :class:`Row` per (encoder, strategy, scorer, condition, quantity, language,
    measure) of the finished runs' ``records``, in the order the records list them."""
    rows = []
    for (encoder, strategy), by_seed in _merge(records).items():
        per_seed = [seed_values(metrics) for metrics in by_seed.values()]
        keys = dict.fromkeys(key for values in per_seed for key in values)
        for key in keys:
            sample = [values[key] for values in per_seed if key in values]
            rows.append(Row(encoder, strategy, *key, *mean_std(sample), len(sample)))
    return rows
