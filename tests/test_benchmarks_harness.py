"""The benchmark harness measures what it says: schedule, floor, inputs, agreement, reports."""

from __future__ import annotations

import dataclasses

import pytest
import torch

# benchmarks/ is not an installed package: it imports from the repository root, which is on
# sys.path under `python -m pytest` (or with pytest's `pythonpath = ["."]`).
pytest.importorskip("benchmarks", reason="run from the repository root with python -m pytest")

from benchmarks import agreement, memory_probe, readme, report, timing
from benchmarks.floor import Rate, floor
from benchmarks.implementations import IMPLEMENTATIONS
from benchmarks.runner import Options, run_workload
from benchmarks.workloads import WORKLOADS, Workload, make_problem

# Enough iterations to converge: then the order of the updates (POT's batched solver starts
# with the rows, GeomLoss averages symmetric updates) no longer changes the loss.
TINY = Workload("tiny", 3, 7, 9, 16, 300, "a test problem")
TINY_RAGGED = Workload("tiny-ragged", 4, 12, 10, 16, 300, "a ragged test problem", min_len=3)
TINY_BF16 = dataclasses.replace(TINY_RAGGED, name="tiny-bf16", dtype=torch.bfloat16)
# Stopped at POT's rule: at eps 0.01 these need ~100-200 of the 1,000 iterations allowed.
TINY_TOL = dataclasses.replace(TINY_RAGGED, name="tiny-tol", iterations=1000, eps=0.01, tol=1e-6)


def test_interleaved_runs_each_call_its_repeats_spread_over_the_rounds():
    order = []
    calls = {key: (lambda key=key: order.append(key), n) for key, n in (("a", 2), ("b", 6))}
    samples = timing.interleaved(calls, on_error=pytest.fail)
    assert [len(samples[k].seconds) for k in "ab"] == [2, 6]
    # 6 rounds; "a" runs in the rounds where floor(2 r / 6) steps up: the 3rd and the 6th.
    assert "".join(order) == "bbabbbab"


def test_interleaved_drops_a_failing_call_and_reports_it():
    errors = []

    def broken():
        raise RuntimeError("boom")

    samples = timing.interleaved({"ok": (lambda: None, 3), "bad": (broken, 3)},
                                 on_error=lambda key, e: errors.append((key, str(e))))
    assert len(samples["ok"].seconds) == 3 and samples["bad"].seconds == []
    assert errors == [("bad", "boom")]


def test_interleaved_counts_the_page_faults_of_each_repeat():
    """A call that touches 8 MiB of fresh anonymous memory faults ~2,048 pages per repeat (fewer
    with transparent huge pages); one that allocates nothing faults none."""
    import mmap

    def fresh_pages():
        with mmap.mmap(-1, 8 << 20) as buffer:
            for offset in range(0, len(buffer), mmap.PAGESIZE):
                buffer[offset] = 1

    samples = timing.interleaved({"fresh": (fresh_pages, 3), "idle": (lambda: None, 3)},
                                 on_error=pytest.fail)
    assert len(samples["fresh"].faults) == 3 and min(samples["fresh"].faults) >= 2
    assert samples["idle"].summary()["page_faults"] <= 1
    assert samples["fresh"].summary()["page_faults"] > 100 * samples["idle"].summary()[
        "page_faults"]


@pytest.mark.parametrize(("seconds", "expected"), [(10.0, 5), (0.1, 20), (1e-6, 50)])
def test_repeats_fill_the_target_within_bounds(seconds, expected):
    assert timing.repeats_for(seconds, 5, 50, 2.0) == expected


def test_floor_matches_the_numbers_in_benchmarks_md():
    # BENCHMARKS.md: R ~ 130 GFLOP/s, BW ~ 37 GB/s give W4 0.43 / 0.56 s, W5 5.5 / 6.0 s.
    w4, w5 = WORKLOADS["W4"], WORKLOADS["W5"]
    r, bw = Rate(130e9, 200e9), Rate(37e9, 50e9)  # the floor uses the medians
    f4 = floor(w4, w4.batch * w4.n * w4.m, r, bw)
    f5 = floor(w5, w5.batch * w5.n * w5.m, r, bw)
    assert (f4.fwd_s, f4.fwdbwd_s) == pytest.approx((0.43, 0.56), abs=0.01)
    assert (f5.fwd_s, f5.fwdbwd_s) == pytest.approx((5.5, 6.0), abs=0.1)


