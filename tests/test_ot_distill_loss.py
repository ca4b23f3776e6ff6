"""``ot_distill_loss`` / ``OTDistillLoss`` on the PyTorch backend, against POT in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import pot_sinkhorn, random_tokens, random_weights, rel_err

from optical_ops import OTDistillLoss, cost_matrix, ot_distill_loss
from optical_ops.autograd import EmbeddingOTFunction

SOLVERS = ["dense-scaling", "dense-stabilised", "dense-log", "streaming"]
CONVERGED = dict(n_iters=20000, tol=1e-13)


def envelope_reference(x, y, a=None, b=None, cost="cosine", eps=0.05):
    """POT's converged loss per problem, and the gradients of <P_pot, C(x, y)> with P fixed."""
    x = x.detach().double().requires_grad_()
    y = y.detach().double().requires_grad_()
    losses, total = [], 0.0
    for i in range(x.shape[0]):
        c = cost_matrix(x[i], y[i], cost)
        ref = pot_sinkhorn(c.detach(), None if a is None else a[i], None if b is None else b[i],
                           eps)
        losses.append(ref["loss"])
        total = total + (torch.as_tensor(ref["plan"]) * c).sum()
    total.backward()
    return torch.tensor(losses, dtype=torch.float64), x.grad, y.grad


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_loss_and_gradients_match_pot_envelope(gen, solver, cost):
    x = random_tokens(gen, 3, 7, 33).requires_grad_()
    y = random_tokens(gen, 3, 12, 33).requires_grad_()
    eps = 0.05 if cost == "cosine" else 5.0
    loss = ot_distill_loss(x, y, cost=cost, eps=eps, reduction="none", solver=solver,
                           **CONVERGED)
    upstream = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    (loss * upstream).sum().backward()
    ref_loss, _, _ = envelope_reference(x, y, cost=cost, eps=eps)
    assert rel_err(loss.detach(), ref_loss) < 1e-6
    # Envelope gradient with the upstream weights, problem by problem.
    for i in range(3):
        _, gx, gy = envelope_reference(x[i : i + 1], y[i : i + 1], cost=cost, eps=eps)
        assert rel_err(x.grad[i], upstream[i] * gx[0]) < 1e-6
        assert rel_err(y.grad[i], upstream[i] * gy[0]) < 1e-6


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_one_sided_gradients_equal_the_two_sided_ones(gen, solver, cost):
    """A frozen teacher (or student): the backward forms only the product its side needs, and
    that side's gradient is the same, bit for bit; ragged masks included."""
    x, y = random_tokens(gen, 3, 7, 33), random_tokens(gen, 3, 12, 33)
    mask = torch.arange(12)[None] < torch.tensor([12, 5, 9])[:, None]
    eps = 0.05 if cost == "cosine" else 5.0

    def grads(need_x, need_y):
        xs, ys = x.clone().requires_grad_(need_x), y.clone().requires_grad_(need_y)
        ot_distill_loss(xs, ys, None, mask, cost=cost, eps=eps, solver=solver,
                        n_iters=50).backward()
        return xs.grad, ys.grad

    both = grads(True, True)
    student_only, teacher_only = grads(True, False), grads(False, True)
    assert torch.equal(student_only[0], both[0]) and student_only[1] is None
    assert torch.equal(teacher_only[1], both[1]) and teacher_only[0] is None


@pytest.mark.parametrize("n,m", [(1, 1), (1, 7), (7, 33), (129, 33), (300, 129)])
@pytest.mark.parametrize("d", [100, 384, 768])
def test_odd_sizes(gen, n, m, d):
    x = random_tokens(gen, 2, n, d).requires_grad_()
    y = random_tokens(gen, 2, m, d)
    loss = ot_distill_loss(x, y, reduction="sum", **CONVERGED)
    loss.backward()
    ref_loss, gx, _ = envelope_reference(x, y)
    assert rel_err(loss.detach(), ref_loss.sum()) < 1e-6
    assert rel_err(x.grad, gx) < 1e-6


