r"""The one place that decides what runs: backend, solver and why.

Every call of :func:`~optical_ops.ot_distill_loss` and :func:`~optical_ops.sinkhorn` asks
:func:`solver_plan` for a :class:`SolverPlan`; nothing else in the package chooses a solver.
The choice reads only sizes, device, dtype and options (never tensor values), so asking costs
nothing and can be done without running anything::

    >>> solver_plan(32, 20, 24, 768)                       # doctest: +SKIP
    SolverPlan(backend='torch', solver='dense', buckets=True, reason='...')

Solvers (:data:`SOLVERS` is the capability table):

* PyTorch backend, any device: ``dense`` (the cost (B, n, m) stored; the scaling domain when the
  cost range allows it, see :func:`dense_domain`, else the log domain), ``dense-scaling``,
  ``dense-log`` (forced domains), ``streaming`` (embeddings only: the cost recomputed in row
  strips, never stored).
* Triton backend, CUDA tensors (or the CPU under ``TRITON_INTERPRET=1``): ``triton-fused`` (one
  launch, the cost tile in registers), ``triton-strips`` (one launch over a dense cost built once,
  swept in row strips), ``triton-dense`` (one launch per half-iteration over a dense cost built
  once), ``triton-streaming`` (one launch per half-iteration, cost tiles recomputed from the
  embeddings).

``solver="auto"`` picks by size (:func:`_auto_solver`). Ragged batches of embeddings are solved
in length buckets (:mod:`.ragged`), each bucket planned again for its own extents, whenever the
call may read values on the host (``check_inputs=True``): with ``check_inputs=False`` nothing in
forward or backward reads a tensor on the host (``tol=None``), so buckets and the data-dependent
dense domain are replaced by their value-free choices.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ._validation import check_choice, compute_dtype

BACKENDS = ("auto", "torch", "triton")

# Largest dense cost (B n m entries at the compute dtype's size) that the automatic choice
# stores; beyond it the cost is streamed. Governs both backends.
DENSE_MAX_BYTES = 256 * 2**20

# Largest cost range over eps (R / eps) for which the scaling domain is used, per compute
# dtype: with f = 0 to start, every scaling and soft-min sum stays in [e^{-2R/eps}, m e^{2R/eps}]
# (see :mod:`.softmin_dense`), well inside the dtype's range below these.
SCALING_MAX_RANGE = {torch.float32: 30.0, torch.float64: 300.0}

# The cosine cost 1 - cos lies in [0, 2] whatever the data: the range bound used when values
# may not be read (check_inputs=False).
COSINE_RANGE = 2.0

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class Capability:
    """What a solver supports. ``inputs``: "embeddings" and/or "cost" (a dense cost matrix)."""

    backend: str
    inputs: tuple[str, ...]
    unbalanced: bool  # tau
    debias: bool  # needs the entropic value, i.e. the plan's marginals
    summary: str


SOLVERS = {
    "dense": Capability("torch", ("embeddings", "cost"), True, True,
                        "cost stored; scaling domain when R/eps allows it, else stabilised "
                        "(native CPU loop) or log domain"),
    "dense-scaling": Capability("torch", ("embeddings", "cost"), False, True,
                                "cost stored; kernel exp(-C/eps) mat-vecs (native CPU loop)"),
    "dense-stabilised": Capability("torch", ("embeddings", "cost"), True, True,
                                   "cost stored; mat-vecs on an absorbed kernel at any eps "
                                   "(native CPU loop)"),
    "dense-log": Capability("torch", ("embeddings", "cost"), True, True,
                            "cost stored; log-sum-exp per half-iteration, any eps"),
    "streaming": Capability("torch", ("embeddings",), True, True,
                            "cost recomputed in row strips, O((n + m) d) memory"),
    "triton-fused": Capability("triton", ("embeddings", "cost"), False, False,
                               "one launch, cost tile in registers"),
    "triton-strips": Capability("triton", ("embeddings", "cost"), False, False,
                                "dense cost built once, one launch sweeping row strips"),
    "triton-dense": Capability("triton", ("embeddings", "cost"), False, False,
                               "dense cost built once, one launch per half-iteration"),
    "triton-streaming": Capability("triton", ("embeddings",), False, False,
                                   "cost tiles recomputed, one launch per half-iteration"),
}


# The solvers that ``solver="auto"`` resolves to inside :func:`forced_solver` (innermost
# last). A plain list, not a ContextVar: torch.compile traces reading it.
_FORCED: list[str] = []


@contextmanager
def forced_solver(name: str) -> Iterator[None]:
    """Inside the block, calls with ``solver="auto"`` run solver ``name`` wherever its backend
    is the one chosen and it takes the input (embeddings or a dense cost); elsewhere "auto"
    decides as usual. For tests and tools that drive code they cannot pass ``solver=`` to
    (a trainer, a benchmark harness). Process-wide, not per thread."""
    check_choice("solver", name, tuple(SOLVERS))
    _FORCED.append(name)
    try:
        yield
    finally:
        _FORCED.pop()


@dataclass(frozen=True)
class SolverPlan:
    """The decision for one call: run ``solver`` on ``backend``; ``buckets``: a ragged batch is
    split into length buckets, each planned again for its own extents; ``reason`` says why."""

    backend: str
    solver: str
    buckets: bool
    reason: str


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype | None = None):
    """Why the Triton backend cannot run on ``device`` with ``dtype`` inputs, or None: no
    triton, or one older than the kernels need, or tensors it cannot take."""
    from .kernels import triton_unavailable_reason as kernels_unavailable

    missing = kernels_unavailable()
    if missing is not None:
        return missing
    interpret = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    if device.type != "cuda" and not (device.type == "cpu" and interpret):
        return (f"it needs CUDA tensors, got {device.type} tensors (on a CPU, set "
                "TRITON_INTERPRET=1 before importing optical_ops to run Triton's interpreter)")
    if dtype is not None and dtype not in TRITON_DTYPES:
        return f"its kernels take float16, bfloat16 or float32 inputs, got {dtype}"
    return None


def dense_fits(batch: int, n: int, m: int, dtype: torch.dtype) -> bool:
    """The dense cost (B, n, m) at ``dtype`` fits :data:`DENSE_MAX_BYTES`."""
    return batch * n * m * (torch.finfo(dtype).bits // 8) <= DENSE_MAX_BYTES


def _auto_solver(backend: str, batch: int, n: int, m: int, d: int | None,
                 dtype: torch.dtype) -> tuple[str, str]:
    """(solver, reason) for ``solver="auto"``."""
    size = f"{batch} x {n} x {m}"
    if backend == "torch":
        if d is None:
            return "dense", "a dense cost was given"
        if dense_fits(batch, n, m, compute_dtype(dtype)):
            return "dense", f"the {size} cost fits DENSE_MAX_BYTES"
        return "streaming", f"the {size} cost exceeds DENSE_MAX_BYTES"
    from .kernels.sinkhorn_fused import fused_config, strip_config

    if fused_config(n, m, d or 0, dtype) is not None:
        return "triton-fused", f"a {n} x {m} tile fits in registers"
    fits = d is None or dense_fits(batch, n, m, torch.float32)
    if strip_config(n, m) is not None and fits:
        return "triton-strips", f"{n} x {m} is within the strip bounds"
    if fits:
        return "triton-dense", f"past the strip bounds; the {size} cost fits DENSE_MAX_BYTES"
    return "triton-streaming", f"the {size} cost exceeds DENSE_MAX_BYTES"


def check_request(backend: str = "auto", solver: str = "auto", *, tau: float | None = None,
                  debias: bool = False, kind: str = "embeddings") -> None:
    """The checks of a requested backend and solver that need no tensor: names, the solver's
    backend, and what it supports (``kind``: "embeddings" or "cost")."""
    check_choice("backend", backend, BACKENDS)
    check_choice("solver", solver, ("auto", *SOLVERS))
    needs_torch = _needs_torch(tau, debias)
    if backend == "triton" and needs_torch:
        verb = "is" if len(needs_torch) == 1 else "are"
        raise ValueError(f"{' and '.join(needs_torch)} {verb} supported by the PyTorch backend "
                         "only (the Triton kernels have no damping or entropic value yet); use "
                         "backend='torch' or 'auto'")
    if solver == "auto":
        return
    capability = SOLVERS[solver]
    if backend not in ("auto", capability.backend):
        raise ValueError(f"solver={solver!r} runs on the {capability.backend!r} backend, "
                         f"not backend={backend!r}")
    if kind not in capability.inputs:
        raise ValueError(f"solver={solver!r} needs embeddings; a dense cost was given")
    if tau is not None and not capability.unbalanced:
        raise ValueError(f"solver={solver!r} does not support unbalanced OT (tau)")
    if debias and not capability.debias:
        raise ValueError(f"solver={solver!r} does not support debias=True")


def _needs_torch(tau, debias) -> list[str]:
    return [name for name, on in (("tau", tau is not None), ("debias", debias)) if on]


def _backend(backend: str, solver: str, device: torch.device, dtype: torch.dtype,
             needs_torch: list[str]) -> tuple[str, str]:
    """(backend, reason) for a request that passed :func:`check_request`."""
    if solver != "auto":
        return SOLVERS[solver].backend, f"solver={solver!r}"
    if backend == "torch":
        return "torch", "backend='torch'"
    if backend == "auto" and device.type != "cuda":
        return "torch", f"{device.type} tensors"
    reason = triton_unavailable_reason(device, dtype)
    if backend == "triton":
        if reason is not None:
            raise RuntimeError(f"backend='triton' cannot run: {reason}; use backend='torch'")
        return "triton", "backend='triton'"
    if reason is not None:
        return "torch", f"Triton cannot run: {reason}"
    if needs_torch:
        return "torch", f"{' and '.join(needs_torch)}: PyTorch backend only"
    return "triton", "CUDA tensors"


def solver_plan(
    batch: int,
    n: int,
    m: int,
    d: int | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    solver: str = "auto",
    tau: float | None = None,
    debias: bool = False,
    check_inputs: bool = True,
) -> SolverPlan:
    """The plan for B problems of n x m tokens with d features (``d=None``: a dense cost).

    Args:
        batch, n, m, d: sizes (padded); ``d`` is None when the cost matrix itself is given.
        device, dtype: of the inputs (the promoted dtype of student and teacher).
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``.
        solver: ``"auto"`` or a key of :data:`SOLVERS`.
        tau, debias, check_inputs: as in :func:`~optical_ops.ot_distill_loss`.

    Raises ValueError/RuntimeError when the requested backend or solver cannot run the call.
    """
    kind = "cost" if d is None else "embeddings"
    check_request(backend, solver, tau=tau, debias=debias, kind=kind)
    device = torch.device(device)
    use, why = _backend(backend, solver, device, dtype, _needs_torch(tau, debias))
    if use == "triton" and solver != "auto":
        reason = triton_unavailable_reason(device, dtype)
        if reason is not None:
            raise RuntimeError(f"solver={solver!r} cannot run: {reason}")
    forced = _FORCED[-1] if _FORCED else None
    if solver == "auto" and forced is not None and SOLVERS[forced].backend == use and (
            kind in SOLVERS[forced].inputs):
        solver, why = forced, f"{why}; forced_solver({forced!r})"
    if solver == "auto":
        solver, size_reason = _auto_solver(use, batch, n, m, d, dtype)
        why = f"{why}; {size_reason}"
    buckets = kind == "embeddings" and check_inputs and batch > 1
    return SolverPlan(use, solver, buckets, why)


def dense_domain(solver: str, cost_range, eps: float, dtype: torch.dtype, tau: float | None,
                 stabilised_native: bool = False) -> str:
    """"scaling", "stabilised" or "log" for a dense PyTorch solver.

    ``cost_range``: the largest R = max C - min C over the batch's entries with mass, a
    zero-argument callable reading it (one host sync; called only when it decides anything), or
    None when values may not be read: then the cosine bound :data:`COSINE_RANGE` is passed by
    the caller, or the log domain is taken. ``"dense"`` takes the scaling domain when R/eps is
    within :data:`SCALING_MAX_RANGE` and the problem is balanced (unbalanced OT is not invariant
    to the cost shift the scaling form relies on); otherwise the stabilised domain when its
    native loop runs (``stabilised_native``: CPU fp32/fp64, extension built, values readable:
    it reads a few numbers on the host), else the log domain.
    """
    if solver == "dense-scaling":
        if tau is not None:
            raise ValueError("unbalanced OT (tau) runs in the log or stabilised domain only")
        return "scaling"
    if solver in ("dense-log", "dense-stabilised"):
        return solver.removeprefix("dense-")
    if tau is None and cost_range is not None:
        spread = cost_range() if callable(cost_range) else cost_range
        if spread / eps <= SCALING_MAX_RANGE[dtype]:
            return "scaling"
    return "stabilised" if stabilised_native else "log"
