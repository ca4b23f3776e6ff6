"""CLIR collections on the held-out splits, their files, the cache folder and the command line."""

from __future__ import annotations

import json

import pytest
from corpora_fixtures import KHMER, build_libreoffice, build_quran, quran_verses

from optical_ops.training.bitext.formats import read_bitext, read_tsv_rows
from optical_ops.training.corpora import build_benchmarks, clir_collection, load_corpora
from optical_ops.training.corpora.__main__ import main
from optical_ops.training.corpora.aligned import AlignedPair
from optical_ops.training.corpora.cache import CORPORA_ENV, corpora_dir, fetch, fetch_command
from optical_ops.training.corpora.splits import QURAN_TEST_SURAHS
from optical_ops.training.evaluation.evaluate import load_collection


def test_identical_english_texts_are_all_relevant_and_repeated_queries_kept_once():
    test = [
        AlignedPair("g", "1", "same", "q1"),
        AlignedPair("g", "2", "other", "q2"),
        AlignedPair("g", "3", "same", "q3"),
        AlignedPair("g", "4", "same", "q1"),  # repeats pair 1 on both sides: no new query
    ]
    collection = clir_collection(test, "ny")
    assert collection.documents == {"1": "same", "2": "other", "3": "same", "4": "same"}
    assert collection.queries == {"ny-1": "q1", "ny-2": "q2", "ny-3": "q3"}
    relevant = {"1": 1, "3": 1, "4": 1}
    assert collection.qrels == {"ny-1": relevant, "ny-2": {"2": 1}, "ny-3": relevant}
    assert (collection.query_language, collection.document_language) == ("ny", "en")


def test_libreoffice_benchmark_counts(tmp_path):
    build_libreoffice(tmp_path)
    counts = build_benchmarks(load_corpora(["libreoffice"], tmp_path))["libreoffice"]["km"]
    assert counts["aligned pairs"] == 6
    assert (counts["train pairs"], counts["test pairs"]) == (1, 4)
    assert counts["train pairs sharing a text with the test split"] == 1
    assert (counts["test queries"], counts["english candidates"]) == (3, 4)
    assert counts["distinct english candidates"] == 3
    assert counts["queries with several relevant"] == 1


def test_written_files_are_read_back_by_the_evaluator_and_the_trainer(tmp_path):
    build_libreoffice(tmp_path)
    out = tmp_path / "clir"
    build_benchmarks(load_corpora(["libreoffice"], tmp_path), out)
    folder = out / "libreoffice" / "km"
    documents, query_set = load_collection(
        folder / "queries.jsonl", folder / "corpus.jsonl", folder / "qrels.txt"
    )
    assert len(documents) == 4 and documents["swriter/main0110#hd_id1"] == "Heading"
    assert query_set.queries["km-swriter/main0110#par_id1"] == f"{KHMER} one link"
    assert query_set.qrels["km-swriter/01/page#par_id7"] == {
        "swriter/01/page#par_id7": 1,
        "swriter/main0110#par_id2": 1,
    }
    train = read_bitext(folder / "train.tsv", source="english", target="other")
    assert train == [("Calc paragraph", f"{KHMER} calc")]
    test_rows = read_tsv_rows(folder / "test.tsv", ("group", "id"))
    assert {row.fields[0] for row in test_rows} == {"swriter"}
    counts = json.loads((out / "counts.json").read_text(encoding="utf-8"))
    assert counts["libreoffice"]["km"]["test queries"] == 3


def test_command_line_builds_every_quran_language(tmp_path, capsys):
    build_quran(tmp_path, languages=("en", "bn", "es", "fr", "id", "ru", "sv", "tr", "ur", "zh"))
    out = tmp_path / "out"
    assert main(["build", "--corpus", "quran", "--cache", str(tmp_path), "--out", str(out)]) == 0
    counts = json.loads((out / "counts.json").read_text(encoding="utf-8"))["quran"]
    held_out = sum(quran_verses(surah) for surah in QURAN_TEST_SURAHS)
    assert sorted(counts) == ["ar", "bn", "es", "fr", "id", "ru", "sv", "tr", "ur", "zh"]
    assert {c["test queries"] for c in counts.values()} == {held_out}
    assert {c["test groups"] for c in counts.values()} == {len(QURAN_TEST_SURAHS)}
    assert '"quran"' in capsys.readouterr().out


def test_command_line_names_the_fetch_command_for_a_missing_corpus(tmp_path, capsys):
    assert main(["build", "--corpus", "quran", "--cache", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert (
        f"python -m optical_ops.training.corpora fetch --corpus quran --cache {tmp_path}" in error
    )


def test_cache_folder_argument_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.delenv(CORPORA_ENV, raising=False)
    monkeypatch.setenv("OPTICAL_CACHE", str(tmp_path / "optical"))
    assert corpora_dir() == tmp_path / "optical" / "corpora"
    monkeypatch.setenv(CORPORA_ENV, str(tmp_path / "env"))
    assert corpora_dir() == tmp_path / "env"
    assert corpora_dir(tmp_path / "arg") == tmp_path / "arg"
    assert fetch_command("bible") == "python -m optical_ops.training.corpora fetch --corpus bible"


def test_fetch_refuses_an_unknown_corpus(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus"):
        fetch(["udhr"], tmp_path)
