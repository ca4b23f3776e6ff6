"""``sinkhorn`` on a cost matrix: agreement with POT in float64, and OT's own properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import (
    assert_close_up_to_constant,
    pot_sinkhorn,
    random_tokens,
    random_weights,
    rel_err,
)

from optical_ops import cost_matrix, sinkhorn
from optical_ops.dispatch import SCALING_MAX_RANGE
from optical_ops.kernels.cpu_stabilised import native_stabilised_available
from optical_ops.sinkhorn_loop import run_sinkhorn
from optical_ops.softmin_dense import DenseLogSoftMin, DenseScalingSoftMin, dense_softmin
from optical_ops.softmin_stabilised import StabilisedSoftMin

CONVERGED = dict(n_iters=20000, tol=1e-13)
SIZES = [(1, 1), (1, 7), (7, 33), (33, 7), (129, 300), (300, 129)]


def random_cost(gen, n, m, d=16, batch=None):
    shape = (n, d) if batch is None else (batch, n, d)
    x = random_tokens(gen, *shape)
    y = random_tokens(gen, *shape[:-2], m, d)
    return cost_matrix(x, y)


@pytest.mark.parametrize("n,m", SIZES)
@pytest.mark.parametrize("eps", [0.1, 0.02])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_pot_at_convergence(gen, n, m, eps, weighted):
    cost = random_cost(gen, n, m)
    a = random_weights(gen, n) if weighted else None
    b = random_weights(gen, m) if weighted else None
    res = sinkhorn(cost, a, b, eps=eps, **CONVERGED)
    ref = pot_sinkhorn(cost, a, b, eps)
    assert rel_err(res.plan, ref["plan"]) < 1e-6
    assert abs(res.loss.item() - ref["loss"]) <= 1e-6 * abs(ref["loss"])
    assert res.marginal_error.item() < 1e-10
    torch.testing.assert_close(res.plan.sum(1), torch.as_tensor(ref["a"]), rtol=0, atol=1e-10)
    torch.testing.assert_close(res.plan.sum(0), torch.as_tensor(ref["b"]), rtol=0, atol=1e-10)
    assert_close_up_to_constant(res.f, ref["f"], atol=1e-6 * eps)
    assert_close_up_to_constant(res.g, ref["g"], atol=1e-6 * eps)


@pytest.mark.parametrize("solver", ["dense-scaling", "dense-log"])
def test_fixed_iterations_match_pot_iterates(gen, solver):
    """Uniform weights, same iteration count, no early stop: POT's exact iterate."""
    cost = random_cost(gen, 33, 129, batch=1)
    a, b = torch.full((1, 33), 1 / 33, dtype=torch.float64), torch.full((1, 129), 1 / 129,
                                                                          dtype=torch.float64)
    for n_iters in (1, 7, 100):
        op = dense_softmin(cost, a, b, 0.05, solver)
        res = run_sinkhorn(op, n_iters, None)
        ref = pot_sinkhorn(cost[0], eps=0.05, n_iters=n_iters)
        assert rel_err(op.plan(res.f_state, res.g_state)[0], ref["plan"]) < 1e-12


def test_auto_method_choice(gen):
    cost = random_cost(gen, 7, 9, batch=2)  # costs in [0, 2], range < 2
    a = torch.full((2, 7), 1 / 7, dtype=torch.float64)
    b = torch.full((2, 9), 1 / 9, dtype=torch.float64)
    assert isinstance(dense_softmin(cost, a, b, 0.05), DenseScalingSoftMin)
    # R/eps > 300: the stabilised domain where its native loop runs, else the log domain.
    beyond = StabilisedSoftMin if native_stabilised_available(cost) else DenseLogSoftMin
    assert isinstance(dense_softmin(cost, a, b, 1e-3), beyond)
    assert isinstance(dense_softmin(cost, a, b, 1e-3, sync_ok=False), DenseLogSoftMin)
    assert isinstance(dense_softmin(cost, a, b, 1e-3, "dense-log"), DenseLogSoftMin)
    c32 = cost.float()
    r = float(c32.amax() - c32.amin())
    limit = SCALING_MAX_RANGE[torch.float32]
    a32, b32 = a.float(), b.float()
    assert isinstance(dense_softmin(c32, a32, b32, r / limit * 1.01), DenseScalingSoftMin)
    assert isinstance(dense_softmin(c32, a32, b32, r / limit * 0.99), beyond)
    # Values not read (no host sync): the cosine bound R <= 2 decides, or the log domain.
    for eps, kind in ((2 / limit * 1.01, DenseScalingSoftMin), (2 / limit * 0.99, DenseLogSoftMin)):
        assert isinstance(dense_softmin(c32, a32, b32, eps, sync_ok=False, range_bound=2.0), kind)
    assert isinstance(dense_softmin(c32, a32, b32, 1.0, sync_ok=False), DenseLogSoftMin)


