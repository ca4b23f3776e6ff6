"""CLIR evaluation plumbing: encoders -> dense retrieval -> metrics, collections, run files."""

import json
import math

import pytest
import torch

from optical_ops.training.bitext.formats import read_qrels, read_run
from optical_ops.training.bitext.udhr import BitextPair
from optical_ops.training.evaluation.evaluate import (
    DocumentIndex,
    QuerySet,
    TextEncoder,
    evaluate_queries,
    load_collection,
    mean_metrics,
    udhr_collection,
    write_trec_files,
)
from optical_ops.training.evaluation.report import markdown_table, summarise
from optical_ops.training.models.encoders import load_teacher

VECTORS = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [0.6, 0.8], "x": [2.0, 0.0], "y": [0.0, 3.0]}


def lookup_encoder(texts):
    """A stand-in encoder: a fixed vector per text, L2-normalised."""
    return torch.nn.functional.normalize(torch.tensor([VECTORS[t] for t in texts]), dim=-1)


def test_retrieval_and_metrics_by_hand():
    index = DocumentIndex.build({"d1": "a", "d2": "b", "d3": "c"}, lookup_encoder)
    qrels = {"qx": {"d3": 1}, "qy": {"d1": 1, "d2": 1}}
    results = evaluate_queries(
        index, {"sw": QuerySet({"qx": "x", "qy": "y"}, qrels)}, lookup_encoder
    )
    result = results["sw"]
    # qx scores d1 1, d3 0.6, d2 0: the relevant d3 is 2nd. qy: d2 1, d3 0.8, d1 0: hits at 1, 3.
    assert list(result.run["qx"]) == ["d1", "d3", "d2"]
    assert result.run["qy"]["d3"] == pytest.approx(0.8)
    qx, qy = result.evaluation.per_query["qx"], result.evaluation.per_query["qy"]
    assert (qx["MAP"], qx["MRR"], qx["P@1"]) == (0.5, 0.5, 0.0)
    assert qx["nDCG@10"] == pytest.approx(1 / math.log2(3))
    assert qy["MAP"] == pytest.approx((1 + 2 / 3) / 2)
    assert (qy["MRR"], qy["P@1"], qy["Recall@100"]) == (1.0, 1.0, 1.0)
    assert qy["nDCG@10"] == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    assert mean_metrics(results)["MRR"] == 0.75


def test_udhr_collection_judges_every_paragraph_of_the_article():
    bitext = {
        "swh": [
            BitextPair(0, 1, "preamble", "utangulizi"),
            BitextPair(3, 1, "life", "uhai"),
            BitextPair(3, 2, "liberty", "uhuru"),
            BitextPair(4, 1, "slavery", "utumwa"),
        ],
        "som": [BitextPair(3, 1, "life", "nolol"), BitextPair(5, 1, "torture", "jirdil")],
    }
    documents, query_sets = udhr_collection(bitext, test_articles={3, 5})
    assert documents == {
        "a0p1": "preamble", "a3p1": "life", "a3p2": "liberty", "a4p1": "slavery",
        "a5p1": "torture",
    }  # fmt: skip
    assert query_sets["swh"].queries == {"swh-a3p1": "uhai", "swh-a3p2": "uhuru"}
    assert query_sets["swh"].qrels["swh-a3p2"] == {"a3p1": 1, "a3p2": 1}
    assert query_sets["som"].queries == {"som-a3p1": "nolol", "som-a5p1": "jirdil"}
    assert query_sets["som"].qrels["som-a5p1"] == {"a5p1": 1}
    with pytest.raises(ValueError, match="swh: no paragraph of the test articles"):
        udhr_collection(bitext, test_articles={7})


def test_local_collection_files(tmp_path):
    queries, corpus, qrels = tmp_path / "q.jsonl", tmp_path / "c.jsonl", tmp_path / "qrels.txt"
    queries.write_text(json.dumps({"_id": "q1", "text": "haki"}) + "\n")
    corpus.write_text(
        json.dumps({"_id": "d1", "title": "Rights", "text": "Everyone has rights."}) + "\n"
        + json.dumps({"_id": "d2", "text": "No title."}) + "\n"
    )  # fmt: skip
    qrels.write_text("q1 0 d1 1\n")
    documents, query_set = load_collection(queries, corpus, qrels)
    assert documents == {"d1": "Rights Everyone has rights.", "d2": "No title."}
    assert query_set == QuerySet({"q1": "haki"}, {"q1": {"d1": 1}})
    qrels.write_text("q1 0 d9 1\n")
    with pytest.raises(ValueError, match=r"documents not in .*c\.jsonl: \['d9'\]"):
        load_collection(queries, corpus, qrels)


def test_trec_files_round_trip(tmp_path):
    index = DocumentIndex.build({"d1": "a", "d2": "b", "d3": "c"}, lookup_encoder)
    query_sets = {
        "sw": QuerySet({"sw-q": "x"}, {"sw-q": {"d3": 1}}),
        "so": QuerySet({"so-q": "y"}, {"so-q": {"d2": 1}}),
    }
    results = evaluate_queries(index, query_sets, lookup_encoder)
    run_path, qrels_path = write_trec_files(tmp_path, results, query_sets, "optical")
    assert run_path.name == "run-optical.trec"
    run = read_run(run_path)
    assert set(run) == {"sw-q", "so-q"}
    assert run["sw-q"] == pytest.approx(results["sw"].run["sw-q"])
    assert read_qrels(qrels_path) == {"sw-q": {"d3": 1}, "so-q": {"d2": 1}}
    assert run_path.read_text().splitlines()[0].split()[1::2] == ["Q0", "1", "optical"]


def test_text_encoder_keeps_input_order_and_training_mode(tiny_model):
    encoder = load_teacher(tiny_model)
    model = encoder.model.train()
    texts = ["all human beings are born free", "watu", "kaikki ihmiset syntyvät"]
    text_encoder = TextEncoder(model, encoder.tokenizer, "query: ", batch_size=2)
    together = text_encoder(texts)
    assert model.training
    alone = torch.cat([text_encoder([text]) for text in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert torch.linalg.vector_norm(together, dim=-1).tolist() == pytest.approx([1, 1, 1])


def test_summary_and_table_report_the_resource_gap():
    means = {
        "swh": {"P@1": 0.5}, "som": {"P@1": 0.3}, "fin": {"P@1": 0.9}, "ben": {"P@1": 0.7},
    }  # fmt: skip
    summary = summarise(means)
    assert summary["mean"]["P@1"] == pytest.approx(0.6)
    assert summary["high_resource"]["P@1"] == pytest.approx(0.9)
    assert summary["low_resource"]["P@1"] == pytest.approx(0.4)
    assert summary["gap"]["P@1"] == pytest.approx(0.5)
    table = markdown_table({"before": summary, "after": summarise(means)}, "P@1").splitlines()
    assert table[0] == "| P@1 | resource | before | after |"
    assert "| Swahili (swh) | low | 0.500 | 0.500 |" in table
    assert "| Bengali (ben) | mid | 0.700 | 0.700 |" in table
    assert table[-1] == "| **gap high − low** |  | 0.500 | 0.500 |"


def test_gap_is_absent_without_both_groups():
    summary = summarise({"swh": {"P@1": 0.5}})
    assert summary["gap"] is None and summary["high_resource"] is None
    assert "gap" not in markdown_table({"s": summary}, "P@1")
