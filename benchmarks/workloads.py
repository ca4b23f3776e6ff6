r"""The benchmark problems W1-W9 and the inputs every implementation receives.

Each problem is entropic OT between the token sets of a batch: X (B, n, d) and Y (B, m, d),
float32 standard normal from a fixed seed, cosine cost C_ij = 1 - <x_i/|x_i|, y_j/|y_j|>,
uniform weights over the real tokens, eps = 0.05 (W6, W7: the small eps at which a plan is close
to an alignment, 0.01 and 0.001) and a fixed number of Sinkhorn iterations.
The loss is sum_b <P_b, C_b>. A ragged workload draws each problem's lengths n_b, m_b uniformly
in [``min_len``, n]; its padded rows are random like the real ones and carry no mass.

Two workloads leave the protocol on purpose, for the regime users are in:

* W8 (``dtype = bfloat16``): X and Y are the float32 draws rounded to bfloat16, as a bf16
  encoder hands them over, and the gradients come back in bfloat16. Implementations driven from
  PyTorch differentiate through their own cast; POT numpy and OTT get float32 copies of the
  rounded values (neither takes bfloat16 arrays). The float64 reference solves the rounded
  values exactly.
* W9 (``tol``): every implementation stops at its own check of POT's rule, the l2 norm of the
  column-marginal error |P^T 1 - b| <= tol, within ``iterations`` (a maximum). The work is then
  what each needs to reach the same accuracy, not a fixed count; the floor counts the
  iterations the float64 reference needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

EPS = 0.05
SEED = 0


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    n: int
    m: int
    d: int
    iterations: int
    stands_for: str
    min_len: int | None = None  # ragged: lengths uniform in [min_len, n] / [min_len, m]
    recompute_floor: bool = False  # floor for a solver that may not store the (B, n, m) cost
    eps: float = EPS
    dtype: torch.dtype = torch.float32  # of X and Y
    tol: float | None = None  # stop at l2 column-marginal error <= tol; ``iterations``: a cap

    @property
    def ragged(self) -> bool:
        return self.min_len is not None

    def shape(self) -> str:
        lengths = f"<={self.n}" if self.ragged else f"{self.n}"
        iters = f"iters={self.iterations}" if self.tol is None else (
            f"tol={self.tol:g} (<= {self.iterations} iters)")
        extras = "" if self.eps == EPS else f" eps={self.eps:g}"
        if self.dtype != torch.float32:
            extras += f" {str(self.dtype).removeprefix('torch.')}"
        return (f"B={self.batch} n={lengths} m={'<=' if self.ragged else ''}{self.m} "
                f"d={self.d} {iters}{extras}")


WORKLOADS = {
    w.name: w
    for w in (
        Workload("W1", 64, 32, 32, 768, 100, "a distillation batch of 32-token queries"),
        Workload("W2", 32, 128, 128, 768, 100, "padded sentence pairs, lengths in [16, 128]",
                 min_len=16),
        Workload("W3", 1, 1024, 1024, 768, 100, "one long document pair"),
        Workload("W4", 1, 4096, 4096, 256, 100, "a large alignment"),
        Workload("W5", 1, 16384, 16384, 64, 10, "too big for a dense cost (fp32 C is 1 GiB)",
                 recompute_floor=True),
        # Issue 12: short e5-small-sized sentence batches at small eps (R / eps up to 2000).
        Workload("W6", 32, 32, 32, 384, 200, "short ragged sentences at eps = 0.01",
                 min_len=8, eps=0.01),
        Workload("W7", 32, 32, 32, 384, 200, "short ragged sentences at eps = 0.001",
                 min_len=8, eps=0.001),
        Workload("W8", 32, 32, 32, 384, 100, "short ragged sentences from a bf16 encoder",
                 min_len=8, dtype=torch.bfloat16),
        Workload("W9", 32, 32, 32, 384, 1000, "short ragged sentences at eps = 0.01 to tol 1e-4",
                 min_len=8, eps=0.01, tol=1e-4),
        # --quick only: W3 at a quarter of the size.
        Workload("W3-quick", 1, 512, 512, 768, 100, "W3 reduced for --quick"),
    )
}
FULL_RUN = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", "W9")
QUICK_RUN = ("W1", "W3-quick")


def solve_dtype(dtype: torch.dtype) -> torch.dtype:
    """What inputs of ``dtype`` are computed in: float32 for bfloat16, else their own."""
    return torch.promote_types(dtype, torch.float32)


@dataclass
class Problem:
    """Inputs of one workload. ``x_len``/``y_len`` (B,) are the real token counts."""

    workload: Workload
    x: torch.Tensor
    y: torch.Tensor
    x_len: torch.Tensor
    y_len: torch.Tensor

    @property
    def eps(self) -> float:
        return self.workload.eps

    @property
    def iterations(self) -> int:
        """The fixed iteration count, or with :attr:`tol` the most a solver may run."""
        return self.workload.iterations

    @property
    def tol(self) -> float | None:
        return self.workload.tol

    @property
    def solve_dtype(self) -> torch.dtype:
        return solve_dtype(self.x.dtype)

    def _real_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.arange(self.x.shape[1]) < self.x_len[:, None],
                torch.arange(self.y.shape[1]) < self.y_len[:, None])

    def masks(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """(B, n), (B, m) bool masks of the real tokens; ``(None, None)`` when not ragged."""
        return self._real_tokens() if self.workload.ragged else (None, None)

    def weights(self, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n), (B, m) uniform marginals over the real tokens, 0 on padding."""
        a, b = (real.to(dtype) for real in self._real_tokens())
        return a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)

    def to(self, dtype: torch.dtype) -> Problem:
        """The same problem with X and Y cast (e.g. to float64 for the reference)."""
        return replace(self, x=self.x.to(dtype), y=self.y.to(dtype))

    def unpadded(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per-problem views (x_b (n_b, d), y_b (m_b, d)) of tensors shaped like the inputs."""
        for i, (n, m) in enumerate(zip(self.x_len.tolist(), self.y_len.tolist())):
            yield x[i, :n], y[i, :m]

    def entries(self) -> int:
        """sum_b n_b m_b: the real size of the cost, stricter than the padded B n m."""
        return int((self.x_len.long() * self.y_len.long()).sum())


def make_problem(workload: Workload, seed: int = SEED) -> Problem:
    """The workload's inputs: the same tensors for every implementation, every process."""
    gen = torch.Generator().manual_seed(seed)
    w = workload
    x = torch.randn(w.batch, w.n, w.d, generator=gen)
    y = torch.randn(w.batch, w.m, w.d, generator=gen)
    if w.ragged:
        x_len = torch.randint(w.min_len, w.n + 1, (w.batch,), generator=gen)
        y_len = torch.randint(w.min_len, w.m + 1, (w.batch,), generator=gen)
    else:
        x_len = torch.full((w.batch,), w.n)
        y_len = torch.full((w.batch,), w.m)
    return Problem(w, x.to(w.dtype), y.to(w.dtype), x_len, y_len)