def test_ragged_problem_masks_weights_and_entries_agree():
    p = make_problem(WORKLOADS["W2"])
    assert p.x_len.min() >= 16 and p.x_len.max() <= 128 and len(set(p.x_len.tolist())) > 1
    mask_x, mask_y = p.masks()
    a, b = p.weights()
    assert torch.equal(mask_x, a > 0) and torch.equal(mask_y, b > 0)
    assert torch.allclose(a.sum(1), torch.ones(32)) and torch.allclose(b.sum(1), torch.ones(32))
    assert p.entries() == sum(x.shape[0] * y.shape[0] for x, y in p.unpadded(p.x, p.y))
    assert torch.equal(make_problem(WORKLOADS["W2"]).x, p.x)  # the same inputs every time


@pytest.mark.parametrize("workload", [TINY, TINY_RAGGED], ids=lambda w: w.name)
@pytest.mark.parametrize("name", [n for n in IMPLEMENTATIONS if n != "torch-compile"])
def test_every_available_implementation_agrees_with_float64_pot(workload, name):
    pytest.importorskip("ot")
    impl = IMPLEMENTATIONS[name]
    if impl.unavailable():
        pytest.skip(impl.unavailable())
    problem = make_problem(workload)
    reference = agreement.float64_reference(problem)
    calls = impl.setup(problem)
    fwd, fwdbwd = calls.forward(), calls.forward_backward()
    grad_tol = 1e-4
    assert agreement.relative_loss_difference(fwd.loss, reference) < agreement.TOLERANCE
    assert agreement.relative_loss_difference(fwdbwd.loss, reference) < agreement.TOLERANCE
    assert agreement.relative_grad_difference(fwdbwd, reference) < grad_tol


@pytest.mark.parametrize("name", [n for n in IMPLEMENTATIONS if n != "torch-compile"])
def test_bf16_inputs_are_solved_in_float32_and_give_bf16_gradients(name):
    """W8's contract: the loss of the rounded inputs to float32 accuracy; the gradient is
    bfloat16 where the inputs are tensors (rounding: ~2^-8 relative), float32 for OTT."""
    pytest.importorskip("ot")
    impl = IMPLEMENTATIONS[name]
    if impl.unavailable():
        pytest.skip(impl.unavailable())
    problem = make_problem(TINY_BF16)
    assert problem.x.dtype == torch.bfloat16 and problem.solve_dtype == torch.float32
    reference = agreement.float64_reference(problem)
    calls = impl.setup(problem)
    fwd, fwdbwd = calls.forward(), calls.forward_backward()
    assert agreement.relative_loss_difference(fwd.loss, reference) < agreement.TOLERANCE
    assert agreement.relative_loss_difference(fwdbwd.loss, reference) < agreement.TOLERANCE
    assert agreement.relative_grad_difference(fwdbwd, reference) < 1e-2
    if isinstance(fwdbwd.grads[0], torch.Tensor):
        assert fwdbwd.grads[0].dtype == torch.bfloat16


@pytest.mark.parametrize("name", [n for n in IMPLEMENTATIONS if n != "torch-compile"])
def test_a_tol_workload_stops_every_implementation_at_the_same_accuracy(name):
    """W9's contract: each stops at POT's rule (GeomLoss, which has none, refuses); the loss
    then agrees with float64 POT stopped the same way, and the reference counts the most
    iterations a problem needed (a multiple of POT's check interval, plus one)."""
    pytest.importorskip("ot")
    impl = IMPLEMENTATIONS[name]
    if impl.unavailable():
        pytest.skip(impl.unavailable())
    problem = make_problem(TINY_TOL)
    if name == "geomloss":
        with pytest.raises(ValueError, match="no stopping threshold"):
            impl.setup(problem)
        return
    reference = agreement.float64_reference(problem)
    assert 20 < reference.iterations < TINY_TOL.iterations and reference.iterations % 10 == 1
    fwdbwd = impl.setup(problem).forward_backward()
    assert agreement.relative_loss_difference(fwdbwd.loss, reference) < agreement.TOLERANCE
    assert agreement.relative_grad_difference(fwdbwd, reference) < 1e-3


