"""What a result was measured on: machine, library versions, BLAS, date, command line.

``BLAS_OVERRIDES`` are environment variables this machine sets that slow a current numpy's
OpenBLAS (a forced older kernel, a small L2 size); the benchmark command re-executes itself once
without them, for fairness to the numpy peer, and records what it removed.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REMOVED_ENV = "BENCHMARK_REMOVED_ENV"  # where the re-executed process finds what was removed
DISTRIBUTIONS = ("torch", "numpy", "scipy", "POT", "geomloss", "jax", "jaxlib", "ott-jax",
                 "triton", "optical-ot")
REPO_ROOT = Path(__file__).resolve().parent.parent


def reexec_without_blas_overrides() -> None:
    """Replace this process by the same command without ``BLAS_OVERRIDES`` (once)."""
    removed = {k: os.environ[k] for k in BLAS_OVERRIDES if k in os.environ}
    if not removed:
        return
    env = {k: v for k, v in os.environ.items() if k not in BLAS_OVERRIDES}
    env[REMOVED_ENV] = json.dumps(removed)
    argv = getattr(sys, "orig_argv", None) or ["python", "-m", "benchmarks", *sys.argv[1:]]
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return None


def _versions() -> dict[str, str | None]:
    found = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def _blas() -> dict[str, Any]:
    """The thread pools and BLAS kernels loaded now (numpy's OpenBLAS core type among them)."""
    import numpy  # noqa: F401  (load numpy's BLAS before asking)
    import torch

    info: dict[str, Any] = {"torch": torch.__config__.parallel_info().strip().splitlines()[:6]}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    else:
        info["threadpools"] = threadpool_info()
    return info


def _native_cpu() -> str:
    """Whether our native CPU loops are in use (without them ours runs PyTorch ops)."""
    from optical_ops.build_info import native_cpu_summary

    return native_cpu_summary()


def describe(threads: int) -> dict[str, Any]:
    """Everything about the run that is not a measurement."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *getattr(sys, "orig_argv", sys.argv)[1:]]),
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": _memory_gib(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch_threads": threads,
        },
        "versions": _versions(),
        "git_commit": _git_commit(),
        "blas": _blas(),
        "native_cpu": _native_cpu(),
        "env_removed": json.loads(os.environ.get(REMOVED_ENV, "{}")),
    }
