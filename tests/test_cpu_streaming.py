"""The native streaming soft-min (fused sweep, vectorised exp) equals the PyTorch-op path."""

from __future__ import annotations

import math

import pytest
import torch
from reference import random_weights

from optical_ops.costs import factorise
from optical_ops.kernels.cpu_streaming import (
    FUSED_TILE,
    fused_softmin,
    native_streaming_available,
    strip_plan,
    strip_softmin,
)
from optical_ops.softmin_streaming import StreamingSoftMin, _NativeSide

pytestmark = pytest.mark.skipif(
    not native_streaming_available(torch.ones(1)), reason="native streaming passes not built"
)


def problem(gen, batch, n, m, d, dtype, zeros=(0, 0), cost="cosine"):
    x = torch.randn(batch, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(batch, m, d, generator=gen, dtype=torch.float64)
    a = random_weights(gen, batch, n, zeros=zeros[0])
    b = random_weights(gen, batch, m, zeros=zeros[1])
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return factorise(x.to(dtype), y.to(dtype), cost), a.to(dtype), b.to(dtype)


def both_paths(fc, a, b, eps, n_iters, chunk_bytes=None, tau=None, threads=2):
    """(native, PyTorch ops): [f, g, loss, P 1, P^T 1, P y', P^T x']."""
    damping = 1.0 if tau is None else tau / (tau + eps)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for native in (True, False):
            op = StreamingSoftMin(fc, a, b, eps, damping, chunk_bytes=chunk_bytes)
            assert op.native
            op.native = native
            f, g = op.iterate(op.initial_f_state(), n_iters)
            products = op.plan_products(f, g, fc.x, fc.y, fc.row_scale, fc.col_scale)
            results.append([f, g, op.loss(f, g), *op.marginals(f, g), *products[:2]])
    finally:
        torch.set_num_threads(previous)
    return results


def assert_paths_agree(native, torch_ops, rtol):
    names = ["f", "g", "loss", "P 1", "P^T 1", "P y'", "P^T x'"]
    for name, ours, ref in zip(names, native, torch_ops):
        # Potentials are in cost units (C ~ 1): their error is relative to max(|f|, 1).
        scale = ref.abs().max().clamp_min(1.0 if name in "fg" else 1e-30)
        err = ((ours - ref).abs().max() / scale).item()
        assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol:.0e}"
        assert torch.isfinite(ours).all(), name