def test_the_reference_loop_stops_at_tol_and_not_before():
    """The plain reference's check: with tol it stops early (cheaper than the cap), and its
    plan's column error is then <= tol, as POT's rule requires."""
    from benchmarks.implementations.reference import reference_solve

    problem = make_problem(TINY_TOL)
    a, b = problem.weights(torch.float64)
    x, y = problem.x.double(), problem.y.double()
    capped = dataclasses.replace(problem, workload=dataclasses.replace(TINY_TOL, tol=None))
    stopped_loss = reference_solve(problem)(x, y, a, b)[0]
    capped_loss = reference_solve(capped)(x, y, a, b)[0]
    assert stopped_loss != capped_loss  # it stopped before the cap
    assert float(abs(stopped_loss - capped_loss) / capped_loss) < 1e-5


def test_run_workload_reports_times_ratios_and_agreement(monkeypatch):
    pytest.importorskip("ot")
    monkeypatch.setitem(WORKLOADS, TINY.name, TINY)
    impls = [IMPLEMENTATIONS["ours-torch"], IMPLEMENTATIONS["torch-reference"]]
    options = Options(budget_s=60, min_repeats=3, max_repeats=3, target_seconds=0.0,
                      memory=False, seed=0, threads=1)
    result = dataclasses.asdict(run_workload(TINY, impls, options, log=lambda m: 0))
    ours, ref = result["implementations"]
    assert ours["fwd"]["repeats"] == 3 and ref["fwdbwd"]["repeats"] == 3
    assert ref["ratio"]["fwd"] == pytest.approx(ref["fwd"]["median"] / ours["fwd"]["median"])
    assert ours["over_floor"]["fwdbwd"] > 0 and result["floor"]["fwd_s"] > 0
    assert ours["loss_rel_diff"] < agreement.TOLERANCE
    assert "POT" in result["reference"]["source"]
    text = report.text_table({"quick": True, "workloads": [result], "not_run": {"x": "why"}})
    assert "QUICK RUN" in text and "ours-torch" in text and "not run: x (why)" in text
    assert "page_faults" in ours["fwdbwd"] and "page faults per call" in text


def test_a_too_slow_peer_is_stopped_at_the_budget_but_ours_is_not():
    pytest.importorskip("ot")
    options = Options(budget_s=1e-6, min_repeats=3, max_repeats=3, target_seconds=0.0,
                      memory=False, seed=0, threads=1)
    impls = [IMPLEMENTATIONS["ours-torch"], IMPLEMENTATIONS["torch-reference"]]
    ours, peer = run_workload(TINY, impls, options, lambda m: 0).implementations
    assert peer.status == "too slow" and peer.fwd["repeats"] == 1 and peer.fwdbwd is None
    assert ours.status == "ok" and ours.fwdbwd["repeats"] == 3 and "fwd" in peer.ratio


def test_memory_probe_measures_one_forward_backward_in_a_child():
    result = memory_probe.probe("W1", "torch-reference", compiles=False, budget_s=120,
                                threads=1)
    assert result.status == "ok", result.reason
    assert result.peak_mib >= 0 and result.fwdbwd_seconds > 0


def test_readme_section_is_replaced_between_the_markers_only():
    text = f"# t\n\nbefore\n{readme.START}\nold\ntable\n{readme.END}\nafter\n"
    assert readme.replace_section(text, "new") == (
        f"# t\n\nbefore\n{readme.START}\nnew\n{readme.END}\nafter\n")
    assert readme.replace_section("# no markers\n", "new") is None


