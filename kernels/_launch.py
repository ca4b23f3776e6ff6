"""Launch plumbing shared by the kernel modules: block-size configs and one launch entry point.

Every launcher builds its grid, arguments and :class:`Config` and hands them to :func:`launch`.
:func:`recording` swaps the launch for a record, so :mod:`.compile_report` compiles ahead of time
exactly the kernels, block sizes and argument specialisations the launchers choose, on meta
tensors, without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

# The smallest tile side ``tl.dot`` accepts.
MIN_DOT = 16


def pow2_at_least(x: int, lower: int = MIN_DOT) -> int:
    """The smallest power of two >= max(x, lower)."""
    return max(lower, 1 << max(0, x - 1).bit_length())


@dataclass(frozen=True)
class Config:
    """Block sizes (tl.constexpr) and launch options of one kernel launch."""

    block_n: int
    block_m: int
    block_d: int
    num_warps: int
    num_stages: int
    max_registers: int | None = None  # ptxas .maxnreg; None leaves ptxas its occupancy target

    def meta(self) -> dict:
        meta = dict(BLOCK_N=self.block_n, BLOCK_M=self.block_m, BLOCK_D=self.block_d,
                    num_warps=self.num_warps, num_stages=self.num_stages, enable_fp_fusion=True)
        if self.max_registers is not None:
            meta["maxnreg"] = self.max_registers
        return meta


@dataclass
class Launch:
    kernel: object
    grid: tuple
    args: tuple
    meta: dict


_recorded: list[Launch] | None = None


def launch(kernel, grid: tuple, args: tuple, meta: dict) -> None:
    if _recorded is not None:
        _recorded.append(Launch(kernel, grid, args, meta))
        return
    kernel[grid](*args, **meta)


@contextlib.contextmanager
def recording():
    """Within the block, launches are recorded (yielded list) instead of run."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous
