"""Local data formats: round trips, tolerated variations and located errors."""

import functools
import json

import pytest

from optical_ops.training.bitext.formats import (
    DataFormatError,
    Document,
    SentencePair,
    lookup_language,
    read_bitext,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    write_bitext,
    write_corpus,
    write_qrels,
    write_queries,
    write_run,
)

UDHR_HEADER = "article\tparagraph\tenglish\tother"


def write_bytes(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def raises_at(path, line, fragment, read, **kwargs):
    """Assert that ``read(path)`` raises a DataFormatError at ``line`` mentioning ``fragment``."""
    with pytest.raises(DataFormatError) as caught:
        read(path, **kwargs)
    error = caught.value
    message = str(error)
    assert str(path) in message and fragment in message, message
    assert error.path == str(path) and error.line == line
    if line is not None:
        assert f"line {line}:" in message


# --- TSV bitext -------------------------------------------------------------------------------


def test_bitext_round_trip_without_header(tmp_path):
    pairs = [SentencePair("Hello world.", "Habari dunia."), SentencePair("Ünïcode ✓", "ጤና ይስጥልኝ")]
    path = tmp_path / "pairs.tsv"
    write_bitext(path, pairs)
    assert read_bitext(path) == pairs


def test_bitext_round_trip_with_header_and_columns_chosen_by_name(tmp_path):
    path = tmp_path / "pairs.tsv"
    write_bitext(path, [("one", "moja"), ("two", "mbili")], header=("en", "sw"))
    assert path.read_text(encoding="utf-8").splitlines()[0] == "en\tsw"
    assert read_bitext(path, source="sw", target="en") == [("moja", "one"), ("mbili", "two")]


def test_bitext_udhr_layout(tmp_path):
    path = write_bytes(
        tmp_path,
        "udhr.tsv",
        f"{UDHR_HEADER}\n1\t1\tAll human beings are born free.\tWatu wote wamezaliwa huru.\n"
        "1\t2\t  Spaces are stripped.  \tNafasi.\n",
    )
    assert read_bitext(path, source="english", target="other") == [
        ("All human beings are born free.", "Watu wote wamezaliwa huru."),
        ("Spaces are stripped.", "Nafasi."),
    ]


def test_bitext_tolerates_bom_crlf_and_blank_lines(tmp_path):
    content = (
        "\ufeff" + f"{UDHR_HEADER}\r\n1\t1\tHello\tJambo\r\n\r\n1\t2\tBye\tKwaheri\r\n\r\n  \r\n"
    )
    path = write_bytes(tmp_path, "udhr.tsv", content)
    assert read_bitext(path, source="english", target="other") == [
        ("Hello", "Jambo"),
        ("Bye", "Kwaheri"),
    ]
    plain = write_bytes(tmp_path, "plain.tsv", b"\xef\xbb\xbfa\tb\r\nc\td\r\n\n\n")
    assert read_bitext(plain) == [("a", "b"), ("c", "d")]


UDHR = {"source": "english", "target": "other"}


@pytest.mark.parametrize(
    ("content", "columns", "line", "fragment"),
    [
        ("a\tb\nc\td\te\n", {}, 2, "expected 2 tab-separated fields, found 3"),
        ("a\tb\nno tab here\n", {}, 2, "found 1"),
        ("a\tb\n\n\t  c\n", {}, 3, "empty 'source' field"),
        ("a\t\n", {}, 1, "empty 'target' field"),
        (f"{UDHR_HEADER}\n1\t1\tHello\t\n", UDHR, 2, "empty 'other' field"),
        (f"{UDHR_HEADER}\n1\t1\tHello\n", UDHR, 2, "expected 4 tab-separated fields, found 3"),
        ("article\tenglish\tswahili\n", UDHR, 1, "header has no column 'other'"),
        ("english\tother\tenglish\n", UDHR, 1, "header repeats column(s) ['english']"),
        ("", UDHR, None, "empty file"),
        (f"{UDHR_HEADER}\n\n", UDHR, None, "no sentence pairs"),
        ("\n\n", {}, None, "no sentence pairs"),
        (b"a\tb\nc\t\xff\xfe\n", {}, 2, "not valid UTF-8"),
    ],
)
def test_bitext_errors_name_file_and_line(tmp_path, content, columns, line, fragment):
    path = write_bytes(tmp_path, "bad.tsv", content)
    raises_at(path, line, fragment, read_bitext, **columns)


def test_bitext_column_names_come_in_pairs(tmp_path):
    path = write_bytes(tmp_path, "pairs.tsv", "a\tb\n")
    with pytest.raises(ValueError, match="both the source and the target"):
        read_bitext(path, source="a")


@pytest.mark.parametrize("field", ["tab\tinside", "new\nline", "  "])
def test_bitext_writer_refuses_unrepresentable_fields(tmp_path, field):
    with pytest.raises(ValueError, match="TSV field"):
        write_bitext(tmp_path / "out.tsv", [("ok", field)])


# --- JSONL queries and corpus -----------------------------------------------------------------


def jsonl(*records):
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def test_queries_round_trip(tmp_path):
    queries = {"1": "Habari za leo?", "q-2": 'quotes " and \\ and\nnewline', "3": "ዜና"}
    path = tmp_path / "queries.jsonl"
    write_queries(path, queries)
    assert read_queries(path) == queries
    assert list(read_queries(path)) == ["1", "q-2", "3"]


def test_queries_accept_beir_and_miracl_keys(tmp_path):
    path = write_bytes(
        tmp_path,
        "topics.jsonl",
        jsonl(
            {"_id": "a", "text": "beir", "metadata": {}},
            {"query_id": 7, "query": "miracl"},
            {"id": "c", "title": "title only"},
        ),
    )
    assert read_queries(path) == {"a": "beir", "7": "miracl", "c": "title only"}


def test_jsonl_tolerates_bom_crlf_and_blank_lines(tmp_path):
    content = "\ufeff" + jsonl({"_id": "1", "text": "x"}).replace("\n", "\r\n") + "\r\n\n"
    path = write_bytes(tmp_path, "queries.jsonl", content)
    assert read_queries(path) == {"1": "x"}


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        (jsonl({"_id": "1", "text": "x"}) + "{not json}\n", 2, "invalid JSON"),
        ('["_id", "text"]\n', 1, "expected a JSON object, found list"),
        (jsonl({"text": "no id"}), 1, "expected one of the keys ['_id', 'query_id', 'id']"),
        (jsonl({"_id": 1.5, "text": "x"}), 1, "'_id' must be a string or an integer, found 1.5"),
        (jsonl({"id": True, "text": "x"}), 1, "found true"),
        (jsonl({"_id": None, "text": "x"}), 1, "found null"),
        (jsonl({"_id": "a b", "text": "x"}), 1, "non-empty with no whitespace"),
        (jsonl({"_id": "", "text": "x"}), 1, "non-empty with no whitespace"),
        (jsonl({"_id": "1"}), 1, "expected one of the keys ['text', 'query', 'title']"),
        (jsonl({"_id": "1", "text": "  "}), 1, "empty query text under 'text'"),
        (jsonl({"_id": "1", "query": 3}), 1, "'query' must be a string"),
        (
            "\n" + jsonl({"_id": "1", "text": "x"}, {"_id": "1", "text": "y"}),
            3,
            "(first on line 2)",
        ),
        ("\n\n", None, "no queries"),
    ],
)
def test_query_errors_name_file_and_line(tmp_path, content, line, fragment):
    path = write_bytes(tmp_path, "queries.jsonl", content)
    raises_at(path, line, fragment, read_queries)


