"""The stabilised scaling primitive: POT's float64 iterate, the log-domain primitive, the native
loop against its PyTorch-op version, and every option the loop and the backward use.

Tolerances, per dtype (relative to the largest entry of the reference):

* float64: the same iterations as the log domain up to round-off; the absorbed kernel's entries
  are exact to a few ulp, so plans agree to ~1e-12 after 200 iterations (PLAN_TOL 1e-9 leaves
  room for the error growth of a sum over 300 terms at eps = 1e-3, where a potential's ulp is
  magnified by 1/eps in the plan).
* float32: a potential of size ~1 carries ~6e-8 absolute error, which the plan magnifies by
  1/eps (exp((f + g - C)/eps)); the float32 log domain has the same error. So float32 is held
  to 2x the float32 log domain's own error against float64 POT (the yardstick rule of the test
  suite) plus f32_floor(eps): 4 half-ulps of a cost range of 2 seen through 1/eps, the error
  of one rounding of each of f, g, C in the plan's exponent, which no float32 solver avoids
  (at eps = 1e-3 both solvers' errors are ~5e-5-1e-4, at the same level as that floor).
"""


from __future__ import annotations

import pytest
import torch
from reference import masked_weights, pot_sinkhorn, random_tokens, rel_err

import optical_ops.softmin_stabilised as softmin_stabilised
from optical_ops import cost_matrix
from optical_ops.kernels.cpu_stabilised import native_stabilised_available, stabilised_iterate
from optical_ops.sinkhorn_loop import entropic_value, run_sinkhorn
from optical_ops.softmin_dense import DenseLogSoftMin, damping, sanitised_cost_range
from optical_ops.softmin_stabilised import StabilisedSoftMin, stabilised_softmin


def f32_floor(eps: float) -> float:
    return 4 * 2.0**-24 * 2.0 / eps


EPS = [1.0, 0.1, 0.01, 1e-3]
DTYPES = [torch.float64, torch.float32]
SIZES = [(1, 7), (7, 33), (33, 1), (129, 300)]
PLAN_TOL = {torch.float64: 1e-9}
LOSS_TOL = {torch.float64: 1e-11}
NATIVE = pytest.mark.skipif(not native_stabilised_available(torch.ones(1)),
                            reason="native CPU loop not built")


def log_softmin(cost, a, b, eps, tau=None):
    return DenseLogSoftMin(sanitised_cost_range(cost, a, b)[0], a, b, eps, damping(eps, tau))


def torch_ops(op: StabilisedSoftMin) -> StabilisedSoftMin:
    """The primitive with its PyTorch-op iterations instead of the native loop."""
    op.iterate = op._torch_iterate
    op.solve = lambda *args: None  # run_sinkhorn's own tol loop
    return op


def solve(op, n_iters, tol=None):
    res = run_sinkhorn(op, n_iters, tol)
    f, g = op.potentials(res.f_state, res.g_state)
    return dict(plan=op.plan(res.f_state, res.g_state), f=f, g=g,
                loss=op.loss(res.f_state, res.g_state), iterations=res.iterations,
                states=(res.f_state, res.g_state), converged=res.converged)


def cosine_cost(gen, batch, n, m, d=16):
    return cost_matrix(random_tokens(gen, batch, n, d), random_tokens(gen, batch, m, d))


def uniform(batch, n, dtype=torch.float64):
    return torch.full((batch, n), 1.0 / n, dtype=dtype)


