"""Unbalanced OT (``tau``) and the debiased Sinkhorn divergence (``debias``), against POT."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from reference import pot_sinkhorn, random_tokens, random_weights, rel_err

from optical_ops import cost_matrix, ot_distill_loss, sinkhorn

# Self-transport problems stall near 1e-12 marginal error in float64 (round-off).
CONVERGED = dict(n_iters=20000, tol=1e-10)
SOLVERS = ["dense", "dense-stabilised", "dense-log", "streaming"]


def pot_unbalanced(cost, a, b, eps, tau):
    ot = pytest.importorskip("ot")
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ot.unbalanced.sinkhorn_unbalanced(
            a / a.sum(), b / b.sum(), np.asarray(cost, dtype=np.float64), eps, tau,
            method="sinkhorn", reg_type="kl", numItermax=100000, stopThr=1e-15,
        )


@pytest.mark.parametrize("tau", [0.05, 1.0])
@pytest.mark.parametrize("n,m", [(7, 33), (33, 7), (1, 5)])
def test_unbalanced_plan_matches_pot(gen, tau, n, m):
    cost = cost_matrix(random_tokens(gen, n, 16), random_tokens(gen, m, 16))
    a, b = random_weights(gen, n), random_weights(gen, m)
    res = sinkhorn(cost, a, b, eps=0.1, tau=tau, **CONVERGED)
    ref = pot_unbalanced(cost, a, b, 0.1, tau)
    assert rel_err(res.plan, ref) < 1e-6
    assert abs(res.loss.item() - (ref * cost.numpy()).sum()) < 1e-6 * res.loss.item()
    assert res.plan.sum() < 1.0  # mass is destroyed where transport is expensive


def test_large_tau_recovers_balanced_ot(gen):
    cost = cost_matrix(random_tokens(gen, 9, 16), random_tokens(gen, 12, 16))
    balanced = sinkhorn(cost, eps=0.05, **CONVERGED)
    relaxed = sinkhorn(cost, eps=0.05, tau=1e7, **CONVERGED)
    assert rel_err(relaxed.plan, balanced.plan) < 1e-5


@pytest.mark.parametrize("solver", SOLVERS)
def test_unbalanced_distill_loss_and_gradient(gen, solver):
    x = random_tokens(gen, 2, 7, 16).requires_grad_()
    y = random_tokens(gen, 2, 12, 16)
    loss = ot_distill_loss(x, y, eps=0.1, tau=0.5, reduction="sum", solver=solver,
                           **CONVERGED)
    loss.backward()
    xr = x.detach().requires_grad_()
    total = 0.0
    for i in range(2):
        c = cost_matrix(xr[i], y[i])
        plan = pot_unbalanced(c.detach(), np.ones(7), np.ones(12), 0.1, 0.5)
        total = total + (torch.as_tensor(plan) * c).sum()
    total.backward()
    assert rel_err(loss.detach(), total.detach()) < 1e-6
    assert rel_err(x.grad, xr.grad) < 1e-6


def entropic_value(cost, a=None, b=None, eps=0.05):
    """POT's converged plan and OT_eps = <P, C> + eps KL(P | a b^T), float64."""
    ref = pot_sinkhorn(cost, a, b, eps)
    plan, ab = ref["plan"], np.outer(ref["a"], ref["b"])
    keep = plan > 0
    kl = (plan[keep] * np.log(plan[keep] / ab[keep])).sum() - plan.sum() + ab.sum()
    return plan, ref["loss"] + eps * kl


def test_debiased_divergence_matches_pot(gen):
    x = random_tokens(gen, 2, 7, 16)
    y = random_tokens(gen, 2, 9, 16)
    wx = random_weights(gen, 2, 7, zeros=1)
    upstream = torch.tensor([0.7, -1.3], dtype=torch.float64)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    values, surrogate = [], 0.0
    for i in range(2):
        value = 0.0
        for p, q, wp, wq, coef in ((xr, yr, wx[i], None, 1.0), (xr, xr, wx[i], wx[i], -0.5),
                                   (yr, yr, None, None, -0.5)):
            c = cost_matrix(p[i], q[i])
            plan, v = entropic_value(c.detach(), wp, wq)
            value += coef * v
            # Envelope gradient: d OT_eps / dC = P for each of the three terms.
            surrogate = surrogate + upstream[i] * coef * (torch.as_tensor(plan) * c).sum()
        values.append(value)
    surrogate.backward()
    assert min(values) > 0
    for solver in SOLVERS:
        xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
        s = ot_distill_loss(xs, ys, student_weights=wx, debias=True, reduction="none",
                            solver=solver, **CONVERGED)
        (s * upstream).sum().backward()
        assert rel_err(s.detach(), torch.tensor(values, dtype=torch.float64)) < 1e-6
        assert rel_err(xs.grad, xr.grad) < 1e-6
        assert rel_err(ys.grad, yr.grad) < 1e-6


def test_divergence_vanishes_on_identical_token_sets(gen):
    x = random_tokens(gen, 3, 11, 16)
    w = random_weights(gen, 3, 11)
    options = dict(eps=0.5, reduction="none", **CONVERGED)
    s = ot_distill_loss(x, x.clone(), student_weights=w, teacher_weights=w, debias=True,
                        **options)
    torch.testing.assert_close(s, torch.zeros_like(s), rtol=0, atol=1e-12)
    # ... while the transport cost between identical sets is not 0: the entropic blur.
    blurred = ot_distill_loss(x, x.clone(), student_weights=w, teacher_weights=w, **options)
    assert (blurred > 0.1).all()


def test_option_errors():
    x, y = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"tau must be None \(balanced OT\) or a finite number"):
        ot_distill_loss(x, y, tau=0.0)
    with pytest.raises(TypeError, match=r"tau must be None or a Python float"):
        ot_distill_loss(x, y, tau="1")
    with pytest.raises(ValueError, match=r"debias=True is defined for balanced OT only"):
        ot_distill_loss(x, y, tau=1.0, debias=True)
    with pytest.raises(TypeError, match=r"debias must be a bool"):
        ot_distill_loss(x, y, debias=1)
    with pytest.raises(ValueError, match=r"tau is supported by the PyTorch backend only"):
        sinkhorn(torch.rand(3, 4), tau=1.0, backend="triton")
