"""The one decision point (optical_ops.dispatch): the plan as a table of (sizes, options) ->
(backend, solver), its errors, and the promises that hang on it (no host sync with
check_inputs=False; the caller's TF32 switch does not reach the op)."""

from __future__ import annotations

import pytest
import torch
from reference import random_tokens

from optical_ops import SOLVERS, OTDistillLoss, ot_distill_loss, sinkhorn, solver_plan
from optical_ops.dispatch import DENSE_MAX_BYTES

CPU_TABLE = [
    # (batch, n, m, d, options) -> (backend, solver, buckets)
    ((32, 20, 24, 768, {}), ("torch", "dense", True)),
    ((1, 20, 24, 768, {}), ("torch", "dense", False)),
    ((32, 20, 24, 768, dict(check_inputs=False)), ("torch", "dense", False)),
    ((1, 16384, 16384, 64, {}), ("torch", "streaming", False)),
    ((4, 20, 24, None, {}), ("torch", "dense", False)),  # a dense cost: never bucketed
    ((4, 20, 24, 768, dict(solver="dense-log")), ("torch", "dense-log", True)),
    ((4, 20, 24, 768, dict(solver="streaming", tau=0.5)), ("torch", "streaming", True)),
    ((4, 20, 24, 768, dict(debias=True)), ("torch", "dense", True)),
    ((4, 20, 24, 768, dict(backend="torch", tau=1.0)), ("torch", "dense", True)),
]


@pytest.mark.parametrize("sizes,expected", CPU_TABLE)
def test_plan_table_on_the_cpu(sizes, expected):
    batch, n, m, d, options = sizes
    plan = solver_plan(batch, n, m, d, **options)
    assert (plan.backend, plan.solver, plan.buckets) == expected
    assert plan.reason


def test_dense_budget_is_one_threshold():
    side = int((DENSE_MAX_BYTES / 4) ** 0.5)
    assert solver_plan(1, side, side, 64).solver == "dense"
    assert solver_plan(1, side + 1, side + 1, 64).solver == "streaming"


@pytest.mark.parametrize(
    "options,error,match",
    [
        (dict(solver="streaming"), ValueError, r"solver='streaming' needs embeddings"),
        (dict(solver="dense-scaling", tau=1.0), ValueError, r"does not support unbalanced"),
        (dict(solver="triton-fused", backend="torch"), ValueError, r"runs on the 'triton'"),
        (dict(solver="nope"), ValueError, r"solver must be one of"),
        (dict(backend="gpu"), ValueError, r"backend must be one of"),
        (dict(backend="triton", tau=1.0), ValueError, r"tau is supported by the PyTorch"),
    ],
)
def test_plan_errors_name_the_option(options, error, match):
    with pytest.raises(error, match=match):
        solver_plan(2, 3, 4, None if options.get("solver") == "streaming" else 8, **options)


def test_every_solver_is_in_the_capability_table():
    assert {c.backend for c in SOLVERS.values()} == {"torch", "triton"}
    for name, capability in SOLVERS.items():
        assert "embeddings" in capability.inputs and capability.summary, name


def test_module_checks_options_without_solving(monkeypatch):
    import optical_ops.autograd as ag

    def refuse(*_args, **_kwargs):
        raise AssertionError("the constructor must not solve")

    monkeypatch.setattr(ag.EmbeddingOTFunction, "apply", refuse)
    OTDistillLoss(eps=0.1, solver="streaming", tau=0.5)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['epsilon'\]"):
        OTDistillLoss(epsilon=0.1)
    with pytest.raises(ValueError, match=r"tau is supported by the PyTorch backend only"):
        OTDistillLoss(backend="triton", tau=0.5)


@pytest.mark.parametrize("options", [dict(solver="dense"), dict(solver="dense-log"),
                                     dict(solver="streaming"), dict(tau=0.5), dict(debias=True)])
def test_no_host_sync_on_the_pytorch_backend(gen, options, monkeypatch):
    """check_inputs=False, tol=None: forward and backward never read a tensor on the host
    (no length buckets, the dense domain from the cosine bound), so the op is capturable."""
    x = random_tokens(gen, 3, 9, 16, dtype=torch.float32).requires_grad_()
    y = random_tokens(gen, 3, 12, 16, dtype=torch.float32).requires_grad_()
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 5:] = False
    x.data[1, 6] = float("nan")  # NaN padding is zeroed without looking
    expected = ot_distill_loss(x, y, mask, n_iters=12, **options)

    def refuse(*_args, **_kwargs):
        raise AssertionError("host sync")

    for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "cpu",
                 "numpy", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    loss = ot_distill_loss(x, y, mask, n_iters=12, check_inputs=False, **options)
    loss.backward()
    monkeypatch.undo()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert (x.grad[1, 5:] == 0).all()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_callers_tf32_switch_does_not_reach_the_op(gen, monkeypatch):
    """set_float32_matmul_precision("high") (TF32 on CUDA) is lifted inside the op's products,
    forward and backward, and restored after."""
    seen = []
    bmm, baddbmm = torch.bmm, torch.baddbmm

    def recording(product):
        def wrapped(*args, **kwargs):
            seen.append(torch.get_float32_matmul_precision())
            return product(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch, "bmm", recording(bmm))
    monkeypatch.setattr(torch, "baddbmm", recording(baddbmm))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        x = random_tokens(gen, 2, 7, 16, dtype=torch.float32).requires_grad_()
        y = random_tokens(gen, 2, 9, 16, dtype=torch.float32)
        ot_distill_loss(x, y, solver="dense-log").backward()
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert seen and set(seen) == {"highest"}


def test_autocast_inputs_are_solved_in_fp32(gen):
    """Inside autocast the op still computes in fp32 (or fp64): same loss as outside."""
    x = random_tokens(gen, 2, 7, 16, dtype=torch.float32).requires_grad_()
    y = random_tokens(gen, 2, 9, 16, dtype=torch.float32)
    plain = ot_distill_loss(x, y, reduction="none")
    for options in ({}, dict(solver="dense-log"), dict(debias=True)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = ot_distill_loss(x, y, reduction="none", **options)
        assert loss.dtype == torch.float32
        if not options:
            torch.testing.assert_close(loss, plain, rtol=1e-6, atol=0)
        loss.sum().backward()
        assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    cost = torch.rand(2, 5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = sinkhorn(cost)
    torch.testing.assert_close(res.loss, sinkhorn(cost).loss, rtol=1e-6, atol=0)


def test_double_backward_says_it_is_not_supported(gen):
    x = random_tokens(gen, 2, 7, 16).requires_grad_()
    y = random_tokens(gen, 2, 9, 16)
    with pytest.raises(RuntimeError, match=r"does not support double backward"):
        torch.autograd.grad(ot_distill_loss(x, y), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"does not support double backward"):
        torch.autograd.grad(sinkhorn(x[0] @ y[0].T).loss, x, create_graph=True)
    (grad,) = torch.autograd.grad(ot_distill_loss(x, y), x)  # first order is fine
    assert torch.isfinite(grad).all()