@pytest.mark.parametrize("n,m", SIZES)
@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("offset", [0.0, 1e5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_iterations_match_pot(gen, n, m, eps, offset, dtype):
    """Uniform weights, 200 iterations from f = 0: POT's exact float64 iterate.

    With the offset, POT runs on the cost minus the offset (exact in float64: both are within
    a factor 2), the same problem without POT's own cancellation in -C/eps (1e8 at eps = 1e-3);
    its loss plus offset * sum(P) is the reference loss."""
    cost = (cosine_cost(gen, 1, n, m) + offset).to(dtype)  # range ~2, rounded in the dtype
    a, b = uniform(1, n, dtype), uniform(1, m, dtype)
    ref = pot_sinkhorn(cost[0].double() - offset, eps=eps, n_iters=200)
    ref_loss = ref["loss"] + offset * ref["plan"].sum()
    if dtype == torch.float32:  # the float32 log domain on the cost without the offset
        log32 = solve(log_softmin(cost - offset, a, b, eps), 200)
        yard_plan = rel_err(log32["plan"][0], ref["plan"])
        yard_loss = abs(log32["loss"].item() - ref["loss"]) / abs(ref["loss"])
    for op in (stabilised_softmin(cost, a, b, eps),
               torch_ops(stabilised_softmin(cost, a, b, eps))):
        out = solve(op, 200)
        plan_err = rel_err(out["plan"][0], ref["plan"])
        loss_err = abs(out["loss"].item() - ref_loss) / abs(ref_loss)
        if dtype == torch.float64:
            assert plan_err <= PLAN_TOL[dtype], plan_err
            assert loss_err <= LOSS_TOL[dtype], loss_err
        else:
            assert plan_err <= 2 * yard_plan + f32_floor(eps), (plan_err, yard_plan)
            assert loss_err <= 2 * yard_loss + f32_floor(eps), (loss_err, yard_loss)


@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_weighted_nan_padding_match_log_domain(gen, eps, dtype):
    """Ragged masks, random weights, NaN and inf at massless entries: the float64 log domain's
    plan, loss and potentials (massless ones included), and nothing non-finite."""
    batch, n, m = 5, 33, 29
    cost = cosine_cost(gen, batch, n, m)
    a = masked_weights(gen, batch, n, [33, 1, 7, 20, 32])
    b = masked_weights(gen, batch, m, [29, 5, 1, 28, 13])
    a[2, 3] = 0.0  # a hole inside the sequence
    a = a / a.sum(1, keepdim=True)
    dirty = cost.clone()
    dirty[a == 0] = float("nan")
    dirty[:, :, 4][b[:, 4] == 0] = float("inf")
    ref = solve(log_softmin(cost, a, b, eps), 150)
    op = stabilised_softmin(dirty.to(dtype), a.to(dtype), b.to(dtype), eps)
    for out in (solve(op, 150), solve(torch_ops(stabilised_softmin(
            dirty.to(dtype), a.to(dtype), b.to(dtype), eps)), 150)):
        for key in ("plan", "f", "g", "loss"):
            assert torch.isfinite(out[key]).all(), key
        tol = 1e-9 if dtype == torch.float64 else f32_floor(eps)
        assert rel_err(out["plan"], ref["plan"]) <= tol
        assert rel_err(out["loss"], ref["loss"]) <= tol
        # Potentials, massless entries included: a few ulps of their size (float32's error
        # is one rounding per half-iteration, not magnified by 1/eps as the plan's is).
        for key in ("f", "g"):
            size = 1.0 + ref[key].abs().max().item()
            atol = (1e-12 if dtype == torch.float64 else 2e-6) * size
            assert (out[key].double() - ref[key]).abs().max() <= atol, key
        assert (out["plan"][a.to(dtype) == 0] == 0).all()
        assert (out["plan"].transpose(1, 2)[b.to(dtype) == 0] == 0).all()


@pytest.mark.parametrize("eps", [0.1, 1e-3])
def test_tol_stops_like_the_log_domain(gen, eps):
    """Early stopping through run_sinkhorn (the native loop checks the error itself, the
    PyTorch-op one is driven block by block): same iteration counts, convergence flags and
    states as the log domain, finished problems keeping their state."""
    batch, n, m = 4, 20, 30
    cost = cosine_cost(gen, batch, n, m)
    cost[1] *= 0.05  # an easy problem that stops first
    a = masked_weights(gen, batch, n, [20, 11, 3, 19])
    b = masked_weights(gen, batch, m, [30, 25, 30, 2])
    ref = solve(log_softmin(cost, a, b, eps), 2000, tol=1e-8)
    for op in (stabilised_softmin(cost, a, b, eps),
               torch_ops(stabilised_softmin(cost, a, b, eps))):
        out = solve(op, 2000, tol=1e-8)
        assert torch.equal(out["iterations"], ref["iterations"])
        assert torch.equal(out["converged"], ref["converged"])
        assert len(set(ref["iterations"].tolist())) > 1  # the problems did stop apart
        assert rel_err(out["plan"], ref["plan"]) <= 1e-9
        assert rel_err(out["f"], ref["f"]) <= 1e-9


@NATIVE
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", [1, 2])
def test_native_tol_loop_equals_run_sinkhorn_blocks(gen, dtype, norm):
    """The native loop's own checks (``solve``) against run_sinkhorn's block loop over the
    PyTorch-op iterations: a last block shorter than CHECK_EVERY, problems that run out of
    iterations unconverged, both norms."""
    batch, n, m, eps = 6, 24, 17, 0.01
    cost = cosine_cost(gen, batch, n, m).to(dtype)
    cost[0] *= 0.02  # converges at once
    a = masked_weights(gen, batch, n, [24, 5, 24, 13, 1, 20]).to(dtype)
    b = masked_weights(gen, batch, m, [17, 17, 3, 9, 17, 1]).to(dtype)
    ref = run_sinkhorn(torch_ops(stabilised_softmin(cost, a, b, eps)), 57, 1e-4, norm=norm)
    out = run_sinkhorn(stabilised_softmin(cost, a, b, eps), 57, 1e-4, norm=norm)
    assert torch.equal(out.iterations, ref.iterations)
    assert torch.equal(out.converged, ref.converged)
    assert out.converged.any() and not out.converged.all()
    assert (out.iterations == 57).any() and (out.iterations < 57).any()
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.f_state, ref.f_state, rtol=0, atol=tol)
    torch.testing.assert_close(out.g_state, ref.g_state, rtol=0, atol=tol)


@pytest.mark.parametrize("tau", [0.05, 1.0])
@pytest.mark.parametrize("eps", [0.1, 0.01, 1e-3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_unbalanced_matches_log_domain(gen, tau, eps, dtype):
    batch, n, m = 3, 17, 12
    cost = cosine_cost(gen, batch, n, m)
    a = masked_weights(gen, batch, n, [17, 9, 2])
    b = masked_weights(gen, batch, m, [12, 12, 5])
    ref = solve(log_softmin(cost, a, b, eps, tau), 300)
    for op in (stabilised_softmin(cost.to(dtype), a.to(dtype), b.to(dtype), eps, tau),
               torch_ops(stabilised_softmin(cost.to(dtype), a.to(dtype), b.to(dtype), eps, tau))):
        out = solve(op, 300)
        tol = 1e-9 if dtype == torch.float64 else f32_floor(eps)
        assert rel_err(out["plan"], ref["plan"]) <= tol
        assert rel_err(out["loss"], ref["loss"]) <= tol
        assert out["plan"].sum() < batch  # mass is destroyed


def test_unbalanced_far_from_normalised_runs_in_log_domain(gen):
    """Potentials much larger than tau (a cost offset of 10 with tau = 0.1) would need kernel
    entries beyond the float32 ceiling: those problems switch to the log domain, same result."""
    batch, n, m, eps, tau = 2, 9, 11, 0.01, 0.1
    cost = cosine_cost(gen, batch, n, m) + 10.0
    a, b = uniform(batch, n), uniform(batch, m)
    ref = solve(log_softmin(cost, a, b, eps, tau), 100)
    for native in (True, False):
        op = stabilised_softmin(cost.float(), a.float(), b.float(), eps, tau)
        if not native:
            torch_ops(op)
        out = solve(op, 100)
        assert rel_err(out["plan"], ref["plan"]) <= 1e-4
        assert op.log_updates >= 100  # the iterations ran in the log domain


@pytest.mark.parametrize("eps", [0.1, 1e-3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_entropic_value_and_plan_products(gen, eps, dtype):
    """What debias (entropic_value) and the backward (plan_products) read from the states."""
    batch, n, m, d = 3, 13, 21, 10
    cost = cosine_cost(gen, batch, n, m).to(dtype)
    a = masked_weights(gen, batch, n, [13, 4, 10]).to(dtype)
    b = masked_weights(gen, batch, m, [21, 21, 7]).to(dtype)
    x = random_tokens(gen, batch, n, d, dtype=dtype)
    y = random_tokens(gen, batch, m, d, dtype=dtype)
    xs, ys = torch.rand(batch, n, dtype=dtype) + 0.5, torch.rand(batch, m, dtype=dtype) + 0.5
    ref_op = log_softmin(cost.double(), a.double(), b.double(), eps)
    ref = run_sinkhorn(ref_op, 100, None)
    op = stabilised_softmin(cost, a, b, eps)
    res = run_sinkhorn(op, 100, None)
    tol = 1e-9 if dtype == torch.float64 else 4 * f32_floor(eps)
    value = entropic_value(op, res.f_state, res.g_state, eps)
    ref_value = entropic_value(ref_op, ref.f_state, ref.g_state, eps)
    assert rel_err(value, ref_value) <= tol
    products = op.plan_products(res.f_state, res.g_state, x, y, xs, ys)
    ref_products = ref_op.plan_products(ref.f_state, ref.g_state, x.double(), y.double(),
                                        xs.double(), ys.double())
    for got, want in zip(products, ref_products):
        assert rel_err(got, want) <= tol
    rows, _ = op.marginals(res.f_state, res.g_state)
    torch.testing.assert_close(rows.double(), a.double(), rtol=0, atol=tol)


def test_loss_is_shift_equivariant(gen):
    """Adding a constant to C shifts the balanced loss by it and leaves the plan unchanged."""
    cost = cosine_cost(gen, 2, 8, 9)
    a, b = uniform(2, 8), uniform(2, 9)
    base = solve(stabilised_softmin(cost, a, b, 0.01), 100)
    shifted = solve(stabilised_softmin(cost + 3.5, a, b, 0.01), 100)
    assert rel_err(shifted["plan"], base["plan"]) <= 1e-12
    torch.testing.assert_close(shifted["loss"], base["loss"] + 3.5, rtol=1e-13, atol=0)
    torch.testing.assert_close(shifted["g"], base["g"] + 3.5, rtol=1e-12, atol=1e-12)
    op = stabilised_softmin(cost + 3.5, a, b, 0.01)
    f, g = op.states(shifted["f"], shifted["g"])  # the inverse of potentials (warm starts)
    torch.testing.assert_close(op.potentials(f, g), (shifted["f"], shifted["g"]), rtol=0, atol=0)
    torch.testing.assert_close(g, shifted["states"][1], rtol=0, atol=1e-15)


@NATIVE
# (128, 32, 32): 40 iterations are enough work (B n m iters >= 2^22) for two threads, each
# copying its problems' blocks with mass.
@pytest.mark.parametrize("batch,n,m", [(1, 1, 1), (1, 7, 300), (3, 129, 33), (9, 33, 7),
                                       (32, 32, 32), (128, 32, 32)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [1.0, 0.01, 1e-3])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_loop_equals_torch_ops(gen, batch, n, m, dtype, eps, threads):
    """Same absorptions and fallbacks, same potentials; across two calls (the cached kernel),
    from a state the cache does not hold, and with zero weights."""
    cost = cosine_cost(gen, batch, n, m)
    a = masked_weights(gen, batch, n, torch.randint(1, n + 1, (batch,), generator=gen))
    b = masked_weights(gen, batch, m, torch.randint(1, m + 1, (batch,), generator=gen))
    cost, a, b = cost.to(dtype), a.to(dtype), b.to(dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native, ops = stabilised_softmin(cost, a, b, eps), torch_ops(stabilised_softmin(
            cost, a, b, eps))
        f0 = native.initial_f_state()
        f_n, g_n = native.iterate(f0, 13)
        f_t, g_t = ops.iterate(f0, 13)
        f_n2, g_n2 = native.iterate(f_n, 40)  # continues on the cached kernel
        f_t2, g_t2 = ops.iterate(f_t, 40)
        jump = f_n + 0.3  # far from the cached absorption point at small eps
        f_n3, g_n3 = native.iterate(jump, 5)
        f_t3, g_t3 = ops.iterate(jump, 5)
    finally:
        torch.set_num_threads(previous)
    # Potentials differ by round-off (the sums are added in another order), magnified by the
    # later iterations; compared in units of eps as the plan sees them.
    tol = 1e-9 if dtype == torch.float64 else 2e-4
    for got, want in ((f_n, f_t), (g_n, g_t), (f_n2, f_t2), (g_n2, g_t2), (f_n3, f_t3),
                      (g_n3, g_t3)):
        assert torch.isfinite(got).all()
        assert ((got - want).abs() / eps).max() <= tol * max(1.0, 1e-2 / eps)


@NATIVE
def test_native_rejects_mismatched_buffers():
    c = torch.rand(2, 3, 4)
    k = c.new_empty((2, *c.shape))
    a, b = torch.full((2, 3), 1 / 3), torch.full((2, 4), 0.25)
    valid = torch.zeros(2, dtype=torch.int32)
    args = (a.clone(), k, a.clone(), b.clone(), valid, 3, 0.1, 1.0, 20.0, 30.0, -87.0, 50.0)
    with pytest.raises(ValueError, match=r"b must be torch.float32 of shape \(2, 4\)"):
        stabilised_iterate(c, a, b[:, :3], *args)
    with pytest.raises(ValueError, match=r"cost must be contiguous"):
        stabilised_iterate(c.transpose(1, 2).contiguous().transpose(1, 2), a, b, *args)
    with pytest.raises(ValueError, match=r"valid must be contiguous torch.int32"):
        stabilised_iterate(c, a, b, a.clone(), k, a.clone(), b.clone(), valid.long(), 3, 0.1,
                           1.0, 20.0, 30.0, -87.0, 50.0)


@NATIVE
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps", [0.1, 0.01, 1e-3])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_loss_equals_the_plan_as_torch_ops(gen, dtype, eps, threads, monkeypatch):
    """The loss's native pass against the plan formed as PyTorch ops: zero weights, a forbidden
    pair (+inf cost) and a batch large enough for two threads."""
    batch, n, m = 24, 33, 40
    cost = cosine_cost(gen, batch, n, m)
    cost[3, 2, 5] = torch.inf
    a = masked_weights(gen, batch, n, torch.randint(1, n + 1, (batch,), generator=gen), holes=2)
    b = masked_weights(gen, batch, m, torch.randint(1, m + 1, (batch,), generator=gen), holes=2)
    a[3, 2], b[3, 5] = 0.5, 0.5  # the forbidden pair has mass on both sides
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    cost, a, b = cost.to(dtype), a.to(dtype), b.to(dtype)
    op = stabilised_softmin(cost, a, b, eps)
    res = run_sinkhorn(op, 30, None)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native = op.loss(res.f_state, res.g_state)
    finally:
        torch.set_num_threads(previous)
    monkeypatch.setattr(softmin_stabilised, "native_stabilised_available", lambda cost: False)
    reference = op.loss(res.f_state, res.g_state)
    assert torch.isfinite(native).all()
    # The exponents (C_ij / eps ~ 1 / eps: ~100 u of error each at eps = 0.01) are rounded in
    # the dtype, in another order (C_ij * (-1/eps) and a sum of three terms on both sides).
    tol = (1e-12 if dtype == torch.float64 else 4e-6) * max(1.0, 0.01 / eps)
    torch.testing.assert_close(native, reference, rtol=tol, atol=0)


@NATIVE
def test_a_nan_potential_gives_a_nan_loss_on_both_paths(gen, monkeypatch):
    """Nothing silently wrong: a NaN potential at a row with mass makes that problem's loss
    NaN (natively and as PyTorch ops); the other problems are untouched."""
    cost = cosine_cost(gen, 3, 5, 6).float()
    op = stabilised_softmin(cost, uniform(3, 5, torch.float32), uniform(3, 6, torch.float32),
                            0.05)
    res = run_sinkhorn(op, 20, None)
    f = res.f_state.clone()
    f[1, 2] = torch.nan
    native = op.loss(f, res.g_state)
    monkeypatch.setattr(softmin_stabilised, "native_stabilised_available", lambda cost: False)
    for loss in (native, op.loss(f, res.g_state)):
        assert loss[1].isnan() and loss[[0, 2]].isfinite().all()
