"""Triton backend against POT (float64) and the PyTorch backend.

On a machine without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set in
conftest.py before anything imports them), so the shapes are small and iteration counts fixed:
at a fixed iteration count POT's ``sinkhorn_log`` started from f = 0 (``warmstart`` log u =
log a) produces the same iterate (column update first), so every comparison is exact up to
floating-point error. Every solver is checked: the fused one-launch kernel with the tile in
registers ("fused") and with strips re-read from a dense cost ("strips", forced by a zero
register-tile limit and strips of a few rows, so problems span several strips), and the
streaming kernels (forced by zero strip bounds).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from reference import assert_close_up_to_constant, random_tokens, random_weights

from optical_ops import OTDistillLoss, cost_matrix, ot_distill_loss, sinkhorn
from optical_ops import dispatch as BUDGET  # the plan: DENSE_MAX_BYTES and the solver choice
from optical_ops.dispatch import triton_unavailable_reason

pytest.importorskip("triton")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(triton_unavailable_reason(DEVICE) is not None,
                       reason=str(triton_unavailable_reason(DEVICE))),
]

from optical_ops.kernels import sinkhorn_fused  # noqa: E402  (needs triton)
from optical_ops.kernels.cost_tile import COSINE, embedding_operands  # noqa: E402

# Kernel error vs POT <= YARDSTICK * (same-dtype PyTorch error vs POT) + ATOL[dtype]: the
# PyTorch backend computes half inputs in fp32 after rounding them, as the kernels do. In fp32
# a plan entry is exp of a sum of terms ~ C / eps ~ 30 (ulp ~ 2e-6): ~1e-6 relative either way.
YARDSTICK = 2.0
ATOL = {torch.float32: 5e-6, torch.float16: 2e-5, torch.bfloat16: 1e-4}
# fp32 kernels against float64 POT at a fixed iterate (relative to the largest entry).
FP32_RTOL = 2e-5
ITERS = 30
# Strip entries on the "strips" path: several strips on most test shapes (33 x 7: 32 + 1 rows;
# 17 x 40: 8 + 8 + 1; a quarter of the rows per strip on unaligned dense costs), one on the
# smallest.
STRIP_TILE = 512


def use_path(name, monkeypatch):
    """Route the next calls to a solver through the plan (what :func:`forced_solver` does,
    undone with the test): "fused" (tile in registers); "strips" (STRIP_TILE entries per strip,
    so problems span several strips); "dense" (one launch per half-iteration over a dense cost
    built by a kernel); "streaming" (over recomputed cost tiles, the backward too: no dense
    budget)."""
    if name == "strips":
        monkeypatch.setattr(sinkhorn_fused, "STRIP_TILE", STRIP_TILE)
    if name == "streaming":
        monkeypatch.setattr(BUDGET, "DENSE_MAX_BYTES", 0)
    monkeypatch.setattr(BUDGET, "_FORCED", [f"triton-{name}"])
    return name


@pytest.fixture(params=["fused", "strips", "streaming"])
def path(request, monkeypatch):
    """The solvers the dispatch picks by size. "dense" (streaming over a cost built by a kernel,
    past the strip bounds) is made of parts checked here (the built cost in "strips", the
    streaming soft-min over a dense cost in the dense-cost tests); the agreement and host-sync
    tests run it whole."""
    return use_path(request.param, monkeypatch)


@pytest.fixture(params=["fused", "strips", "streaming"])
def cost_path(request, monkeypatch):
    """For a given dense cost the two streaming paths are the same."""
    return use_path(request.param, monkeypatch)


def pot_iterate(cost, a, b, eps, n_iters):
    """POT ``sinkhorn_log`` in float64 after exactly ``n_iters`` iterations from f = 0.

    Returns plan, f, g (NaN where a weight is 0; P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps))
    and the loss <P, C>."""
    ot = pytest.importorskip("ot")
    cost, a, b = (np.asarray(t, dtype=np.float64) for t in (cost, a, b))
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        log_a, log_b = np.log(a), np.log(b)
        plan, log = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=n_iters,
                                stopThr=0.0, log=True, warmstart=(log_a, np.zeros_like(b)))
        f = np.where(a > 0, eps * (log["log_u"] - log_a), np.nan)
        g = np.where(b > 0, eps * (log["log_v"] - log_b), np.nan)
    return {"plan": plan, "f": f, "g": g, "loss": float((plan * cost).sum())}


def rel(x, ref) -> float:
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.abs(x - ref).max() / max(np.abs(ref).max(), 1e-300))


def pot_envelope(x, y, a, b, cost, eps, n_iters, upstream):
    """POT's loss per problem at ``n_iters`` and d(sum_k upstream_k <P_k, C_k(x, y)>)/d(x, y)
    with the plans P_k fixed (the envelope gradient), all in float64."""
    x = x.detach().double().requires_grad_()
    y = y.detach().double().requires_grad_()
    losses, total = [], 0.0
    for k in range(x.shape[0]):
        c = cost_matrix(x[k], y[k], cost)
        ref = pot_iterate(c.detach(), a[k], b[k], eps, n_iters)
        losses.append(ref["loss"])
        total = total + upstream[k] * (torch.as_tensor(ref["plan"]) * c).sum()
    total.backward()
    return np.array(losses), x.grad.numpy(), y.grad.numpy()


def normalised(w):
    return w / w.sum(1, keepdim=True)


def ragged_problem(gen, batch, n, m, d, dtype=torch.float64):
    """Embeddings with NaN padding, masks leaving 1..n (1..m) tokens, and random weights."""
    x, y = random_tokens(gen, batch, n, d), random_tokens(gen, batch, m, d)
    len_x = torch.randint(1, n + 1, (batch,), generator=gen)
    len_y = torch.randint(1, m + 1, (batch,), generator=gen)
    len_x[0], len_y[0] = n, m
    mx = torch.arange(n)[None] < len_x[:, None]
    my = torch.arange(m)[None] < len_y[:, None]
    x = torch.where(mx[..., None], x, torch.full_like(x, float("nan")))
    y = torch.where(my[..., None], y, torch.full_like(y, float("nan")))
    wx, wy = random_weights(gen, batch, n), random_weights(gen, batch, m)
    a, b = normalised(wx * mx), normalised(wy * my)
    return x.to(dtype), y.to(dtype), mx, my, wx, wy, a, b


def distill(x, y, mx, my, wx, wy, backend, cost="cosine", eps=0.05, n_iters=ITERS, **kw):
    return ot_distill_loss(x.to(DEVICE), y.to(DEVICE), mx.to(DEVICE), my.to(DEVICE),
                           student_weights=wx.to(DEVICE), teacher_weights=wy.to(DEVICE),
                           cost=cost, eps=eps, n_iters=n_iters, reduction="none",
                           backend=backend, **kw)


@pytest.mark.parametrize("n,m,d", [(1, 7, 5), (7, 33, 100), (33, 7, 33)])
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_loss_and_gradients_match_pot(gen, path, n, m, d, cost):
    """Ragged masks, weights, NaN padding, odd sizes, grad_output != 1, both inputs."""
    x, y, mx, my, wx, wy, a, b = ragged_problem(gen, 3, n, m, d, dtype=torch.float32)
    eps = 0.05 if cost == "cosine" else 0.5 * d
    xg, yg = x.to(DEVICE).requires_grad_(), y.to(DEVICE).requires_grad_()
    loss = distill(xg, yg, mx, my, wx, wy, "triton", cost, eps)
    upstream = torch.tensor([1.0, -0.5, 2.0])
    (loss * upstream.to(DEVICE)).sum().backward()
    ref_loss, ref_gx, ref_gy = pot_envelope(x.nan_to_num(), y.nan_to_num(), a, b, cost, eps,
                                            ITERS, upstream)
    assert loss.dtype == torch.float32
    assert rel(loss.detach().cpu(), ref_loss) < FP32_RTOL
    assert torch.isfinite(xg.grad).all() and torch.isfinite(yg.grad).all()
    assert (xg.grad[~mx.to(DEVICE)] == 0).all() and (yg.grad[~my.to(DEVICE)] == 0).all()
    assert rel(xg.grad.cpu(), ref_gx) < 10 * FP32_RTOL
    assert rel(yg.grad.cpu(), ref_gy) < 10 * FP32_RTOL


@pytest.mark.parametrize("n,m", [(1, 1), (7, 33), (33, 7)])
def test_dense_cost_plan_potentials_marginals_match_pot(gen, cost_path, n, m):
    """``sinkhorn(cost, backend="triton")``: the kernels read the given cost in place."""
    cost = torch.rand(2, n, m, generator=gen, dtype=torch.float64) * 2
    a = normalised(random_weights(gen, 2, n, zeros=min(2, n - 1)))
    b = normalised(random_weights(gen, 2, m, zeros=min(1, m - 1)))
    cost[:, a[0] == 0] = float("nan")  # massless rows may hold anything
    res = sinkhorn(cost.float().to(DEVICE), a.float().to(DEVICE), b.float().to(DEVICE),
                   eps=0.1, n_iters=ITERS, backend="triton")
    for k in range(2):
        ref = pot_iterate(cost[k].nan_to_num(), a[k], b[k], 0.1, ITERS)
        plan = res.plan[k].cpu()
        assert rel(plan, ref["plan"]) < FP32_RTOL
        assert abs(res.loss[k].item() - ref["loss"]) <= FP32_RTOL * ref["loss"] + 1e-7
        assert_close_up_to_constant(res.f[k].cpu(), ref["f"], atol=1e-5)
        assert_close_up_to_constant(res.g[k].cpu(), ref["g"], atol=1e-5)
        # Rows match a after the final row update; columns match POT's iterate.
        np.testing.assert_allclose(plan.sum(1), a[k], rtol=0, atol=1e-6)
        np.testing.assert_allclose(plan.sum(0), ref["plan"].sum(0), rtol=0, atol=1e-6)
        assert (plan[a[k] == 0] == 0).all()
    torch.testing.assert_close(res.iterations.cpu(), torch.full((2,), ITERS))


def test_a_frozen_teacher_gets_the_same_student_gradient(gen, path):
    """Only the student requires grad: the backward runs one plan product, with the same
    result as when both sides do."""
    x, y, mx, my, wx, wy, _, _ = ragged_problem(gen, 2, 17, 9, 24, dtype=torch.float32)
    grads = []
    for teacher_grad in (True, False):
        xg = x.to(DEVICE, copy=True).requires_grad_()
        yg = y.to(DEVICE, copy=True).requires_grad_(teacher_grad)
        distill(xg, yg, mx, my, wx, wy, "triton").sum().backward()
        assert (yg.grad is None) != teacher_grad
        grads.append(xg.grad)
    assert torch.equal(grads[0], grads[1])


def test_dense_cost_gradient_is_the_plan(gen):
    cost = torch.rand(2, 7, 9, generator=gen).to(DEVICE).requires_grad_()
    res = sinkhorn(cost, n_iters=ITERS, backend="triton")
    upstream = torch.tensor([0.3, -2.0], device=DEVICE)
    (res.loss * upstream).sum().backward()
    torch.testing.assert_close(cost.grad, upstream[:, None, None] * res.plan, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_against_the_pytorch_yardstick(gen, path, dtype):
    """Three ways: kernel and PyTorch backend on the same rounded inputs, POT on the exact
    ones; the kernel's error must be within YARDSTICK x PyTorch's + ATOL[dtype]."""
    x, y, mx, my, wx, wy, a, b = ragged_problem(gen, 2, 17, 40, 48)
    upstream = torch.tensor([1.0, 0.5])
    ref_loss, ref_gx, ref_gy = pot_envelope(x.nan_to_num(), y.nan_to_num(), a, b, "cosine",
                                            0.05, ITERS, upstream)
    errors = {}
    for backend in ("torch", "triton"):
        xd = x.to(dtype).to(DEVICE).requires_grad_()
        yd = y.to(dtype).to(DEVICE).requires_grad_()
        loss = distill(xd, yd, mx, my, wx, wy, backend)
        (loss * upstream.to(DEVICE)).sum().backward()
        assert loss.dtype == torch.float32 and xd.grad.dtype == dtype
        errors[backend] = [rel(loss.detach().cpu(), ref_loss), rel(xd.grad.float().cpu(), ref_gx),
                           rel(yd.grad.float().cpu(), ref_gy)]
    for name, kernel, torch_err in zip(("loss", "grad x", "grad y"), errors["triton"],
                                       errors["torch"]):
        assert kernel <= YARDSTICK * torch_err + ATOL[dtype], (name, kernel, torch_err)


def test_mixed_half_dtypes_and_strided_inputs(gen, path):
    """fp16 student with a bf16 teacher (the dot meets in fp32), and inputs read through
    strides (feature stride != 1, batch-transposed views) without copies."""
    x64, y64 = random_tokens(gen, 2, 9, 40), random_tokens(gen, 2, 21, 40)
    ones_x, ones_y = torch.ones(2, 9, dtype=torch.bool), torch.ones(2, 21, dtype=torch.bool)
    w_x, w_y = torch.ones(2, 9), torch.ones(2, 21)
    ref = distill(x64, y64, ones_x, ones_y, w_x, w_y, "torch")
    mixed = distill(x64.half(), y64.bfloat16(), ones_x, ones_y, w_x, w_y, "triton")
    assert rel(mixed.cpu(), ref) < 1e-2
    xs = x64.float().transpose(1, 2).contiguous().transpose(1, 2)  # stride along d is 9
    ys = y64.float().transpose(0, 1).contiguous().transpose(0, 1)  # batch stride 40
    assert xs.stride(2) != 1 and ys.stride(0) == 40
    strided = distill(xs, ys, ones_x, ones_y, w_x, w_y, "triton")
    assert rel(strided.cpu(), ref) < FP32_RTOL


def test_tolerance_stops_each_problem_on_its_own(gen, cost_path):
    """Same rule as the PyTorch loop: checks every 10 iterations, frozen per problem."""
    cost = torch.rand(3, 20, 24, generator=gen) * 2
    cost[0] = 1.0  # all-equal costs: converged after one iteration
    tol = 1e-4
    res = sinkhorn(cost.to(DEVICE), eps=0.1, n_iters=200, tol=tol, backend="triton")
    ref = sinkhorn(cost, eps=0.1, n_iters=200, tol=tol, backend="torch")
    iters = res.iterations.cpu()
    assert iters[0] == 10
    assert (iters[1:] > 10).all() and (iters % 10 == 0).all() and (iters < 200).all()
    assert ((iters - ref.iterations).abs() <= 10).all()
    assert (res.marginal_error.cpu() <= 2 * tol).all()
    unreached = sinkhorn(cost[1:2].to(DEVICE), eps=0.1, n_iters=17, tol=1e-12, backend="triton")
    assert unreached.iterations.item() == 17


def test_tolerance_stops_the_distillation_loss_like_the_pytorch_backend(gen, path):
    x, y, mx, my, wx, wy, _, _ = ragged_problem(gen, 3, 12, 20, 16, dtype=torch.float32)
    kwargs = dict(eps=0.1, n_iters=300, tol=1e-5)
    ref = distill(x, y, mx, my, wx, wy, "torch", **kwargs)
    assert rel(distill(x, y, mx, my, wx, wy, "triton", **kwargs).cpu(), ref) < 1e-4


@pytest.mark.parametrize("solver", ["fused", "strips", "dense", "streaming"])
def test_no_host_sync_without_tol(gen, solver, monkeypatch):
    """tol=None, check_inputs=False: forward and backward never read a tensor on the host, so
    the sequence can be captured in a CUDA graph."""
    use_path(solver, monkeypatch)
    x = random_tokens(gen, 2, 9, 16, dtype=torch.float32).to(DEVICE).requires_grad_()
    y = random_tokens(gen, 2, 12, 16, dtype=torch.float32).to(DEVICE).requires_grad_()
    mask = torch.ones(2, 9, dtype=torch.bool, device=DEVICE)
    mask[1, 5:] = False

    def refuse(*_args, **_kwargs):
        raise AssertionError("host sync")

    for name in ("__bool__", "item", "tolist", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    loss = ot_distill_loss(x, y, mask, n_iters=12, backend="triton", check_inputs=False)
    loss.backward()
    monkeypatch.undo()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_module_and_padding_equal_the_unpadded_problem(gen):
    """The nn.Module form, and a padded problem equals the same problem without padding."""
    x, y, mx, my, wx, wy, _, _ = ragged_problem(gen, 2, 12, 20, 16, dtype=torch.float32)
    module = OTDistillLoss(backend="triton", n_iters=ITERS, reduction="none")
    padded = module(x.to(DEVICE), y.to(DEVICE), mx.to(DEVICE), my.to(DEVICE), wx.to(DEVICE),
                    wy.to(DEVICE))
    k = 1
    lx, ly = int(mx[k].sum()), int(my[k].sum())
    alone = module(x[k, :lx].to(DEVICE), y[k, :ly].to(DEVICE),
                   student_weights=wx[k, :lx].to(DEVICE), teacher_weights=wy[k, :ly].to(DEVICE))
    torch.testing.assert_close(padded[k], alone, rtol=1e-5, atol=0)


def test_the_four_solvers_agree_on_the_same_problem(gen, monkeypatch):
    x, y, mx, my, wx, wy, _, _ = ragged_problem(gen, 2, 33, 7, 40, dtype=torch.float32)
    losses = {}
    for name in ("fused", "strips", "dense", "streaming"):
        use_path(name, monkeypatch)
        losses[name] = distill(x, y, mx, my, wx, wy, "triton")
    for name in ("strips", "dense", "streaming"):
        torch.testing.assert_close(losses[name], losses["fused"], rtol=1e-5, atol=0)


@pytest.mark.parametrize("n,m,d,strip", [(33, 40, 24, 1024), (7, 70, 9, 512)])
def test_strips_across_several_strips_match_pot(gen, monkeypatch, n, m, d, strip):
    """The strip mode where a problem spans several strips, the last one partial (33 x 40:
    three strips of 16 rows x 64 columns; 7 x 70: two of 4 x 128; a quarter of the rows on the
    unaligned dense cost), with ragged masks, weights and NaN padding: loss, gradients, and the
    plan and potentials of the dense-cost mode, against POT."""
    use_path("strips", monkeypatch)
    monkeypatch.setattr(sinkhorn_fused, "STRIP_TILE", strip)
    cfg = sinkhorn_fused.strip_config(n, m)
    assert n > cfg.block_n and n % cfg.block_n and cfg.block_m >= m  # a partial last strip
    x, y, mx, my, wx, wy, a, b = ragged_problem(gen, 2, n, m, d, dtype=torch.float32)
    xg, yg = x.to(DEVICE).requires_grad_(), y.to(DEVICE).requires_grad_()
    loss = distill(xg, yg, mx, my, wx, wy, "triton")
    upstream = torch.tensor([1.0, -0.5])
    (loss * upstream.to(DEVICE)).sum().backward()
    ref_loss, ref_gx, ref_gy = pot_envelope(x.nan_to_num(), y.nan_to_num(), a, b, "cosine",
                                            0.05, ITERS, upstream)
    assert rel(loss.detach().cpu(), ref_loss) < FP32_RTOL
    assert rel(xg.grad.cpu(), ref_gx) < 10 * FP32_RTOL
    assert rel(yg.grad.cpu(), ref_gy) < 10 * FP32_RTOL
    cost = cost_matrix(x.detach().nan_to_num(), y.detach().nan_to_num(), "cosine")
    res = sinkhorn(cost.float().to(DEVICE), a.float().to(DEVICE), b.float().to(DEVICE),
                   eps=0.05, n_iters=ITERS, backend="triton")
    for k in range(2):
        ref = pot_iterate(cost[k], a[k], b[k], 0.05, ITERS)
        assert rel(res.plan[k].cpu(), ref["plan"]) < FP32_RTOL
        assert_close_up_to_constant(res.f[k].cpu(), ref["f"], atol=1e-5)
        assert_close_up_to_constant(res.g[k].cpu(), ref["g"], atol=1e-5)


def test_streaming_primitive_matches_the_pytorch_one(gen):
    """TritonStreamingSoftMin against StreamingSoftMin in the generic loop: potentials, plan,
    loss and the plan products the SoftMin interface promises."""
    from optical_ops.costs import factorise
    from optical_ops.sinkhorn_loop import run_sinkhorn
    from optical_ops.softmin_streaming import StreamingSoftMin
    from optical_ops.softmin_triton import TritonStreamingSoftMin

    x, y, _, _, _, _, a, b = ragged_problem(gen, 2, 9, 12, 16, dtype=torch.float32)
    x, y, a, b = x.to(DEVICE), y.to(DEVICE), a.float().to(DEVICE), b.float().to(DEVICE)
    fc = factorise(x, y, "cosine", a > 0, b > 0)
    ref = StreamingSoftMin(fc, a, b, 0.1)
    op = TritonStreamingSoftMin(a, b, 0.1, fc=fc)  # the kernels read the same factors
    got, want = run_sinkhorn(op, 15, None), run_sinkhorn(ref, 15, None)
    f, g = op.potentials(got.f_state, got.g_state)
    torch.testing.assert_close(f, want.f_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(g, want.g_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(op.plan(f, g), ref.plan(f, g), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(op.loss(f, g), ref.loss(f, g), rtol=1e-5, atol=0)
    scales = (fc.x, fc.y, fc.row_scale, fc.col_scale)
    for mine, theirs in zip(op.plan_products(f, g, *scales), ref.plan_products(f, g, *scales)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_block_size_choice():
    cfg = sinkhorn_fused.fused_config(32, 32, 768, torch.float32)
    assert (cfg.block_n, cfg.block_m, cfg.num_warps) == (32, 32, 4)
    cfg = sinkhorn_fused.fused_config(33, 100, 1024, torch.bfloat16)
    assert (cfg.block_n, cfg.block_m, cfg.block_d, cfg.num_warps) == (64, 128, 32, 8)
    assert sinkhorn_fused.fused_config(128, 128, 64, torch.float32) is None
    assert sinkhorn_fused.fused_config(1, 1, 1, torch.float32).block_n == 16  # tl.dot minimum
    # Strips hold whole rows: 8192 entries on aligned rows, 2048 on unaligned ones.
    for n, m, blocks in ((128, 128, (64, 128)), (256, 256, (32, 256)), (200, 50, (128, 64)),
                         (65, 256, (32, 256)), (7, 70, (8, 128))):
        cfg = sinkhorn_fused.strip_config(n, m)
        assert (cfg.block_n, cfg.block_m, cfg.num_warps, cfg.max_registers) == (*blocks, 8, 255)
    assert sinkhorn_fused.strip_config(200, 50, aligned=False).block_n == 32
    assert sinkhorn_fused.strip_config(257, 16) is None
    assert sinkhorn_fused.strip_config(16, 257) is None


def test_the_cost_built_for_the_strips_has_aligned_rows(gen):
    """cost_matrix pads rows to 16 entries (a strided view), which rows_aligned recognises."""
    from optical_ops.costs import NORM_FLOOR
    from optical_ops.kernels.cost_tile import dense_operands
    from optical_ops.kernels.sinkhorn_streaming import cost_matrix as kernel_cost_matrix

    x, y = random_tokens(gen, 2, 5, 12, dtype=torch.float32), random_tokens(gen, 2, 19, 12)
    y = y.float()
    valid_x, valid_y = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 19, dtype=torch.bool)
    ops = embedding_operands(x.to(DEVICE), y.to(DEVICE), "cosine", valid_x.to(DEVICE),
                             valid_y.to(DEVICE), NORM_FLOOR)
    log_w = torch.zeros(2, 5, device=DEVICE), torch.zeros(2, 19, device=DEVICE)
    built = kernel_cost_matrix(ops, *log_w)
    assert built.shape == (2, 5, 19) and built.stride() == (5 * 32, 32, 1)
    torch.testing.assert_close(built.cpu(), cost_matrix(x, y, "cosine"), rtol=0, atol=1e-6)
    assert sinkhorn_fused.rows_aligned(dense_operands(built))
    assert not sinkhorn_fused.rows_aligned(dense_operands(built.contiguous()))


@pytest.mark.parametrize("n,m,solver", [
    (64, 128, "registers"), (128, 64, "registers"), (65, 128, "strips"), (256, 256, "strips"),
    (200, 50, "strips"), (257, 64, "streaming"), (32, 257, "streaming"),
])
def test_dispatch_by_problem_size(n, m, solver):
    """The real thresholds, read off the dispatch plan, and the launches the planned primitive
    makes (recorded on meta tensors: nothing runs)."""
    from optical_ops.costs import factorise
    from optical_ops.dispatch import solver_plan
    from optical_ops.kernels._launch import recording
    from optical_ops.sinkhorn_loop import run_sinkhorn
    from optical_ops.softmin_triton import triton_softmin

    batch = 3
    planned = solver_plan(batch, n, m, 64, device=DEVICE, backend="triton").solver
    assert planned == {"registers": "triton-fused", "strips": "triton-strips",
                       "streaming": "triton-dense"}[solver]
    x = torch.empty(batch, n, 64, device="meta")
    y = torch.empty(batch, m, 64, device="meta")
    a, b = torch.empty(batch, n, device="meta"), torch.empty(batch, m, device="meta")
    with recording() as launches:
        fc = factorise(x, y, "cosine", a > 0, b > 0, sync_ok=False)
        run_sinkhorn(triton_softmin(planned, a, b, 0.05, fc=fc), 5, None)
    kernels = [(r.kernel.fn.__name__, r.meta.get("RESIDENT")) for r in launches]
    if solver == "registers":
        assert kernels == [("_sinkhorn_fused_kernel", True)]
    elif solver == "strips":
        assert kernels == [("_cost_matrix_kernel", None), ("_sinkhorn_fused_kernel", False)]
    else:  # dense cost built once, then one launch per half-iteration
        assert kernels == [("_cost_matrix_kernel", None)] + [("_softmin_kernel", None)] * 10


def test_strips_need_the_dense_cost_to_fit_the_budget(monkeypatch):
    """Past DENSE_MAX_BYTES the strip range streams over recomputed tiles instead."""
    from optical_ops.dispatch import solver_plan

    monkeypatch.setattr(BUDGET, "DENSE_MAX_BYTES", 3 * 128 * 128 * 4 - 1)
    assert solver_plan(3, 128, 128, 64, device=DEVICE, backend="triton").solver == (
        "triton-streaming")
    monkeypatch.undo()
    assert solver_plan(3, 128, 128, 64, device=DEVICE, backend="triton").solver == (
        "triton-strips")


def test_backend_resolution(monkeypatch):
    x = torch.randn(2, 5, 8)
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run: its kernels take "
                                           r"float16, bfloat16 or float32 inputs"):
        ot_distill_loss(x.double(), x.double(), backend="triton")
    with pytest.raises(ValueError, match=r"solver='streaming' runs on the 'torch' backend"):
        ot_distill_loss(x, x, backend="triton", solver="streaming")
    if DEVICE.type == "cpu":
        auto = ot_distill_loss(x, x, n_iters=5, reduction="none")  # auto on CPU: PyTorch
        torch.testing.assert_close(auto, ot_distill_loss(x, x, n_iters=5, reduction="none",
                                                         backend="torch"))
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match=r"needs CUDA tensors, got cpu tensors .*"
                                               r"TRITON_INTERPRET=1"):
            ot_distill_loss(x, x, backend="triton")


def test_fp32_dot_precision_choice(gen):
    """The fp32 cost uses 3xTF32 (DOT_PRECISION). The interpreter multiplies in full fp32, so
    the choice is checked by emulation: operands truncated to TF32 (10 mantissa bits, what the
    tensor cores read), split into head + tail for 3xTF32. On cosine costs of d = 768 tokens
    at eps = 0.05, plain TF32 errs by ~1e-4 on the cost and ~1e-3 on the plan (the exponent is
    C / eps); 3xTF32 stays at the fp32 level (~4e-8 on the cost, ~4e-7 on the plan)."""
    from optical_ops.kernels.cost_tile import DOT_PRECISION

    assert DOT_PRECISION.value == "tf32x3"

    def tf32(t):  # keep the top 10 mantissa bits
        return (t.float().view(torch.int32) & ~0x1FFF).view(torch.float32).double()

    def cosine_cost(product, x, y):
        xn, yn = x / x.norm(dim=-1, keepdim=True), y / y.norm(dim=-1, keepdim=True)
        return 1 - product(xn.float(), yn.float())

    x, y = random_tokens(gen, 32, 768), random_tokens(gen, 32, 768)
    exact = cosine_cost(lambda p, q: p.double() @ q.double().T, x, y)

    def x3(p, q):
        ph, qh = tf32(p), tf32(q)
        return ph @ qh.T + ph @ tf32(q - qh).T + tf32(p - ph) @ qh.T

    uniform = np.full(32, 1 / 32)
    ref = pot_iterate(exact, uniform, uniform, 0.05, 100)
    errors = {}
    for name, product in (("tf32", lambda p, q: tf32(p) @ tf32(q).T), ("tf32x3", x3)):
        c = cosine_cost(product, x, y)
        got = pot_iterate(c, uniform, uniform, 0.05, 100)
        errors[name] = dict(cost=float((c - exact).abs().max()), plan=rel(got["plan"], ref["plan"]),
                            loss=abs(got["loss"] / ref["loss"] - 1))
    assert errors["tf32x3"]["cost"] < 1e-6 and errors["tf32x3"]["plan"] < 1e-5
    assert errors["tf32x3"]["loss"] < 1e-6
    assert errors["tf32"]["plan"] > 100 * errors["tf32x3"]["plan"]
    assert errors["tf32"]["plan"] > 1e-4  # beyond what fp16 inputs cost (see the yardstick)


def test_kernel_operands_match_the_pytorch_factors(gen):
    """The op hands the kernels the factorised cost's own scales (one model of the cost,
    optical_ops.softmin_triton.kernel_operands); the kernel-level helper embedding_operands
    (used by the kernel tests and the compile report) computes the same statistics."""
    from optical_ops.costs import NORM_FLOOR, factorise
    from optical_ops.softmin_triton import kernel_operands

    x, y = random_tokens(gen, 2, 7, 16, dtype=torch.float32), random_tokens(gen, 2, 9, 16)
    y = y.float()
    x[0, 3] = 0.0
    valid_x, valid_y = torch.ones(2, 7, dtype=torch.bool), torch.ones(2, 9, dtype=torch.bool)
    for cost in ("cosine", "sqeuclidean"):
        fc = factorise(x, y, cost)
        ops = kernel_operands(fc)
        assert ops.x is fc.x and ops.y is fc.y
        helper = embedding_operands(x, y, cost, valid_x, valid_y, NORM_FLOOR)
        assert ops.kind == helper.kind == (COSINE if cost == "cosine" else ops.kind)
        torch.testing.assert_close(ops.x_stat, helper.x_stat)
        torch.testing.assert_close(ops.transposed().x_stat, helper.y_stat)


# ---- Launch plumbing: device guard, grid limits, argument checks (no GPU needed) ----


class _OnDevice(torch.Tensor):
    """A meta tensor that reports a CUDA device: what the launch plumbing sees of a tensor on
    another GPU, without one."""

    index = 1

    @property
    def device(self):
        return torch.device("cuda", self.index)


def _on_cuda(index, *shape):
    cls = type(f"OnCuda{index}", (_OnDevice,), {"index": index})
    return torch.Tensor._make_subclass(cls, torch.empty(*shape, device="meta"))


def test_launch_runs_on_the_device_of_its_tensors(monkeypatch):
    """Triton launches on the current device; the launch makes the tensors' device current
    (cuda:1 while cuda:0 is current), and refuses tensors spread over two devices."""
    from optical_ops.kernels import _launch

    entered, ran_inside = [], []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append(None)

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: ran_inside.append(entered[-1])

    monkeypatch.setattr(torch.cuda, "device", Guard)
    on_1 = _on_cuda(1, 2, 3)
    _launch.launch(Kernel(), (4,), (on_1, 3, 0.5), {})
    assert ran_inside == [torch.device("cuda", 1)] and entered[-1] is None
    _launch.launch(Kernel(), (4,), (torch.empty(2), 3), {})  # CPU (interpreter): no guard
    assert ran_inside[-1] is None and len(entered) == 2
    with pytest.raises(ValueError, match="several devices"):
        _launch.launch(Kernel(), (4,), (on_1, _on_cuda(0, 2, 3)), {})


@pytest.mark.parametrize("cost", ["cosine", "dense"])
def test_batches_beyond_65535_problems_fit_the_grid(cost):
    """The batch is folded into grid axis 0 (2^31 - 1 programs) in every launch, so a batch
    over the 65,535 limit of axes 1 and 2 still launches (recorded on meta tensors)."""
    from optical_ops.kernels import sinkhorn_backward, sinkhorn_streaming
    from optical_ops.kernels._launch import MAX_GRID_12, recording
    from optical_ops.kernels.cost_tile import dense_operands

    batch, n, m = 70_000, 20, 24
    log_a, log_b = torch.empty(batch, n, device="meta"), torch.empty(batch, m, device="meta")
    if cost == "dense":
        ops = dense_operands(torch.empty(batch, n, m, device="meta"))
    else:
        ops = embedding_operands(torch.empty(batch, n, 32, device="meta"),
                                 torch.empty(batch, m, 32, device="meta"), cost, log_a > 0,
                                 log_b > 0, 1e-12)
    with recording() as launches:
        sinkhorn_fused.sinkhorn_fused(ops, log_a, log_b, 0.05, 5, None, 10)
        sinkhorn_streaming.softmin(ops, log_a, log_b, log_b, 0.05)
        sinkhorn_streaming.softmin(ops.transposed(), log_b, log_a, log_a, 0.05)
        sinkhorn_streaming.transport_cost(ops, log_a, log_b, log_a, log_b, 0.05)
        if cost != "dense":
            sinkhorn_streaming.cost_matrix(ops, log_a, log_b)
            sinkhorn_backward.plan_matmul(ops, log_a, log_b, log_a, log_b, 0.05, ops.y)
    assert len(launches) == (4 if cost == "dense" else 6)
    for rec in launches:
        assert rec.grid[0] >= batch and all(g <= MAX_GRID_12 for g in rec.grid[1:]), rec.grid


def test_launchers_check_their_arguments():
    """dtype, shape, contiguity and device of every operand, before any launch (metadata
    only): the kernels index the vectors as problem * length + index."""
    from optical_ops.kernels import sinkhorn_backward, sinkhorn_streaming
    from optical_ops.kernels._launch import recording
    from optical_ops.kernels.cost_tile import dense_operands

    batch, n, m = 2, 5, 7

    def meta(*shape, dtype=torch.float32):
        return torch.empty(*shape, dtype=dtype, device="meta")

    log_a, log_b = meta(batch, n), meta(batch, m)
    ops = embedding_operands(meta(batch, n, 8), meta(batch, m, 8), "cosine", log_a > 0,
                             log_b > 0, 1e-12)
    with recording() as launches:
        with pytest.raises(ValueError, match=r"log_a must be torch.float32, got torch.float64"):
            sinkhorn_fused.sinkhorn_fused(ops, log_a.double(), log_b, 0.1, 5, None, 10)
        with pytest.raises(ValueError, match=r"log_b must have shape \(2, 7\), got \(2, 5\)"):
            sinkhorn_streaming.cost_matrix(ops, log_a, log_a)
        with pytest.raises(ValueError, match="pot must be contiguous"):
            sinkhorn_streaming.softmin(ops, log_a, log_b, meta(m, batch).t(), 0.1)
        with pytest.raises(ValueError, match=r"g is on cpu, the cost operands on meta"):
            sinkhorn_streaming.transport_cost(ops, log_a, log_b, log_a, torch.zeros(batch, m),
                                              0.1)
        with pytest.raises(ValueError, match=r"v must be torch.float16 or torch.bfloat16 or "
                                             r"torch.float32, got torch.float64"):
            sinkhorn_backward.plan_matmul(ops, log_a, log_b, log_a, log_b, 0.1,
                                          meta(batch, m, 3, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"y must have shape \(2, 7, 8\)"):
            bad = embedding_operands(meta(batch, n, 8), meta(batch, m, 9), "cosine", log_a > 0,
                                     log_b > 0, 1e-12)
            sinkhorn_streaming.softmin(bad, log_a, log_b, log_b, 0.1)
        with pytest.raises(ValueError, match="n_iters and check_every must be >= 1"):
            sinkhorn_fused.sinkhorn_fused(ops, log_a, log_b, 0.1, 0, None, 10)
        dense = dense_operands(meta(batch, n, m))
        with pytest.raises(ValueError, match="do not describe a cost"):
            sinkhorn_streaming.softmin(type(dense)(dense.kind, dense.x, None, None, None, m, n,
                                                   0, dense.dense_strides),
                                       log_b, log_a, log_a, 0.1)
    assert launches == []  # nothing launched on bad arguments


def test_dense_operands_say_what_they_hold():
    from optical_ops.kernels.cost_tile import DENSE, dense_operands

    cost = torch.empty(3, 4, 6, device="meta")
    ops = dense_operands(cost)
    assert ops.kind == DENSE and ops.cost is cost and (ops.n, ops.m, ops.d) == (4, 6, 6)
    assert ops.y is None and ops.x_stat is None and ops.y_stat is None and ops.features == 0
    t = ops.transposed()
    assert (t.n, t.m, t.d, t.dense_strides) == (6, 4, 4, (24, 1, 6)) and t.cost is cost
    assert len(ops.args()) == 10 and t.check() == cost.device
    valid = cost[..., 0] > 0
    with pytest.raises(AttributeError, match="no dense cost"):
        _ = embedding_operands(cost, cost, "cosine", valid, valid, 1e-12).cost


def test_launchers_pass_one_over_eps():
    """The kernels multiply by a host-computed 1 / eps (double, rounded once to fp32) instead
    of dividing on the device, where ``/`` is the approximate div.full.f32."""
    from optical_ops.kernels import sinkhorn_streaming
    from optical_ops.kernels._launch import recording

    log_w = torch.empty(2, 8, device="meta")
    ops = embedding_operands(torch.empty(2, 8, 4, device="meta"),
                             torch.empty(2, 8, 4, device="meta"), "cosine", log_w > 0,
                             log_w > 0, 1e-12)
    with recording() as launches:
        sinkhorn_fused.sinkhorn_fused(ops, log_w, log_w, 0.07, 5, None, 10)
        sinkhorn_streaming.softmin(ops, log_w, log_w, log_w, 0.07)
        sinkhorn_streaming.transport_cost(ops, log_w, log_w, log_w, log_w, 0.07)
    for rec in launches:
        floats = [a for a in rec.args if isinstance(a, float)]
        assert 1.0 / 0.07 in floats, rec.kernel.fn.__name__


def test_squared_distance_propagates_nan_like_torch(gen):
    """The clamp at 0 is a select, so a NaN in a token with mass gives NaN costs in the
    interpreter and on the GPU alike (tl.maximum drops NaN on the GPU only); massless NaN
    padding still gives finite costs, and negative rounding clamps to 0."""
    from optical_ops.kernels.sinkhorn_streaming import cost_matrix as kernel_cost_matrix

    x = random_tokens(gen, 1, 4, 8, dtype=torch.float32).float()
    y = torch.cat([x, random_tokens(gen, 1, 2, 8).float()], 1)  # y_j = x_j: distance 0
    x[0, 1, 3] = float("nan")  # a token with mass
    y[0, 5] = float("nan")  # padding
    valid_x = torch.ones(1, 4, dtype=torch.bool)
    valid_y = torch.tensor([[True] * 5 + [False]])
    ops = embedding_operands(x.to(DEVICE), y.to(DEVICE), "sqeuclidean", valid_x.to(DEVICE),
                             valid_y.to(DEVICE), 1e-12)
    log_a = torch.zeros(1, 4, device=DEVICE)
    log_b = torch.where(valid_y, 0.0, -torch.inf).to(DEVICE)
    c = kernel_cost_matrix(ops, log_a, log_b).cpu()
    assert torch.isnan(c[0, 1, :5]).all()
    rest = c[0, [0, 2, 3]]
    assert torch.isfinite(rest).all() and (rest >= 0).all()
    assert (rest[:, [0, 2, 3]].diagonal() < 1e-4).all()  # x_i against itself
    ref = cost_matrix(x[0, [0, 2, 3]].double(), y[0, :5].double(), "sqeuclidean")
    torch.testing.assert_close(rest[:, :5].double(), ref, rtol=1e-5, atol=1e-5)


def test_streaming_row_block_fills_the_sms():
    """Fewer programs than SMs: the row block halves down to 16 (W3: 1 x 1024 rows gives 64
    programs of 16 rows instead of 16 of 64); enough programs keep 64. Three sizes only."""
    from optical_ops.kernels.sinkhorn_streaming import stream_block_n

    assert stream_block_n(1024, 1, 132) == 16
    assert stream_block_n(16384, 1, 132) == 64
    assert stream_block_n(128, 32, 132) == 16 and stream_block_n(128, 64, 132) == 32
    assert stream_block_n(9, 1, 132) == 16
    assert {stream_block_n(n, b) for n in range(1, 5000, 37) for b in (1, 8, 64)} <= {16, 32, 64}


def test_triton_version_check():
    """triton.knobs (3.4+) is needed: an older Triton gets a clear reason (and ImportError from
    the kernel modules) instead of an AttributeError; the dispatch can fall back on it."""
    from optical_ops.kernels import MIN_TRITON, triton_unavailable_reason

    assert MIN_TRITON == (3, 4)
    assert triton_unavailable_reason() is None  # the installed one
    reason = triton_unavailable_reason("3.3.1")
    assert "triton>=3.4" in reason and "3.3.1" in reason
    assert triton_unavailable_reason("3.0.0") is not None
    for ok in ("3.4.0", "3.4.0+git1a2b3c", "3.5.0rc1", "4.0"):
        assert triton_unavailable_reason(ok) is None, ok


def test_strips_sweep_only_the_rows_with_mass(gen, monkeypatch):
    """The iterations skip the strips before the first and after the last row with mass
    (padding on either side), and the final sweep still writes f and the plan for every row:
    each problem equals itself without the padding."""
    use_path("strips", monkeypatch)
    monkeypatch.setattr(sinkhorn_fused, "STRIP_TILE", 256)  # strips of 16 rows x 16 columns
    cost = torch.rand(3, 40, 16, generator=gen) * 2
    spans = [(20, 35), (0, 40), (33, 40)]
    a = torch.zeros(3, 40)
    for k, (lo, hi) in enumerate(spans):
        a[k, lo:hi] = torch.rand(hi - lo, generator=gen) + 0.1
    a = normalised(a)
    b = normalised(torch.rand(3, 16, generator=gen) + 0.1)
    log_a = torch.log(a)
    assert sinkhorn_fused.row_span(log_a).tolist() == [list(s) for s in spans]
    res = sinkhorn(cost.to(DEVICE), a.to(DEVICE), b.to(DEVICE), eps=0.1, n_iters=ITERS,
                   backend="triton")
    assert torch.isfinite(res.f).all()
    for k, (lo, hi) in enumerate(spans):
        alone = sinkhorn(cost[k:k + 1, lo:hi].to(DEVICE), a[k:k + 1, lo:hi].to(DEVICE),
                         b[k:k + 1].to(DEVICE), eps=0.1, n_iters=ITERS, backend="triton")
        plan = res.plan[k].cpu()
        torch.testing.assert_close(plan[lo:hi], alone.plan[0].cpu(), rtol=1e-5, atol=1e-9)
        assert (plan[:lo] == 0).all() and (plan[hi:] == 0).all()
        torch.testing.assert_close(res.loss[k], alone.loss[0], rtol=1e-5, atol=0)


def test_half_values_are_exact_in_tf32(gen):
    """fp16 x bf16 costs multiply in one TF32 product (HALF_AS_TF32): both half formats fit
    TF32's 10 explicit mantissa bits and fp32's exponent range, so truncating them to TF32 (what
    the tensor cores read) changes nothing, subnormal fp16 included."""
    from optical_ops.kernels.cost_tile import HALF_AS_TF32

    assert HALF_AS_TF32.value == "tf32"
    x = torch.randn(4096, generator=gen, dtype=torch.float64) * 10.0 ** torch.randint(
        -9, 4, (4096,), generator=gen)
    for half in (torch.float16, torch.bfloat16):
        v = x.to(half).float()
        assert torch.equal((v.view(torch.int32) & ~0x1FFF).view(torch.float32), v), half


def test_dense_rows_are_read_to_their_padded_width():
    """A cost whose rows are padded by < 16 entries (what cost_matrix builds), with the padding
    of its last row inside the storage, is read to the padded width (a multiple of 16: 16-byte
    loads); a wide view or a storage that ends at the last entry is read to m only."""
    from optical_ops.kernels.cost_tile import dense_operands, readable_width

    padded = torch.empty(2, 5, 32, device="meta")[:, :, :19]
    assert readable_width(padded) == 32 and dense_operands(padded).d == 32
    assert readable_width(torch.empty(2, 5, 40, device="meta")[:, :, :10]) == 10
    tight = torch.empty(2 * 5 * 32 - 13).as_strided((2, 5, 19), (160, 32, 1))
    assert readable_width(tight) == 19
    assert readable_width(torch.empty(2, 5, 19)) == 19
    assert readable_width(torch.empty(2, 19, 5).transpose(1, 2)) == 19
