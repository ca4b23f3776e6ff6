"""The experiment runner: config errors, resume (finished runs skipped, failed and stale ones
rerun), and a whole tiny grid end to end."""

import json
import sys

import pytest

from optical_ops.training.cli import main
from optical_ops.training.experiments import runner
from optical_ops.training.experiments.config import (
    ExperimentConfigError,
    load_experiment,
    parse_experiment,
)
from optical_ops.training.experiments.runner import Collection, record_path, run_grid
from optical_ops.training.models.encoders import Encoder

GRID = {
    "name": "toy",
    "languages": ["sw", "fin"],
    "seeds": [0, 1],
    "strategies": ["ot-cosine", "mse"],
    "train": {"steps": 3},
    "robustness": {"kinds": ["typo"], "rates": [0.5]},
}


def grid(**changes):
    return parse_experiment({**GRID, **changes}, "toy.toml")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategies": ["ot-foo"]}, "toy.toml: unknown strategies ['ot-foo']; known: mse, none"),
        ({"languages": ["sw", "xx"]}, "toy.toml: languages: unknown language code 'xx'"),
        ({"languages": ["de"]}, "toy.toml: languages: no UDHR bitext for German"),
        ({"languages": ["sw", "swh"]}, "languages name a language twice"),
        ({"scorers": ["cosine"]}, "unknown scorers ['cosine']; known: maxsim, mean"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"epochs": 3}, "toy.toml: unknown keys ['epochs']"),
        ({"train": {"learning_rate": 1}}, "toy.toml [train]: unknown TrainConfig fields"),
        ({"train_languages": "all"}, "unknown train_languages ['all']; known: each, joint"),
        ({"robustness": {"kinds": ["blur"], "rates": [0.1]}}, "unknown kinds ['blur']"),
        ({"robustness": {"kinds": ["typo"], "rates": [0]}}, r"rates must be in (0, 1]"),
        ({"collection": {"reader": "beir"}}, "reader must be one of"),
        ({"presets": {"bad": {"strategy": "mse", "tau": 0.1}}, "strategies": ["bad"]},
         "toy.toml [train] + toy.toml [encoders.e5-small] + toy.toml strategy 'bad': tau "
         "applies to the optical strategy only"),
        ({"train": {"eps": 0.1}},
         "toy.toml [train]: eps = 0.1 would be overridden by toy.toml strategy 'ot-cosine', "
         "which sets eps = 0.05: define a strategy"),
        ({"encoders": {"e5": {"cost": "sqeuclidean"}}},
         "toy.toml [encoders.e5]: cost = 'sqeuclidean' would be overridden by toy.toml "
         "strategy 'ot-cosine'"),
        ({"train": {"strategy": "mse"}}, "[train]: strategy = 'mse' would be overridden"),
        ({"train": {"sinkhorn_iters": 10.5}}, "sinkhorn_iters must be an integer, got 10.5"),
        ({"train": {"debias": "no"}}, "debias must be true or false, got 'no'"),
        ({"train": {"steps": 2.5}}, "toy.toml [train] + toy.toml [encoders.e5-small] + "
         "toy.toml strategy 'ot-cosine': steps must be an integer, got 2.5"),
        ({"train": {"languages": "swh"}},
         "toy.toml [train]: languages is set per run by the grid: use the top-level languages"),
        ({"train": {"seed": 1}}, "[train]: seed is set per run by the grid: use the top-level"),
        ({"encoders": {"e5": {"teacher": "/m"}}},
         "[encoders.e5]: teacher is set per run by the grid: use an [encoders.<label>] path"),
        ({"train": 3}, "toy.toml [train]: must be a table of TrainConfig fields"),
        ({"presets": {"ot-x": 0.1}}, "toy.toml: presets must be tables [presets.<name>]"),
    ],
)  # fmt: skip
def test_config_errors_are_named(changes, message):
    with pytest.raises(ExperimentConfigError) as caught:
        grid(**changes)
    assert message in str(caught.value)


def test_train_values_a_strategy_agrees_with_are_kept():
    experiment = grid(train={"steps": 3, "eps": 0.05, "sinkhorn_iters": 20})
    assert {(run.config.eps, run.config.sinkhorn_iters) for run in experiment.runs} == {(0.05, 20)}


