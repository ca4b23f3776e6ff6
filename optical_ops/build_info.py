"""What this installation runs: whether the native CPU loops were built and load.

The C++/OpenMP extensions are optional. ``pip install`` builds them when a C++ compiler
with OpenMP is at hand and otherwise installs without them; the solvers then run the same
iterations as PyTorch ops (same results, slower on the CPU). :func:`native_cpu_status` says
which case this is and why, without changing anything.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

# module -> what it accelerates (loaded by kernels/cpu_scaling.py, cpu_streaming.py,
# cpu_stabilised.py and cpu_dense_cost.py; setup.py builds each of them, a test keeps the two
# lists equal)
NATIVE_CPU_EXTENSIONS = {
    "optical_ops.kernels._sinkhorn_cpu": "dense scaling-domain Sinkhorn loop",
    "optical_ops.kernels._streaming_cpu": "streaming log-sum-exp passes",
    "optical_ops.kernels._stabilised_cpu": "stabilised scaling-domain loop",
    "optical_ops.kernels._dense_cost_cpu": "dense cost, row norms, plan products, row update",
}


@dataclass(frozen=True)
class NativeExtensionStatus:
    """``loaded``: the solvers use it; ``detail``: the file it loaded from, or why not."""

    module: str
    purpose: str
    loaded: bool
    detail: str


def _status(module: str, purpose: str) -> NativeExtensionStatus:
    try:
        spec = importlib.util.find_spec(module)
    except ImportError as error:  # the parent package itself failed to import
        return NativeExtensionStatus(module, purpose, False, f"cannot look it up: {error}")
    if spec is None:
        return NativeExtensionStatus(
            module, purpose, False,
            "not built: no C++ compiler with OpenMP at install time (reinstall with one, "
            "e.g. `pip install -v .` shows the build), or a source tree that was not installed")
    try:
        loaded = importlib.import_module(module)
    except ImportError as error:  # built, but it cannot load (e.g. no OpenMP runtime here)
        return NativeExtensionStatus(module, purpose, False,
                                     f"built ({spec.origin}) but fails to load: {error}")
    return NativeExtensionStatus(module, purpose, True, str(loaded.__file__))


def native_cpu_status() -> dict[str, NativeExtensionStatus]:
    """{module name: status} of each native CPU extension, in a fixed order.

    When one is not loaded, the solvers fall back to PyTorch ops for what it accelerates:
    results agree, CPU times are slower.
    """
    return {name: _status(name, purpose) for name, purpose in NATIVE_CPU_EXTENSIONS.items()}


def native_cpu_summary() -> str:
    """One line: ``native CPU loops: _sinkhorn_cpu yes, _streaming_cpu no (why)``."""
    parts = []
    for status in native_cpu_status().values():
        short = status.module.rsplit(".", 1)[1]
        parts.append(f"{short} yes" if status.loaded else f"{short} no ({status.detail})")
    return "native CPU loops: " + ", ".join(parts)
