"""Which Triton the kernels need, asked without importing a kernel module.

The kernels use ``triton.knobs`` (Triton 3.4+), ``tl.range(..., num_stages=...)`` and
``input_precision="tf32x3"``; with an older Triton importing them fails with an
AttributeError deep inside a decorator. :func:`triton_unavailable_reason` says why the kernels
cannot be imported (None when they can), for a dispatch that falls back to the PyTorch backend;
:func:`require_triton` raises that reason as an ImportError, first thing in every kernel module.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

MIN_TRITON = (3, 4)


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as "3.4.0+git1234" or "3.5.0rc1"."""
    parts = re.findall(r"\d+", version.split("+")[0])[:2]
    return tuple(int(p) for p in parts)


def triton_unavailable_reason(version: str | None = None) -> str | None:
    """Why the Triton kernels cannot be used here, or None. ``version`` overrides the
    installed one (for tests)."""
    if version is None:
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed (pip install 'optical-ot[triton]')"
        try:
            version = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:  # a source checkout on the path
            import triton

            version = getattr(triton, "__version__", "0")
    if _release(version) < MIN_TRITON:
        need = ".".join(map(str, MIN_TRITON))
        return (f"the kernels need triton>={need} (triton.knobs), found triton {version}: "
                f"pip install 'triton>={need}'")
    return None


def require_triton() -> None:
    reason = triton_unavailable_reason()
    if reason is not None:
        raise ImportError(reason)