def test_grid_order_and_run_configs():
    experiment = grid(
        train_languages="each",
        presets={"ot-cosine": {"strategy": "optical", "eps": 0.1}},
        encoders={"small": {"student_layers": 6}, "other": {"path": "/models/x"}},
    )
    assert experiment.languages == ("swh", "fin")
    assert [run.id for run in experiment.runs[:3]] == [
        "small/ot-cosine/swh/seed-0", "small/ot-cosine/swh/seed-1", "small/ot-cosine/fin/seed-0",
    ]  # fmt: skip
    assert len(experiment.runs) == 2 * 2 * 2 * 2
    first, last = experiment.runs[0].config, experiment.runs[-1].config
    assert (first.eps, first.steps, first.student_layers, first.languages) == (0.1, 3, 6, ("swh",))
    assert (last.teacher, last.student_init, last.strategy, last.seed) == ("/models/x",) * 2 + (
        "mse", 1,
    )  # fmt: skip
    assert first.trainable_layers == 2  # the demo's model and sizes underneath


def fake_result(run):
    mrr = 0.5 + 0.25 * run.seed
    metrics = {c: {code: {"MRR": mrr, "MAP": mrr} for code in run.languages}
               for c in ("clean", "typo@0.5")}  # fmt: skip
    return {"metrics": {"mean": metrics}, "losses": [1.0], "seconds": {"train": 0.0}}


def test_resume_skips_finished_runs_and_retries_failed_and_stale_ones(tmp_path):
    experiment = grid()
    collection = Collection.load(experiment)
    calls, failures = [], ["e5-small/mse/swh+fin/seed-1"]  # this run fails the first time

    def execute(run, experiment, resources, collection, lexicons, progress):
        calls.append(run.id)
        if run.id in failures:
            failures.remove(run.id)
            raise RuntimeError("out of memory")
        return fake_result(run)

    def once(experiment):
        calls.clear()
        return run_grid(
            experiment, tmp_path, collection, execute=execute,
            load_encoder=lambda path: Encoder(None, None), log=lambda line: None,
        )  # fmt: skip

    outcome = once(experiment)
    assert len(calls) == 4 and list(outcome.values()) == ["done", "done", "done", "failed"]
    failed = json.loads(record_path(tmp_path, experiment.runs[3]).read_text())
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: out of memory"
    assert "Traceback" in failed["traceback"]

    outcome = once(experiment)
    assert calls == ["e5-small/mse/swh+fin/seed-1"]
    assert list(outcome.values()) == ["skipped", "skipped", "skipped", "done"]

    assert once(experiment) == {run.id: "skipped" for run in experiment.runs} and calls == []

    changed = grid(train={"steps": 4})  # every run's settings changed: all stale
    assert list(once(changed).values()) == ["done"] * 4 and len(calls) == 4


def test_missing_matplotlib_is_said_before_the_grid_runs(tmp_path, monkeypatch, capsys):
    config = tmp_path / "toy.toml"
    config.write_text('languages = ["sw"]\nstrategies = ["none"]\n')
    seen = []

    def run_grid(experiment, out_dir, collection, progress):
        seen.append(capsys.readouterr().out)  # what was printed before the grid started
        return {run.id: "skipped" for run in experiment.runs}

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    monkeypatch.setattr(runner, "run_grid", run_grid)
    assert runner.run_experiment(config, tmp_path / "out") == 0
    assert "matplotlib is not installed, so no plots are drawn" in seen[0]
    assert "[bench]" in seen[0]
    assert "matplotlib is not installed" in capsys.readouterr().out  # and again at the end
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "invocations.jsonl", "results.csv", "results.md",
    ]  # fmt: skip


def test_tiny_grid_end_to_end(tmp_path, tiny_model):
    config = tmp_path / "tiny.toml"
    config.write_text(f"""
name = "tiny"
languages = ["swh", "fin"]
seeds = [0, 1]
strategies = ["ot-unbalanced", "none"]
scorers = ["mean", "maxsim"]
[train]
student_layers = 1
trainable_layers = "none"
steps = 2
batch_size = 4
max_length = 24
[robustness]
kinds = ["noise"]
rates = [0.5]
[encoders.tiny]
path = "{tiny_model}"
""")
    out = tmp_path / "out"
    argv = ["experiments", "--config", str(config), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    for name in ("results.csv", "results.md", "nDCG@10-by-language.png", "gap.png",
                 "robustness-drop.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    records = [json.loads(record_path(out, run).read_text())
               for run in load_experiment(config).runs]  # fmt: skip
    assert [(r["status"], len(r["losses"])) for r in records] == [("done", 2)] * 2 + [
        ("done", 0)
    ] * 2
    assert set(records[0]["metrics"]) == {"mean", "maxsim"}
    assert set(records[0]["metrics"]["maxsim"]) == {"clean", "noise@0.5"}
    # Without training the student is the same for both seeds: only the perturbations differ.
    none = [r["metrics"]["mean"]["clean"] for r in records[2:]]
    assert none[0] == none[1]
    table = (out / "results.md").read_text()
    assert "4 of 4 runs finished" in table and "| none | noise@0.5 |" in table
