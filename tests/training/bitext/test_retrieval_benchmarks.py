"""Benchmark readers on tiny files written here in each benchmark's own layout and format."""

from __future__ import annotations

import json

import pytest

from optical_ops.training.bitext.formats import DataFormatError
from optical_ops.training.bitext.retrieval_benchmarks import (
    RetrievalCollection,
    miracl_corpus_files,
    read_miracl,
    read_mmarco,
    read_mtop,
    read_xquad,
)


def write(root, relative, content):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def jsonl(*records):
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def raises_at(path, line, fragment, read, *args, **kwargs):
    """Assert that ``read(*args, **kwargs)`` raises a DataFormatError at ``path``, ``line``."""
    with pytest.raises(DataFormatError) as caught:
        read(*args, **kwargs)
    error, message = caught.value, str(caught.value)
    assert (error.path, error.line) == (str(path), line), message
    assert fragment in message, message
    return message


# --- MIRACL -----------------------------------------------------------------------------------

MIRACL_TOPICS = "miracl-v1.0-fi/topics/topics.miracl-v1.0-fi-dev.tsv"
MIRACL_QRELS = "miracl-v1.0-fi/qrels/qrels.miracl-v1.0-fi-dev.tsv"
MIRACL_CORPUS = "miracl-corpus-v1.0-fi"


def doc(docid, title, text):
    return {"docid": docid, "title": title, "text": text}


@pytest.fixture
def miracl(tmp_path):
    write(
        tmp_path,
        MIRACL_TOPICS,
        "0\tMikä on Suomen pääkaupunki?\n1\tKuka kirjoitti Kalevalan?\n"
        "2\tMissä on Särkänniemi?\n3\tMikä on pisin joki?\n",
    )
    write(
        tmp_path,
        MIRACL_QRELS,
        "0\tQ0\t100#0\t1\n0\tQ0\t100#1\t0\n1\tQ0\t200#0\t1\n2\tQ0\t300#0\t0\n",
    )
    corpus = tmp_path / MIRACL_CORPUS
    helsinki = [
        doc("100#0", "Helsinki", "Suomen pääkaupunki."),
        doc("100#1", "Helsinki", "Kaupunki meren rannalla."),
    ]
    others = [
        doc("200#0", "", "Elias Lönnrot kokosi Kalevalan."),
        doc("300#0", "Tampere", "Särkänniemi on huvipuisto."),
        doc("400#0", "Kemijoki", "Pisin joki."),
    ]
    write(corpus, "docs-0.jsonl", jsonl(*helsinki))
    write(corpus, "docs-10.jsonl", jsonl(doc("900#0", "Oulu", "Kaupunki pohjoisessa.")))
    write(corpus, "docs-2.jsonl", jsonl(*others))
    return tmp_path


def test_miracl_layout(miracl):
    assert miracl_corpus_files(miracl / MIRACL_CORPUS) == [
        miracl / MIRACL_CORPUS / name for name in ("docs-0.jsonl", "docs-2.jsonl", "docs-10.jsonl")
    ]
    assert read_miracl(miracl, "fi") == RetrievalCollection(
        queries={"fi-0": "Mikä on Suomen pääkaupunki?", "fi-1": "Kuka kirjoitti Kalevalan?"},
        documents={
            "100#0": "Helsinki Suomen pääkaupunki.",
            "100#1": "Helsinki Kaupunki meren rannalla.",
            "200#0": "Elias Lönnrot kokosi Kalevalan.",
            "300#0": "Tampere Särkänniemi on huvipuisto.",
            "400#0": "Kemijoki Pisin joki.",
            "900#0": "Oulu Kaupunki pohjoisessa.",
        },
        qrels={"fi-0": {"100#0": 1, "100#1": 0}, "fi-1": {"200#0": 1}},
        query_language="fi",
        document_language="fi",
    )


def test_miracl_explicit_paths_and_jsonl_topics(miracl, tmp_path):
    topics = write(tmp_path, "topics.jsonl", jsonl({"query_id": "1", "query": "Kalevala?"}))
    collection = read_miracl(
        None,
        "fi",
        topics=topics,
        qrels=miracl / MIRACL_QRELS,
        corpus=[miracl / MIRACL_CORPUS / "docs-2.jsonl", miracl / MIRACL_CORPUS / "docs-0.jsonl"],
        dangling="drop",
    )
    assert collection.queries == {"fi-1": "Kalevala?"}
    assert list(collection.documents) == ["200#0", "300#0", "400#0", "100#0", "100#1"]
    assert collection.dropped_judgments == 3  # the judgments of queries 0 and 2 name no topic
    with pytest.raises(ValueError, match="no topics: give the benchmark's root folder"):
        read_miracl(None, "fi")