def test_corpus_round_trip(tmp_path):
    corpus = {"d1": Document("Kichwa", "Maandishi\tna tab."), "d2#0": Document("", "text only")}
    path = tmp_path / "corpus.jsonl"
    write_corpus(path, corpus)
    assert read_corpus(path) == corpus


def test_corpus_accepts_beir_and_miracl_keys(tmp_path):
    path = write_bytes(
        tmp_path,
        "corpus.jsonl",
        jsonl(
            {"_id": "b1", "title": "T", "text": "beir", "metadata": {}},
            {"docid": "123#4", "title": "Nairobi", "text": "miracl"},
            {"id": 5, "text": "no title"},
        ),
    )
    assert read_corpus(path) == {
        "b1": Document("T", "beir"),
        "123#4": Document("Nairobi", "miracl"),
        "5": Document("", "no title"),
    }


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        (jsonl({"title": "t", "text": "x"}), 1, "expected one of the keys ['_id', 'docid', 'id']"),
        (jsonl({"_id": "1", "title": "t"}), 1, "expected a 'text' key"),
        (jsonl({"_id": "1", "title": " ", "text": ""}), 1, "both 'title' and 'text' are empty"),
        (jsonl({"_id": "1", "title": ["t"], "text": "x"}), 1, "'title' must be a string"),
        (jsonl({"docid": "1", "text": "x"}, {"docid": "1", "text": "y"}), 2, "duplicate id '1'"),
        ("", None, "no documents"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, content, line, fragment):
    path = write_bytes(tmp_path, "corpus.jsonl", content)
    raises_at(path, line, fragment, read_corpus)


def test_jsonl_writers_refuse_ids_that_trec_files_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="query id"):
        write_queries(tmp_path / "q.jsonl", {"a b": "text"})
    with pytest.raises(ValueError, match="doc id"):
        write_corpus(tmp_path / "c.jsonl", {"": ("t", "x")})


# --- TREC qrels and runs ----------------------------------------------------------------------


def test_qrels_round_trip(tmp_path):
    qrels = {"q1": {"d1": 1, "d2": 0, "d3": 2}, "q2": {"d1": -1}}
    path = tmp_path / "qrels.txt"
    write_qrels(path, qrels)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "q1 0 d1 1"
    assert read_qrels(path) == qrels


