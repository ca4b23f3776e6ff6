"""Test helpers: POT's log-domain Sinkhorn in float64 as the reference, and random problems."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

# Converged solves: iterate until POT's marginal error is at round-off.
CONVERGED_ITERS = 20000


def pot_sinkhorn(cost, a=None, b=None, eps=0.05, n_iters=None):
    """POT ``sinkhorn_log`` on one problem, float64. Returns plan, f, g, loss as numpy arrays.

    f and g follow the package's convention P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps), on the
    points with positive weight (NaN elsewhere). ``n_iters=None`` runs to convergence.
    """
    ot = pytest.importorskip("ot")
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape
    a = np.full(n, 1.0) if a is None else np.asarray(a, dtype=np.float64)
    b = np.full(m, 1.0) if b is None else np.asarray(b, dtype=np.float64)
    a, b = a / a.sum(), b / b.sum()
    iters, stop = (CONVERGED_ITERS, 1e-14) if n_iters is None else (n_iters, 0.0)
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.simplefilter("ignore")
        plan, log = ot.sinkhorn(a, b, cost, eps, method="sinkhorn_log", numItermax=iters,
                                stopThr=stop, log=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(a > 0, eps * (log["log_u"] - np.log(a)), np.nan)
        g = np.where(b > 0, eps * (log["log_v"] - np.log(b)), np.nan)
    return {"plan": plan, "f": f, "g": g, "loss": float((plan * cost).sum()), "a": a, "b": b}


def assert_close_up_to_constant(x, y, atol):
    """x - y is constant on the entries where both are finite."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    diff = x[keep] - y[keep]
    assert diff.size > 0
    assert np.abs(diff - diff.mean()).max() <= atol, np.abs(diff - diff.mean()).max()


def rel_err(x, ref) -> float:
    x = torch.as_tensor(x, dtype=torch.float64)
    ref = torch.as_tensor(ref, dtype=torch.float64)
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def random_tokens(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def random_weights(gen, *shape, zeros: int = 0):
    """Positive weights in [0.2, 1.2) with ``zeros`` entries per row set to 0 (not the first)."""
    w = torch.rand(*shape, generator=gen, dtype=torch.float64) + 0.2
    if zeros:
        w[..., 1 : 1 + zeros] = 0.0
    return w


def masked_weights(gen, batch, n, lengths, holes: int = 0):
    """(batch, n) normalised random weights on a prefix of each length (padding after it), with
    ``holes`` zero weights at random places inside each prefix (never all of it)."""
    w = random_weights(gen, batch, n)
    w[torch.arange(n)[None, :] >= torch.as_tensor(lengths)[:, None]] = 0.0
    for row, length in zip(w, torch.as_tensor(lengths).tolist() if holes else []):
        row[torch.randperm(length, generator=gen)[:min(holes, length - 1)]] = 0.0
    return w / w.sum(1, keepdim=True)