def test_limit_and_max_documents_keep_the_judged_documents(miracl):
    small = read_miracl(miracl, "fi", limit=1, max_documents=3)
    assert small.queries == {"fi-0": "Mikä on Suomen pääkaupunki?"}
    assert list(small.documents) == ["100#0", "100#1", "200#0"]
    assert small.qrels == {"fi-0": {"100#0": 1, "100#1": 0}}
    assert list(read_miracl(miracl, "fi", limit=1, max_documents=1).documents) == ["100#0", "100#1"]
    for bad in ({"limit": 0}, {"max_documents": -1}, {"limit": 1.5}, {"dangling": "skip"}):
        with pytest.raises(ValueError, match="must be"):
            read_miracl(miracl, "fi", **bad)


def test_dangling_judgments_are_an_error_or_dropped(miracl):
    qrels = miracl / MIRACL_QRELS
    qrels.write_text(qrels.read_text(encoding="utf-8") + "1\tQ0\t777#0\t1\n9\tQ0\t100#0\t1\n")
    message = raises_at(qrels, None, "2 of 6 judgments name ids missing", read_miracl, miracl, "fi")
    assert "1 query ids ['9']" in message and "1 doc ids ['777#0']" in message
    collection = read_miracl(miracl, "fi", dangling="drop")
    assert collection.dropped_judgments == 2
    assert collection.qrels["fi-1"] == {"200#0": 1}