def test_qrels_tolerate_tabs_bom_crlf_and_blank_lines(tmp_path):
    path = write_bytes(tmp_path, "qrels.txt", "\ufeffq1\tQ0\td1\t1\r\nq1  0  d2  +0\r\n\r\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}}


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ("q1 0 d1 1\nq1 0 d2\n", 2, "expected 4 whitespace-separated fields"),
        ("q1 0 d1 1 extra\n", 1, "found 5"),
        ("q1 0 d1 1.0\n", 1, "relevance must be an integer, found '1.0'"),
        ("q1 0 d1 1_0\n", 1, "found '1_0'"),
        ("q1 0 d1 1\nq2 0 d1 1\nq1 0 d1 0\n", 3, "duplicate entry for query 'q1', document 'd1'"),
        ("\n", None, "no relevance judgments"),
    ],
)
def test_qrels_errors_name_file_and_line(tmp_path, content, line, fragment):
    path = write_bytes(tmp_path, "qrels.txt", content)
    raises_at(path, line, fragment, read_qrels)


def test_run_is_written_by_score_with_ranks_from_one(tmp_path):
    run = {"q2": {"d1": 0.5, "d9": 0.5, "d10": 0.5, "top": 2.0}, "q1": {"a": 0.1 + 0.2}}
    path = tmp_path / "run.txt"
    write_run(path, run, tag="bm25")
    assert path.read_text(encoding="utf-8").splitlines() == [
        "q2 Q0 top 1 2.0 bm25",
        "q2 Q0 d9 2 0.5 bm25",  # ties: doc id descending, as trec_eval orders them
        "q2 Q0 d10 3 0.5 bm25",
        "q2 Q0 d1 4 0.5 bm25",
        "q1 Q0 a 1 0.30000000000000004 bm25",
    ]
    assert read_run(path) == run  # scores come back exactly


def test_run_reading_ignores_the_rank_column_and_tolerates_bom_crlf(tmp_path):
    content = "\ufeffq 0 a 7 -1.5e-3 tag\r\nq Q0 b 1 4 tag\r\n\r\n"
    path = write_bytes(tmp_path, "run.txt", content)
    assert read_run(path) == {"q": {"a": -0.0015, "b": 4.0}}


def test_empty_run_file_is_an_empty_run(tmp_path):
    path = tmp_path / "run.txt"
    write_run(path, {})
    assert path.read_bytes() == b""
    assert read_run(path) == {}


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ("q Q0 d 1 0.5 t\nq Q0 e 2 0.4\n", 2, "expected 6 whitespace-separated fields"),
        ("q Q0 d one 0.5 t\n", 1, "rank must be an integer, found 'one'"),
        ("q Q0 d 1 high t\n", 1, "score must be a finite number, found 'high'"),
        ("q Q0 d 1 nan t\n", 1, "found 'nan'"),
        ("q Q0 d 1 -inf t\n", 1, "found '-inf'"),
        ("q Q0 d 1 0.5 t\n\nq Q0 d 2 0.4 t\n", 3, "(first on line 1)"),
    ],
)
def test_run_errors_name_file_and_line(tmp_path, content, line, fragment):
    path = write_bytes(tmp_path, "run.txt", content)
    raises_at(path, line, fragment, read_run)


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (functools.partial(write_run, run={"q": {"d": 1.0}}, tag="my run"), "run tag"),
        (functools.partial(write_run, run={"q": {"d d": 1.0}}), "doc id"),
        (functools.partial(write_run, run={"q": {"d": float("inf")}}), "not finite"),
        (functools.partial(write_qrels, qrels={"q 1": {"d": 1}}), "query id"),
    ],
)
def test_trec_writers_refuse_unrepresentable_values(tmp_path, write, match):
    with pytest.raises(ValueError, match=match):
        write(tmp_path / "out.txt")


# --- language codes ---------------------------------------------------------------------------

PROJECT_LANGUAGES = [
    ("en", "eng"),
    ("sw", "swh"),
    ("so", "som"),
    ("fi", "fin"),
    ("ha", "hau"),
    ("yo", "yor"),
    ("am", "amh"),
    ("tl", "tgl"),
    ("kk", "kaz"),
    ("lt", "lit"),
    ("bg", "bul"),
]


@pytest.mark.parametrize(("two", "three"), PROJECT_LANGUAGES)
def test_language_codes_map_both_ways(two, three):
    assert lookup_language(two) == lookup_language(three)
    assert lookup_language(two).iso639_3 == three
    assert lookup_language(three).iso639_1 == two


def test_language_lookup_normalises_case_and_knows_aliases():
    assert lookup_language(" SW ").iso639_3 == "swh"
    assert lookup_language("swa").iso639_1 == "sw"
    assert lookup_language("cmn").iso639_1 == "zh"
    assert lookup_language("de").name == "German"


@pytest.mark.parametrize("code", ["xx", "swahili", "", "en-US"])
def test_unknown_language_lists_the_known_ones(code):
    with pytest.raises(ValueError, match="unknown language code") as caught:
        lookup_language(code)
    assert "sw/swh (Swahili)" in str(caught.value) and "kk/kaz (Kazakh)" in str(caught.value)
