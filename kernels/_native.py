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


def load(name: str) -> ModuleType | None:
    """The extension ``optical_ops.kernels.<name>``, or None when it was not built."""
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:
        return None


def runs_on(extension: ModuleType | None, t: torch.Tensor) -> bool:
    """The extension is loaded and takes ``t``: a float32/float64 CPU tensor."""
    return extension is not None and t.device.type == "cpu" and t.dtype in NATIVE_DTYPES