# Shapes: a single token, rows/columns that are not multiples of the strip (R) or the column
# tile (W = 512: m = 1100 has a partial third tile), batches; chunk_bytes small enough to give
# many strips of one or a few rows.
@pytest.mark.parametrize("batch,n,m,d", [(1, 1, 7, 5), (1, 7, 1, 16), (3, 33, 129, 100),
                                         (2, 300, 257, 384), (1, 129, 1100, 64)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eps", [0.05, 1e-3])
@pytest.mark.parametrize("chunk_bytes", [None, 4096])
def test_native_equals_torch_ops(gen, batch, n, m, d, dtype, eps, chunk_bytes):
    fc, a, b = problem(gen, batch, n, m, d, dtype, zeros=(min(2, n - 1), min(1, m - 1)))
    native, torch_ops = both_paths(fc, a, b, eps, 7, chunk_bytes)
    # Exponents are ~1/eps in size, so their rounding error grows like 1/eps.
    assert_paths_agree(native, torch_ops, (1e-14 if dtype == torch.float64 else 4e-7) / eps)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_and_single_thread_agree(gen, threads):
    fc, a, b = problem(gen, 2, 300, 700, 64, torch.float64, zeros=(3, 2))
    native, torch_ops = both_paths(fc, a, b, 0.02, 5, threads=threads)
    assert_paths_agree(native, torch_ops, 1e-12)


def test_zero_weight_strips_leave_the_column_state_exact(gen):
    """Whole strips of zero-weight rows (all -inf row terms) come first in the column fold."""
    fc, a, b = problem(gen, 1, 96, 40, 16, torch.float64)
    a[:, :64] = 0.0
    a = a / a.sum(1, keepdim=True)
    native, torch_ops = both_paths(fc, a, b, 1e-3, 6, chunk_bytes=8 * 40 * 8)
    assert_paths_agree(native, torch_ops, 1e-11)


@pytest.mark.parametrize("native", [True, False])
def test_one_sided_plan_products(gen, native):
    """x or y None: that product is skipped and the other is the two-sided one, bit for bit."""
    fc, a, b = problem(gen, 2, 40, 70, 24, torch.float64, zeros=(3, 2))
    op = StreamingSoftMin(fc, a, b, 0.05, chunk_bytes=4096)
    op.native = native
    f, g = op.iterate(op.initial_f_state(), 5)
    scales = fc.row_scale, fc.col_scale
    p_y, p_x, rows, cols = op.plan_products(f, g, fc.x, fc.y, *scales)
    only_y = op.plan_products(f, g, None, fc.y, *scales)
    only_x = op.plan_products(f, g, fc.x, None, *scales)
    assert only_y[1] is None and only_x[0] is None
    assert torch.equal(only_y[0], p_y) and torch.equal(only_x[1], p_x)
    for products in (only_y, only_x):
        assert torch.equal(products[2], rows) and torch.equal(products[3], cols)


@pytest.mark.parametrize("need_x,need_y,damping", [(True, True, 1.0), (True, False, 1.0),
                                                    (False, True, 0.9), (False, False, 1.0)])
def test_last_sweep_forms_the_plan_sums_and_products(gen, monkeypatch, need_x, need_y, damping):
    """Prepared for a final state, the last row update forms the plan's sums, and P y', P^T x'
    for the sides asked for, on its own products: no pass of their own, and the same numbers
    bit for bit as a pass at that state (a second backward too); a state that is not the last
    sweep's (another tensor, or one written since) gets its own pass. 7-row strips: the last
    of the 300 rows is a partial one."""
    fc, a, b = problem(gen, 2, 300, 700, 64, torch.float64, zeros=(3, 2))
    op = StreamingSoftMin(fc, a, b, 0.05, damping, chunk_bytes=7 * 2 * 2 * 512 * 8)
    op.prepare_final(need_x, need_y)
    f, g = op.iterate(op.initial_f_state(), 5)
    passes, plan = [], _NativeSide.plan
    monkeypatch.setattr(_NativeSide, "plan",
                        lambda side, *args, **kw: passes.append(1) or plan(side, *args, **kw))
    weights = torch.tensor([1.0, -0.5], dtype=torch.float64)
    grads = need_x or need_y  # the backward asks for none otherwise

    def results(f, g, need=(need_x, need_y)):
        return [op.loss(f, g), *op.marginals(f, g),
                *(op.input_grads(f, g, fc, weights, *need) if grads else ())]

    kept, again = results(f, g), results(f, g)
    assert not passes
    fresh = results(f.clone(), g.clone(), need=(True, True))
    assert len(passes) == 2 + grads
    fresh[3:] = [t if need else None for t, need in zip(fresh[3:], (need_x, need_y))]
    assert [t is None for t in kept] == [False] * 3 + [not need_x, not need_y] * grads
    for ours, ref, second in zip(kept, fresh, again):
        assert ours is None or (torch.equal(ours, ref) and torch.equal(ours, second))
    f.mul_(1.0)
    op.loss(f, g)
    assert len(passes) == 3 + grads


def test_without_a_final_state_the_last_sweep_forms_no_plan(gen, monkeypatch):
    """Not prepared (a ``tol`` block, an eps-scaling stage): the last row update is a plain
    one, and the loss forms the plan in a pass of its own."""
    fc, a, b = problem(gen, 1, 40, 30, 8, torch.float64)
    op = StreamingSoftMin(fc, a, b, 0.05)
    passes, plan = [], _NativeSide.plan
    monkeypatch.setattr(_NativeSide, "plan",
                        lambda side, *args, **kw: passes.append(1) or plan(side, *args, **kw))
    f, g = op.iterate(op.initial_f_state(), 3)
    assert not passes
    op.loss(f, g)
    assert len(passes) == 1


def test_unbalanced_damping_and_sqeuclidean(gen):
    fc, a, b = problem(gen, 2, 50, 70, 8, torch.float64, cost="sqeuclidean")
    native, torch_ops = both_paths(fc, a, b, 0.5, 9, tau=1.0)
    assert_paths_agree(native, torch_ops, 1e-12)


def test_strip_softmin_matches_logsumexp_over_the_exp_range(gen):
    """Row LSE over entries spanning the whole exp range (and -inf), in float64 and float32."""
    for dtype, ulps in ((torch.float64, 4), (torch.float32, 4)):
        m = 1500
        z = torch.empty(1, 3, 2, 512, dtype=torch.float64)
        z.uniform_(-120.0, 60.0, generator=gen)
        hc = torch.rand(1, m, generator=gen, dtype=torch.float64) * 10
        hc[0, ::7] = -math.inf
        zz, hh = z.to(dtype), hc.to(dtype)
        offset = torch.zeros(1, 2, dtype=dtype)
        f = torch.empty(1, 2, dtype=dtype)
        strip_softmin(zz, m, hh, offset, offset, f, 0, 1.0, 1.0, None)
        full = zz.permute(0, 2, 1, 3).reshape(1, 2, -1)[:, :, :m].double() + hh.double()
        expected = -torch.logsumexp(full, dim=2)
        tol = ulps * torch.finfo(dtype).eps * expected.abs().max()
        assert (f.double() - expected).abs().max() <= tol


def test_strip_plan_sums(gen):
    batch, tiles, rows, width, m, n = 2, 2, 3, 8, 13, 5
    z = torch.randn(batch, tiles, rows, width, generator=gen, dtype=torch.float64)
    hr = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    hc = torch.randn(batch, m, generator=gen, dtype=torch.float64)
    hc[:, 4] = -math.inf
    dense_z = z.permute(0, 2, 1, 3).reshape(batch, rows, -1)[:, :, :m].clone()
    plan = (dense_z + hr[:, 1:4, None] + hc[:, None, :]).exp()
    rowsum, pz = torch.zeros(batch, n, dtype=z.dtype), torch.zeros(batch, n, dtype=z.dtype)
    colsum = torch.zeros(batch, tiles * width, dtype=torch.float64)
    strip_plan(z, m, hr, hc, rowsum, colsum, pz, 1)
    written = z.permute(0, 2, 1, 3).reshape(batch, rows, -1)[:, :, :m]
    torch.testing.assert_close(written, plan, rtol=1e-14, atol=0)
    assert torch.equal(written[:, :, 4], torch.zeros_like(written[:, :, 4]))
    torch.testing.assert_close(rowsum[:, 1:4], plan.sum(2), rtol=1e-14, atol=0)
    torch.testing.assert_close(pz[:, 1:4], (plan * dense_z).sum(2), rtol=1e-13, atol=1e-300)
    torch.testing.assert_close(colsum[:, :m], plan.sum(1), rtol=1e-14, atol=0)
    assert rowsum[:, [0, 4]].eq(0).all() and colsum[:, m:].eq(0).all()


def test_strip_buffers_are_checked():
    z = torch.zeros(1, 1, 2, 4)
    vec = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="contiguous CPU tensor of z's dtype"):
        strip_softmin(z, 4, torch.zeros(1, 4, dtype=torch.float64), vec, vec, vec, 0, 1.0, 1.0,
                      None)
    with pytest.raises(ValueError, match="contiguous CPU tensor of float64"):
        strip_softmin(z, 4, torch.zeros(1, 4), vec, vec, vec, 0, 1.0, 1.0,
                      (torch.zeros(1, 4), torch.zeros(1, 4)))
    with pytest.raises(ValueError, match="column state must be of shape"):
        strip_softmin(z, 4, torch.zeros(1, 4), vec, vec, vec, 0, 1.0, 1.0,
                      (torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="inconsistent strip shape"):
        strip_softmin(z, 5, torch.zeros(1, 5), vec, vec, vec, 0, 1.0, 1.0, None)


# The fused float32 sweep (x86-64-v4 machines): the same f and column state as the strip
# path's fold, or a report that a sum left its range.
fused_only = pytest.mark.skipif(FUSED_TILE is None, reason="no fused sweep on this machine")


def fused_and_strip_sweeps(op, g, strip_rows):
    """(fused, strip): (ok, f, column LSE (B, m) in float64) of the rows side at g; for the
    strip path ok is None."""
    side, hc = op._side("rows"), op._col_terms(g)
    log_a, offset = op.log_a.contiguous(), op.fc.row_offset.contiguous()
    batch, packed = offset.shape[0], side.fused_pack()
    width = packed.shape[1] * FUSED_TILE[1]
    f, state = torch.empty_like(offset), (torch.empty(batch, width),
                                          torch.empty(batch, width, dtype=torch.float64))
    ok = fused_softmin(side.lhs[:, 0], packed, side.m, hc, log_a, offset, f, op.eps,
                       op.damping, state, strip_rows)
    side.stop_fusing()
    f_ref, state_ref = side.softmin(hc, log_a, offset, op.eps, op.damping, fold=True)

    def lse(state):
        return state[1][:, :side.m].log() + state[0][:, :side.m].double()

    return (ok, f, lse(state)), (None, f_ref, lse(state_ref))


@fused_only
@pytest.mark.parametrize("batch,n,m,d", [(1, 1, 7, 5), (3, 33, 129, 100), (2, 300, 257, 384),
                                         (1, 129, 1100, 64), (2, 50, 64, 16)])
@pytest.mark.parametrize("strip_rows", [6, 12, 96])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_sweep_equals_the_strip_sweep(gen, batch, n, m, d, strip_rows, threads):
    """Zero weights on both sides, damping, rows and columns that are or are not multiples of
    the tile (6 x 32) or the strip, one strip or many per thread, a thread's part spanning
    problems."""
    fc, a, b = problem(gen, batch, n, m, d, torch.float32, zeros=(min(2, n - 1), min(1, m - 1)))
    op = StreamingSoftMin(fc, a, b, 0.05, damping=0.8)
    g = op._native_cols(op.initial_f_state())
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (ok, f, lse), (_, f_ref, lse_ref) = fused_and_strip_sweeps(op, g, strip_rows)
    finally:
        torch.set_num_threads(previous)
    assert ok
    assert (f - f_ref).abs().max() <= 1e-6 * f_ref.abs().max().clamp_min(1.0)
    assert (lse - lse_ref).abs().max() <= 1e-6 * lse_ref.abs().max()


def small_sweep(rows, columns, hc, a=None):
    """The fused sweep on one problem with lhs = ``rows`` (n x d) and y' = ``columns`` (m x d),
    so Z = rows columns^T. Returns (ok, f, column LSE, the strip path's f, its column LSE)."""
    lhs, y = torch.tensor([rows]), torch.tensor([columns])
    (_, n, d), m = lhs.shape, y.shape[1]
    packed = torch.zeros(1, 1, d, FUSED_TILE[1])
    packed[0, 0, :, :m] = y[0].T
    hc = torch.tensor([hc])
    log_a = torch.full((1, n), -math.log(n)) if a is None else torch.tensor([a]).log()
    offset, f = torch.zeros(1, n), torch.empty(1, n)
    state = torch.empty(1, FUSED_TILE[1]), torch.empty(1, FUSED_TILE[1], dtype=torch.float64)
    ok = fused_softmin(lhs, packed, m, hc, log_a, offset, f, 1.0, 1.0, state, FUSED_TILE[0])
    z = (lhs @ y.transpose(1, 2)).unsqueeze(1).contiguous()
    f_ref = torch.empty(1, n)
    state_ref = torch.full((1, m), -math.inf), torch.zeros(1, m, dtype=torch.float64)
    strip_softmin(z, m, hc, log_a, offset, f_ref, 0, 1.0, 1.0, state_ref)
    return (ok, f, state[1][0, :m].log() + state[0][0, :m], f_ref,
            state_ref[1][0].log() + state_ref[0][0])


@fused_only
def test_fused_sweep_reports_sums_out_of_its_range():
    """One exp per entry covers a row only where its largest term is within the exp floor of
    the row's largest Z and the largest weight (a column likewise): else the kernel says so,
    where going on would be off by 20 (the floor, e^-80, standing in for e^-100)."""
    in_range = small_sweep([[1.0]] * 6, [[0.0], [-30.0]], [0.0, 0.0])
    assert in_range[0]
    torch.testing.assert_close(in_range[1], in_range[3])
    torch.testing.assert_close(in_range[2].float(), in_range[4].float())
    # Row A (weight 0, so no column needs it): its largest Z (100, at column 0) has weight
    # e^-200; its term at column 1 is e^-100 of that. Row C covers both columns.
    row = small_sweep([[1.0, 0.0], [0.0, 1.0]], [[100.0, 0.0], [0.0, 0.0]], [-200.0, 0.0],
                      a=[0.0, 1.0])
    assert not row[0] and abs(row[3][0, 0].item()) < 1e-4
    # Column 1's terms are all e^-100 of their rows' largest; every row is in range.
    column = small_sweep([[1.0]] * 6, [[0.0], [-100.0]], [0.0, 0.0])
    assert not column[0] and (column[4][1] - (-100.0)).abs() < 1e-4


@fused_only
@pytest.mark.parametrize("eps,expected", [(0.05, [True] * 6), (1e-3, [False])])
def test_the_solver_keeps_the_fused_sweep_while_in_range(gen, monkeypatch, eps, expected):
    """Each sweep of a float32 solve is fused; once one falls out of range, the strip path
    redoes it and runs the rest of the solve. Either way the results are the PyTorch path's."""
    import optical_ops.softmin_streaming as streaming

    calls = []
    monkeypatch.setattr(streaming, "fused_softmin",
                        lambda *args: calls.append(fused_softmin(*args)) or calls[-1])
    fc, a, b = problem(gen, 2, 100, 90, 32, torch.float32, zeros=(2, 1))
    native, torch_ops = both_paths(fc, a, b, eps, 7)
    assert calls == expected
    assert_paths_agree(native, torch_ops, 4e-7 / eps)


@fused_only
def test_fused_buffers_are_checked():
    lhs, packed = torch.zeros(1, 6, 2), torch.zeros(1, 1, 2, FUSED_TILE[1])
    vec, hc = torch.zeros(1, 6), torch.zeros(1, 3)
    state = torch.zeros(1, FUSED_TILE[1]), torch.zeros(1, FUSED_TILE[1], dtype=torch.float64)

    def sweep(lhs=lhs, packed=packed, m=3, state=state, rows=FUSED_TILE[0]):
        return fused_softmin(lhs, packed, m, hc, vec, vec, vec.clone(), 1.0, 1.0, state, rows)

    assert sweep()
    with pytest.raises(ValueError, match="lhs must be float32"):
        sweep(lhs=lhs.double(), packed=packed.double())
    with pytest.raises(ValueError, match=r"ypack must be torch.float32 of shape \(1, 1, 2, "):
        sweep(packed=torch.zeros(1, 1, 3, FUSED_TILE[1]))
    with pytest.raises(ValueError, match="contiguous CPU tensor of float64"):
        sweep(state=(state[0], state[1].float()))
    with pytest.raises(ValueError, match=r"col_state\[1\] must be of shape"):
        sweep(state=(state[0], state[1][:, :16].contiguous()))
    with pytest.raises(ValueError, match="inconsistent fused sweep shape"):
        sweep(rows=FUSED_TILE[0] + 1)
    with pytest.raises(ValueError, match=r"hc must be torch.float32 of shape \(1, 33\)"):
        sweep(m=FUSED_TILE[1] + 1)

