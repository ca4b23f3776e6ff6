"""The native CPU dense cost equals the batched product and masking it replaces; the row norms,
the plan's products and the chain rule's row update equal the PyTorch ops."""

from __future__ import annotations

import pytest
import torch
from reference import masked_weights

import optical_ops.costs as costs
import optical_ops.softmin_dense as softmin_dense
from optical_ops import ot_distill_loss
from optical_ops.costs import factorise
from optical_ops.kernels.cpu_dense_cost import (
    cost_row_gradients,
    dense_cost,
    native_dense_cost_available,
    plan_gradients,
    plan_products,
    row_norms,
)
from optical_ops.softmin_dense import sanitised_cost_range

pytestmark = pytest.mark.skipif(
    not native_dense_cost_available(torch.ones(1)), reason="native CPU dense cost not built"
)


@pytest.fixture
def two_threads():
    """torch on two threads (restored after): the native passes need a problem per thread, so
    a test of them must not depend on the machine's core count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _both(x, y, a, b, cost):
    fc = factorise(x, y, cost, a > 0, b > 0)
    native = dense_cost(fc.x, fc.y, fc.row_offset, fc.col_offset, fc.row_scale, fc.col_scale,
                        a, b, fc.scale, cost == "sqeuclidean")
    return native, sanitised_cost_range(fc.dense(), a, b)


# n, m not multiples of four (the blocks of four rows have tails); ragged prefixes, holes; the
# last shape is large enough (B n m d >= 2^22) to split the batch over two threads.
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,m,d,holes", [(1, 1, 1, 3, 0), (3, 7, 5, 17, 0),
                                               (5, 13, 10, 64, 2), (8, 41, 37, 384, 3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_equals_product_and_masking(gen, cost, dtype, batch, n, m, d, holes, threads):
    x = torch.randn(batch, n, d, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(batch, m, d, generator=gen, dtype=torch.float64).to(dtype)
    a = masked_weights(gen, batch, n, torch.randint(1, n + 1, (batch,), generator=gen),
                       holes).to(dtype)
    b = masked_weights(gen, batch, m, torch.randint(1, m + 1, (batch,), generator=gen),
                       holes).to(dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (c, lo, hi), (c_ref, lo_ref, hi_ref) = _both(x, y, a, b, cost)
    finally:
        torch.set_num_threads(previous)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5,
                                                                           "atol": 2e-6}
    torch.testing.assert_close(lo, lo_ref, **tol)
    torch.testing.assert_close(hi, hi_ref, **tol)
    torch.testing.assert_close(c, c_ref, **tol)
    massless = (a == 0)[:, :, None] | (b == 0)[:, None, :]
    assert torch.equal(c[massless], lo[:, None, None].expand_as(c)[massless])


def test_reads_batch_strided_rows_and_never_the_padding(gen):
    """x sliced from a longer padded batch (its own batch stride); rows past the last one with
    mass hold NaN and are never multiplied."""
    x = torch.randn(6, 40, 24, generator=gen)[:, :30]
    y = torch.randn(6, 20, 24, generator=gen)
    lengths_x, lengths_y = torch.tensor([30, 4, 9, 1, 17, 22]), torch.tensor([20, 3, 8, 1, 5, 2])
    a = masked_weights(gen, 6, 30, lengths_x).float()
    b = masked_weights(gen, 6, 20, lengths_y).float()
    fc = factorise(x, y, "cosine", a > 0, b > 0)
    x_nan, y_nan = fc.x.clone(), fc.y.clone()
    x_nan[a == 0], y_nan[b == 0] = torch.nan, torch.nan
    args = (fc.row_offset, fc.col_offset, fc.row_scale, fc.col_scale, a, b, 1.0, False)
    c, lo, hi = dense_cost(fc.x, fc.y, *args)
    c_nan, lo_nan, hi_nan = dense_cost(x_nan, y_nan, *args)
    assert fc.x.stride(0) != fc.x.shape[1] * fc.x.shape[2]  # a view of the longer batch
    assert torch.equal(c, c_nan)
    assert torch.equal(lo, lo_nan) and torch.equal(hi, hi_nan)
    _, lo_ref, hi_ref = sanitised_cost_range(fc.dense(), a, b)
    torch.testing.assert_close((lo, hi), (lo_ref, hi_ref), rtol=1e-5, atol=2e-6)


def test_nan_in_massless_rows_inside_the_extent_and_a_problem_without_mass(gen):
    """Zero-weight rows and columns between real ones are multiplied but then overwritten, NaN
    or not; a problem with no mass at all gets lo = inf, hi = -inf, as the PyTorch masking."""
    x, y = torch.randn(3, 9, 16, generator=gen), torch.randn(3, 7, 16, generator=gen)
    a = torch.tensor([[1.0] * 9, [1, 0, 1, 0, 1, 1, 0, 0, 0], [0.0] * 9])
    b = torch.tensor([[1.0] * 7, [0, 1, 1, 0, 1, 0, 0], [1.0] * 7])
    x[1, [1, 3]], y[1, [0, 3]] = torch.nan, torch.inf
    ones_x, ones_y = torch.ones(3, 9), torch.ones(3, 7)
    args = (ones_x / 2, ones_y / 2, ones_x, ones_y, a, b, 1.0, False)
    c, lo, hi = dense_cost(x, y, *args)
    c_ref = 1.0 - x @ y.transpose(1, 2)
    c_ref, lo_ref, hi_ref = sanitised_cost_range(c_ref, a, b)
    torch.testing.assert_close((c, lo, hi), (c_ref, lo_ref, hi_ref), rtol=1e-5, atol=2e-6)
    assert lo[1].isfinite() and lo[2] == torch.inf and hi[2] == -torch.inf


def test_only_batches_of_small_problems_take_the_native_pass():
    """One problem per thread and a problem's y within L2, else the batched product (faster
    there: NOTES O15)."""
    threads = torch.get_num_threads()
    small = factorise(torch.ones(threads, 32, 384), torch.ones(threads, 32, 384), "cosine")
    one_large = factorise(torch.ones(1, 1024, 768), torch.ones(1, 1024, 768), "cosine")
    weights = torch.ones(threads, 32)
    assert softmin_dense._native_cost_pays(small, weights)
    assert not softmin_dense._native_cost_pays(one_large, torch.ones(1, 1024))
    assert softmin_dense.native_products_pay(torch.ones(threads, 32, 32), small.x, None)
    assert not softmin_dense.native_products_pay(torch.ones(1, 1024, 1024), one_large.x,
                                                 one_large.y)
    assert not softmin_dense.native_products_pay(torch.ones(threads, 32, 32), small.x,
                                                 small.y.double())
    if threads > 1:
        few = factorise(torch.ones(threads - 1, 32, 384), torch.ones(threads - 1, 32, 384),
                        "cosine")
        assert not softmin_dense._native_cost_pays(few, weights[1:])
        assert not softmin_dense.native_products_pay(torch.ones(threads - 1, 32, 32), few.x,
                                                     few.y)


def test_nan_at_a_pair_with_mass_makes_the_range_nan(gen):
    x, y = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 6, 8, generator=gen)
    a, b = torch.full((2, 5), 0.2), torch.full((2, 6), 1 / 6)
    offsets = torch.zeros(2, 5), torch.zeros(2, 6)
    x[1, 2, 3] = torch.nan
    _, lo, hi = dense_cost(x, y, *offsets, torch.ones(2, 5), torch.ones(2, 6), a, b, 1.0, False)
    assert lo[0].isfinite() and hi[0].isfinite() and lo[1].isnan() and hi[1].isnan()


def test_rejects_mismatched_buffers():
    x, y = torch.ones(2, 3, 4), torch.ones(2, 5, 4)
    rows, cols = torch.ones(2, 3), torch.ones(2, 5)
    with pytest.raises(ValueError, match=r"col_scale must be torch\.float32 of shape \(2, 5\)"):
        dense_cost(x, y, rows, cols, rows, torch.ones(2, 4), rows, cols, 1.0, False)
    with pytest.raises(ValueError, match="y must be"):
        dense_cost(x, y.double(), rows, cols, rows, cols, rows, cols, 1.0, False)


@pytest.mark.parametrize("eps", [0.05, 0.01])
def test_loss_and_gradients_equal_the_pytorch_cost(gen, monkeypatch, two_threads, eps):
    """Through the public op: a ragged bf16-free batch solved with the native cost and with
    the PyTorch product agrees to round-off, forward and backward."""
    x = torch.randn(6, 19, 48, generator=gen)
    y = torch.randn(6, 14, 48, generator=gen)
    mask_x = torch.arange(19) < torch.tensor([19, 3, 11, 8, 1, 16])[:, None]
    mask_y = torch.arange(14) < torch.tensor([5, 14, 2, 9, 13, 7])[:, None]

    def solve():
        xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
        loss = ot_distill_loss(xs, ys, mask_x, mask_y, eps=eps, n_iters=50, reduction="sum")
        loss.backward()
        return loss.detach(), xs.grad, ys.grad

    calls = []
    monkeypatch.setattr(softmin_dense, "dense_cost",
                        lambda *args: calls.append(1) or dense_cost(*args))
    native = solve()
    assert calls  # the native pass ran
    monkeypatch.setattr(softmin_dense, "native_dense_cost_available", lambda x: False)
    torch.testing.assert_close(native, solve(), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,d", [(1, 1, 1), (3, 7, 37), (4, 300, 384)])
@pytest.mark.parametrize("threads", [1, 2])
def test_row_norms_equal_vector_norm(gen, dtype, batch, n, d, threads):
    """Norms of batch-strided rows (d past and below the vector chains, two threads on the
    largest) and the two answers: a non-finite row outside ``valid``, a row inside it whose
    squared norm is not finite (inf, NaN, or finite entries whose squares overflow)."""
    z = torch.randn(batch, n + 2, d, generator=gen, dtype=torch.float64).to(dtype)[:, 1:-1]
    valid = torch.rand(batch, n, generator=gen) < 0.7
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        norm, padding, inside = row_norms(z, valid)
        tol = 16 * torch.finfo(dtype).eps
        torch.testing.assert_close(norm, torch.linalg.vector_norm(z, dim=-1), rtol=tol, atol=0)
        assert (padding, inside) == (False, False)
        assert row_norms(z, None)[1:] == (False, False)
        huge = 2 * torch.finfo(dtype).max ** 0.5  # finite entries whose squares overflow
        for value in (torch.nan, torch.inf, huge):
            for where, expected in ((~valid, (True, False)), (valid, (False, True))):
                if not where.any():
                    continue
                marked = z.clone()
                marked[tuple(where.nonzero()[0].tolist())] = value
                assert row_norms(marked, valid)[1:] == expected
                assert row_norms(marked, None)[2]
    finally:
        torch.set_num_threads(previous)


def test_factorisation_knows_its_rows_are_finite(gen):
    """The native norms let check_finite skip its own pass; a non-finite row with mass still
    raises its error."""
    x, y = torch.randn(2, 5, 8, generator=gen), torch.randn(2, 4, 8, generator=gen)
    a, b = torch.ones(2, 5), torch.ones(2, 4)
    a[1, 3:] = 0
    x[1, 4] = torch.nan  # padding
    fc = factorise(x, y, "cosine", a > 0, b > 0)
    assert fc.finite and torch.isfinite(fc.x).all()
    fc.check_finite(a, b)
    y[0, 2, 0] = torch.inf
    fc = factorise(x, y, "cosine", a > 0, b > 0)
    assert not fc.finite
    with pytest.raises(ValueError, match="teacher contains NaN or inf"):
        fc.check_finite(a, b)


def _products_reference(matrix, r, c, x, xs, y, ys):
    """(P y', P^T x', P 1, P^T 1) for P = diag(r) M diag(c), as batched PyTorch products."""
    plan = matrix * r[:, :, None] * c[:, None, :]
    return (torch.bmm(plan, y * ys[:, :, None]),
            torch.bmm(plan.transpose(1, 2), x * xs[:, :, None]), plan.sum(2), plan.sum(1))


def _random(gen, dtype, *shape):
    return torch.rand(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _plan_operands(gen, dtype, batch, n, m, d):
    """(matrix, r, c, x, xs, y, ys, a, b): ragged weights with holes, a plan r_i M_ij c_j that is
    0 where a weight is, a batch-strided x."""
    a = masked_weights(gen, batch, n, torch.randint(1, n + 1, (batch,), generator=gen),
                       2).to(dtype)
    b = masked_weights(gen, batch, m, torch.randint(1, m + 1, (batch,), generator=gen),
                       2).to(dtype)
    matrix = _random(gen, dtype, batch, n, m)
    r, c = _random(gen, dtype, batch, n) * (a > 0), _random(gen, dtype, batch, m) * (b > 0)
    x = torch.randn(batch, n + 3, d, generator=gen, dtype=torch.float64).to(dtype)[:, :n]
    y = torch.randn(batch, m, d, generator=gen, dtype=torch.float64).to(dtype)
    xs, ys = _random(gen, dtype, batch, n), _random(gen, dtype, batch, m)
    return matrix, r, c, x, xs, y, ys, a, b


def _as_passed(matrix, r, c, x, y, a, b, form):
    """NaN past each problem's extents in matrix, x and y, in place (the passes must never read
    there), and the plan in ``form``: (matrix, r, c, log_scale)."""
    n, m = matrix.shape[1:]
    past_x = torch.arange(n) >= ((a > 0) * torch.arange(1, n + 1)).amax(1, keepdim=True)
    past_y = torch.arange(m) >= ((b > 0) * torch.arange(1, m + 1)).amax(1, keepdim=True)
    matrix[past_x[:, :, None] | past_y[:, None, :]] = torch.nan
    x[past_x], y[past_y] = torch.nan, torch.nan
    if form == "plan":  # the plan written out
        return matrix * r[:, :, None] * c[:, None, :], None, None, None
    if form == "log":  # P = exp(log r + log c + k M') with M' = log M / k (O29)
        log_scale = -1 / 0.05
        return matrix.log() / log_scale, r.log(), c.log(), log_scale
    return matrix, r, c, None


# The plan's products (O23): d below, at and past the three-vector chunks (3 x 8 floats) with
# tails, row counts not multiples of four, ragged extents with holes, NaN past the extents (never
# read), a batch-strided x, factors given or None, one side or both, one thread or two.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,m,d", [(1, 1, 1, 1), (3, 7, 5, 17), (4, 13, 10, 50),
                                         (8, 41, 37, 384)])
@pytest.mark.parametrize("form", ["factors", "plan", "log"])
@pytest.mark.parametrize("threads", [1, 2])
def test_plan_products_equal_the_batched_products(gen, dtype, batch, n, m, d, form, threads):
    matrix, r, c, x, xs, y, ys, a, b = _plan_operands(gen, dtype, batch, n, m, d)
    expected = _products_reference(matrix, r, c, x, xs, y, ys)
    matrix, r, c, log_scale = _as_passed(matrix, r, c, x, y, a, b, form)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        both = plan_products(matrix, r, c, x, xs, y, ys, a, b, log_scale)
        only_y = plan_products(matrix, r, c, None, None, y, ys, a, b, log_scale)
        only_x = plan_products(matrix, r, c, x, xs, None, None, a, b, log_scale)
    finally:
        torch.set_num_threads(previous)
    eps = torch.finfo(dtype).eps
    rounding = 8 * eps * (max(n, m) * d) ** 0.5 * (32 if form == "log" else 1)  # exponents ~20
    for got, want in zip(both, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=rounding)
    assert only_y[1] is None and only_x[0] is None
    assert torch.equal(only_y[0], both[0]) and torch.equal(only_x[1], both[1])
    assert torch.equal(only_y[2], both[2]) and torch.equal(only_x[3], both[3])


def test_plan_products_reject_mismatched_buffers():
    matrix, rows, cols = torch.ones(2, 3, 5), torch.ones(2, 3), torch.ones(2, 5)
    x, y = torch.ones(2, 3, 4), torch.ones(2, 5, 4)
    with pytest.raises(ValueError, match=r"y_scale must be torch\.float32 of shape \(2, 5\)"):
        plan_products(matrix, rows, cols, x, rows, y, rows, rows, cols)
    with pytest.raises(ValueError, match="x must be"):
        plan_products(matrix, None, None, x.double(), rows, y, cols, rows, cols)
    with pytest.raises(ValueError, match="x or y must be given"):
        plan_products(matrix, None, None, None, None, None, None, rows, cols)
    with pytest.raises(ValueError, match="log form"):
        plan_products(matrix, rows, None, x, rows, y, cols, rows, cols, log_scale=-2.0)


# The chain rule inside the products pass (O31): the pass's gradients against the reference
# products followed by the row update as PyTorch ops in float64; ragged extents with holes, NaN
# past the extents (never read), a batch-strided x, the product and the log form of the plan,
# both update forms, one side or both, one thread or two (the larger shape has the work to run
# problems on both).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,m,d", [(6, 13, 10, 50), (8, 41, 37, 384)])
@pytest.mark.parametrize("plan_form", ["factors", "log"])
@pytest.mark.parametrize("update_form", ["dot", "offset"])
@pytest.mark.parametrize("threads", [1, 2])
def test_plan_gradients_equal_the_products_then_the_row_update(gen, dtype, batch, n, m, d,
                                                               plan_form, update_form,
                                                               threads):
    matrix, r, c, x, xs, y, ys, a, b = _plan_operands(gen, dtype, batch, n, m, d)

    def update(length):
        alpha, beta, gamma = (_random(gen, dtype, batch, length) - 0.5 for _ in range(3))
        return (alpha, beta, None) if update_form == "dot" else (alpha, None, gamma)

    x_update, y_update = update(n), update(m)
    p_y, p_x, rows, cols = _products_reference(*(t.double() for t in (matrix, r, c, x, xs, y,
                                                                      ys)))

    def expected(z, g, coefficients, mass):
        alpha, beta, gamma = (None if t is None else t.double() for t in coefficients)
        along = (0.0 if beta is None else alpha * beta * (z.double() * g).sum(-1)) + (
            0.0 if gamma is None else gamma * mass)
        return torch.where((mass > 0)[..., None], alpha[..., None] * g + along[..., None] *
                           z.double(), 0.0)

    want_dx, want_dy = expected(x, p_y, x_update, rows), expected(y, p_x, y_update, cols)
    matrix, r, c, log_scale = _as_passed(matrix, r, c, x, y, a, b, plan_form)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dx, dy = plan_gradients(matrix, r, c, x, xs, y, ys, a, b, log_scale, x_update, y_update)
        only_dx = plan_gradients(matrix, r, c, x, xs, y, ys, a, b, log_scale, x_update, None)
        only_dy = plan_gradients(matrix, r, c, x, xs, y, ys, a, b, log_scale, None, y_update)
    finally:
        torch.set_num_threads(previous)
    rounding = 64 * torch.finfo(dtype).eps * (max(n, m) * d) ** 0.5 * (
        32 if plan_form == "log" else 1)  # exponents ~20
    for got, want in ((dx, want_dx), (dy, want_dy)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=rounding * want.abs().max())
    assert torch.equal(only_dx[0], dx) and only_dx[1] is None
    assert torch.equal(only_dy[1], dy) and only_dy[0] is None
    with pytest.raises(ValueError, match="x_update needs alpha"):
        plan_gradients(matrix, r, c, x, xs, y, ys, a, b, log_scale, (None, None, None), None)
    with pytest.raises(ValueError, match="an update for one side"):
        plan_gradients(matrix, r, c, x, xs, y, ys, a, b, log_scale, None, None)


@pytest.mark.parametrize("solver,eps", [("dense-scaling", 0.05), ("dense-stabilised", 0.01),
                                        ("dense-log", 0.01)])
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_gradients_with_native_plan_products_equal_the_pytorch_products(gen, monkeypatch,
                                                                        two_threads, solver, eps,
                                                                        cost):
    """Through the public op, each dense domain, a ragged batch: the gradients from the native
    pass (which forms the log domains' plan and applies the chain rule itself) and from the
    batched PyTorch products agree to round-off; a frozen teacher or a frozen student takes the
    one-sided pass. In float64: the plan's exponents reach R / eps ~ 500 here, whose float32
    rounding alone is ~3e-5 of each entry."""
    x = torch.randn(6, 19, 40, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 14, 40, generator=gen, dtype=torch.float64)
    x, y = (x / 4, y / 4) if cost == "sqeuclidean" else (x, y)
    mask_x = torch.arange(19) < torch.tensor([19, 3, 11, 8, 1, 16])[:, None]
    mask_y = torch.arange(14) < torch.tensor([5, 14, 2, 9, 13, 7])[:, None]
    mask_x[2, 4] = mask_y[1, 0] = False

    def grads(student_grad=True, teacher_grad=True):
        xs, ys = x.clone().requires_grad_(student_grad), y.clone().requires_grad_(teacher_grad)
        ot_distill_loss(xs, ys, mask_x, mask_y, eps=eps, n_iters=30, cost=cost, solver=solver,
                        reduction="sum").backward()
        return xs.grad, ys.grad

    fused = []  # the sides each fused pass (one per length bucket) formed
    native = softmin_dense.native_plan_gradients
    monkeypatch.setattr(softmin_dense, "native_plan_gradients", lambda *args: fused.append(
        tuple(u is not None for u in args[-2:])) or native(*args))
    with_native, student_only, teacher_only = (grads(*sides) for sides in (
        (True, True), (True, False), (False, True)))
    calls = len(fused) // 3
    assert calls and fused == [(True, True)] * calls + [(True, False)] * calls + [
        (False, True)] * calls
    monkeypatch.setattr(softmin_dense, "native_products_pay", lambda *args: False)
    reference = grads()
    assert len(fused) == 3 * calls
    torch.testing.assert_close(with_native, reference, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(student_only[0], reference[0], rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(teacher_only[1], reference[1], rtol=1e-10, atol=1e-13)
    assert student_only[1] is None and teacher_only[0] is None


# The chain rule's row update (costs._update_rows): native against its PyTorch ops, with z a
# batch-strided view, d not a multiple of the four vector chains (4 x 8 floats), both forms.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,n,d", [(1, 1, 1), (3, 7, 37), (2, 300, 384)])
@pytest.mark.parametrize("form", ["dot", "offset", "both"])
@pytest.mark.parametrize("threads", [1, 2])
def test_row_update_equals_the_pytorch_ops(gen, monkeypatch, dtype, batch, n, d, form,
                                           threads):
    z = torch.randn(batch, n + 2, d, generator=gen, dtype=torch.float64).to(dtype)[:, 1:-1]
    g = torch.randn(batch, n, d, generator=gen, dtype=torch.float64).to(dtype)
    alpha, beta, gamma = (torch.randn(batch, n, generator=gen, dtype=torch.float64).to(dtype)
                          for _ in range(3))
    beta = None if form == "offset" else beta
    gamma = None if form == "dot" else gamma
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mass = torch.rand(batch, n, generator=gen, dtype=torch.float64).to(dtype) + 0.5
        update = costs.RowUpdate(alpha, beta, gamma)
        native = costs._update_rows(z, g.clone(), update, mass)
        monkeypatch.setattr(costs, "native_row_gradients_available", lambda z, g: False)
        reference = costs._update_rows(z, g.clone(), update, mass)
    finally:
        torch.set_num_threads(previous)
    # Both sum the dot in another order: errors relative to the largest entry (|beta <z, g>|
    # z reaches ~100 here, with cancellation in the dot).
    eps = torch.finfo(dtype).eps
    scale = reference.abs().max().item()
    torch.testing.assert_close(native, reference, rtol=0, atol=64 * eps * scale)


@pytest.mark.parametrize("threads", [1, 2])
def test_row_update_leaves_rows_without_mass_as_they_are(gen, threads):
    """Rows whose plan marginal is 0 are not touched (whatever g holds there); the others get
    the update that the pass without ``mass`` gives them."""
    z = torch.randn(3, 300, 384, generator=gen)
    g = torch.randn(3, 300, 384, generator=gen)
    alpha, beta = torch.randn(3, 300, generator=gen), torch.randn(3, 300, generator=gen)
    mass = torch.rand(3, 300, generator=gen)
    mass[0, 5:40], mass[2, 299], mass[1, 0] = 0.0, 0.0, 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        skipped = cost_row_gradients(z, g.clone(), alpha, beta, None, mass)
        updated = cost_row_gradients(z, g.clone(), alpha, beta, None)
    finally:
        torch.set_num_threads(previous)
    without = mass == 0
    assert torch.equal(skipped[without], g[without])
    assert torch.equal(skipped[~without], updated[~without])
    assert not torch.equal(updated[without], g[without])


def test_row_update_rejects_mismatched_buffers():
    z, g = torch.ones(2, 3, 4), torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match=r"beta must be torch\.float32 of shape \(2, 3\)"):
        cost_row_gradients(z, g, torch.ones(2, 3), torch.ones(3, 2), None)
    with pytest.raises(ValueError, match="g with contiguous rows"):
        cost_row_gradients(z, torch.ones(2, 4, 3).transpose(1, 2), torch.ones(2, 3), None, None)
    with pytest.raises(ValueError, match="no two problems share"):  # written in place
        cost_row_gradients(z, torch.ones(1, 3, 4).expand(2, 3, 4), torch.ones(2, 3), None, None)


@pytest.mark.parametrize("native", [True, False])
def test_cosine_gradient_stays_finite_near_the_norm_floor(gen, monkeypatch, two_threads,
                                                          native):
    """A student token of norm ~1e-12 (sigma ~ 1e12, just inside the floor) and an upstream
    weight of 400 (a loss scale): the chain rule's intermediates stay finite in float32."""
    if not native:
        monkeypatch.setattr(costs, "native_row_gradients_available", lambda z, g: False)
        monkeypatch.setattr(softmin_dense, "native_products_pay", lambda *args: False)
    x = torch.randn(2, 5, 16, generator=gen)
    x[1, 3] *= 1.05e-12 / x[1, 3].norm()
    x.requires_grad_()
    y = torch.randn(2, 6, 16, generator=gen)
    (400.0 * ot_distill_loss(x, y, n_iters=20, reduction="sum")).backward()
    assert torch.isfinite(x.grad).all()
