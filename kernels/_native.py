"""Loading the optional native CPU extensions (``kernels/csrc``), shared by their launchers.

An extension is built only when a C++ compiler with OpenMP was at hand at install time
(:func:`optical_ops.native_cpu_status` says which loaded); without it the launchers report
"not available" and the solvers run the same iterations as PyTorch ops.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

NATIVE_DTYPES = (torch.float32, torch.float64)
# The arguments the native exp takes (exp_in_range, csrc/native_cpu.h): below the floor a plan
# entry or kernel entry is 0 or the floor's value, above the ceiling capped. The clamp of the
# exponent of K~ (optical_ops/softmin_stabilised.py): the fp32 floor -87 is the smallest normal
# exp; the ceiling keeps n e^(ABSORB + ceiling) finite for n < 2^20.
EXP_RANGE = {torch.float32: (-87.0, 50.0), torch.float64: (-700.0, 350.0)}


def load(name: str) -> ModuleType | None:
    """The extension ``optical_ops.kernels.<name>``, or None when it was not built."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None


def runs_on(extension: ModuleType | None, t: torch.Tensor) -> bool:
    """The extension is loaded and takes ``t``: a float32/float64 CPU tensor."""
    return extension is not None and t.device.type == "cpu" and t.dtype in NATIVE_DTYPES



def check_buffers(reference: torch.Tensor, buffers) -> None:
    """Each of ``buffers``, (name, tensor, shape) triples, has the reference's dtype and device
    and that shape; else a ValueError naming it. Layout is the caller's concern."""
    for name, t, shape in buffers:
        if (t.dtype != reference.dtype or tuple(t.shape) != tuple(shape)
                or t.device != reference.device):
            raise ValueError(f"{name} must be {reference.dtype} of shape {tuple(shape)} on "
                             f"{reference.device}")