def test_workload_definitions_stay_those_of_the_history():
    # W1-W5 as in BENCHMARKS.md: results of every run stay comparable, whatever the default run.
    shapes = {n: (w.batch, w.n, w.m, w.d, w.iterations, w.min_len) for n, w in WORKLOADS.items()}
    assert shapes["W1"] == (64, 32, 32, 768, 100, None)
    assert shapes["W2"] == (32, 128, 128, 768, 100, 16)
    assert shapes["W3"] == (1, 1024, 1024, 768, 100, None)
    assert shapes["W4"] == (1, 4096, 4096, 256, 100, None)
    assert shapes["W5"] == (1, 16384, 16384, 64, 10, None)
    assert {WORKLOADS[n].eps for n in ("W1", "W2", "W3", "W4", "W5")} == {0.05}
    # The small-eps, bf16 and tol workloads of issue 12.
    assert shapes["W6"] == shapes["W7"] == (32, 32, 32, 384, 200, 8)
    assert (WORKLOADS["W6"].eps, WORKLOADS["W7"].eps) == (0.01, 0.001)
    assert shapes["W8"] == (32, 32, 32, 384, 100, 8) and WORKLOADS["W8"].dtype == torch.bfloat16
    assert shapes["W9"] == (32, 32, 32, 384, 1000, 8)
    assert (WORKLOADS["W9"].eps, WORKLOADS["W9"].tol) == (0.01, 1e-4)


def test_the_default_run_is_w1_to_w3_and_the_user_regime_with_every_peer_and_no_readme():
    from benchmarks import __main__ as cli

    args = cli.parse_args([])
    workloads, impls, not_run = cli.select(args)
    assert cli.mode_of(args) == "default" and not args.update_readme
    assert [w.name for w in workloads] == ["W1", "W2", "W3", "W6", "W7", "W8", "W9"]
    assert {i.name for i in impls} | set(not_run) == set(IMPLEMENTATIONS)  # no peer left out
    options = cli.options_from(args)
    assert not options.memory and options.max_repeats == 10


def test_full_runs_the_whole_protocol_and_only_it_may_update_the_readme():
    from benchmarks import __main__ as cli

    args = cli.parse_args(["--full", "--update-readme"])
    assert [w.name for w in cli.select(args)[0]] == [f"W{i}" for i in range(1, 10)]
    options = cli.options_from(args)
    assert (options.budget_s, options.min_repeats, options.max_repeats, options.memory) == (
        60.0, 5, 50, True)
    for argv in (["--update-readme"], ["--quick", "--update-readme"], ["--quick", "--full"]):
        with pytest.raises(SystemExit):
            cli.parse_args(argv)


def test_a_default_run_writes_only_under_the_output_dir(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import __main__ as cli
    from benchmarks import runner
    from benchmarks.floor import matmul_rate

    readme_path, plot_path = tmp_path / "README.md", tmp_path / "benchmark.png"
    readme_path.write_text(f"{readme.START}\nold\n{readme.END}\n")
    monkeypatch.setattr(cli, "README", readme_path)
    monkeypatch.setattr(cli, "PLOT", plot_path)
    monkeypatch.setattr(cli, "reexec_without_blas_overrides", lambda: None)
    monkeypatch.setattr(runner, "matmul_rate", lambda: matmul_rate(64))
    monkeypatch.setitem(WORKLOADS, TINY.name, TINY)
    threads = torch.get_num_threads()
    try:
        cli.main(["--workloads", "tiny", "--peers", "reference", "--repeats", "1",
                  "--max-repeats", "1", "--threads", "1", "--output-dir", str(tmp_path / "out")])
    finally:
        torch.set_num_threads(threads)
    assert readme_path.read_text() == f"{readme.START}\nold\n{readme.END}\n"
    assert not plot_path.exists()
    assert sorted(p.name for p in (tmp_path / "out").glob("latest*")) == ["latest-default.json"]
    assert (tmp_path / "out" / "benchmark-default.png").exists()


def test_reports_say_the_kind_of_run_and_whether_the_native_loops_ran():
    info = {"native_cpu": "native CPU loops: _sinkhorn_cpu yes, _streaming_cpu yes",
            "machine": {"cpu": "c", "cores": 2, "torch_threads": 2}, "versions": {},
            "date": "d", "git_commit": "g", "command": "python -m benchmarks --full"}
    default = {"quick": False, "mode": "default", "info": info, "workloads": [], "not_run": {}}
    assert report.text_table(default).splitlines()[:2] == [report.RUN_LABELS["default"],
                                                           info["native_cpu"]]
    full = {**default, "mode": "full"}
    assert "RUN" not in report.text_table(full)
    assert f"Ours ran with the {info['native_cpu']}." in report.markdown(full, "b.png")