@pytest.mark.parametrize("solver", SOLVERS)
def test_padded_problem_equals_unpadded(gen, solver):
    lengths_x, lengths_y = [5, 9, 1], [12, 3, 7]
    x = random_tokens(gen, 3, 9, 16)
    y = random_tokens(gen, 3, 12, 16)
    mx = torch.arange(9)[None] < torch.tensor(lengths_x)[:, None]
    my = (torch.arange(12)[None] < torch.tensor(lengths_y)[:, None]).long()  # HF-style 0/1
    x = torch.where(mx[..., None], x, torch.full_like(x, float("nan"))).requires_grad_()
    y = torch.where(my[..., None].bool(), y, torch.full_like(y, 1e30)).requires_grad_()
    wx = random_weights(gen, 3, 9)
    loss = ot_distill_loss(x, y, mx, my, student_weights=wx, reduction="none",
                           solver=solver, **CONVERGED)
    loss.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    for i, (lx, ly) in enumerate(zip(lengths_x, lengths_y)):
        xi = x.detach()[i, :lx].clone().requires_grad_()
        yi = y.detach()[i, :ly].clone().requires_grad_()
        li = ot_distill_loss(xi, yi, student_weights=wx[i, :lx], **CONVERGED)
        li.backward()
        torch.testing.assert_close(loss[i], li, rtol=1e-9, atol=0)
        torch.testing.assert_close(x.grad[i, :lx], xi.grad, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(y.grad[i, :ly], yi.grad, rtol=1e-7, atol=1e-12)
        assert (x.grad[i, lx:] == 0).all() and (y.grad[i, ly:] == 0).all()


def test_weights_match_pot(gen):
    x, y = random_tokens(gen, 2, 7, 16), random_tokens(gen, 2, 9, 16)
    wx, wy = random_weights(gen, 2, 7, zeros=2), random_weights(gen, 2, 9)
    loss = ot_distill_loss(x, y, student_weights=wx, teacher_weights=wy, reduction="none",
                           **CONVERGED)
    ref_loss, _, _ = envelope_reference(x, y, wx, wy)
    assert rel_err(loss, ref_loss) < 1e-6


def test_fixed_iterations_match_pot(gen):
    """The benchmark protocol: uniform weights, 100 iterations, no early stop."""
    x, y = random_tokens(gen, 2, 32, 64), random_tokens(gen, 2, 32, 64)
    for solver in SOLVERS:
        loss = ot_distill_loss(x, y, n_iters=100, reduction="none", solver=solver)
        for i in range(2):
            ref = pot_sinkhorn(cost_matrix(x[i], y[i]), eps=0.05, n_iters=100)
            assert abs(loss[i].item() - ref["loss"]) < 1e-12 * ref["loss"]


def test_batched_equals_loop(gen):
    x, y = random_tokens(gen, 4, 33, 16), random_tokens(gen, 4, 7, 16)
    batched = ot_distill_loss(x, y, reduction="none", n_iters=30)
    for i in range(4):
        torch.testing.assert_close(batched[i], ot_distill_loss(x[i], y[i], n_iters=30),
                                   rtol=1e-12, atol=0)


def test_reductions_and_module(gen):
    x = random_tokens(gen, 3, 7, 16).requires_grad_()
    y = random_tokens(gen, 3, 9, 16)
    none = ot_distill_loss(x, y, reduction="none")
    torch.testing.assert_close(ot_distill_loss(x, y, reduction="sum"), none.sum())
    torch.testing.assert_close(ot_distill_loss(x, y), none.mean())
    module = OTDistillLoss(eps=0.05, n_iters=100, reduction="none")
    torch.testing.assert_close(module(x, y), none)
    assert "eps=0.05" in repr(module)


def test_teacher_gradient_only_when_asked(gen):
    x = random_tokens(gen, 2, 7, 16).requires_grad_()
    y = random_tokens(gen, 2, 9, 16)
    ot_distill_loss(x, y).backward()
    assert x.grad is not None and y.grad is None
    y.requires_grad_()
    x.grad = None
    ot_distill_loss(x.detach(), y).backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_backward_keeps_no_iteration_history(gen, solver):
    """Everything the backward holds goes through save_for_backward (nothing with a tensor is
    left on ctx), and it is the same whatever n_iters: at most the dense kernel (B n m) beside
    the inputs and O(B (n + m)) vectors."""
    from optical_ops.saved import _slots

    x = random_tokens(gen, 2, 33, 16).requires_grad_()
    y = random_tokens(gen, 2, 7, 16)
    held = {}
    for n_iters in (5, 60):
        packed = []

        def pack(t, packed=packed):
            packed.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = ot_distill_loss(x, y, n_iters=n_iters, reduction="none", solver=solver)
        assert isinstance(loss.grad_fn, EmbeddingOTFunction._backward_cls)
        assert _slots(loss.grad_fn.states) == []  # released to save_for_backward
        unique = {t.data_ptr(): t.numel() * t.element_size() for t in packed}
        held[n_iters] = sum(unique.values())
    assert held[5] == held[60]
    dense = 2 * 33 * 7 * 8
    assert held[60] <= dense + 2 * (2 * (33 + 7) * 16 * 8) + 16 * 2 * (33 + 7) * 8


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 1e-2)]
)
@pytest.mark.parametrize("solver", SOLVERS)
def test_low_precision_inputs(gen, dtype, tol, solver):
    """Half inputs are computed in fp32: errors come from rounding the embeddings only."""
    x64, y64 = random_tokens(gen, 2, 33, 100), random_tokens(gen, 2, 129, 100)
    x = x64.to(dtype).requires_grad_()
    y = y64.to(dtype)
    loss = ot_distill_loss(x, y, reduction="none", solver=solver)
    loss.sum().backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    xr = x.detach().double().requires_grad_()
    ref = ot_distill_loss(xr, y.double(), reduction="none")
    ref.sum().backward()
    assert rel_err(loss.detach(), ref.detach()) < 1e-5
    assert rel_err(x.grad.double(), xr.grad) < max(tol, 1e-4)
    assert rel_err(loss.detach(), ot_distill_loss(x64, y64, reduction="none")) < tol


