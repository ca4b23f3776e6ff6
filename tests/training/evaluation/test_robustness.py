"""Robustness evaluation: which queries each condition perturbs, and the drop arithmetic."""

import torch

from optical_ops.training.evaluation.evaluate import QuerySet
from optical_ops.training.evaluation.robustness import (
    CLEAN,
    DocumentTokens,
    Perturbation,
    drops,
    evaluate_conditions,
)
from optical_ops.training.evaluation.scoring import TokenSets

CLEAN_QUERIES = {"swh": "haki ya watu", "som": "xuquuqda dadka"}


def encode(texts):
    """A stand-in student: a clean query lands on document "right", anything else on "wrong"."""
    vectors = [[1.0, 0.0] if text in CLEAN_QUERIES.values() else [0.0, 1.0] for text in texts]
    return TokenSets(torch.tensor(vectors)[:, None, :], torch.ones(len(texts), 1))


def test_conditions_perturb_the_queries_and_codeswitching_needs_a_lexicon():
    documents = DocumentTokens(["right", "wrong"], TokenSets(torch.eye(2)[:, None, :],
                                                             torch.ones(2, 1)))  # fmt: skip
    query_sets = {
        code: QuerySet({f"{code}-q": text}, {f"{code}-q": {"right": 1}})
        for code, text in CLEAN_QUERIES.items()
    }
    metrics = evaluate_conditions(
        encode, documents, query_sets, scorers=("mean", "maxsim"), seed=5,
        perturbations=[Perturbation("typo", 1.0), Perturbation("codeswitch", 1.0)],
        lexicons={"swh": {"haki": ["right"]}, "som": {}},
    )  # fmt: skip
    for scorer in ("mean", "maxsim"):
        assert list(metrics[scorer]) == [CLEAN, "typo@1", "codeswitch@1"]
        assert {code: m["MRR"] for code, m in metrics[scorer][CLEAN].items()} == {
            "swh": 1.0, "som": 1.0,
        }  # fmt: skip
        assert {code: m["MRR"] for code, m in metrics[scorer]["typo@1"].items()} == {
            "swh": 0.5, "som": 0.5,
        }  # fmt: skip
        # Somali has no dictionary: no code-switching condition, rather than a zero drop.
        assert list(metrics[scorer]["codeswitch@1"]) == ["swh"]
        assert metrics[scorer]["codeswitch@1"]["swh"]["P@1"] == 0.0


def test_drop_is_clean_minus_perturbed():
    clean = {"MAP": 0.75, "MRR": 0.5, "P@1": 0.0}
    perturbed = {"MAP": 0.25, "MRR": 0.625, "P@1": 0.0}
    assert drops(clean, perturbed) == {"MAP": 0.5, "MRR": -0.125, "P@1": 0.0}
    assert Perturbation("noise", 0.2).name == "noise@0.2"
