r"""The benchmark problems W1-W7 and the inputs every implementation receives.

Each problem is entropic OT between the token sets of a batch: X (B, n, d) and Y (B, m, d),
float32 standard normal from a fixed seed, cosine cost C_ij = 1 - <x_i/|x_i|, y_j/|y_j|>,
uniform weights over the real tokens, eps = 0.05 (W6, W7: the small eps at which a plan is close
to an alignment, 0.01 and 0.001) and a fixed number of Sinkhorn iterations.
The loss is sum_b <P_b, C_b>. A ragged workload draws each problem's lengths n_b, m_b uniformly
in [``min_len``, n]; its padded rows are random like the real ones and carry no mass.
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

    @property
    def ragged(self) -> bool:
        return self.min_len is not None

    def shape(self) -> str:
        lengths = f"<={self.n}" if self.ragged else f"{self.n}"
        small = "" if self.eps == EPS else f" eps={self.eps:g}"
        return (f"B={self.batch} n={lengths} m={'<=' if self.ragged else ''}{self.m} "
                f"d={self.d} iters={self.iterations}{small}")


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
        # --quick only: W3 at a quarter of the size.
        Workload("W3-quick", 1, 512, 512, 768, 100, "W3 reduced for --quick"),
    )
}
FULL_RUN = ("W1", "W2", "W3", "W4", "W5", "W6", "W7")
QUICK_RUN = ("W1", "W3-quick")


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
        return self.workload.iterations

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
    return Problem(w, x, y, x_len, y_len)
