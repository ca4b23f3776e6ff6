"""Peak memory of one forward+backward, measured in a separate process per implementation.

The child (``python -m benchmarks.memory_probe WORKLOAD IMPLEMENTATION``) imports what the
implementation needs, creates the inputs and sets them up, takes its resident size as the
baseline, runs one forward+backward (after a first, compiling call for implementations that
compile: compilation memory is not the op's) and reports the peak resident size above the
baseline: MiB above inputs. For a CUDA implementation, the same from the CUDA allocator
(``torch.cuda.max_memory_allocated``).

N.B. The peak is ``VmHWM`` from ``/proc/self/status``, reset with ``/proc/self/clear_refs``
after the baseline, not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries ``ru_maxrss`` over
from the parent across ``fork``/``exec``, so a child of a large benchmark process would report
the parent's peak. Elsewhere the probe falls back to ``ru_maxrss`` without a reset.

The parent also uses the probe as a guard: a child that runs out of memory, crashes or takes
longer than the per-run budget is killed and reported, and the implementation is not run in the
main process for that workload.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import queue
import resource
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

MARKER = "@@probe "
MIB = 2**20
STARTUP_LIMIT_S = 300.0  # imports, inputs and setup
COMPILE_LIMIT_S = 600.0  # a compiling first call, on top of the run budget
REPO_ROOT = Path(__file__).resolve().parent.parent
OOM_MESSAGES = ("out of memory", "can't allocate memory", "resource_exhausted",
                "cannot allocate memory", "unable to allocate")


# ----------------------------------------------------------------------------- child side


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return 1024 * kib if kib is not None else peak_rss_bytes()


def reset_peak() -> None:
    """Reset the peak resident size to the current one (Linux >= 4.0; elsewhere a no-op, and
    the peak is the process's since it started)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    kib = _status_kib("VmHWM")
    if kib is not None:
        return 1024 * kib
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else 1024 * maxrss  # bytes on macOS, else KiB


def _report(stage: str, **fields) -> None:
    print(MARKER + json.dumps({"stage": stage, **fields}), flush=True)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or any(
        m in str(error).lower() for m in OOM_MESSAGES)


def describe_error(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]


def child_main(argv: list[str] | None = None) -> None:
    import torch

    from .implementations import IMPLEMENTATIONS
    from .timing import time_call
    from .workloads import WORKLOADS, make_problem

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("implementation", choices=sorted(IMPLEMENTATIONS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    impl = IMPLEMENTATIONS[args.implementation]
    on_cuda = impl.device == "cuda"
    current, reset, peak_of = ((torch.cuda.memory_allocated, torch.cuda.reset_peak_memory_stats,
                                torch.cuda.max_memory_allocated) if on_cuda
                               else (current_rss_bytes, reset_peak, peak_rss_bytes))
    try:
        calls = impl.setup(make_problem(WORKLOADS[args.workload], args.seed))
        gc.collect()
        baseline = current()
        _report("ready")
        if impl.compiles:
            _report("compiled", seconds=time_call(calls.forward_backward)[0])
        reset()
        seconds = time_call(calls.forward_backward)[0]
        peak = peak_of()
    except Exception as error:  # reported to the parent, whatever it is
        _report("error", oom=is_out_of_memory(error), reason=describe_error(error))
        return
    _report("done", seconds=seconds, peak_mib=(peak - baseline) / MIB)


# ---------------------------------------------------------------------------- parent side


@dataclass
class ProbeResult:
    status: str  # "ok", "too slow", "out of memory", "failed"
    peak_mib: float | None = None
    fwdbwd_seconds: float | None = None
    reason: str | None = None


def _read_markers(stream, messages: queue.Queue) -> None:
    for line in stream:
        if line.startswith(MARKER):
            messages.put(json.loads(line[len(MARKER):]))
    messages.put(None)  # end of output


def probe(workload: str, implementation: str, *, compiles: bool, budget_s: float,
          seed: int = 0, threads: int = 2) -> ProbeResult:
    """Run the child for one implementation on one workload, within time limits."""
    command = [sys.executable, "-m", "benchmarks.memory_probe", workload, implementation,
               "--seed", str(seed), "--threads", str(threads)]
    stages = [("ready", STARTUP_LIMIT_S)]
    if compiles:
        stages.append(("compiled", COMPILE_LIMIT_S + budget_s))
    stages.append(("done", budget_s))
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr,
                                 text=True)
        messages: queue.Queue = queue.Queue()
        threading.Thread(target=_read_markers, args=(child.stdout, messages), daemon=True).start()
        try:
            return _follow(child, messages, stages, budget_s, stderr)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()


def _follow(child, messages: queue.Queue, stages, budget_s: float, stderr) -> ProbeResult:
    for stage, limit in stages:
        try:  # an infinite limit (ours has no budget) waits for as long as it takes
            message = messages.get(timeout=None if math.isinf(limit) else limit)
        except queue.Empty:
            if stage == "ready":
                return ProbeResult("failed", reason=f"setup took more than {limit:.0f} s")
            return ProbeResult("too slow", reason=f"forward+backward > {budget_s:g} s")
        if message is None:
            return _crashed(child, stderr)
        if message["stage"] == "error":
            status = "out of memory" if message["oom"] else "failed"
            return ProbeResult(status, reason=message["reason"])
        if message["stage"] == "done":
            return ProbeResult("ok", peak_mib=message["peak_mib"],
                               fwdbwd_seconds=message["seconds"])
    return ProbeResult("failed", reason="the probe ended without a result")


def _crashed(child, stderr) -> ProbeResult:
    code = child.wait()
    if code == -9:  # SIGKILL that we did not send: the kernel's OOM killer
        return ProbeResult("out of memory", reason="killed by the OS (out of memory)")
    stderr.seek(0)
    lines = [line for line in stderr.read().strip().splitlines() if line.strip()]
    last = lines[-1][:200] if lines else f"exit code {code}"
    return ProbeResult("failed", reason=f"crashed: {last}")


if __name__ == "__main__":
    child_main()
