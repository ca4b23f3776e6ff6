"""The one decision point (optical_ops.dispatch): the plan as a table of (sizes, options) ->
(backend, solver), its errors, and the promises that hang on it (no host sync with
check_inputs=False; the caller's TF32 switch does not reach the op)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import random_tokens

import optical_ops.softmin_dense as softmin_dense
from optical_ops import (
    SOLVERS,
    OTDistillLoss,
    ot_distill_loss,
    ot_distill_plan,
    sinkhorn,
    solver_plan,
)
from optical_ops.dispatch import DENSE_MAX_BYTES

CPU_TABLE = [
    # (batch, n, m, d, options) -> (backend, solver, buckets)
    ((32, 20, 24, 768, {}), ("torch", "dense", True)),
    ((1, 20, 24, 768, {}), ("torch", "dense", False)),
    ((32, 20, 24, 768, dict(check_inputs=False)), ("torch", "dense", False)),
    ((1, 16384, 16384, 64, {}), ("torch", "streaming", False)),
    ((4, 20, 24, None, {}), ("torch", "dense", False)),  # a dense cost: never bucketed
    ((4, 20, 24, 768, dict(solver="dense-log")), ("torch", "dense-log", True)),
    ((4, 20, 24, 768, dict(solver="dense-stabilised")), ("torch", "dense-stabilised", True)),
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
                                     dict(solver="streaming"), dict(tau=0.5), dict(debias=True),
                                     dict(eps=1e-3)])
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
    forward and backward, and restored after. The batched products are the ones TF32 could
    reach: the native CPU passes (which it cannot) are switched off."""
    monkeypatch.setattr(softmin_dense, "_native_pays", lambda *args: False)
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
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = cost_of(x, y)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, cost_of(x, y), rtol=1e-6, atol=1e-7)
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


def test_weight_gradients_are_the_potentials(gen):
    """d OT_eps / d w for weights normalised inside the op: the debiased divergence is built of
    entropic values, so its envelope gradient in the weights is exact at convergence (checked by
    central differences in float64); the transport value gets the same envelope gradient."""
    x = random_tokens(gen, 2, 5, 8)
    y = random_tokens(gen, 2, 6, 8)
    w = torch.rand(2, 5, generator=gen, dtype=torch.float64) + 0.2
    options = dict(eps=0.1, n_iters=5000, tol=1e-12, reduction="sum", debias=True)
    wr = w.clone().requires_grad_()
    ot_distill_loss(x, y, student_weights=wr, **options).backward()
    step = 1e-6
    numeric = torch.zeros_like(w)
    for index in [(0, 0), (0, 3), (1, 1), (1, 4)]:
        plus, minus = w.clone(), w.clone()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (ot_distill_loss(x, y, student_weights=plus, **options)
                          - ot_distill_loss(x, y, student_weights=minus, **options)) / (2 * step)
        torch.testing.assert_close(wr.grad[index], numeric[index], rtol=1e-5, atol=1e-9)
    # Every path returns one: sinkhorn's a and b, and the teacher's weights.
    a = torch.rand(5, generator=gen, dtype=torch.float64).requires_grad_()
    res = sinkhorn(torch.rand(5, 6, generator=gen, dtype=torch.float64), a, eps=0.1)
    res.loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    wt = torch.rand(2, 6, generator=gen, dtype=torch.float64).requires_grad_()
    ot_distill_loss(x, y, teacher_weights=wt, solver="streaming").backward()
    assert wt.grad is not None and wt.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"balanced OT \(tau=None\) only"):
        ot_distill_loss(x, y, student_weights=wr, tau=1.0)


