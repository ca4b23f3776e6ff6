r"""The prepared GPU check: correctness of every Triton solver path on a real GPU, then W1-W5
timings, in one run of a few minutes (``make gpu-check``, or ``python -m benchmarks.gpu_check``).

Needs a machine with CUDA PyTorch and Triton installed; reaches no registry. POT, when
importable, adds a float64 reference and a timed peer; OTT-JAX, when importable, a timed peer.

Sections (``--sections``, default all, in this order):

* ``solvers``  every Triton solver path (fused, strips, dense, streaming) against the PyTorch
  backend in float64 on the GPU: loss and gradients of ``ot_distill_loss`` for the cosine and the
  squared-Euclidean cost, ragged masks, left padding, grad_output != 1; plan and potentials of
  ``sinkhorn`` on a dense cost.
* ``tol``      ``tol`` on every path: each problem stops on its own at a multiple of 10
  iterations, near the PyTorch backend's count, with the same loss.
* ``dtypes``   fp16, bf16, and an fp16 student with a bf16 teacher: the kernel's error against
  the float64 reference within 2x the PyTorch backend's on the same rounded inputs (+ atol).
* ``layouts``  strided inputs (feature stride != 1, batch-transposed views) read in place.
* ``streams``  a side stream, CUDA-graph capture and replay of forward and backward, and tensors
  on a non-current device (where two GPUs exist).
* ``tf32``     ``torch.backends.cuda.matmul.allow_tf32`` on and off: the Triton backend (3xTF32
  on purpose) and the PyTorch backend against the float64 reference under both.
* ``pot``      POT ``sinkhorn_log`` in float64 at a fixed iterate (when POT imports).
* ``timing``   W1-W5 (benchmarks/workloads.py) with CUDA events, forward and forward+backward,
  median of repeats: ours-Triton, ours-PyTorch on CUDA, torch.compile of the plain reference,
  POT's torch backend (ot.batch.solve_batch), OTT-JAX when it imports.

Output: one JSON (``--out``, default ``gpu_check.json``) and one table on stdout.
Time: ``--budget`` seconds in all (default 420, inside the device's 8 minutes with the start);
each section gets a share (:data:`SHARES`) and skips what would run past it, saying so.

Exit status: 0 every check that ran passed; 1 a check failed (or a section crashed); 2 bad
arguments; 3 (:data:`NO_CUDA_EXIT`) no CUDA device, nothing was run.

Bringing POT (the device has no registry): on a machine with one, in the repository root,
``echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all:
--python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 --platform
manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl POT==0.9.7.post1``; then on
the device, before the check: ``python3 -m pip install -q --no-index --no-deps --target
/tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site`` (POT needs numpy and scipy, both there).

The solver path is forced in one place, :func:`forced_path`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field

NO_CUDA_EXIT = 3
FAIL_EXIT = 1
SECTIONS = ("solvers", "tol", "dtypes", "layouts", "streams", "tf32", "pot", "timing")
# Share of the budget per section (the timing takes what the checks leave).
SHARES = {"solvers": 0.12, "tol": 0.06, "dtypes": 0.06, "layouts": 0.03, "streams": 0.06,
          "tf32": 0.04, "pot": 0.03, "timing": 0.60}
DEFAULT_BUDGET = 420.0
PATHS = ("fused", "strips", "dense", "streaming")
# A problem each path can run (padded n x m x d): the fused tile fits in registers, the strips
# fit 256 x 256, the dense and streaming paths are past the strip bounds.
PATH_SHAPES = {"fused": (24, 20, 64), "strips": (100, 90, 64), "dense": (300, 270, 48),
               "streaming": (300, 270, 48)}
# --smoke: shapes small enough for Triton's interpreter (a CPU run of the script's own code).
SMOKE_SHAPES = {"fused": (9, 7, 16), "strips": (20, 18, 16), "dense": (20, 18, 16),
                "streaming": (20, 18, 16)}
# Where the checks run: "cuda", or "cpu" for --device cpu under TRITON_INTERPRET=1.
DEVICE = "cuda"
ITERS = 30
# What the GPU path promises against float64 for fp32 inputs (README, "Triton backend"):
# relative to the largest entry. Approximate ex2, FMA contraction and 3xTF32 products give
# ~4e-6 per plan entry where the interpreter shows ~1e-6.
FP32_LOSS_RTOL = 2e-5
FP32_GRAD_RTOL = 2e-4
# Half inputs: the kernel's error <= YARDSTICK x the PyTorch backend's on the same rounded
# inputs + ATOL (as tests/test_triton_kernels.py).
YARDSTICK = 2.0
HALF_ATOL = {"float16": 2e-5, "bfloat16": 1e-4, "mixed": 1e-4}
TIMED_WORKLOADS = ("W1", "W2", "W3", "W4", "W5")
TIMING_PEERS = ("ours-triton", "ours-torch", "torch-compile", "pot-torch-batch", "ott-jax")


@dataclass
class Check:
    section: str
    name: str
    status: str  # "pass" | "FAIL" | "skip"
    detail: str = ""
    values: dict = field(default_factory=dict)


class Budget:
    """Deadlines: the whole run and the current section."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.clock = clock
        self.end = clock() + seconds
        self.section_end = self.end

    def start_section(self, share: float, remaining_shares: float) -> float:
        """Give the section its share of what is left (scaled so unused time rolls over)."""
        left = max(0.0, self.end - self.clock())
        seconds = left * share / max(remaining_shares, share)
        self.section_end = self.clock() + seconds
        return seconds

    def left(self) -> float:
        return min(self.section_end, self.end) - self.clock()

    def allows(self, estimate: float = 0.0) -> bool:
        return self.left() > estimate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON written")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help="seconds for the whole run (default %(default)s)")
    parser.add_argument("--workloads", default=",".join(TIMED_WORKLOADS),
                        help="timed workloads (default %(default)s)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: a smoke run of the script under TRITON_INTERPRET=1 (the "
                             "sections that need CUDA skip)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes (for --device cpu)")
    args = parser.parse_args(argv)
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        parser.error("--device cpu needs TRITON_INTERPRET=1 in the environment")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if not args.budget > 0:
        parser.error("--budget must be positive")
    args.sections = [s for s in SECTIONS if s in sections]  # the documented order
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    return args


