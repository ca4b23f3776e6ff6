r"""Small eps on short ragged problems (issue 12): the stabilised primitive against today's paths.

Workload: B = 32 pairs, lengths uniform in [8, 32] (masks), d = 384, cosine cost, float32,
eps = 0.01 and 1e-3, 200 iterations, no early stop; loss = mean <P, C>, envelope gradient.

Implementations, timed interleaved (A B C A B C ...), forward and forward+backward separately:

* ``dense-log``: ``optical_ops.ot_distill_loss`` with the dense log-domain solver (today's path
  for R/eps > 30);
* ``stabilised``: :func:`optical_ops.softmin_stabilised.stabilised_softmin` driven by
  ``run_sinkhorn``, its ``loss`` and ``plan_products`` in a small local autograd function
  (until the dispatch picks it);
* ``torch-compile``: a plain masked log-domain loop with its iteration under ``torch.compile``
  (the loop in Python, no gradient through it), then <P, C> with P detached (envelope gradient).

Also times the Sinkhorn loop alone (``iterate``) of the stabilised and the log primitive.
Run: ``python -m benchmarks.bench_small_eps [--repeats 41] [--threads 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import time

import torch

import optical_ops
from optical_ops.sinkhorn_loop import run_sinkhorn
from optical_ops.softmin_dense import DenseLogSoftMin, sanitised_cost_range
from optical_ops.softmin_stabilised import stabilised_softmin

B, MAX_LEN, MIN_LEN, D, ITERS = 32, 32, 8, 384, 200


def make_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, MAX_LEN, D, generator=gen)
    y = torch.randn(B, MAX_LEN, D, generator=gen)
    n = torch.randint(MIN_LEN, MAX_LEN + 1, (B,), generator=gen)
    m = torch.randint(MIN_LEN, MAX_LEN + 1, (B,), generator=gen)
    xm = torch.arange(MAX_LEN)[None] < n[:, None]
    ym = torch.arange(MAX_LEN)[None] < m[:, None]
    return x, y, xm, ym


def weights(mask: torch.Tensor) -> torch.Tensor:
    w = mask.float()
    return w / w.sum(1, keepdim=True)


class StabilisedLoss(torch.autograd.Function):
    """mean_b <P_b, C_b>, C = 1 - cos(x, y), solved by the stabilised primitive; the envelope
    gradient through the cosine, from ``plan_products`` (P y^, P^T x^)."""

    @staticmethod
    def forward(ctx, x, y, a, b, eps, n_iters):
        x_inv = x.norm(dim=2).clamp_min(1e-12).reciprocal()
        y_inv = y.norm(dim=2).clamp_min(1e-12).reciprocal()
        # 1 - <x, y> / (|x| |y|): the scalings on the small (B, n, m) result, no (B, n, d)
        # temporary (fresh pages cost ~2.6 us each here, NOTES O2).
        cost = torch.bmm(x, y.transpose(1, 2)).mul_(x_inv[:, :, None]).mul_(y_inv[:, None, :])
        cost = cost.neg_().add_(1.0)
        op = stabilised_softmin(cost, a, b, eps)
        res = run_sinkhorn(op, n_iters, None)
        loss = op.loss(res.f_state, res.g_state).mean()
        ctx.op = op.for_backward()
        ctx.save_for_backward(x, y, x_inv, y_inv, res.f_state, res.g_state)
        return loss

    @staticmethod
    def backward(ctx, grad):
        x, y, x_inv, y_inv, f, g = ctx.saved_tensors
        p_y, p_x, _, _ = ctx.op.plan_products(f, g, x, y, x_inv, y_inv)
        w = -grad / x.shape[0]  # dL/dC = P / B, dC/dx^ = -y^

        def through_norm(z, z_inv, dz_hat):
            """dz_hat / |z| - z <z, dz_hat> / |z|^3 (the chain rule of z / |z|), in place in
            dz_hat, which is ours (a fresh bmm result)."""
            dot = torch.linalg.vecdot(dz_hat, z, dim=2)
            dz_hat.mul_(z_inv[:, :, None])
            return dz_hat.addcmul_(z, (dot * z_inv**3)[:, :, None], value=-1.0)

        return (through_norm(x, x_inv, p_y.mul_(w)), through_norm(y, y_inv, p_x.mul_(w)),
                None, None, None, None)


def log_iteration(f, cost, log_a, log_b, eps: float):
    g = -eps * torch.logsumexp((f - cost) / eps + log_a, dim=1, keepdim=True)
    f = -eps * torch.logsumexp((g - cost) / eps + log_b, dim=2, keepdim=True)
    return f, g


def reference_loss(step, x, y, a, b, eps, n_iters):
    """The plain masked log-domain loop (``step`` compiled or not), envelope gradient."""
    cost = 1 - torch.nn.functional.normalize(x, dim=2) @ torch.nn.functional.normalize(
        y, dim=2).transpose(1, 2)
    log_a, log_b = a.log()[:, :, None], b.log()[:, None, :]
    with torch.no_grad():
        f = torch.zeros_like(log_a)
        for _ in range(n_iters):
            f, g = step(f, cost.detach(), log_a, log_b, eps)
        plan = torch.exp((f + g - cost.detach()) / eps + log_a + log_b)
    return (plan * cost).sum((1, 2)).mean()


def dense_log_loss(x, y, xm, ym, eps, n_iters):
    key = "solver" if "solver" in inspect.signature(optical_ops.ot_distill_loss).parameters \
        else "strategy"
    return optical_ops.ot_distill_loss(x, y, xm, ym, eps=eps, n_iters=n_iters,
                                       **{key: "dense-log"})


def time_interleaved(calls: dict, repeats: int) -> dict:
    """Median, min and max seconds per call, the calls interleaved round by round."""
    samples = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - t0)
    return {name: {"median": statistics.median(s), "min": min(s), "max": max(s)}
            for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.01, 1e-3])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x0, y0, xm, ym = make_problem()
    a, b = weights(xm), weights(ym)
    compiled = torch.compile(log_iteration, dynamic=False)
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "workload": dict(B=B, lengths=[MIN_LEN, MAX_LEN], d=D, iterations=ITERS),
              "results": {}}
    for eps in args.eps:
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        impls = {
            "dense-log": lambda x=x, y=y, eps=eps: dense_log_loss(x, y, xm, ym, eps, ITERS),
            "stabilised": lambda x=x, y=y, eps=eps: StabilisedLoss.apply(x, y, a, b, eps, ITERS),
            "torch-compile": lambda x=x, y=y, eps=eps: reference_loss(compiled, x, y, a, b, eps,
                                                                      ITERS),
        }
        # Agreement: each loss against the float64 log-domain solve of the same problem.
        ref = reference_loss(log_iteration, x0.double(), y0.double(), a.double(), b.double(),
                             eps, ITERS).item()
        losses = {}
        for name, call in impls.items():
            x.grad = y.grad = None
            call().backward()  # warm-up (and compile)
            losses[name] = call().item()

        def fwdbwd(call, x=x, y=y):
            x.grad = y.grad = None
            call().backward()

        def no_grad(call):
            with torch.no_grad():
                call()

        calls = {}
        for name, call in impls.items():
            calls[f"{name} fwd"] = lambda call=call: no_grad(call)
            calls[f"{name} fwd+bwd"] = lambda call=call: fwdbwd(call)
        # The loop alone, on the cost of the same problem (padded to 32 x 32).
        with torch.no_grad():
            cost = 1 - torch.nn.functional.normalize(x0, dim=2) @ torch.nn.functional.normalize(
                y0, dim=2).transpose(1, 2)
            sane = sanitised_cost_range(cost, a, b)[0]
        calls["loop stabilised"] = lambda cost=cost, eps=eps: run_sinkhorn(
            stabilised_softmin(cost, a, b, eps), ITERS, None)
        calls["loop log"] = lambda sane=sane, eps=eps: run_sinkhorn(
            DenseLogSoftMin(sane, a, b, eps), ITERS, None)
        load_before = os.getloadavg()
        times = time_interleaved(calls, args.repeats)
        load_after = os.getloadavg()
        report["results"][str(eps)] = {"times": times, "losses": losses, "float64": ref,
                                       "load": [load_before, load_after]}
        print(f"\neps = {eps}: load {load_before[0]:.2f} -> {load_after[0]:.2f}, "
              f"{args.threads} threads, median of {args.repeats} (min, max) in ms")
        for name, t in times.items():
            print(f"  {name:24s} {t['median'] * 1e3:8.2f}  ({t['min'] * 1e3:.2f}, "
                  f"{t['max'] * 1e3:.2f})")
        for kind in ("fwd", "fwd+bwd"):
            ours = times[f"stabilised {kind}"]["median"]
            print(f"  {kind}: dense-log / stabilised = "
                  f"{times[f'dense-log {kind}']['median'] / ours:.2f}x, torch-compile / "
                  f"stabilised = {times[f'torch-compile {kind}']['median'] / ours:.2f}x")
        for name, value in losses.items():
            print(f"  loss {name:14s} {value:.8f}  rel. err vs float64 "
                  f"{abs(value - ref) / ref:.1e}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
