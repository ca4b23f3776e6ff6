"""Triton kernels (and native CPU passes) of optical-ot, installed as ``optical_ops.kernels``.

Importing this package needs no Triton; :func:`triton_unavailable_reason` says whether the
Triton kernel modules can be imported here (None) or why not, so a dispatch can fall back to
the PyTorch backend with that reason.
"""

from ._triton_version import MIN_TRITON, triton_unavailable_reason

__all__ = ["MIN_TRITON", "triton_unavailable_reason"]
