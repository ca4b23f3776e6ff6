"""The prepared GPU check (benchmarks/gpu_check.py) on a machine without one: its arguments,
its exit code without CUDA, the time guard, the path forcing, and a smoke run of its
correctness sections under Triton's interpreter (tiny shapes)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check


def test_arguments_default_to_every_section_in_order():
    args = gpu_check.parse_args([])
    assert args.sections == list(gpu_check.SECTIONS)
    assert args.out == "gpu_check.json" and args.budget == gpu_check.DEFAULT_BUDGET
    assert args.workloads == ["W1", "W2", "W3", "W4", "W5"]
    assert args.device == "cuda" and not args.smoke


def test_sections_are_kept_in_the_documented_order():
    args = gpu_check.parse_args(["--sections", "timing, solvers", "--out", "x.json",
                                 "--budget", "90", "--workloads", "W1,W3"])
    assert args.sections == ["solvers", "timing"]
    assert (args.out, args.budget, args.workloads) == ("x.json", 90.0, ["W1", "W3"])


@pytest.mark.parametrize("argv", [["--sections", "solvers,nope"], ["--sections", ","],
                                  ["--budget", "0"], ["--budget", "-3"], ["--budget", "soon"]])
def test_bad_arguments_exit_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_check.parse_args(argv)
    assert stop.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cpu_device_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check")
def test_without_cuda_it_exits_at_once_with_its_own_code(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--out", str(out)]) == gpu_check.NO_CUDA_EXIT == 3
    assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_budget_shares_roll_over_and_the_guard_stops():
    now = [0.0]
    budget = gpu_check.Budget(100.0, clock=lambda: now[0])
    assert budget.start_section(0.25, 1.0) == pytest.approx(25.0)
    now[0] = 5.0  # the section used 5 of its 25 s: the rest rolls over to the next
    assert budget.start_section(0.75, 0.75) == pytest.approx(95.0)
    assert budget.allows(90.0) and not budget.allows(96.0)
    now[0] = 101.0
    assert not budget.allows()


def test_the_run_reports_each_section_and_fails_on_a_failed_check(monkeypatch, tmp_path):
    """Fake sections: the time guard's seconds, a crash kept to its section, the JSON."""

    def passing(torch_, budget):
        yield gpu_check.Check("solvers", "a", "pass", "fine")
        yield gpu_check.Check("solvers", "b", "skip" if not budget.allows(1e9) else "pass")

    def crashing(torch_, budget):
        yield gpu_check.Check("tol", "first", "pass")
        raise RuntimeError("boom")

    monkeypatch.setattr(gpu_check, "RUNNERS", dict(gpu_check.RUNNERS, solvers=passing,
                                                   tol=crashing))
    monkeypatch.setattr(gpu_check, "environment", lambda torch_: {"device": "fake"})
    args = gpu_check.parse_args(["--sections", "solvers,tol", "--budget", "10"])
    code, report = gpu_check.run(args, torch)
    assert code == gpu_check.FAIL_EXIT
    names = [(c["section"], c["name"], c["status"]) for c in report["checks"]]
    assert names == [("solvers", "a", "pass"), ("solvers", "b", "skip"),
                     ("tol", "first", "pass"), ("tol", "section crashed", "FAIL")]
    assert set(report["sections"]) == {"solvers", "tol"}
    json.dumps(report)  # serialisable
    assert "boom" in report["checks"][-1]["detail"]


def test_path_forcing_is_undone(monkeypatch):
    """The module constants (or the solver= option) route one block to a solver path."""
    pytest.importorskip("triton")
    from optical_ops.kernels import sinkhorn_fused

    before = (sinkhorn_fused.MAX_TILE, sinkhorn_fused.MAX_STRIP_COLS)
    for path in gpu_check.PATHS:
        with gpu_check.forced_path(path) as options:
            assert options["backend"] == "triton"
            if "solver" in options:
                assert options["solver"] == f"triton-{path}"
            else:
                assert (sinkhorn_fused.MAX_TILE == 0) == (path != "fused")
        assert (sinkhorn_fused.MAX_TILE, sinkhorn_fused.MAX_STRIP_COLS) == before


@pytest.mark.triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="the smoke run is for CPU machines")
def test_smoke_run_of_the_correctness_sections_on_the_interpreter(tmp_path, monkeypatch):
    """The script's own code, end to end, on tiny shapes: every path agrees with the float64
    PyTorch backend (the CUDA-only sections skip). Catches the script's bugs before a GPU
    run spends device time on them."""
    pytest.importorskip("triton")
    monkeypatch.setattr(gpu_check, "PATH_SHAPES", dict(gpu_check.PATH_SHAPES))
    monkeypatch.setattr(gpu_check, "ITERS", 10)
    out = tmp_path / "check.json"
    code = gpu_check.main(["--device", "cpu", "--smoke", "--sections", "solvers,streams,timing",
                           "--out", str(out), "--budget", "600"])
    report = json.loads(out.read_text())
    statuses = {(c["section"], c["name"]): c["status"] for c in report["checks"]}
    assert code == 0, [c for c in report["checks"] if c["status"] == "FAIL"]
    assert sum(s == "pass" for s in statuses.values()) == 20  # 4 paths x (4 + dense cost)
    assert statuses[("timing", "W1-W5")] == "skip"
