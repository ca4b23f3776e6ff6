"""Retrieval metrics: hand-computed cases, conventions, trec_eval agreement, dense top-k."""

import math
import random

import pytest
import torch
from torch.overrides import TorchFunctionMode

from optical_ops.training.evaluation.metrics import (
    MEASURES,
    dense_retrieve,
    evaluate,
    query_metrics,
    rank_documents,
)


def ranked(*docs):
    """Scores that rank ``docs`` in the given order."""
    return {doc: float(len(docs) - i) for i, doc in enumerate(docs)}


def test_binary_relevance_by_hand():
    # ranking d1 d2 d3 d4, relevant {d1, d3}: hits at ranks 1 and 3, R = 2
    values = evaluate({"q": ranked("d1", "d2", "d3", "d4")}, {"q": {"d1": 1, "d3": 1}}).mean
    assert values["MAP"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert values["MRR"] == 1.0
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1/log2(2) + 1/log2(3)
    assert values["nDCG@10"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert values["P@1"] == 1.0
    assert values["P@5"] == pytest.approx(2 / 5)
    assert values["P@10"] == pytest.approx(2 / 10)  # divided by 10 although only 4 retrieved
    assert values["Recall@100"] == 1.0


def test_graded_relevance_by_hand():
    # ranking a c b with gains 2 0 1; z (rel 3) is never retrieved; R = |{a, b, z}| = 3
    values = query_metrics(["a", "c", "b"], {"a": 2, "b": 1, "c": 0, "z": 3})
    assert values["MAP"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    # DCG = 2/log2(2) + 0 + 1/log2(4) = 2.5; IDCG = 3/log2(2) + 2/log2(3) + 1/log2(4)
    assert values["nDCG@10"] == pytest.approx(2.5 / (3.5 + 2 / math.log2(3)))
    assert values["Recall@100"] == pytest.approx(2 / 3)
    assert values["P@5"] == pytest.approx(2 / 5)


def test_negative_relevance_is_non_relevant_with_zero_gain():
    # ranking d1 d2 d3 with rel -1 1 2: hits at ranks 2 and 3, R = 2
    values = query_metrics(["d1", "d2", "d3"], {"d1": -1, "d2": 1, "d3": 2})
    assert values["MAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert values["MRR"] == 0.5
    assert values["P@1"] == 0.0
    # DCG = 0 + 1/log2(3) + 2/log2(4); IDCG = 2/log2(2) + 1/log2(3)
    expected = (1 / math.log2(3) + 1) / (2 + 1 / math.log2(3))
    assert values["nDCG@10"] == pytest.approx(expected)


def test_cutoffs_apply_only_to_cutoff_measures():
    docs = [f"d{i:03d}" for i in range(150)]
    # relevant at ranks 50 and 120
    values = query_metrics(docs, {"d049": 1, "d119": 1})
    assert values["MAP"] == pytest.approx((1 / 50 + 2 / 120) / 2)
    assert values["MRR"] == pytest.approx(1 / 50)
    assert values["Recall@100"] == pytest.approx(1 / 2)
    assert values["nDCG@10"] == 0.0
    assert values["P@10"] == 0.0


def test_no_relevant_document_retrieved_scores_zero():
    values = evaluate({"q": ranked("a", "b")}, {"q": {"x": 1, "a": 0}}).mean
    assert values == dict.fromkeys(MEASURES, 0.0)


def test_ties_are_broken_by_doc_id_descending():
    assert rank_documents({"d1": 1.0, "d2": 1.0, "d3": 1.0, "d0": 2.0}) == ["d0", "d3", "d2", "d1"]
    # string order, not numeric: "d9" > "d10"
    assert rank_documents({"d10": 0.5, "d9": 0.5}) == ["d9", "d10"]
    # ranking d3 d2 d1, relevant d2 at rank 2: AP = RR = 1/2
    values = evaluate({"q": {"d1": 1.0, "d2": 1.0, "d3": 1.0}}, {"q": {"d2": 1}}).mean
    assert values["MAP"] == 0.5
    assert values["MRR"] == 0.5


def test_query_missing_from_run_counts_zero_and_unjudgeable_queries_are_skipped():
    qrels = {
        "q1": {"d1": 1, "d3": 1},
        "missing": {"x": 1},  # not in the run: every metric 0
        "no-relevant": {"d1": 0},  # no relevant document: skipped
    }
    run = {"q1": ranked("d1", "d2", "d3"), "no-relevant": ranked("d1"), "unjudged": ranked("d1")}
    result = evaluate(run, qrels)
    assert list(result.per_query) == ["q1", "missing"]
    assert result.per_query["missing"] == dict.fromkeys(MEASURES, 0.0)
    # mean over q1 and missing: AP = ((1/1 + 2/3)/2 + 0) / 2
    assert result.mean["MAP"] == pytest.approx((1 / 1 + 2 / 3) / 2 / 2)
    assert result.mean["MRR"] == 0.5


def test_empty_run_scores_zero():
    assert evaluate({}, {"q": {"d": 1}}).mean == dict.fromkeys(MEASURES, 0.0)


def test_qrels_without_relevant_documents_cannot_be_averaged():
    with pytest.raises(ValueError, match="no query with a relevant document"):
        evaluate({"q": ranked("d")}, {"q": {"d": 0}})
    with pytest.raises(ValueError, match="no relevant document"):
        query_metrics(["d"], {"d": 0})


def test_nan_score_is_rejected():
    with pytest.raises(ValueError, match="NaN"):
        rank_documents({"a": float("nan"), "b": 1.0})


def random_collection(seed=0, queries=50, docs=200):
    """A run with many tied scores, graded qrels, a query missing from the run and one with no
    relevant document."""
    rng = random.Random(seed)
    doc_ids = [f"d{i}" for i in range(docs)]
    run, qrels = {}, {}
    for q in range(queries):
        query = f"q{q}"
        run[query] = {doc: round(rng.random(), 1) for doc in rng.sample(doc_ids, docs * 3 // 4)}
        judged = rng.sample(doc_ids, 30)
        qrels[query] = {doc: rng.choice([0, 0, 0, 1, 2, 3]) for doc in judged}
    qrels["q0"] = dict.fromkeys(qrels["q0"], 0)
    del run["q1"]
    return run, qrels


def with_relevant(qrels):
    return {query: judged for query, judged in qrels.items() if any(r > 0 for r in judged.values())}


def test_agrees_with_ir_measures():
    ir_measures = pytest.importorskip("ir_measures")
    from ir_measures import AP, RR, P, R, nDCG

    names = {
        AP: "MAP",
        RR: "MRR",
        nDCG @ 10: "nDCG@10",
        P @ 1: "P@1",
        P @ 5: "P@5",
        P @ 10: "P@10",
        R @ 100: "Recall@100",
    }
    run, qrels = random_collection()
    ours = evaluate(run, qrels)
    # ir-measures scores queries missing from the run as 0, like us; it keeps queries without a
    # relevant document (scoring 0), which we skip, so it is given only the others.
    reference_qrels = with_relevant(qrels)
    reference = ir_measures.calc_aggregate(list(names), reference_qrels, run)
    for measure, name in names.items():
        assert ours.mean[name] == pytest.approx(reference[measure], abs=1e-9), name
    compared = 0
    for metric in ir_measures.iter_calc(list(names), reference_qrels, run):
        assert ours.per_query[metric.query_id][names[metric.measure]] == pytest.approx(
            metric.value, abs=1e-9
        )
        compared += 1
    assert compared == len(ours.per_query) * len(MEASURES)


def test_agrees_with_pytrec_eval_per_query():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    names = {
        "map": "MAP",
        "recip_rank": "MRR",
        "ndcg_cut_10": "nDCG@10",
        "P_1": "P@1",
        "P_5": "P@5",
        "P_10": "P@10",
        "recall_100": "Recall@100",
    }
    run, qrels = random_collection(seed=1)
    ours = evaluate(run, qrels).per_query
    evaluator = pytrec_eval.RelevanceEvaluator(
        with_relevant(qrels), {"map", "recip_rank", "ndcg_cut.10", "P.1,5,10", "recall.100"}
    )
    reference = evaluator.evaluate(run)  # only queries present in the run
    assert set(reference) == set(ours) - {"q1"}
    for query, values in reference.items():
        for measure, name in names.items():
            assert ours[query][name] == pytest.approx(values[measure], abs=1e-9), (query, name)


# --- dense retrieval --------------------------------------------------------------------------


def unit_rows(generator, rows, dim):
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator), dim=1)


@pytest.mark.parametrize(("query_chunk", "doc_chunk"), [(1024, 16384), (3, 10), (2, 2), (1, 7)])
def test_dense_retrieve_matches_full_cosine_top_k(query_chunk, doc_chunk):
    generator = torch.Generator().manual_seed(0)
    queries, docs = unit_rows(generator, 7, 16), unit_rows(generator, 53, 16)
    query_ids = [f"q{i}" for i in range(7)]
    doc_ids = [f"doc{i}" for i in range(53)]
    run = dense_retrieve(
        queries, docs, query_ids, doc_ids, 5, query_chunk=query_chunk, doc_chunk=doc_chunk
    )
    expected_scores, expected_index = (queries @ docs.T).topk(5, dim=1)
    assert list(run) == query_ids
    for row, query in enumerate(query_ids):
        expected = {
            doc_ids[i]: s for i, s in zip(expected_index[row].tolist(), expected_scores[row])
        }
        assert run[query].keys() == expected.keys()
        for doc, score in expected.items():
            assert run[query][doc] == pytest.approx(float(score), abs=1e-6)


class RecordOutputs(TorchFunctionMode):
    """Records the name and shape of every tensor a torch call returns."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            self.outputs.append((getattr(func, "__name__", ""), tuple(result.shape)))
        return result


def test_dense_retrieve_never_builds_more_than_one_score_block():
    generator = torch.Generator().manual_seed(3)
    queries, docs = unit_rows(generator, 10, 16), unit_rows(generator, 100, 16)
    with RecordOutputs() as recorder:
        dense_retrieve(
            queries,
            docs,
            [f"q{i}" for i in range(10)],
            [f"d{i}" for i in range(100)],
            3,
            query_chunk=4,
            doc_chunk=32,
        )
    blocks = [shape for name, shape in recorder.outputs if name == "matmul"]
    assert blocks and all(rows <= 4 and cols <= 32 for rows, cols in blocks)
    assert max(math.prod(shape) for _, shape in recorder.outputs) < 10 * 100


def test_dense_retrieve_scores_are_cosines_and_k_is_capped_by_the_corpus():
    generator = torch.Generator().manual_seed(1)
    docs = unit_rows(generator, 4, 8)
    run = dense_retrieve(docs[2:3].to(torch.bfloat16), docs, ["q"], ["a", "b", "c", "d"], 10)
    assert len(run["q"]) == 4
    assert rank_documents(run["q"])[0] == "c"
    assert run["q"]["c"] == pytest.approx(1.0, abs=1e-2)  # bfloat16 query, float32 scores


def test_dense_retrieve_feeds_evaluate():
    generator = torch.Generator().manual_seed(2)
    docs = unit_rows(generator, 20, 8)
    doc_ids = [f"d{i}" for i in range(20)]
    run = dense_retrieve(docs[:5], docs, ["q0", "q1", "q2", "q3", "q4"], doc_ids, 3, doc_chunk=6)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(5)}
    assert evaluate(run, qrels).mean["MRR"] == 1.0


def test_dense_retrieve_rejects_inconsistent_inputs():
    docs = torch.eye(3)
    with pytest.raises(ValueError, match="ids do not match"):
        dense_retrieve(docs, docs, ["q"], ["a", "b", "c"], 1)
    with pytest.raises(ValueError, match="unique"):
        dense_retrieve(docs, docs, ["q1", "q2", "q3"], ["a", "a", "c"], 1)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        dense_retrieve(torch.ones(1, 2), docs, ["q"], ["a", "b", "c"], 1)
    with pytest.raises(ValueError, match="2-D"):
        dense_retrieve(torch.ones(3), docs, ["q"], ["a", "b", "c"], 1)
    with pytest.raises(ValueError, match="positive"):
        dense_retrieve(docs, docs, ["q1", "q2", "q3"], ["a", "b", "c"], 0)
