"""Aggregation over seeds: exact means and standard deviations of scores, gaps and drops."""

import math

import pytest

from optical_ops.training.experiments.aggregate import aggregate, mean_std
from optical_ops.training.experiments.report import cell, markdown_tables

# Two seeds of one strategy; swh is low-resource, fin high-resource; values exact in binary.
METRICS = {
    0: {"clean": {"swh": 0.5, "fin": 1.0}, "typo@0.5": {"swh": 0.25, "fin": 0.75}},
    1: {"clean": {"swh": 0.75, "fin": 1.0}, "typo@0.5": {"swh": 0.5, "fin": 0.5}},
}


def record(seed, languages, strategy="ot-cosine"):
    metrics = {
        condition: {code: {"MRR": by_language[code]} for code in languages}
        for condition, by_language in METRICS[seed].items()
    }
    run = {"encoder": "e5", "strategy": strategy, "seed": seed, "languages": list(languages)}
    return {"run": run, "metrics": {"mean": metrics}}


def by_key(rows):
    return {(r.condition, r.quantity, r.language): (r.mean, r.std, r.seeds) for r in rows}


def test_mean_and_sample_std():
    assert mean_std([0.5, 0.75]) == (0.625, pytest.approx(0.125 * math.sqrt(2)))
    assert mean_std([0.25, 0.25, 0.25]) == (0.25, 0.0)
    assert mean_std([0.5]) == (0.5, None)


@pytest.mark.parametrize("split", [False, True], ids=["joint", "each-language"])
def test_scores_gap_and_drops_over_seeds(split):
    if split:  # one record per language, as train_languages = "each" writes them
        records = [record(seed, [code]) for seed in (0, 1) for code in ("swh", "fin")]
    else:
        records = [record(seed, ["swh", "fin"]) for seed in (0, 1)]
    rows = by_key(aggregate(records))
    s2 = 0.125 * math.sqrt(2)  # sample std of two values 0.25 apart
    assert rows["clean", "score", "swh"] == (0.625, pytest.approx(s2), 2)
    assert rows["clean", "score", "fin"] == (1.0, 0.0, 2)
    # gap = fin - swh per seed: 0.5 and 0.25.
    assert rows["clean", "score", "gap"] == (0.375, pytest.approx(s2), 2)
    assert rows["clean", "score", "mean"] == (0.8125, pytest.approx(s2 / 2), 2)
    # drops: swh 0.25 and 0.25; fin 0.25 and 0.5; their mean 0.25 and 0.375.
    assert rows["typo@0.5", "drop", "swh"] == (0.25, 0.0, 2)
    assert rows["typo@0.5", "drop", "fin"] == (0.375, pytest.approx(s2), 2)
    assert rows["typo@0.5", "drop", "mean"] == (0.3125, pytest.approx(s2 / 2), 2)
    assert rows["typo@0.5", "drop", "low"] == (0.25, 0.0, 2)
    assert ("clean", "drop", "swh") not in rows


def test_a_language_missing_from_a_condition_is_left_out_of_its_summaries():
    rec = record(0, ["swh", "fin"])
    del rec["metrics"]["mean"]["typo@0.5"]["swh"]  # e.g. code-switching without a dictionary
    rows = by_key(aggregate([rec]))
    assert rows["typo@0.5", "drop", "mean"] == (0.25, None, 1)
    assert ("typo@0.5", "drop", "swh") not in rows and ("typo@0.5", "drop", "gap") not in rows


def test_markdown_cells_and_tables():
    rows = aggregate(
        [record(seed, ["swh", "fin"]) for seed in (0, 1)] + [record(0, ["swh", "fin"], "mse")]
    )
    assert cell(None) == "n/a"
    tables = markdown_tables(
        rows, encoders=["e5"], strategies=["ot-cosine", "mse"], scorers=["mean"],
        languages=["swh", "fin"], conditions=["clean", "typo@0.5"], measures=["MRR"],
    )  # fmt: skip
    assert (
        "| strategy | Swahili (swh), low | Finnish (fin), high | mean | gap high − low |" in tables
    )
    assert "| ot-cosine | 0.625 ± 0.177 | 1.000 ± 0.000 | 0.812 ± 0.088 | 0.375 ± 0.177 |" in tables
    assert "| mse | 0.500 | 1.000 | 0.750 | 0.500 |" in tables
    assert "| ot-cosine | typo@0.5 | 0.250 ± 0.000 | 0.375 ± 0.177 | 0.312 ± 0.088 |" in tables
