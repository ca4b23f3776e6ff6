"""The native CPU scaling loop equals the PyTorch op-by-op iterations it replaces."""

from __future__ import annotations

import pytest
import torch
from reference import masked_weights, random_weights

import optical_ops.softmin_dense as softmin_dense
from optical_ops.kernels.cpu_scaling import native_scaling_available, scaling_iterate
from optical_ops.sinkhorn_loop import SoftMin
from optical_ops.softmin_dense import DenseScalingSoftMin

pytestmark = pytest.mark.skipif(
    not native_scaling_available(torch.ones(1)), reason="native CPU loop not built"
)


# Shapes cover the three native paths: rows shared by the threads (batch < 2 threads), one
# problem per thread with K^T copied (K <= 256 KiB), and one fused pass per iteration.
@pytest.mark.parametrize("batch,n,m", [(1, 1, 1), (1, 7, 300), (3, 129, 33), (9, 33, 7),
                                       (64, 32, 32), (5, 257, 300)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_iters", [1, 2, 17])
def test_native_loop_equals_torch_ops(gen, batch, n, m, dtype, threads, n_iters):
    a = random_weights(gen, batch, n, zeros=min(2, n - 1))
    b = random_weights(gen, batch, m, zeros=min(1, m - 1))
    _assert_native_loop_equals_torch_ops(gen, a / a.sum(1, keepdim=True),
                                         b / b.sum(1, keepdim=True), dtype, threads, n_iters)


# Ragged batches (prefixes with holes): small problems iterate on their block with mass and
# give the rows and columns past it the states of the whole loop (NOTES O28); the last shape
# has the work (B n m iters >= 2^22) to run problems on two threads at once.
@pytest.mark.parametrize("batch,n,m,n_iters", [(12, 32, 32, 1), (5, 45, 37, 17), (3, 17, 9, 17),
                                               (4, 8, 40, 17), (64, 32, 32, 80)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_ragged_small_problems_equal_torch_ops(gen, batch, n, m, dtype, threads, n_iters):
    a = masked_weights(gen, batch, n, torch.randint(1, n + 1, (batch,), generator=gen), 2)
    b = masked_weights(gen, batch, m, torch.randint(1, m + 1, (batch,), generator=gen), 1)
    _assert_native_loop_equals_torch_ops(gen, a, b, dtype, threads, n_iters)


def _assert_native_loop_equals_torch_ops(gen, a, b, dtype, threads, n_iters):
    """The native loop from a random state on a random cost with weights a (B, n), b (B, m)
    equals the op-by-op iterations, and leaves its input state alone."""
    (batch, n), m = a.shape, b.shape[1]
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64) * 2
    op = DenseScalingSoftMin(cost.to(dtype), a.to(dtype), b.to(dtype), 0.1,
                             shift=cost.amin((1, 2)).to(dtype))
    s0 = torch.rand(batch, n, generator=gen, dtype=torch.float64).to(dtype) + 0.5
    s0_before = s0.clone()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s, t = scaling_iterate(op.kernel, op.a, op.b, s0, n_iters)
    finally:
        torch.set_num_threads(previous)
    s_ref, t_ref = SoftMin.iterate(op, s0, n_iters)
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(s, s_ref, rtol=rtol, atol=0)
    torch.testing.assert_close(t, t_ref, rtol=rtol, atol=0)
    assert torch.equal(s0, s0_before)  # the input state is not modified


# Shapes and iteration counts that reach each threaded path of the native loop with 2 threads:
# rows shared by the threads (one large problem; 261 and 262 rows: fused passes of four rows
# and a tail), and the batch split over the threads with
# K^T copied (K <= 256 KiB) or with one fused pass per iteration (larger K).
@pytest.mark.parametrize(
    "batch,n,m,n_iters", [(1, 523, 515, 3), (8, 128, 130, 40), (4, 300, 301, 12)]
)
def test_threaded_paths_equal_torch_ops(gen, batch, n, m, n_iters):
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64) * 2
    a = random_weights(gen, batch, n, zeros=2)
    b = random_weights(gen, batch, m, zeros=1)
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    op = DenseScalingSoftMin(cost, a, b, 0.1, shift=cost.amin((1, 2)))
    s0 = torch.ones(batch, n, dtype=torch.float64)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s, t = scaling_iterate(op.kernel, op.a, op.b, s0, n_iters)
    finally:
        torch.set_num_threads(previous)
    s_ref, t_ref = SoftMin.iterate(op, s0, n_iters)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(t, t_ref, rtol=1e-12, atol=0)


def test_rejects_mismatched_buffers():
    k = torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match=r"b must be torch.float32 of shape \(2, 4\)"):
        scaling_iterate(k, torch.rand(2, 3), torch.rand(2, 5), torch.rand(2, 3), 3)
    with pytest.raises(ValueError, match=r"kernel must be contiguous"):
        scaling_iterate(k.transpose(1, 2), torch.rand(2, 4), torch.rand(2, 3), torch.rand(2, 4), 3)


@pytest.mark.parametrize("batch,n,m", [(1, 1, 1), (3, 7, 300), (4, 300, 257)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_loss_equals_torch_ops(gen, monkeypatch, batch, n, m, dtype, threads):
    """The loss's native pass against K * C formed as PyTorch ops: zero weights and a forbidden
    pair (+inf cost, K = 0); the last shape splits its rows over two threads."""
    cost = torch.rand(batch, n, m, generator=gen, dtype=torch.float64) * 2
    if m > 1:  # a row keeps a finite entry
        cost[-1, -1, 0] = torch.inf
    a = random_weights(gen, batch, n, zeros=min(2, n - 1))
    b = random_weights(gen, batch, m, zeros=min(1, m - 1))
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    op = DenseScalingSoftMin(cost.to(dtype), a.to(dtype), b.to(dtype), 0.1,
                             shift=cost.amin((1, 2)).to(dtype))
    s, t = op.iterate(torch.ones(batch, n, dtype=dtype), 5)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native = op.loss(s, t)
    finally:
        torch.set_num_threads(previous)
    monkeypatch.setattr(softmin_dense, "native_scaling_available", lambda kernel: False)
    reference = op.loss(s, t)
    assert torch.isfinite(native).all()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(native, reference, rtol=tol, atol=0)
