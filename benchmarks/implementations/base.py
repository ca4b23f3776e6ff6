"""The one interface every benchmarked implementation (ours and each peer) provides.

An implementation turns a :class:`~benchmarks.workloads.Problem` into two zero-argument calls:
``forward`` (the loss, no gradient) and ``forward_backward`` (the loss and its gradients w.r.t.
X and Y). Each call returns only when its work is done (device work synchronised, JAX arrays
ready), so the caller can time it with a wall clock; converting its outputs to numpy is left to
the caller, outside the timed region.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..workloads import Problem, solve_dtype


@dataclass
class Output:
    """``loss``: sum over problems of <P_b, C_b>. ``grads``: (dL/dX (B, n, d), dL/dY (B, m, d))
    as native arrays (torch or JAX), or None for a forward call."""

    loss: float
    grads: tuple[Any, Any] | None = None

    def numpy_grads(self) -> tuple[np.ndarray, np.ndarray]:
        """The gradients as numpy arrays (bfloat16 ones widened to float32, numpy has none)."""
        return tuple(np.asarray(g.detach().cpu().to(solve_dtype(g.dtype))
                                if hasattr(g, "detach") else g)
                     for g in self.grads)


@dataclass
class Calls:
    forward: Callable[[], Output]
    forward_backward: Callable[[], Output]


class Implementation(ABC):
    """One way of computing the loss. Subclasses set the class attributes below."""

    name: str  # short id, used on the command line and in the JSON
    group: str  # what ``--peers`` selects: "ours", "pot", "geomloss", "ott", "reference"
    how: str  # one line: the call being timed, for the README and the JSON
    requires: tuple[str, ...] = ()  # modules that must be importable
    ours: bool = False
    device: str = "cpu"  # "cuda": memory is the device allocator's peak, not the host's
    # Whether the first call compiles (torch.compile, jax.jit): memory is then measured on a
    # second call, and the first call's time is reported as the compile time.
    compiles: bool = False

    def unavailable(self) -> str | None:
        """Why this implementation cannot run on this machine, or None."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        return f"not installed: {', '.join(missing)}" if missing else None

    @abstractmethod
    def setup(self, problem: Problem) -> Calls:
        """Convert the inputs (untimed) and return the timed calls."""