@pytest.mark.parametrize("eps", [1e-3, 1e-2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_small_eps_and_degenerate_inputs_are_finite(gen, eps, dtype):
    x = random_tokens(gen, 3, 33, 16, dtype=dtype)
    y = random_tokens(gen, 3, 7, 16, dtype=dtype)
    x[1] = x[1, :1]  # all student tokens equal: all-equal cost rows
    y[2] = 0.0  # zero vectors: cosine cost 1 everywhere
    x.requires_grad_()
    mask = torch.ones(3, 33, dtype=torch.bool)
    mask[0, 5:] = False
    loss = ot_distill_loss(x, y, mask, eps=eps, n_iters=200, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
    np.testing.assert_allclose(loss[2].item(), 1.0, rtol=1e-3)


def test_streaming_matches_dense_on_many_chunks(gen, monkeypatch):
    import optical_ops.softmin_streaming as streaming

    monkeypatch.setattr(streaming, "DEFAULT_CHUNK_BYTES", 7 * 8 * 3)  # 3 rows per chunk
    x = random_tokens(gen, 1, 31, 16).requires_grad_()
    y = random_tokens(gen, 1, 7, 16).requires_grad_()
    stream = ot_distill_loss(x, y, solver="streaming", n_iters=40)
    stream.backward()
    gx, gy = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    dense = ot_distill_loss(x, y, solver="dense-log", n_iters=40)
    dense.backward()
    torch.testing.assert_close(stream, dense, rtol=1e-12, atol=0)
    torch.testing.assert_close(gx, x.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gy, y.grad, rtol=1e-10, atol=1e-14)


@pytest.fixture
def product_passes(monkeypatch):
    """Counts the streaming primitive's passes that form P y' / P^T x'."""
    import optical_ops.softmin_streaming as streaming

    formed, visitor = [], streaming.StreamingSoftMin._products_visitor
    monkeypatch.setattr(streaming.StreamingSoftMin, "_products_visitor",
                        lambda op, *args: formed.append(1) or visitor(op, *args))
    return formed


def streaming_grads(formed, x, y, need_x, need_y, backwards=1, **options):
    """(product passes in the forward, in the backward, dL/dx, dL/dy) of a weighted
    streaming loss; with ``backwards=2`` the second backward's gradients."""
    formed.clear()
    xs, ys = x.clone().requires_grad_(need_x), y.clone().requires_grad_(need_y)
    loss = ot_distill_loss(xs, ys, solver="streaming", reduction="none", **options)
    in_forward = len(formed)
    weights = torch.linspace(1.0, -0.5, loss.shape[0], dtype=loss.dtype)
    for k in range(backwards):
        xs.grad = ys.grad = None
        (loss * weights).sum().backward(retain_graph=k + 1 < backwards)
    return in_forward, len(formed) - in_forward, xs.grad, ys.grad


def assert_same(grads, reference):
    for ours, ref in zip(grads, reference):
        assert (ours is None and ref is None) or torch.equal(ours, ref)


@pytest.mark.parametrize("need_x,need_y", [(True, True), (True, False), (False, True)])
def test_streaming_forward_forms_the_gradient_products(gen, monkeypatch, product_passes,
                                                       need_x, need_y):
    """Without tol, a streaming forward in grad mode forms the products its backward needs in
    its last sweep and the backward forms none: the same gradients, bit for bit, as products
    formed in the backward, and again in a second backward (retain_graph). Under no_grad no
    products are formed."""
    import optical_ops.softmin_streaming as streaming

    x, y = random_tokens(gen, 3, 40, 16), random_tokens(gen, 3, 25, 16)
    mask = torch.arange(25)[None] < torch.tensor([25, 9, 17])[:, None]
    options = dict(teacher_mask=mask, n_iters=30)
    in_forward, in_backward, *kept = streaming_grads(product_passes, x, y, need_x, need_y,
                                                     **options)
    assert (in_forward, in_backward) == (1, 0)
    assert_same(streaming_grads(product_passes, x, y, need_x, need_y, backwards=2,
                                **options)[2:], kept)
    prepare = streaming.StreamingSoftMin.prepare_final
    monkeypatch.setattr(streaming.StreamingSoftMin, "prepare_final",
                        lambda op, *a: prepare(op, False, False))
    in_forward, in_backward, *recomputed = streaming_grads(product_passes, x, y, need_x,
                                                           need_y, **options)
    assert (in_forward, in_backward) == (0, 1)
    assert_same(kept, recomputed)
    monkeypatch.undo()
    product_passes.clear()
    with torch.no_grad():
        ot_distill_loss(x.clone().requires_grad_(), y, solver="streaming", n_iters=30)
    assert not product_passes


def test_streaming_products_where_the_final_state_is_known(gen, monkeypatch, product_passes):
    """One product pass per solve whose final state is its last iterate: per length bucket,
    per debiasing term with a gradient, none in eps-scaling stages; with tol (the loop picks
    the state after the fact) the backward forms them. The gradients equal the dense ones."""
    import optical_ops.ragged as ragged

    x, y = random_tokens(gen, 4, 40, 16), random_tokens(gen, 4, 30, 16)
    mask_x = torch.arange(40)[None] < torch.tensor([40, 6, 7, 38])[:, None]
    mask_y = torch.arange(30)[None] < torch.tensor([30, 5, 4, 29])[:, None]
    cases = [  # (options, product passes in the forward, in the backward)
        (dict(n_iters=30), 1, 0),
        (dict(n_iters=30, debias=True), 2, 0),  # x against y and x against x; y is frozen
        (dict(n_iters=30, eps_scaling=0.5), 1, 0),
        (dict(n_iters=30, tol=1e-2), 0, 1),
    ]
    monkeypatch.setattr(ragged, "MIN_SAVING", 1.0)  # one bucket
    for options, forward, backward in cases:
        got = streaming_grads(product_passes, x, y, True, False, student_mask=mask_x,
                              teacher_mask=mask_y, **options)
        assert got[:2] == (forward, backward), options
    monkeypatch.setattr(ragged, "MIN_SAVING", 0.0)
    monkeypatch.setattr(ragged, "BUCKET_OVERHEAD", 0)  # length buckets
    got = streaming_grads(product_passes, x, y, True, True, student_mask=mask_x,
                          teacher_mask=mask_y, n_iters=30)
    assert got[0] >= 2 and got[1] == 0
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss = ot_distill_loss(xs, ys, mask_x, mask_y, solver="dense-log", reduction="none",
                           n_iters=30)
    (loss * torch.linspace(1.0, -0.5, 4, dtype=loss.dtype)).sum().backward()
    torch.testing.assert_close(got[2], xs.grad, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got[3], ys.grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("solver", SOLVERS)
def test_ragged_batch_is_solved_in_length_buckets(gen, solver):
    """Lengths spread over [1, 40]: several buckets, each trimmed; results equal the unpadded
    problems one by one, and padding gets zero gradient."""
    from optical_ops.ragged import length_buckets

    batch, n, m = 9, 40, 37
    lx = torch.tensor([40, 3, 17, 1, 25, 8, 33, 12, 2])
    ly = torch.tensor([5, 37, 2, 30, 11, 1, 20, 36, 9])
    mx = torch.arange(n)[None] < lx[:, None]
    my = torch.arange(m)[None] < ly[:, None]
    a = mx / mx.sum(1, keepdim=True)
    b = my / my.sum(1, keepdim=True)
    buckets = length_buckets(a.double(), b.double())
    assert len(buckets) > 1 and sorted(torch.cat([k.index for k in buckets]).tolist()) == list(
        range(batch))
    x = random_tokens(gen, batch, n, 16).requires_grad_()
    y = random_tokens(gen, batch, m, 16).requires_grad_()
    upstream = torch.rand(batch, generator=gen, dtype=torch.float64)
    loss = ot_distill_loss(x, y, mx, my, reduction="none", solver=solver, n_iters=60)
    (loss * upstream).sum().backward()
    for i in range(batch):
        xi = x.detach()[i, : lx[i]].clone().requires_grad_()
        yi = y.detach()[i, : ly[i]].clone().requires_grad_()
        li = ot_distill_loss(xi, yi, solver=solver, n_iters=60)
        (li * upstream[i]).backward()
        torch.testing.assert_close(loss[i], li, rtol=1e-12, atol=0)
        torch.testing.assert_close(x.grad[i, : lx[i]], xi.grad, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(y.grad[i, : ly[i]], yi.grad, rtol=1e-10, atol=1e-14)
        assert (x.grad[i, lx[i] :] == 0).all() and (y.grad[i, ly[i] :] == 0).all()


def test_even_lengths_stay_in_one_trimmed_bucket():
    from optical_ops.ragged import length_buckets

    a = torch.ones(6, 10, dtype=torch.float64)
    a[:, 8:] = 0  # trailing padding everywhere: trimmed, not split
    b = torch.ones(6, 12, dtype=torch.float64)
    (bucket,) = length_buckets(a, b)
    assert bucket.index is None and (bucket.n, bucket.m) == (8, 12)


def test_auto_solver_streams_large_costs():
    from optical_ops import solver_plan

    assert solver_plan(1, 4096, 4096, 768).solver == "dense"
    assert solver_plan(1, 16384, 16384, 768).solver == "streaming"
    assert solver_plan(1, 16384, 16384, 768, dtype=torch.float64).solver == "streaming"
    assert solver_plan(1, 8192, 8192, 768, dtype=torch.float64).solver == "streaming"
    assert solver_plan(1, 8192, 8192, 768, dtype=torch.float16).solver == "dense"