# ---- the package under test ---------------------------------------------------------------


def import_package():
    """optical_ops, also from a plain checkout (kernels/ is installed as optical_ops.kernels by
    setup.py's package_dir; without an install it is mapped here)."""
    try:
        return importlib.import_module("optical_ops")
    except ImportError:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for name in [k for k in sys.modules if k == "optical_ops" or k.startswith("optical_ops.")]:
            del sys.modules[name]
        spec = importlib.util.spec_from_file_location(
            "optical_ops.kernels", os.path.join(root, "kernels", "__init__.py"),
            submodule_search_locations=[os.path.join(root, "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["optical_ops.kernels"] = module
        spec.loader.exec_module(module)
        if root not in sys.path:
            sys.path.insert(0, root)
        package = importlib.import_module("optical_ops")
        package.kernels = module
        return package


@contextlib.contextmanager
def forced_path(path: str, dense_cost: bool = False):
    """Keyword arguments that make ``ot_distill_loss``/``sinkhorn`` run the Triton solver
    ``path`` (one of :data:`PATHS`). The one place that knows how: the ``solver=`` option of
    the dispatch plan where the package has it, else the module constants the tests
    monkeypatch (restored on exit). ``dense_cost``: the call gives a cost matrix, for which
    streaming means streaming over it ("dense")."""
    import optical_ops

    if dense_cost and path == "streaming":
        path = "dense"

    if all("solver" in inspect.signature(fn).parameters
           for fn in (optical_ops.ot_distill_loss, optical_ops.sinkhorn)):
        yield dict(backend="triton", solver=f"triton-{path}")
        return
    from optical_ops.kernels import sinkhorn_fused

    patches = []
    if path != "fused":
        patches.append((sinkhorn_fused, "MAX_TILE", 0))
    if path in ("dense", "streaming"):
        patches.append((sinkhorn_fused, "MAX_STRIP_COLS", 0))
    if path == "streaming":
        budget_home = next(importlib.import_module(f"optical_ops.{name}")
                           for name in ("dispatch", "autograd")
                           if hasattr(importlib.import_module(f"optical_ops.{name}"),
                                      "DENSE_MAX_BYTES"))
        patches.append((budget_home, "DENSE_MAX_BYTES", 0))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, value in patches:
            setattr(mod, name, value)
        yield dict(backend="triton")
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


# ---- problems and comparisons ---------------------------------------------------------------


def rel(x, ref) -> float:
    """max |x - ref| / max |ref| in float64 (inf when x has a non-finite entry)."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    if not bool(x.isfinite().all()):
        return math.inf
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def problem(torch, batch, n, m, d, seed=0, left_padding=False):
    """Embeddings (float64, NaN in the padding), ragged masks (problem 0 full), weights."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(batch, m, d, generator=gen, dtype=torch.float64)
    len_x = torch.randint(1, n + 1, (batch,), generator=gen)
    len_y = torch.randint(1, m + 1, (batch,), generator=gen)
    len_x[0], len_y[0] = n, m
    if left_padding:
        mx = torch.arange(n)[None] >= (n - len_x)[:, None]
        my = torch.arange(m)[None] >= (m - len_y)[:, None]
    else:
        mx = torch.arange(n)[None] < len_x[:, None]
        my = torch.arange(m)[None] < len_y[:, None]
    x = torch.where(mx[..., None], x, torch.nan)
    y = torch.where(my[..., None], y, torch.nan)
    wx = torch.rand(batch, n, generator=gen, dtype=torch.float64) + 0.5
    wy = torch.rand(batch, m, generator=gen, dtype=torch.float64) + 0.5
    return {k: v.to(DEVICE) for k, v in dict(x=x, y=y, mx=mx, my=my, wx=wx, wy=wy).items()}


def loss_and_grads(torch, p, dtype, cost="cosine", eps=0.05, n_iters=None, y_dtype=None,
                   transform=None, **options):
    """(loss (B,), dL/dx, dL/dy) of sum_k u_k L_k with u = (1, -0.5, 2, ...)."""
    from optical_ops import ot_distill_loss

    x = p["x"].detach().to(dtype).requires_grad_()
    y = p["y"].detach().to(y_dtype or dtype).requires_grad_()
    xs, ys = (x, y) if transform is None else transform(x, y)
    loss = ot_distill_loss(xs, ys, p["mx"], p["my"], student_weights=p["wx"].float(),
                           teacher_weights=p["wy"].float(), cost=cost, eps=eps,
                           n_iters=n_iters or ITERS, reduction="none", **options)
    upstream = torch.tensor([1.0, -0.5, 2.0, 0.75] * 4, device=loss.device)[:loss.shape[0]]
    (loss * upstream.to(loss.dtype)).sum().backward()
    return loss.detach(), x.grad.nan_to_num(), y.grad.nan_to_num()


def errors(got, ref) -> dict:
    return {name: rel(g, r) for name, g, r in zip(("loss", "grad_x", "grad_y"), got, ref)}


def fp32_check(section, name, errs, extra=None) -> Check:
    ok = errs["loss"] <= FP32_LOSS_RTOL and max(errs["grad_x"], errs["grad_y"]) <= FP32_GRAD_RTOL
    detail = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
    return Check(section, name, "pass" if ok else "FAIL", detail, dict(errs, **(extra or {})))


# ---- sections -------------------------------------------------------------------------------


def section_solvers(torch, budget):
    from optical_ops import sinkhorn

    for path in PATHS:
        n, m, d = PATH_SHAPES[path]
        for cost in ("cosine", "sqeuclidean"):
            for left in (False, True):
                name = f"{path} {cost}{' left-padded' if left else ''}"
                if not budget.allows():
                    yield Check("solvers", name, "skip", "time")
                    continue
                p = problem(torch, 3, n, m, d, seed=len(name), left_padding=left)
                eps = 0.05 if cost == "cosine" else 0.5 * d
                ref = loss_and_grads(torch, p, torch.float64, cost, eps, backend="torch")
                with forced_path(path) as options:
                    got = loss_and_grads(torch, p, torch.float32, cost, eps, **options)
                yield fp32_check("solvers", name, errors(got, ref))
        if not budget.allows():
            yield Check("solvers", f"{path} dense cost", "skip", "time")
            continue
        gen = torch.Generator().manual_seed(7)
        c = (torch.rand(2, n, m, generator=gen, dtype=torch.float64) * 2).to(DEVICE)
        ref = sinkhorn(c, eps=0.1, n_iters=ITERS, backend="torch")
        with forced_path(path, dense_cost=True) as options:
            got = sinkhorn(c.float(), eps=0.1, n_iters=ITERS, **options)
        f_shift = (got.f.double() - ref.f).mean(1, keepdim=True)  # potentials up to a constant
        errs = {"plan": rel(got.plan, ref.plan), "loss": rel(got.loss, ref.loss),
                "f": rel(got.f.double() - f_shift, ref.f)}
        ok = errs["plan"] <= FP32_LOSS_RTOL and errs["loss"] <= FP32_LOSS_RTOL
        yield Check("solvers", f"{path} dense cost", "pass" if ok else "FAIL",
                    " ".join(f"{k}={v:.1e}" for k, v in errs.items()), errs)


def section_tol(torch, budget):
    from optical_ops import sinkhorn

    gen = torch.Generator().manual_seed(3)
    for path in PATHS:
        if not budget.allows():
            yield Check("tol", path, "skip", "time")
            continue
        n, m, _ = PATH_SHAPES[path]
        c = (torch.rand(3, n, m, generator=gen) * 2).to(DEVICE)
        c[0] = 1.0  # converged after the first check
        ref = sinkhorn(c.double(), eps=0.1, n_iters=400, tol=1e-5, backend="torch")
        with forced_path(path, dense_cost=True) as options:
            got = sinkhorn(c, eps=0.1, n_iters=400, tol=1e-5, **options)
        iters, ref_iters = got.iterations.cpu(), ref.iterations.cpu()
        loss_err = rel(got.loss, ref.loss)
        ok = (int(iters[0]) == 10 and bool((iters % 10 == 0).all())
              and bool(((iters - ref_iters).abs() <= 10).all()) and loss_err <= 1e-4)
        yield Check("tol", path, "pass" if ok else "FAIL",
                    f"iterations {iters.tolist()} (torch {ref_iters.tolist()}) "
                    f"loss={loss_err:.1e}", dict(iterations=iters.tolist(), loss=loss_err))


def section_dtypes(torch, budget):
    for path in PATHS:
        n, m, d = PATH_SHAPES[path]
        p = problem(torch, 2, n, m, d, seed=11)
        ref = None
        for label, dtype, y_dtype in (("float16", torch.float16, None),
                                      ("bfloat16", torch.bfloat16, None),
                                      ("mixed", torch.float16, torch.bfloat16)):
            name = f"{path} {label}"
            if not budget.allows():
                yield Check("dtypes", name, "skip", "time")
                continue
            ref = ref or loss_and_grads(torch, p, torch.float64, backend="torch")
            theirs = errors(loss_and_grads(torch, p, dtype, y_dtype=y_dtype, backend="torch"),
                            ref)
            with forced_path(path) as options:
                ours = errors(loss_and_grads(torch, p, dtype, y_dtype=y_dtype, **options), ref)
            bad = [k for k in ours if ours[k] > YARDSTICK * theirs[k] + HALF_ATOL[label]]
            yield Check("dtypes", name, "FAIL" if bad else "pass",
                        " ".join(f"{k}={ours[k]:.1e} (torch {theirs[k]:.1e})" for k in ours),
                        dict(triton=ours, torch=theirs))


def section_layouts(torch, budget):
    def strided(x, y):  # feature stride != 1, and a batch-transposed view
        xs = x.transpose(1, 2).contiguous().transpose(1, 2)
        ys = y.transpose(0, 1).contiguous().transpose(0, 1)
        return xs, ys

    for path in PATHS:
        if not budget.allows():
            yield Check("layouts", f"{path} strided", "skip", "time")
            continue
        n, m, d = PATH_SHAPES[path]
        p = problem(torch, 2, n, m, d, seed=5)
        ref = loss_and_grads(torch, p, torch.float64, backend="torch")
        with forced_path(path) as options:
            got = loss_and_grads(torch, p, torch.float32, transform=strided, **options)
        yield fp32_check("layouts", f"{path} strided", errors(got, ref))


def section_streams(torch, budget):
    from optical_ops import ot_distill_loss

    if DEVICE != "cuda":
        yield Check("streams", "streams, graphs, devices", "skip", "needs CUDA")
        return
    for path in PATHS:
        n, m, d = PATH_SHAPES[path]
        p = problem(torch, 2, n, m, d, seed=9)
        with forced_path(path) as options:

            def run(x, y, p=p, options=options):
                q = {k: v.to(x.device) for k, v in p.items()}
                return ot_distill_loss(x, y, q["mx"], q["my"], student_weights=q["wx"].float(),
                                       teacher_weights=q["wy"].float(), n_iters=ITERS,
                                       reduction="none", check_inputs=False, **options)

            x, y = p["x"].float().nan_to_num(), p["y"].float().nan_to_num()
            eager = run(x, y)
            if budget.allows():  # a side stream that the inputs' stream must be waited for
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    on_side = run(x, y)
                torch.cuda.current_stream().wait_stream(side)
                err = rel(on_side, eager)
                yield Check("streams", f"{path} side stream", "pass" if err <= 1e-6 else "FAIL",
                            f"vs default stream {err:.1e}", dict(err=err))
            if budget.allows():
                yield _graph_check(torch, path, run, x, y)
            if torch.cuda.device_count() < 2:
                yield Check("streams", f"{path} non-current device", "skip", "one GPU")
            elif budget.allows():
                x1, y1 = x.to("cuda:1"), y.to("cuda:1")
                with torch.cuda.device(0):  # cuda:0 current, the tensors on cuda:1
                    other = run(x1, y1)
                torch.cuda.synchronize(1)
                err = rel(other, eager)
                yield Check("streams", f"{path} non-current device",
                            "pass" if err <= 1e-6 else "FAIL", f"cuda:1 from cuda:0 {err:.1e}")


def _graph_check(torch, path, run, x, y) -> Check:
    """Capture forward and backward in a CUDA graph, replay on new inputs, compare."""
    name = f"{path} CUDA graph"
    try:
        sx, sy = x.clone().requires_grad_(), y.clone().requires_grad_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: compile and allocate outside the capture
                sx.grad = sy.grad = None
                run(sx, sy).sum().backward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        sx.grad = sy.grad = None
        with torch.cuda.graph(graph):
            loss = run(sx, sy)
            loss.sum().backward()
        with torch.no_grad():
            sx.copy_(x * 1.5)
            sy.copy_(y.flip(1))
        graph.replay()
        torch.cuda.synchronize()
        ex, ey = (x * 1.5).requires_grad_(), y.flip(1).requires_grad_()
        eager = run(ex, ey)
        eager.sum().backward()
        errs = {"loss": rel(loss, eager), "grad_x": rel(sx.grad, ex.grad),
                "grad_y": rel(sy.grad, ey.grad)}
        ok = max(errs.values()) <= 1e-5
        return Check("streams", name, "pass" if ok else "FAIL",
                     " ".join(f"{k}={v:.1e}" for k, v in errs.items()), errs)
    except Exception as exc:  # a failed capture is the finding
        return Check("streams", name, "FAIL", f"{type(exc).__name__}: {exc}"[:300])


def section_tf32(torch, budget):
    if DEVICE != "cuda":
        yield Check("tf32", "allow_tf32", "skip", "needs CUDA")
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for path in ("fused", "strips"):
            n, m, d = PATH_SHAPES[path]
            p = problem(torch, 3, n, m, 768 if path == "fused" else d, seed=13)
            ref = loss_and_grads(torch, p, torch.float64, backend="torch")
            for on in (False, True):
                name = f"{path} allow_tf32={on}"
                if not budget.allows():
                    yield Check("tf32", name, "skip", "time")
                    continue
                torch.backends.cuda.matmul.allow_tf32 = on
                theirs = errors(loss_and_grads(torch, p, torch.float32, backend="torch"), ref)
                with forced_path(path) as options:
                    ours = errors(loss_and_grads(torch, p, torch.float32, **options), ref)
                check = fp32_check("tf32", name, ours, {"torch": theirs})
                check.detail += " | torch " + " ".join(f"{k}={v:.1e}" for k, v in theirs.items())
                yield check
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def section_pot(torch, budget):
    if importlib.util.find_spec("ot") is None:
        yield Check("pot", "POT sinkhorn_log", "skip", "POT not importable (see --help)")
        return
    import numpy as np
    import ot

    from optical_ops import sinkhorn

    for path in PATHS:
        if not budget.allows():
            yield Check("pot", path, "skip", "time")
            continue
        n, m, _ = PATH_SHAPES[path]
        gen = torch.Generator().manual_seed(17)
        c = torch.rand(n, m, generator=gen, dtype=torch.float64) * 2
        a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
        b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
        a, b = a / a.sum(), b / b.sum()
        log_a = np.log(a.numpy())
        plan = ot.sinkhorn(a.numpy(), b.numpy(), c.numpy(), 0.1, method="sinkhorn_log",
                           numItermax=ITERS, stopThr=0.0,
                           warmstart=(log_a, np.zeros(m)))  # from f = 0, column update first
        with forced_path(path, dense_cost=True) as options:
            got = sinkhorn(*(t[None].float().to(DEVICE) for t in (c, a, b)), eps=0.1,
                           n_iters=ITERS, **options)
        err = rel(got.plan[0], torch.as_tensor(plan))
        yield Check("pot", path, "pass" if err <= FP32_LOSS_RTOL else "FAIL",
                    f"plan={err:.1e}", dict(plan=err))


def _cuda_implementations():
    """The timed peers, on CUDA: the benchmark harness's calls with the device switched."""
    import torch

    from benchmarks.implementations import IMPLEMENTATIONS
    from benchmarks.implementations.ours import _calls
    from benchmarks.implementations.reference import reference_solve, sinkhorn_iteration
    from benchmarks.implementations.torch_calls import envelope, torch_calls

    cuda = torch.device("cuda")

    def ours(backend):
        return lambda problem: _calls(problem, backend, cuda)

    def compiled(problem):
        torch.compiler.reset()
        step = torch.compile(sinkhorn_iteration, dynamic=False)
        return torch_calls(problem, reference_solve(problem, step), batched=True, device=cuda)

    def pot_batch(problem):
        from ot.batch import solve_batch

        def plan(cost, a, b):
            return solve_batch(cost, problem.eps, a, b, max_iter=problem.iterations, tol=0.0,
                               method="log_sinkhorn", grad="detach").plan

        return torch_calls(problem, envelope(plan), batched=True, device=cuda)

    peers = {"ours-triton": (ours("triton"), None), "ours-torch": (ours("torch"), None),
             "torch-compile": (compiled, None),
             "pot-torch-batch": (pot_batch, None if importlib.util.find_spec("ot") else
                                 "POT not importable"),
             "ott-jax": (IMPLEMENTATIONS["ott-jax"].setup,
                         IMPLEMENTATIONS["ott-jax"].unavailable())}
    return peers


def _time_ms(torch, call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def section_timing(torch, budget, workloads=TIMED_WORKLOADS):
    from benchmarks.workloads import WORKLOADS, make_problem

    if DEVICE != "cuda":
        yield Check("timing", "W1-W5", "skip", "needs CUDA")
        return
    peers = _cuda_implementations()
    problems = {name: make_problem(WORKLOADS[name]) for name in workloads}
    # Peer by peer, ours first: when the time runs out, the peers at the end lose workloads.
    for peer in TIMING_PEERS:
        for name, problem_ in problems.items():
            label = f"{name} {peer}"
            setup, missing = peers[peer]
            if missing:
                yield Check("timing", label, "skip", missing)
                continue
            if not budget.allows(5.0):
                yield Check("timing", label, "skip", "time")
                continue
            try:
                calls = setup(problem_)
                values = {}
                for kind in ("forward", "forward_backward"):
                    call = getattr(calls, kind)
                    first = _time_ms(torch, call, 1)[0]  # warm-up (and compile)
                    per_call = max(first, 1e-3) / 1e3
                    repeats = int(min(20, max(1, budget.left() / 4 / max(per_call, 1e-3))))
                    times = sorted(_time_ms(torch, call, repeats))
                    values[kind] = times[len(times) // 2]
                    values[f"{kind}_first"] = first
                    values[f"{kind}_repeats"] = repeats
                yield Check("timing", label, "pass",
                            f"fwd {values['forward']:.3f} ms  fwd+bwd "
                            f"{values['forward_backward']:.3f} ms", values)
            except Exception as exc:  # a peer that fails is reported, not fatal
                status = "FAIL" if peer.startswith("ours") else "skip"
                yield Check("timing", label, status, f"{type(exc).__name__}: {exc}"[:300])
            finally:
                torch.cuda.empty_cache()


RUNNERS = {"solvers": section_solvers, "tol": section_tol, "dtypes": section_dtypes,
           "layouts": section_layouts, "streams": section_streams, "tf32": section_tf32,
           "pot": section_pot, "timing": section_timing}


# ---- driver ---------------------------------------------------------------------------------


def environment(torch) -> dict:
    import triton

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "triton": triton.__version__}
    for mod in ("ot", "jax", "ott"):
        if importlib.util.find_spec(mod) is not None:
            versions[mod] = getattr(importlib.import_module(mod), "__version__", "?")
    env = {"device": f"{platform.processor() or 'cpu'} (Triton interpreter)", "versions": versions,
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, sms=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count())
    return env


def print_table(checks: list[Check], out=sys.stdout) -> None:
    rows = [("section", "check", "status", "detail")] + [
        (c.section, c.name, c.status, c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths)) + "  " + r[3], file=out)


def run(args, torch) -> tuple[int, dict]:
    budget = Budget(args.budget)
    checks: list[Check] = []
    seconds = {}
    remaining = sum(SHARES[s] for s in args.sections)
    for section in args.sections:
        allotted = budget.start_section(SHARES[section], remaining)
        remaining -= SHARES[section]
        started = time.monotonic()
        runner = RUNNERS[section]
        try:
            extra = (args.workloads,) if section == "timing" else ()
            for check in runner(torch, budget, *extra):
                checks.append(check)
                print(f"[{section}] {check.name}: {check.status} {check.detail}", flush=True)
        except Exception as exc:  # the other sections still run
            checks.append(Check(section, "section crashed", "FAIL",
                                f"{type(exc).__name__}: {exc}"[:300],
                                {"traceback": traceback.format_exc()[-3000:]}))
            print(checks[-1].values["traceback"], file=sys.stderr, flush=True)
        seconds[section] = dict(allotted=round(allotted, 1),
                                used=round(time.monotonic() - started, 1))
    code = FAIL_EXIT if any(c.status == "FAIL" for c in checks) else 0
    report = {"environment": environment(torch), "budget_s": args.budget, "sections": seconds,
              "checks": [asdict(c) for c in checks], "exit": code}
    return code, report


def main(argv=None) -> int:
    global DEVICE
    args = parse_args(argv)
    import torch

    DEVICE = args.device
    if args.smoke:
        PATH_SHAPES.update(SMOKE_SHAPES)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}); nothing was run. "
              f"Exit {NO_CUDA_EXIT}.", file=sys.stderr)
        return NO_CUDA_EXIT
    import_package()
    code, report = run(args, torch)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    print()
    print_table([Check(**c) for c in report["checks"]])
    print(f"\n{report['environment']['device']}; JSON: {args.out}; exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
