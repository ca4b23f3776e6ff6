"""The command line: usage errors (status 2), data and model errors (status 1), a tiny run."""

import json

import pytest
from tiny_model import tiny_bitext

from optical_ops.training.bitext.formats import (
    write_bitext,
    write_corpus,
    write_qrels,
    write_queries,
)
from optical_ops.training.cli import main


def usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["train", "--out", "x", "--strategy", "kl"], "invalid choice: 'kl'"),
        (["train", "--out", "x", "--student-layers", "four"], "invalid int value: 'four'"),
        (["train", "--out", "x", "--tau", "big"], "invalid float value: 'big'"),
        (["train", "--out", "x", "--strategy", "mse", "--debias"], "debias applies to the optical"),
        (["train", "--languages", "swh"], "the following arguments are required: --out"),
        (["train", "--out", "x", "--languages", "swh", "--bitext", "b.tsv"],
         "either UDHR languages or a bitext file"),
        (["train", "--out", "x", "--bitext", "b.tsv", "--source-column", "en"],
         "both the source and the target column"),
        (["train", "--out", "x", "--micro-batch-size", "0"], "micro_batch_size must be >= 1"),
        (["evaluate", "--out", "x", "--checkpoint", "c", "--student", "s"], "not allowed with"),
        (["demo", "--bitext", "b.tsv"], "the demo trains and evaluates on UDHR languages"),
        (["serve"], "invalid choice: 'serve'"),
    ],
)  # fmt: skip
def test_usage_errors(capsys, argv, fragment):
    assert fragment in usage_error(capsys, argv)


def test_data_and_model_errors_name_the_file(capsys, tmp_path, tiny_model):
    assert main(["train", "--out", str(tmp_path), "--languages", "xx"]) == 1
    assert "unknown language code 'xx'" in capsys.readouterr().err

    bad = tmp_path / "bad.tsv"
    bad.write_text("Hello\tJambo\nno tab\n")
    assert main(["train", "--out", str(tmp_path), "--bitext", str(bad)]) == 1
    assert f"{bad}, line 2: expected 2 tab-separated fields" in capsys.readouterr().err

    good = tmp_path / "good.tsv"
    good.write_text("Hello\tJambo\n")
    missing = tmp_path / "no-model"
    argv = ["train", "--out", str(tmp_path), "--bitext", str(good), "--teacher", str(missing)]
    assert main(argv) == 1
    assert f"teacher model directory {missing} does not exist" in capsys.readouterr().err

    argv = ["evaluate", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "none")]
    assert main(argv) == 1
    assert "does not exist" in capsys.readouterr().err


def test_collection_files_come_together(capsys, tmp_path, tiny_model):
    argv = ["evaluate", "--out", str(tmp_path), "--teacher", str(tiny_model)]
    assert "give UDHR --languages or a collection" in usage_error(capsys, argv)
    argv += ["--queries", "q.jsonl"]
    assert "give --queries, --corpus and --qrels together" in usage_error(capsys, argv)


def test_train_then_evaluate_on_a_local_collection(capsys, tmp_path, tiny_model):
    pairs = tiny_bitext()
    bitext = tmp_path / "bitext.tsv"
    write_bitext(bitext, [(other, english) for english, other in pairs], header=("sw", "en"))
    queries, corpus, qrels = tmp_path / "q.jsonl", tmp_path / "c.jsonl", tmp_path / "qrels.txt"
    write_queries(queries, {f"q{k}": other for k, (_, other) in enumerate(pairs)})
    write_corpus(corpus, {f"d{k}": ("", english) for k, (english, _) in enumerate(pairs)})
    write_qrels(qrels, {f"q{k}": {f"d{k}": 1} for k in range(len(pairs))})
    collection = ["--queries", str(queries), "--corpus", str(corpus), "--qrels", str(qrels)]

    argv = [
        "train", "--bitext", str(bitext), "--source-column", "en", "--target-column", "sw",
        "--teacher", str(tiny_model), "--student-layers", "1", "--steps", "2", "--batch-size", "4",
        "--eval-every", "1", "--no-progress", "--out", str(tmp_path / "run"), *collection,
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "step 1: MAP" in out.out and "step 2: loss" in out.out
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert [record["step"] for record in history] == [1, 2]
    assert set(history[1]["eval"]) >= {"MAP", "nDCG@10", "Recall@100"}

    argv = [
        "evaluate", "--checkpoint", str(tmp_path / "run" / "checkpoints"), "--name", "tiny",
        "--out", str(tmp_path / "eval"), "--tag", "optical", *collection,
    ]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics-optical.json").read_text())
    assert metrics["per_language"]["tiny"]["MAP"] == history[1]["eval"]["MAP"]
    run_lines = (tmp_path / "eval" / "run-optical.trec").read_text().splitlines()
    assert len(run_lines) == len(pairs) ** 2
    assert "| tiny |  |" in capsys.readouterr().out