def test_miracl_gzipped_corpus_shards_are_read(tmp_path):
    import gzip

    for shard, docid in ((10, "10#0"), (2, "2#0")):
        with gzip.open(tmp_path / f"docs-{shard}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write(json.dumps({"docid": docid, "title": "Otsikko", "text": "Äiti"}) + "\n")
    assert [p.name for p in miracl_corpus_files(tmp_path)] == ["docs-2.jsonl.gz",
                                                               "docs-10.jsonl.gz"]
    from optical_ops.training.bitext.formats import read_corpus

    assert read_corpus(tmp_path / "docs-2.jsonl.gz")["2#0"].text == "Äiti"
    with pytest.raises(FileNotFoundError, match="no MIRACL corpus files"):
        miracl_corpus_files(tmp_path / "missing")


@pytest.mark.parametrize(
    ("topics", "line", "fragment"),
    [
        ("0\tMikä?\n1 Kalevala?\n", 2, "expected 2 tab-separated fields 'query id<TAB>query'"),
        ("0\tMikä?\n1\t  \n", 2, "empty query"),
        ("0\tMikä?\n\n1 2\tKalevala?\n", 3, "query id must be non-empty with no whitespace"),
        ("0\tMikä?\n1\tKuka?\n0\tMissä?\n", 3, "duplicate id '0' (first on line 1)"),
    ],
)
def test_miracl_malformed_topics(miracl, topics, line, fragment):
    path = write(miracl, MIRACL_TOPICS, topics)
    raises_at(path, line, fragment, read_miracl, miracl, "fi")


def test_miracl_malformed_corpus_and_qrels(miracl):
    shard = miracl / MIRACL_CORPUS / "docs-10.jsonl"
    write(miracl / MIRACL_CORPUS, "docs-10.jsonl", jsonl(doc("9#0", "", "a")) + "{oops\n")
    raises_at(shard, 2, "invalid JSON", read_miracl, miracl, "fi")
    write(miracl / MIRACL_CORPUS, "docs-10.jsonl", jsonl(doc("300#0", "Tampere", "again")))
    raises_at(
        shard,
        None,
        f"duplicate doc id '300#0' (first in {shard.parent / 'docs-2.jsonl'})",
        read_miracl,
        miracl,
        "fi",
    )
    qrels = write(miracl, MIRACL_QRELS, "0\tQ0\t100#0\t1\n0\tQ0\t100#1\n")
    raises_at(qrels, 2, "expected 4 whitespace-separated fields", read_miracl, miracl, "fi")


# --- XQuAD ------------------------------------------------------------------------------------


def squad(articles):
    """SQuAD v1.1 JSON of ``[[(context, [(id, question), ...]), ...], ...]``."""
    return json.dumps(
        {
            "version": "1.1",
            "data": [
                {
                    "title": f"article {i}",
                    "paragraphs": [
                        {
                            "context": context,
                            "qas": [
                                {
                                    "id": qid,
                                    "question": question,
                                    "answers": [{"answer_start": 0, "text": context[:4]}],
                                }
                                for qid, question in qas
                            ],
                        }
                        for context, qas in paragraphs
                    ],
                }
                for i, paragraphs in enumerate(articles)
            ],
        },
        ensure_ascii=False,
        indent=1,
    )


XQUAD_EN = [
    [
        ("The Panthers won the game.", [("q1", "Who won?"), ("q2", "What did they win?")]),
        ("Denver scored ten points.", [("q3", "How many points?")]),
    ],
    [("Steam engines use heat.", [("q4", "What do steam engines use?")])],
]
XQUAD_DE = [
    [
        ("Die Panthers gewannen das Spiel.", [("q1", "Wer gewann?"), ("q2", "Was gewannen sie?")]),
        ("Denver erzielte zehn Punkte.", [("q3", "Wie viele Punkte?")]),
    ],
    [("Dampfmaschinen nutzen Wärme.", [("q4", "Was nutzen Dampfmaschinen?")])],
]


@pytest.fixture
def xquad(tmp_path):
    write(tmp_path, "xquad.en.json", squad(XQUAD_EN))
    write(tmp_path, "xquad.de.json", squad(XQUAD_DE))
    return tmp_path


def test_xquad_german_questions_to_english_paragraphs(xquad):
    assert read_xquad(xquad, "de", "en") == RetrievalCollection(
        queries={
            "de-q1": "Wer gewann?",
            "de-q2": "Was gewannen sie?",
            "de-q3": "Wie viele Punkte?",
            "de-q4": "Was nutzen Dampfmaschinen?",
        },
        documents={
            "a0p0": "The Panthers won the game.",
            "a0p1": "Denver scored ten points.",
            "a1p0": "Steam engines use heat.",
        },
        qrels={
            "de-q1": {"a0p0": 1},
            "de-q2": {"a0p0": 1},
            "de-q3": {"a0p1": 1},
            "de-q4": {"a1p0": 1},
        },
        query_language="de",
        document_language="en",
    )
    reverse = read_xquad(
        None,
        "en",
        "de",
        queries=xquad / "xquad.en.json",
        documents=xquad / "xquad.de.json",
        limit=2,
    )
    assert reverse.queries == {"en-q1": "Who won?", "en-q2": "What did they win?"}
    assert reverse.documents["a1p0"] == "Dampfmaschinen nutzen Wärme."


def test_xquad_malformed(xquad):
    path = xquad / "xquad.de.json"
    path.write_text('{"data": [\n {"paragraphs": []},\n ]\n}\n', encoding="utf-8")
    raises_at(path, 3, "invalid JSON", read_xquad, xquad, "de", "en")
    broken = json.loads(squad(XQUAD_DE))
    del broken["data"][0]["paragraphs"][1]["qas"][0]["question"]
    path.write_text(json.dumps(broken), encoding="utf-8")
    raises_at(
        path,
        None,
        "data[0].paragraphs[1].qas[0]: expected a non-empty string under 'question', found nothing",
        read_xquad,
        xquad,
        "de",
        "en",
    )
    broken["data"][0]["paragraphs"][1]["qas"] = [{"id": "q1", "question": "Wer?"}]
    path.write_text(json.dumps(broken), encoding="utf-8")
    raises_at(
        path,
        None,
        "data[0].paragraphs[1].qas[0]: duplicate question id 'q1' "
        "(first at data[0].paragraphs[0].qas[0])",
        read_xquad,
        xquad,
        "de",
        "en",
    )
    write(xquad, "xquad.de.json", squad([XQUAD_DE[0]]))
    raises_at(path, None, "1 question ids of", read_xquad, xquad, "en", "de")


# --- MTOP -------------------------------------------------------------------------------------


def mtop_line(identifier, utterance, locale):
    tokens = json.dumps({"tokens": utterance.split()}, ensure_ascii=False)
    return (
        f"{identifier}\tIN:GET_WEATHER\t\t{utterance}\tweather\t{locale}\t"
        f"[IN:GET_WEATHER {utterance} ]\t{tokens}\n"
    )


@pytest.fixture
def mtop(tmp_path):
    english = [(1001, "weather in Munich"), (1002, "is it cold today"), (1004, "rain?")]
    german = [(1001, "Wetter in München"), (1002, "ist es heute kalt"), (1003, "Schnee?")]
    write(tmp_path, "en/test.txt", "".join(mtop_line(*row, "en_XX") for row in english))
    write(tmp_path, "de/test.txt", "".join(mtop_line(*row, "de_DE") for row in german))
    return tmp_path


def test_mtop_utterances_aligned_by_id(mtop):
    assert read_mtop(mtop, "de", "en") == RetrievalCollection(
        queries={"de-1001": "Wetter in München", "de-1002": "ist es heute kalt"},
        documents={"1001": "weather in Munich", "1002": "is it cold today", "1004": "rain?"},
        qrels={"de-1001": {"1001": 1}, "de-1002": {"1002": 1}},
        query_language="de",
        document_language="en",
        dropped_judgments=1,  # 1003 has no English utterance
    )
    raises_at(
        mtop / "en/test.txt",
        None,
        "1 doc ids ['1003']",
        read_mtop,
        mtop,
        "de",
        "en",
        dangling="error",
    )


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("1005\tIN:X\t\tno tokens\tweather\tde_DE\t[IN:X ]\n", "expected 8 tab-separated fields"),
        (mtop_line(1005, " ", "de_DE"), "empty utterance"),
        (mtop_line(1001, "noch einmal", "de_DE"), "duplicate id '1001' (first on line 1)"),
    ],
)
def test_mtop_malformed(mtop, line, fragment):
    path = mtop / "de/test.txt"
    path.write_text(path.read_text(encoding="utf-8") + line, encoding="utf-8")
    raises_at(path, 4, fragment, read_mtop, mtop, "de", "en")