def test_weight_gradients_of_a_ragged_batch_match_each_problem(gen):
    lengths = [7, 2, 5, 1]
    x = random_tokens(gen, 4, 7, 8)
    y = random_tokens(gen, 4, 6, 8)
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    w = (torch.rand(4, 7, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    ot_distill_loss(x, y, mask, student_weights=w, reduction="sum").backward()
    for i, n in enumerate(lengths):
        wi = w.detach()[i, :n].clone().requires_grad_()
        ot_distill_loss(x[i, :n], y[i], student_weights=wi).backward()
        torch.testing.assert_close(w.grad[i, :n], wi.grad, rtol=1e-10, atol=1e-13)
        assert (w.grad[i, n:] == 0).all()


def test_empty_batch_returns_what_torch_losses_return():
    x = torch.randn(0, 5, 8, requires_grad=True)
    assert ot_distill_loss(x, x, reduction="none").shape == (0,)
    assert ot_distill_loss(x, x, reduction="sum").item() == 0.0
    mean = ot_distill_loss(x, x)
    assert torch.isnan(mean)
    mean.backward()  # connected to the graph, like torch losses
    res = sinkhorn(torch.rand(0, 3, 4))
    assert res.plan.shape == (0, 3, 4) and res.f.shape == (0, 3) and res.loss.shape == (0,)
    masks = torch.ones(0, 5, dtype=torch.bool), torch.ones(0, 5, dtype=torch.long)
    assert ot_distill_loss(x, x, *masks, teacher_weights=torch.ones(0, 5),
                           reduction="none").shape == (0,)


def test_options_accept_numpy_scalars_and_reject_bools():
    np = pytest.importorskip("numpy")
    x = torch.randn(2, 5, 8)
    ref = ot_distill_loss(x, x, eps=0.1, n_iters=5)
    torch.testing.assert_close(ot_distill_loss(x, x, eps=np.float32(0.1), n_iters=np.int64(5)),
                               ref, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"tol must be None or a finite number > 0, got True"):
        ot_distill_loss(x, x, tol=True)
    with pytest.raises(ValueError, match=r"n_iters must be in \[1, 2147483647\]"):
        ot_distill_loss(x, x, n_iters=2**31)


def test_weights_that_overflow_when_summed_or_cast_and_1d_weights():
    x = torch.randn(2, 5, 8)
    uniform = ot_distill_loss(x, x.flip(1), reduction="none")
    for weights in (torch.full((2, 5), 1e38), torch.full((2, 5), 1e300, dtype=torch.float64)):
        torch.testing.assert_close(
            ot_distill_loss(x, x.flip(1), student_weights=weights, reduction="none"), uniform)
    w = torch.rand(5) + 0.1
    torch.testing.assert_close(ot_distill_loss(x, x, student_weights=w, reduction="none"),
                               ot_distill_loss(x, x, student_weights=w.expand(2, 5),
                                               reduction="none"))


def test_huge_finite_embeddings_are_named_as_such():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"student has finite tokens whose squared norm "
                                         r"overflows torch.float32"):
        ot_distill_loss(x * 1e20, x)
    with pytest.raises(ValueError, match=r"teacher contains NaN or inf"):
        ot_distill_loss(x, torch.full_like(x, float("nan")))


def test_log_domain_ignores_a_constant_in_the_cost(gen):
    cost = torch.rand(2, 6, 7, generator=gen, dtype=torch.float64)
    base = sinkhorn(cost, eps=0.01, n_iters=300, solver="dense-log")
    shifted = sinkhorn(cost + 1e5, eps=0.01, n_iters=300, solver="dense-log")
    # (C + 1e5 carries ulp(1e5) ~ 1.5e-11 of input rounding: 1.5e-9 in C / eps.)
    torch.testing.assert_close(shifted.plan, base.plan, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(shifted.loss - 1e5, base.loss, rtol=0, atol=1e-9)
    fp32 = sinkhorn((cost + 1e5).float(), eps=0.01, n_iters=300, solver="dense-log")
    torch.testing.assert_close(fp32.plan.sum((1, 2)), torch.ones(2), rtol=0, atol=1e-5)
    assert (fp32.marginal_error < 1e-3).all()


def test_a_zero_vector_gets_a_zero_gradient_in_half_precision(gen):
    x = random_tokens(gen, 2, 5, 8, dtype=torch.float16)
    x[0, 2] = 0.0
    x.requires_grad_()
    ot_distill_loss(x, random_tokens(gen, 2, 6, 8, dtype=torch.float16)).backward()
    assert torch.isfinite(x.grad).all() and (x.grad[0, 2] == 0).all()


def test_convergence_is_reported(gen):
    from optical_ops import ot_distill_plan

    x, y = random_tokens(gen, 3, 7, 16), random_tokens(gen, 3, 9, 16)
    with pytest.warns(RuntimeWarning, match=r"did not converge: 3 of 3 problem\(s\)"):
        ot_distill_loss(x, y, eps=1e-3, n_iters=20, tol=1e-9)
    with pytest.warns(RuntimeWarning, match=r"did not converge"):
        res = sinkhorn(cost_of(x, y), eps=1e-3, n_iters=20, tol=1e-9)
    assert res.converged.tolist() == [False] * 3
    res = ot_distill_plan(x, y, eps=0.1, n_iters=2000, tol=1e-8)
    assert res.converged.all() and (res.marginal_error <= 1e-8).all()
    assert res.plan.shape == (3, 7, 9) and (res.iterations < 2000).all()
    torch.testing.assert_close(res.loss, ot_distill_loss(x, y, eps=0.1, n_iters=2000, tol=1e-8,
                                                         reduction="none"))
    assert sinkhorn(cost_of(x, y)).converged is None


def cost_of(x, y):
    from optical_ops import cost_matrix

    return cost_matrix(x, y)


def test_infinite_costs_are_forbidden_pairs(gen):
    """+inf entries get no mass; the result equals POT's on the finite pairs (float64)."""
    ot = pytest.importorskip("ot")
    cost = torch.rand(6, 7, generator=gen, dtype=torch.float64)
    forbidden = torch.rand(6, 7, generator=gen) < 0.3
    forbidden[:, 0] = False  # every row keeps a finite entry
    forbidden[0, :] = False  # and every column
    c = cost.masked_fill(forbidden, float("inf"))
    for solver in ("dense", "dense-log", "dense-scaling", "dense-stabilised"):
        res = sinkhorn(c, eps=0.1, n_iters=2000, tol=1e-12, solver=solver)
        assert (res.plan[forbidden] == 0).all() and torch.isfinite(res.loss)
        big = cost.masked_fill(forbidden, 1e3).numpy()  # exp(-1e3 / 0.1) = 0 in float64
        ref = ot.sinkhorn(np.full(6, 1 / 6), np.full(7, 1 / 7), big, 0.1,
                          method="sinkhorn_log", numItermax=100000, stopThr=1e-14)
        np.testing.assert_allclose(res.plan.numpy(), ref, rtol=1e-7, atol=1e-14)
    c.requires_grad_()
    sinkhorn(c, eps=0.1).loss.backward()
    assert (c.grad[forbidden] == 0).all()
    with pytest.raises(ValueError, match=r"a row with mass whose entries are all \+inf"):
        sinkhorn(torch.full((3, 4), float("inf")))


def test_warm_start_from_converged_potentials_needs_few_iterations(gen):
    x, y = random_tokens(gen, 3, 7, 16), random_tokens(gen, 3, 9, 16)
    cold = ot_distill_plan(x, y, eps=0.02, n_iters=5000, tol=1e-9)
    warm = ot_distill_plan(x, y, eps=0.02, n_iters=5000, tol=1e-9, warm_start=cold.f)
    assert (warm.iterations <= 10).all() and (cold.iterations > 10).all()
    torch.testing.assert_close(warm.plan, cold.plan, rtol=1e-6, atol=1e-12)
    for solver in ("dense", "streaming"):  # and through the loss, ragged buckets included
        mask = torch.ones(3, 7, dtype=torch.bool)
        mask[1, 4:] = False
        start = ot_distill_plan(x, y, mask, eps=0.02, n_iters=5000, tol=1e-10).f
        loss = ot_distill_loss(x, y, mask, eps=0.02, n_iters=1, warm_start=start,
                               solver=solver, reduction="none")
        ref = ot_distill_loss(x, y, mask, eps=0.02, n_iters=5000, tol=1e-10, reduction="none")
        torch.testing.assert_close(loss, ref, rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match=r"warm_start must have shape \(3, 7\)"):
        ot_distill_loss(x, y, warm_start=cold.f[:, :3])


def test_pot_stopping_rule(gen):
    """tol_norm="l2" stops on |P^T 1 - b|_2 as POT does: no later than the L1 rule."""
    cost = torch.rand(2, 30, 40, generator=gen, dtype=torch.float64)
    l1 = sinkhorn(cost, eps=0.02, n_iters=20000, tol=1e-7)
    l2 = sinkhorn(cost, eps=0.02, n_iters=20000, tol=1e-7, tol_norm="l2")
    assert (l2.iterations <= l1.iterations).all() and (l2.iterations < l1.iterations).any()
    cols = l2.plan.sum(1) - 1 / 40
    assert (torch.linalg.vector_norm(cols, dim=1) <= 1e-7).all() and l2.converged.all()
    with pytest.raises(ValueError, match=r"tol_norm must be one of"):
        sinkhorn(cost, tol_norm="max")


def test_eps_scaling_reaches_small_eps_in_fewer_iterations(gen):
    """At eps = 3e-3 (R / eps ~ 700), 300 plain iterations leave a marginal error of a few
    percent; after eps-scaling (from the range bound down by 0.5 per stage, 10 iterations each)
    the same 300 iterations are within 2e-4 of the converged loss, on every path."""
    x, y = random_tokens(gen, 2, 12, 16), random_tokens(gen, 2, 15, 16)
    x, y = x / x.norm(dim=-1, keepdim=True), y / y.norm(dim=-1, keepdim=True)
    ref = ot_distill_plan(x, y, eps=3e-3, n_iters=20000, tol=1e-8, eps_scaling=0.5)
    assert ref.converged.all()
    plain = ot_distill_plan(x, y, eps=3e-3, n_iters=300)
    scaled = ot_distill_plan(x, y, eps=3e-3, n_iters=300, eps_scaling=0.5)
    assert (scaled.marginal_error < plain.marginal_error / 10).all()
    for solver in ("dense", "dense-stabilised", "dense-log", "streaming"):
        loss = ot_distill_loss(x, y, eps=3e-3, n_iters=300, eps_scaling=0.5, reduction="none",
                               solver=solver)
        torch.testing.assert_close(loss, ref.loss, rtol=2e-4, atol=0)
    res = sinkhorn(cost_of(x, y), eps=3e-3, n_iters=300, eps_scaling=0.5)
    torch.testing.assert_close(res.loss, ref.loss, rtol=2e-4, atol=0)
    sq = ot_distill_plan(x, y, cost="sqeuclidean", eps=3e-3, n_iters=300, eps_scaling=0.5)
    assert (sq.marginal_error < ot_distill_plan(x, y, cost="sqeuclidean", eps=3e-3,
                                                 n_iters=300).marginal_error).all()
    with pytest.raises(ValueError, match=r"eps_scaling must be None or a factor in \(0, 1\)"):
        ot_distill_loss(x, y, eps_scaling=1.5)


def test_forced_solver_routes_auto_through_the_plan(gen):
    from optical_ops.dispatch import forced_solver

    with forced_solver("dense-log"):
        assert solver_plan(4, 20, 24, 768).solver == "dense-log"
        assert "forced_solver" in solver_plan(4, 20, 24, 768).reason
        assert solver_plan(4, 20, 24, 768, solver="streaming").solver == "streaming"
    with forced_solver("streaming"):  # needs embeddings: a dense cost keeps its own choice
        assert solver_plan(4, 20, 24, None).solver == "dense"
    with forced_solver("triton-fused"):  # another backend: the CPU keeps the PyTorch choice
        assert solver_plan(4, 20, 24, 768).solver == "dense"
    assert solver_plan(4, 20, 24, 768).solver == "dense"
    x, y = random_tokens(gen, 2, 7, 16), random_tokens(gen, 2, 9, 16)
    with forced_solver("streaming"):
        forced = ot_distill_loss(x, y, reduction="none")
    torch.testing.assert_close(forced, ot_distill_loss(x, y, solver="streaming",
                                                       reduction="none"))
    with pytest.raises(ValueError, match=r"solver must be one of"):
        with forced_solver("fast"):
            pass


def test_small_eps_ragged_batch_takes_the_stabilised_solver_per_bucket(gen):
    """A ragged batch at eps = 1e-3 is split into trimmed buckets (non-contiguous weight views)
    and solved by the stabilised domain: the same losses and gradients as the log domain."""
    lengths = torch.tensor([30, 3, 17, 1, 25, 8, 29, 12])
    x = random_tokens(gen, 8, 30, 16).requires_grad_()
    y = random_tokens(gen, 8, 30, 16)
    mask = torch.arange(30)[None] < lengths[:, None]
    stabilised = ot_distill_loss(x, y, mask, eps=1e-3, n_iters=200, reduction="none")
    (gx,) = torch.autograd.grad(stabilised.sum(), x)
    log = ot_distill_loss(x, y, mask, eps=1e-3, n_iters=200, reduction="none",
                          solver="dense-log")
    (lx,) = torch.autograd.grad(log.sum(), x)
    torch.testing.assert_close(stabilised, log, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gx, lx, rtol=1e-7, atol=1e-10)
