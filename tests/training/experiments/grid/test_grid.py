"""The grid on cached states (optical_ops.training.experiments.grid): each piece against its
definition, then a whole grid on a tiny model."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from dictd_files import write_dictd
from tiny_model import WORDS

from optical_ops.training.bitext.dictionaries import DictionaryNotFoundError
from optical_ops.training.corpora.aligned import AlignedPair, ParallelCorpus
from optical_ops.training.evaluation.metrics import query_metrics, rank_documents
from optical_ops.training.experiments.config import ExperimentConfigError
from optical_ops.training.experiments.grid.bootstrap import interval, resample, resampled_means
from optical_ops.training.experiments.grid.config import load_grid, parse_grid, run_settings
from optical_ops.training.experiments.grid.features import (
    FeatureCache,
    compute_embeddings,
    compute_states,
    shallow_encoder,
)
from optical_ops.training.experiments.grid.ranking import query_measures
from optical_ops.training.experiments.grid.report import write_report
from optical_ops.training.experiments.grid.runner import (
    finished_records,
    record_path,
    run_grid,
    run_grid_command,
)
from optical_ops.training.experiments.grid.tasks import make_task
from optical_ops.training.experiments.grid.top_layers import TopLayers
from optical_ops.training.models.encoders import load_teacher

CLIR = Path(__file__).resolve().parents[4] / "experiments" / "clir.toml"
TEXTS = [" ".join(WORDS[k % 20 : k % 20 + 1 + k % 7]) for k in range(9)]


def _batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("trained", [1, 2])
def test_top_layers_reproduce_the_models_forward_on_ragged_batches(tiny_model, trained):
    model, tokenizer = load_teacher(tiny_model)
    batch = _batch(tokenizer, TEXTS)
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
        frozen = len(model.encoder.layer) - trained
        top = TopLayers(model, trained)(output.hidden_states[frozen], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert batch["attention_mask"].sum(1).unique().numel() > 2  # ragged on purpose
    torch.testing.assert_close(top[real], output.last_hidden_state[real], atol=1e-5, rtol=1e-5)


def test_top_layers_train_their_own_copies(tiny_model):
    model, _ = load_teacher(tiny_model)
    top = TopLayers(model, 1)
    assert all(p.requires_grad for p in top.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        next(top.parameters()).add_(1.0)
    original = model.encoder.layer[-1].attention.self.query.weight
    assert not torch.equal(next(top.parameters()), original)
    with pytest.raises(ValueError, match="count must be in"):
        TopLayers(model, 3)


def test_cached_states_are_the_hidden_states_of_each_text_alone(tiny_model):
    model, tokenizer = load_teacher(tiny_model)
    states = compute_states(model, tokenizer, TEXTS, prefix="query: ", num_layers=1, max_length=64)
    assert len(model.encoder.layer) == 2  # the cut model shares, never changes, the original
    assert len(shallow_encoder(model, 1).encoder.layer) == 1
    padded, mask, ids = states.batch([3, 0, 5])
    for row, index in enumerate([3, 0, 5]):
        alone = tokenizer(["query: " + TEXTS[index]], return_tensors="pt")
        with torch.no_grad():
            expected = model(**alone, output_hidden_states=True).hidden_states[1][0]
        length = int(mask[row].sum())
        assert length == expected.shape[0] and (ids[row, :length] == alone["input_ids"][0]).all()
        torch.testing.assert_close(padded[row, :length], expected, atol=2e-3, rtol=2e-3)
        assert not padded[row, length:].any()
    embeddings = compute_embeddings(model, tokenizer, TEXTS, prefix="passage: ", max_length=64)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(TEXTS)))


def test_feature_cache_computes_once_per_distinct_input(tmp_path):
    cache, calls = FeatureCache(tmp_path, log=lambda line: None), []

    def compute():
        calls.append(1)
        return torch.arange(3.0)

    first = cache.get("x", {"layers": 1}, ["a", "b"], compute)
    again = cache.get("x", {"layers": 1}, ["a", "b"], compute)
    assert torch.equal(first, again) and len(calls) == 1
    cache.get("x", {"layers": 1}, ["a", "c"], compute)  # other texts
    cache.get("x", {"layers": 2}, ["a", "b"], compute)  # other settings
    cache.get("x", {"layers": 1}, ["ab"], compute)  # same characters, other texts
    assert len(calls) == 4 and len(list(tmp_path.iterdir())) == 4


def test_cached_ragged_states_read_back_as_they_were(tiny_model, tmp_path):
    model, tokenizer = load_teacher(tiny_model)
    cache = FeatureCache(tmp_path, log=lambda line: None)
    settings = {"layers": 1}
    computed = cache.get("states", settings, TEXTS, lambda: compute_states(
        model, tokenizer, TEXTS, prefix="query: ", num_layers=1, max_length=64))  # fmt: skip
    read = cache.get("states", settings, TEXTS, lambda: pytest.fail("computed twice"))
    assert type(read) is type(computed)
    for name in ("states", "ids", "offsets"):
        assert torch.equal(getattr(read, name), getattr(computed, name))


def test_query_measures_equal_the_trec_definitions_with_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (40, 30), generator=generator).double()  # many ties
    relevant = torch.rand(40, 30, generator=generator) < 0.1
    relevant[:, 7] |= ~relevant.any(dim=1)
    ids = [f"d{(7 * k) % 30:02d}" for k in range(30)]
    measures = query_measures(scores, relevant, ids)
    for q in range(40):
        ranking = rank_documents({ids[d]: float(scores[q, d]) for d in range(30)})
        expected = query_metrics(ranking, {ids[d]: 1 for d in range(30) if relevant[q, d]})
        for name, values in measures.items():
            assert math.isclose(float(values[q]), expected[name], abs_tol=1e-12), (q, name)
    with pytest.raises(ValueError, match="relevant document"):
        query_measures(scores, torch.zeros_like(relevant), ids)


def test_bootstrap_interval_is_exact_for_a_constant_and_sized_by_the_noise():
    indices = resample(500, 2000, seed=1)
    constant = torch.full((500,), 0.25, dtype=torch.float64)
    assert interval(resampled_means(constant, indices)) == pytest.approx((0.25, 0.25))
    noise = torch.randn(500, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    low, high = interval(resampled_means(noise, indices))
    expected = 2 * 1.96 * float(noise.std()) / math.sqrt(500)
    assert low < float(noise.mean()) < high
    assert high - low == pytest.approx(expected, rel=0.15)


GRID = {
    "name": "tiny",
    "tasks": ["quran/sw", "quran/fi"],
    "strategies": ["none", "mse", "ot-idf", "ot-typo"],
    "seeds": [0, 1],
    "baselines": ["none", "mse"],
    "bootstrap_samples": 200,
    "pool": {"train_pairs": 40, "max_queries": 12},
    "train": {"steps": 3, "batch_size": 4, "lr": 1e-2, "max_length": 32},
    "robustness": {"kinds": ["typo"], "rates": [0.3]},
    "gap": {"high": ["quran/fi"], "low": ["quran/sw"]},
}


def _words(number: int, vocabulary: list[str]) -> str:
    """A distinct text per number: its digits in base len(vocabulary), as words."""
    digits = []
    while True:
        number, digit = divmod(number, len(vocabulary))
        digits.append(vocabulary[digit])
        if number == 0:
            return " ".join(digits)


def _task(language: str, shift: int):
    """A task in the Quran's layout (groups = surahs) with the tiny model's words; every text
    distinct, the other side a different permutation per language."""
    english, other = list(WORDS[1:25]), list(WORDS[25:])
    pairs = [
        AlignedPair(str(surah), f"s{surah}v{verse}", _words(2 * surah + verse, english),
                    _words(2 * surah + verse + 24 * shift, other))
        for surah in range(1, 115) for verse in (1, 2)
    ]  # fmt: skip
    corpus = ParallelCorpus("quran", language, pairs)
    return make_task(corpus, train_pairs=40, split="test", max_queries=12, dev_pairs=10)


def test_a_grid_trains_evaluates_resumes_and_reports(tiny_model, tmp_path):
    grid = parse_grid(GRID)
    tasks = {"quran/sw": _task("sw", 1), "quran/fi": _task("fi", 2)}
    cache, out = FeatureCache(tmp_path / "cache", log=lambda line: None), tmp_path / "out"
    outcome = run_grid(grid, out, model=tiny_model, tasks=tasks, cache=cache, log=lambda s: None)
    assert set(outcome.values()) == {"done"} and len(outcome) == 2 * 4 * 2
    records = {r["run"]["id"]: r for r in finished_records(grid, out)}
    clean = {key: r["metrics"]["cosine"]["clean"]["nDCG@10"] for key, r in records.items()}
    assert all(len(values) == 12 for values in clean.values())
    assert clean["quran/sw/none/seed-0"] == clean["quran/sw/none/seed-1"]  # nothing trained
    assert clean["quran/sw/mse/seed-0"] != clean["quran/sw/none/seed-0"]
    assert len(records["quran/fi/ot-idf/seed-1"]["losses"]) == 3
    metrics = records["quran/fi/mse/seed-0"]["metrics"]
    assert set(metrics) == {"cosine", "centred"}
    assert set(metrics["centred"]) == {"clean", "typo@0.3"}
    assert run_grid(grid, out, model=tiny_model, tasks=tasks, cache=cache,
                    log=lambda s: None) == dict.fromkeys(outcome, "skipped")  # fmt: skip

    written = write_report(grid, list(records.values()), out)
    assert {p.name for p in written} >= {"results.csv", "significance.csv", "results.md"}
    rows = list(csv.DictReader(open(out / "significance.csv", encoding="utf-8")))
    assert list(rows[0])[:8] == ["strategy", "baseline", "language", "measure", "delta",
                                 "ci_low", "ci_high", "queries"]  # fmt: skip
    key = ("mse", "none", "quran/sw", "nDCG@10", "clean", "cosine")
    columns = ("strategy", "baseline", "language", "measure", "condition", "scorer")
    mse_vs_none = [r for r in rows if tuple(r[c] for c in columns) == key]
    expected = sum(clean["quran/sw/mse/seed-0"]) / 12 + sum(clean["quran/sw/mse/seed-1"]) / 12
    expected = (expected - 2 * sum(clean["quran/sw/none/seed-0"]) / 12) / 2
    assert float(mse_vs_none[0]["delta"]) == pytest.approx(expected, abs=1e-6)
    assert (
        float(mse_vs_none[0]["ci_low"])
        <= float(mse_vs_none[0]["delta"])
        <= float(mse_vs_none[0]["ci_high"])
    )
    assert {r["language"] for r in rows} == {"quran/sw", "quran/fi", "high", "low", "gap"}
    assert "drop:typo@0.3" in {r["condition"] for r in rows}
    assert "| ot-typo |" in (out / "results.md").read_text()


def test_a_changed_setting_makes_a_finished_run_stale(tiny_model, tmp_path):
    tasks = {"quran/sw": _task("sw", 1)}
    values = {
        **GRID,
        "tasks": ["quran/sw"],
        "strategies": ["none"],
        "seeds": [0],
        "baselines": ["none"],
    }
    values.pop("gap")
    kwargs = dict(model=tiny_model, tasks=tasks, cache=FeatureCache(tmp_path / "c", log=print),
                  log=lambda s: None)  # fmt: skip
    assert run_grid(parse_grid(values), tmp_path, **kwargs) == {"quran/sw/none/seed-0": "done"}
    changed = {**values, "train": {**values["train"], "max_length": 24}}
    assert run_grid(parse_grid(changed), tmp_path, **kwargs) == {"quran/sw/none/seed-0": "done"}
    record = json.loads((tmp_path / "runs/quran/sw/none/seed-0.json").read_text())
    assert record["settings"]["train"]["max_length"] == 24


def _swahili_english(dictd_dir: Path) -> None:
    """A FreeDict Swahili-English dictionary of the tiny tasks: i-th other word -> i-th English."""
    english, other = WORDS[1:25], WORDS[25:]
    entries = [
        (word, f"{word} <n>\n\n{translation}\n") for word, translation in zip(other, english)
    ]
    write_dictd(dictd_dir, "freedict-swh-eng", entries)


def test_codeswitched_queries_only_where_a_dictionary_exists(tiny_model, tmp_path):
    """Adding codeswitch reruns only the runs of the task with a dictionary (sw); the records of
    the task without one (ur) stay valid, and the report has no codeswitch number for it nor for
    the groups (which would be a mean over sw alone)."""
    values = {**GRID, "tasks": ["quran/sw", "quran/ur"], "strategies": ["none", "mse"],
              "robustness": {"kinds": ["typo"], "rates": [1.0]},
              "gap": {"high": ["quran/sw"], "low": ["quran/ur"]}}  # fmt: skip
    before = parse_grid(values)
    after = parse_grid({**values, "robustness": {"kinds": ["typo", "codeswitch"], "rates": [1.0]}})
    tasks = {"quran/sw": _task("sw", 1), "quran/ur": _task("ur", 2)}
    out, dictd = tmp_path / "out", tmp_path / "dictd"
    dictd.mkdir()
    kwargs = dict(model=tiny_model, tasks=tasks, cache=FeatureCache(tmp_path / "c", log=print),
                  log=lambda s: None)  # fmt: skip
    assert set(run_grid(before, out, **kwargs).values()) == {"done"}
    with pytest.raises(DictionaryNotFoundError, match="apt-get install dict-freedict-swh-eng"):
        run_grid(after, out, dictd_dir=dictd, **kwargs)
    assert {r["run"]["task"] for r in finished_records(after, out)} == {"quran/ur"}  # ran nothing
    _swahili_english(dictd)
    outcome = run_grid(after, out, dictd_dir=dictd, **kwargs)
    assert outcome == {
        run.id: "done" if run.task == "quran/sw" else "skipped" for run in after.runs
    }
    records = {r["run"]["id"]: r for r in finished_records(after, out)}
    assert len(records) == len(after.runs) == 8
    switched = records["quran/sw/none/seed-0"]["metrics"]["cosine"]
    assert list(switched) == ["clean", "typo@1", "codeswitch@1"]
    assert switched["codeswitch@1"]["nDCG@10"] != switched["clean"]["nDCG@10"]
    assert list(records["quran/ur/none/seed-0"]["metrics"]["cosine"]) == ["clean", "typo@1"]

    write_report(after, list(records.values()), out)
    results = list(csv.DictReader(open(out / "results.csv", encoding="utf-8")))
    assert {
        (r["language"], r["quantity"]) for r in results if r["condition"] == "codeswitch@1"
    } == {
        ("quran/sw", "score"),
        ("quran/sw", "drop"),
    }
    groups = {"high", "low", "gap"}
    assert groups < {r["language"] for r in results if r["condition"] == "typo@1"}
    rows = list(csv.DictReader(open(out / "significance.csv", encoding="utf-8")))
    by_condition = {c: {r["language"] for r in rows if r["condition"] == c}
                    for c in ("codeswitch@1", "drop:codeswitch@1", "drop:typo@1")}  # fmt: skip
    assert by_condition["codeswitch@1"] == by_condition["drop:codeswitch@1"] == {"quran/sw"}
    assert by_condition["drop:typo@1"] == {"quran/sw", "quran/ur", *groups}
    tables = (out / "results.md").read_text().split("### ")
    switch_tables = [t for t in tables if t.startswith("nDCG@10 lost to codeswitch@1")]
    typo_tables = [t for t in tables if t.startswith("nDCG@10 lost to typo@1")]
    assert len(switch_tables) == len(typo_tables) == 2  # one per scorer
    for switch_table, typo_table in zip(switch_tables, typo_tables):
        assert "| quran/sw |" in switch_table and "quran/ur" not in switch_table
        assert "| gap |" not in switch_table and "| quran/ur | high | low | gap |" in typo_table


def test_codeswitch_changes_the_settings_of_the_clir_runs_with_a_dictionary_only():
    """experiments/clir.toml with and without codeswitch: the runs of the other tasks keep
    their settings, so their finished records are not rerun."""
    grid = load_grid(CLIR)
    assert "codeswitch@0.2" in {p.name for p in grid.perturbations}
    general = tuple(p for p in grid.perturbations if p.kind != "codeswitch")
    without = dataclasses.replace(grid, perturbations=general)
    changed = [
        run.task for run in grid.runs if run_settings(run, grid) != run_settings(run, without)
    ]
    assert set(changed) == {"quran/es", "quran/ru", "quran/tr"}
    assert len(changed) == 3 * len(grid.strategies) * len(grid.seeds)
    assert {task: grid.task_perturbations(task) == general for task in grid.tasks} == {
        task: task not in changed for task in grid.tasks
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategies": ["none", "nope"]}, "unknown strategies"),
        ({"tasks": ["bible"]}, "a task is '<corpus>/<language>'"),
        ({"baselines": ["token-mse"]}, "baselines"),
        ({"strategies": ["none", "ot-fgsm"], "baselines": ["none"]}, "adversarial_epsilon"),
        (
            {
                "tasks": ["quran/ur"],
                "gap": {},
                "robustness": {"kinds": ["codeswitch"], "rates": [0.2]},
            },
            "codeswitch applies to no task: FreeDict has no dictionary",
        ),
        (
            {
                "tasks": ["quran/xx"],
                "gap": {},
                "robustness": {"kinds": ["codeswitch"], "rates": [0.2]},
            },
            "unknown language code 'xx'",
        ),
        (
            {
                "presets": {"ot-cs": {"strategy": "optical", "adversarial_input": "codeswitch"}},
                "strategies": ["none", "ot-cs"],
                "baselines": ["none"],
            },
            "needs a bilingual dictionary",
        ),
        ({"gap": {"high": ["quran/fi"], "low": ["quran/fi"]}}, "both high and low"),
        ({"gap": {"high": ["quran/xx"], "low": ["quran/sw"]}}, "unknown \\[gap\\] tasks"),
        ({"pool": {"train_pairs": 0}}, "train_pairs must be an integer >= 1"),
        (
            {"train": {"eps": 0.5}, "strategies": ["ot-cosine"], "baselines": ["ot-cosine"]},
            "would be overridden",
        ),
        ({"train": {"trainable_layers": "none"}}, "trainable_layers must be set"),
        ({"split": "validation"}, "unknown split"),
    ],
)
def test_bad_grid_configs_are_named(change, message):
    with pytest.raises(ExperimentConfigError, match=message):
        parse_grid({**GRID, **change})


def test_shards_split_the_runs_between_processes(tiny_model, tmp_path):
    tasks = {"quran/sw": _task("sw", 1)}
    values = {**GRID, "tasks": ["quran/sw"], "strategies": ["none"], "seeds": [0, 1, 2],
              "baselines": ["none"]}  # fmt: skip
    values.pop("gap")
    grid = parse_grid(values)
    kwargs = dict(model=tiny_model, tasks=tasks, cache=FeatureCache(tmp_path / "c", log=print),
                  log=lambda s: None)  # fmt: skip
    first = run_grid(grid, tmp_path, shard=(1, 2), **kwargs)
    assert first == {"quran/sw/none/seed-1": "done"}
    second = run_grid(grid, tmp_path, shard=(0, 2), **kwargs)
    assert second == {"quran/sw/none/seed-0": "done", "quran/sw/none/seed-2": "done"}
    assert len(finished_records(grid, tmp_path)) == 3
    with pytest.raises(ValueError, match="shard"):
        run_grid(grid, tmp_path, shard=(2, 2), **kwargs)


def test_report_only_reports_the_finished_runs_and_runs_nothing(tiny_model, tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text('name = "one"\ntasks = ["quran/sw"]\nstrategies = ["none", "mse"]\n'
                      'seeds = [0]\n[pool]\ntrain_pairs = 40\nmax_queries = 12\n'
                      '[train]\nmax_length = 32\n')  # fmt: skip
    grid, out = load_grid(config), tmp_path / "out"
    only_none = parse_grid({"name": "one", "tasks": ["quran/sw"], "strategies": ["none"],
                            "pool": {"train_pairs": 40, "max_queries": 12},
                            "train": {"max_length": 32}})  # fmt: skip
    run_grid(only_none, out, model=tiny_model, tasks={"quran/sw": _task("sw", 1)},
             cache=FeatureCache(tmp_path / "c", log=print), log=lambda s: None)  # fmt: skip
    assert run_grid_command(config, out, report_only=True) == 0
    assert "1 of 2 runs finished" in capsys.readouterr().out
    assert "1 of 2 runs finished" in (out / "results.md").read_text()
    assert not record_path(out, grid.runs[1]).exists()