# --- mMARCO -----------------------------------------------------------------------------------

MMARCO_QUERIES = "data/google/queries/dev/portuguese_queries.dev.tsv"
MMARCO_COLLECTION = "data/google/collections/english_collection.tsv"


@pytest.fixture
def mmarco(tmp_path):
    write(tmp_path, MMARCO_QUERIES, "11\to que é a fotossíntese\n12\tquem é Pelé\n13\tsem qrels\n")
    write(
        tmp_path,
        MMARCO_COLLECTION,
        "0\tPhotosynthesis makes sugar.\n1\tPelé played football.\n2\tUnjudged passage.\n",
    )
    write(tmp_path, "data/qrels.dev.small.tsv", "11\t0\t0\t1\n12\t0\t1\t1\n")
    return tmp_path


def test_mmarco_portuguese_queries_to_english_passages(mmarco):
    assert read_mmarco(mmarco, "pt") == RetrievalCollection(
        queries={"pt-11": "o que é a fotossíntese", "pt-12": "quem é Pelé"},
        documents={
            "0": "Photosynthesis makes sugar.",
            "1": "Pelé played football.",
            "2": "Unjudged passage.",
        },
        qrels={"pt-11": {"0": 1}, "pt-12": {"1": 1}},
        query_language="pt",
        document_language="en",
    )


def test_mmarco_style_explicit_files(tmp_path):
    queries = write(tmp_path, "queries.tsv", "q1\tswali la kwanza\n")
    passages = write(tmp_path, "collection.tsv", "p1\tfirst passage\np2\tsecond passage\n")
    qrels = write(tmp_path, "qrels.txt", "q1 0 p2 2\n")
    collection = read_mmarco(None, "sw", queries=queries, collection=passages, qrels=qrels)
    assert collection.qrels == {"sw-q1": {"p2": 2}}
    assert collection.documents == {"p1": "first passage", "p2": "second passage"}


def test_mmarco_malformed(mmarco):
    path = mmarco / MMARCO_COLLECTION
    path.write_text(path.read_text(encoding="utf-8") + "3 no tab here\n", encoding="utf-8")
    raises_at(
        path,
        4,
        "expected 2 tab-separated fields 'pid<TAB>passage', found 1",
        read_mmarco,
        mmarco,
        "pt",
    )
    path.write_text("0\tone\n1\ttwo\n\n1\tagain\n", encoding="utf-8")
    raises_at(path, 4, f"duplicate doc id '1' (first in {path}, line 2)", read_mmarco, mmarco, "pt")