@pytest.mark.parametrize("solver", ["dense-scaling", "dense-log"])
def test_both_dense_methods_agree(gen, solver):
    cost = random_cost(gen, 33, 7, batch=3)
    a = random_weights(gen, 3, 33, zeros=2)
    b = random_weights(gen, 3, 7, zeros=1)
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    op = dense_softmin(cost, a, b, 0.05, solver)
    res = run_sinkhorn(op, 3000, 1e-13)
    for i in range(3):
        ref = pot_sinkhorn(cost[i], a[i], b[i], 0.05)
        assert rel_err(op.plan(res.f_state, res.g_state)[i], ref["plan"]) < 1e-6
        f, g = op.potentials(res.f_state, res.g_state)
        assert_close_up_to_constant(f[i], ref["f"], atol=1e-8)
        assert_close_up_to_constant(g[i], ref["g"], atol=1e-8)


def test_batched_equals_loop(gen):
    cost = random_cost(gen, 33, 129, batch=4)
    a, b = random_weights(gen, 4, 33), random_weights(gen, 4, 129)
    batched = sinkhorn(cost, a, b, n_iters=50)
    for i in range(4):
        single = sinkhorn(cost[i], a[i], b[i], n_iters=50)
        torch.testing.assert_close(batched.plan[i], single.plan, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(batched.loss[i], single.loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(batched.f[i], single.f, rtol=1e-12, atol=1e-13)


def test_one_dimensional_weights_broadcast_over_batch(gen):
    cost = random_cost(gen, 7, 9, batch=3)
    a, b = random_weights(gen, 7), random_weights(gen, 9)
    res = sinkhorn(cost, a, b, **CONVERGED)
    torch.testing.assert_close(res.plan.sum(2), (a / a.sum()).expand(3, 7), rtol=0, atol=1e-10)


def test_zero_weights_carry_no_mass_and_match_the_reduced_problem(gen):
    cost = random_cost(gen, 12, 10)
    a = random_weights(gen, 12, zeros=3)
    b = random_weights(gen, 10, zeros=2)
    cost[1:4] = float("nan")  # rows without mass may hold anything
    res = sinkhorn(cost, a, b, **CONVERGED)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.f).all()
    assert torch.isfinite(res.g).all()
    assert (res.plan[1:4] == 0).all() and (res.plan[:, 1:3] == 0).all()
    keep_a, keep_b = a > 0, b > 0
    reduced = sinkhorn(cost[keep_a][:, keep_b], a[keep_a], b[keep_b], **CONVERGED)
    torch.testing.assert_close(res.plan[keep_a][:, keep_b], reduced.plan, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(res.loss, reduced.loss, rtol=1e-10, atol=0)


def test_transposition_symmetry(gen):
    cost = random_cost(gen, 33, 7)
    a, b = random_weights(gen, 33), random_weights(gen, 7)
    res = sinkhorn(cost, a, b, **CONVERGED)
    swapped = sinkhorn(cost.T, b, a, **CONVERGED)
    torch.testing.assert_close(swapped.plan, res.plan.T, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(swapped.loss, res.loss, rtol=1e-10, atol=0)
    assert_close_up_to_constant(swapped.f, res.g, atol=1e-9)


def test_scaling_cost_and_eps_together_leaves_the_plan(gen):
    cost = random_cost(gen, 7, 33)
    res = sinkhorn(cost, eps=0.05, **CONVERGED)
    scaled = sinkhorn(3.0 * cost, eps=0.15, **CONVERGED)
    torch.testing.assert_close(scaled.plan, res.plan, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(scaled.loss, 3.0 * res.loss, rtol=1e-10, atol=0)


def test_constant_shift_of_cost_shifts_loss_and_potentials(gen):
    cost = random_cost(gen, 7, 33)
    res = sinkhorn(cost, **CONVERGED)
    shifted = sinkhorn(cost + 0.7, **CONVERGED)
    torch.testing.assert_close(shifted.plan, res.plan, rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(shifted.loss, res.loss + 0.7, rtol=1e-12, atol=1e-12)
    f_sum = (shifted.f[:, None] + shifted.g[None]) - (res.f[:, None] + res.g[None])
    torch.testing.assert_close(f_sum, torch.full_like(f_sum, 0.7), rtol=0, atol=1e-9)


def test_gradient_is_the_plan(gen):
    cost = random_cost(gen, 7, 9, batch=2).requires_grad_()
    res = sinkhorn(cost, **CONVERGED)
    upstream = torch.tensor([0.3, -2.0], dtype=torch.float64)
    (res.loss * upstream).sum().backward()
    torch.testing.assert_close(cost.grad, upstream[:, None, None] * res.plan, rtol=1e-14, atol=0)
    assert not res.plan.requires_grad and not res.f.requires_grad


def test_tolerance_stops_each_problem(gen):
    cost = random_cost(gen, 33, 33, batch=3)
    cost[0] = 1.0  # all-equal costs: converged after one iteration
    res = sinkhorn(cost, eps=0.05, n_iters=5000, tol=1e-9)
    assert res.iterations[0] == 10  # the first check
    assert (res.iterations[1:] > 10).all() and (res.iterations % 10 == 0).all()
    assert (res.marginal_error <= 1e-9).all()
    no_tol = sinkhorn(cost, eps=0.05, n_iters=37)
    assert (no_tol.iterations == 37).all()


def test_tolerance_unreached_runs_all_iterations(gen):
    cost = random_cost(gen, 33, 33)
    res = sinkhorn(cost, eps=0.01, n_iters=25, tol=1e-14)
    assert res.iterations.item() == 25


@pytest.mark.parametrize("eps", [1e-3, 3e-3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_small_eps_is_finite(gen, eps, dtype):
    """Costs spanning [0, 2] at eps = 1e-3: exp(-C/eps) underflows, the log path must not."""
    cost = torch.rand(3, 33, 129, generator=gen, dtype=torch.float64) * 2
    cost[1, :, :5] = 0.0
    cost[2] = 2.0 * (torch.arange(33)[:, None] < torch.arange(129)[None]).double()
    a = random_weights(gen, 3, 33, zeros=4)
    res = sinkhorn(cost.to(dtype), a, eps=eps, n_iters=300)
    for t in (res.plan, res.f, res.g, res.loss, res.marginal_error):
        assert torch.isfinite(t).all()
    assert (res.plan >= 0).all()
    expected = (a / a.sum(1, keepdim=True)).to(res.plan.dtype)
    torch.testing.assert_close(res.plan.sum(2), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scaling_path_at_its_range_limit(gen, dtype):
    """R/eps at the scaling limit with a spread cost and uneven weights stays finite and exact."""
    limit = SCALING_MAX_RANGE[dtype]
    cost = torch.rand(2, 129, 33, generator=gen, dtype=torch.float64) * 2
    cost[0, :64] = 0.0
    cost[0, 64:] = 2.0
    cost[0, :, 0] = 1.0
    eps = 2.0 / limit
    a = torch.rand(2, 129, generator=gen, dtype=torch.float64) ** 4 + 1e-4
    a, b = a / a.sum(1, keepdim=True), torch.full((2, 33), 1 / 33, dtype=torch.float64)
    op = dense_softmin(cost.to(dtype), a.to(dtype), b.to(dtype), eps)
    assert isinstance(op, DenseScalingSoftMin)
    res = run_sinkhorn(op, 500, None)
    plan = op.plan(res.f_state, res.g_state)
    assert torch.isfinite(plan).all()
    log_op = DenseLogSoftMin(cost.to(dtype), a.to(dtype), b.to(dtype), eps)
    log_res = run_sinkhorn(log_op, 500, None)
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    assert rel_err(plan, log_op.plan(log_res.f_state, log_res.g_state)) < tol


def test_all_equal_costs_give_the_independent_plan():
    cost = torch.full((7, 33), 0.4, dtype=torch.float64)
    res = sinkhorn(cost, eps=1e-3)
    torch.testing.assert_close(res.plan, torch.full_like(cost, 1 / (7 * 33)), rtol=1e-12, atol=0)
    torch.testing.assert_close(res.loss, torch.tensor(0.4, dtype=torch.float64))


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)]
)
def test_low_precision_costs(gen, dtype, tol):
    cost = random_cost(gen, 33, 129, batch=2)
    ref = sinkhorn(cost, n_iters=200)
    res = sinkhorn(cost.to(dtype), n_iters=200)
    assert res.plan.dtype == (torch.float32 if dtype != torch.float64 else dtype)
    # The rounding of the cost itself dominates: compare with the rounded cost in fp64.
    rounded = sinkhorn(cost.to(dtype).double(), n_iters=200)
    assert rel_err(res.plan, rounded.plan) < 1e-4
    assert rel_err(res.loss, ref.loss) < tol


def test_unbatched_shapes(gen):
    cost = random_cost(gen, 7, 9)
    res = sinkhorn(cost)
    assert res.plan.shape == (7, 9) and res.f.shape == (7,) and res.g.shape == (9,)
    assert res.loss.shape == () and res.iterations.shape == () and res.marginal_error.shape == ()
    np.testing.assert_allclose(res.loss.item(), (res.plan * cost).sum().item(), rtol=1e-12)
