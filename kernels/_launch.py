"""Launch plumbing shared by the kernel modules: block-size configs, argument checks and one
launch entry point.

Every launcher checks its tensors (:func:`check_tensor`: metadata only, no host sync), builds
its grid, arguments and :class:`Config` and hands them to :func:`launch`. :func:`launch` runs
the kernel on the device of its tensors (Triton launches on the *current* device and its
current stream; a tensor on cuda:1 while cuda:0 is current would be read by a kernel on the
wrong GPU). :func:`recording` swaps the launch for a record, so :mod:`.compile_report` compiles
ahead of time exactly the kernels, block sizes and argument specialisations the launchers
choose, on meta tensors, without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

# The smallest tile side ``tl.dot`` accepts.
MIN_DOT = 16
# Grid limits of CUDA: axis 0 up to 2^31 - 1 programs, axes 1 and 2 up to 65,535. Every
# launcher folds the batch into axis 0 (program id = problem * blocks + block), so only the
# per-problem block counts meet the 65,535 limit (n or m beyond 4 M tokens).
MAX_GRID_0 = 2**31 - 1
MAX_GRID_12 = 65_535


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


def launch_device(args) -> torch.device | None:
    """The one CUDA device of the tensor arguments (None when none is on CUDA).

    Raises ValueError when they span several devices: a kernel reads all its pointers from
    one GPU."""
    devices = {a.device for a in args if isinstance(a, torch.Tensor) and a.device.type == "cuda"}
    if len(devices) > 1:
        raise ValueError(f"one launch, tensors on several devices: {sorted(map(str, devices))}")
    return devices.pop() if devices else None


def check_grid(grid: tuple) -> None:
    if grid[0] > MAX_GRID_0 or any(g > MAX_GRID_12 for g in grid[1:]):
        raise ValueError(f"grid {grid} exceeds CUDA's limits (axis 0 <= {MAX_GRID_0}, "
                         f"axes 1 and 2 <= {MAX_GRID_12})")


def launch(kernel, grid: tuple, args: tuple, meta: dict) -> None:
    """Run ``kernel[grid](*args, **meta)`` on the device of its tensors (and on that device's
    current stream, which is what Triton picks once the device is current)."""
    check_grid(grid)
    device = launch_device(args)
    if _recorded is not None:
        _recorded.append(Launch(kernel, grid, args, meta))
        return
    guard = torch.cuda.device(device) if device is not None else contextlib.nullcontext()
    with guard:
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


def check_tensor(name: str, t, shape: tuple, dtypes, device: torch.device | None = None,
                 contiguous: bool = True) -> None:
    """Metadata check of one kernel operand (no host sync): ``shape`` (None entries are free),
    dtype in ``dtypes``, on ``device``, and contiguous where the kernel indexes it as
    ``problem * length + index``. Raises ValueError naming the operand."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    dtypes = (dtypes,) if isinstance(dtypes, torch.dtype) else tuple(dtypes)
    if t.dim() != len(shape) or any(s is not None and s != ts for s, ts in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device}, the cost operands on {device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the kernels index it as problem * length "
                         f"+ index), got strides {t.stride()}")
