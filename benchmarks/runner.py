"""One workload, end to end: guards, warm-up, agreement, interleaved timing, floor, ratios.

For each workload:

1. Memory probes (unless disabled): each implementation in its own process
   (:mod:`benchmarks.memory_probe`); one that runs out of memory, fails or exceeds the per-run
   budget there is reported with the reason and not run here. The budget binds the peers only:
   ours is always measured, however long it takes.
2. Set-up of every remaining implementation (before any warm-up, see ``TorchCompiled``).
3. Warm-up: one forward, then one forward+backward (two of each for implementations that
   compile: the first compiles). A warm-up call over the budget stops that implementation; its
   time is reported as what we have.
4. Agreement of each loss and gradient with the float64 POT reference.
5. Timing: forward and forward+backward of every implementation, interleaved; each gets enough
   repeats to fill ``target_seconds`` within [min_repeats, max_repeats]. Load recorded around.
6. Floor, from R and BW measured right after the timing (under the same load), and ratios:
   peer median / our median (> 1: we are faster), our median / floor.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field, replace
from typing import Any

from . import agreement
from .floor import Floor, floor, matmul_rate, read_bandwidth
from .implementations import Implementation
from .load import Load, watch_load
from .memory_probe import describe_error, is_out_of_memory, probe
from .timing import Samples, interleaved, repeats_for, time_call
from .workloads import Workload, make_problem


@dataclass
class Options:
    budget_s: float
    min_repeats: int
    max_repeats: int
    target_seconds: float
    memory: bool
    seed: int
    threads: int


@dataclass
class ImplementationResult:
    name: str
    how: str
    ours: bool
    compiles: bool
    status: str = "ok"  # "ok", "too slow", "out of memory", "failed"
    reason: str | None = None
    fwd: dict[str, Any] | None = None  # Samples.summary()
    fwdbwd: dict[str, Any] | None = None
    first_call_s: dict[str, float] = field(default_factory=dict)  # warm-up, compile included
    peak_mib: float | None = None
    loss: float | None = None
    loss_rel_diff: float | None = None
    grad_rel_diff: float | None = None
    ratio: dict[str, float] = field(default_factory=dict)  # peer median / ours, per mode
    over_floor: dict[str, float] = field(default_factory=dict)  # ours only

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason


@dataclass
class WorkloadResult:
    name: str
    shape: str
    stands_for: str
    batch: int
    n: int
    m: int
    d: int
    iterations: int
    entries: int  # sum_b n_b m_b
    padded_entries: int  # B n m
    floor: Floor  # BENCHMARKS.md: E = B n m
    floor_real_tokens: Floor | None  # ragged workloads: E = sum_b n_b m_b, stricter
    reference: dict[str, Any] | None
    load: Load
    implementations: list[ImplementationResult]


def run_workload(workload: Workload, impls: list[Implementation], options: Options,
                 log=print) -> WorkloadResult:
    problem = make_problem(workload, options.seed)
    results = {i.name: ImplementationResult(i.name, i.how, i.ours, i.compiles) for i in impls}
    if options.memory:
        for impl in impls:
            log(f"  {workload.name}: memory probe of {impl.name}")
            _apply_probe(impl, results[impl.name], workload.name, options)
    live = {i.name: i for i in impls if results[i.name].status == "ok"}
    calls = _set_up(problem, live, results)
    outputs, warm_s = {}, {}
    for name in calls:
        log(f"  {workload.name}: warm-up of {name}")
        outputs[name], warm_s[name] = _warm_up(live[name], calls[name], results[name],
                                               _budget(live[name], options))
    log(f"  {workload.name}: reference")
    reference = _reference(problem, outputs)
    _record_agreement(results, outputs, reference)
    log(f"  {workload.name}: timing, interleaved")
    load = _time_interleaved(calls, warm_s, results, options)
    del calls, outputs
    gc.collect()

    log(f"  {workload.name}: floor (matmul rate and read bandwidth)")
    entries, padded = problem.entries(), workload.batch * workload.n * workload.m
    flops = matmul_rate()
    solved = workload  # the floor does the iterations the reference needed to reach a tol
    if workload.tol is not None:
        solved = replace(workload, iterations=reference.iterations)
    floors = floor(solved, padded, flops, read_bandwidth(padded))
    real = None
    if workload.ragged:
        real = floor(solved, entries, flops, read_bandwidth(entries),
                     "E = real token counts, sum of n_b m_b")
    _ratios(results, floors, real)
    return WorkloadResult(
        workload.name, workload.shape(), workload.stands_for, workload.batch, workload.n,
        workload.m, workload.d, workload.iterations, entries, padded, floors, real,
        None if reference is None else {"source": reference.source, "loss": reference.loss,
                                        "implementation": reference.implementation,
                                        "iterations": reference.iterations},
        load, list(results.values()))


def _status_of(error: BaseException) -> str:
    return "out of memory" if is_out_of_memory(error) else "failed"


def _budget(impl: Implementation, options: Options) -> float:
    return math.inf if impl.ours else options.budget_s


def _apply_probe(impl: Implementation, r: ImplementationResult, workload: str,
                 options: Options) -> None:
    budget = _budget(impl, options)
    result = probe(workload, impl.name, compiles=impl.compiles, budget_s=budget,
                   seed=options.seed, threads=options.threads)
    r.peak_mib = result.peak_mib
    if result.status != "ok":
        r.fail(result.status, result.reason)
    elif result.fwdbwd_seconds > budget:
        r.fail("too slow", f"forward+backward > {budget:g} s (memory probe)")
        r.fwdbwd = Samples([result.fwdbwd_seconds]).summary()


def _set_up(problem, live: dict[str, Implementation], results) -> dict[str, Any]:
    """Calls of every implementation, all set up before any is warmed up."""
    calls = {}
    for name, impl in live.items():
        try:
            calls[name] = impl.setup(problem)
        except Exception as error:  # a peer that cannot set up is reported, not fatal
            results[name].fail(_status_of(error), describe_error(error))
    return calls


def _warm_up(impl: Implementation, calls, r: ImplementationResult, budget_s: float):
    """Outputs {mode: Output} and seconds {mode: last warm-up call} of the warm-up.

    ``r.first_call_s`` keeps each mode's first call (with compilation, for those that compile).
    """
    outputs, seconds = {}, {}
    for mode, call in (("fwd", calls.forward), ("fwdbwd", calls.forward_backward)):
        try:
            for _ in range(1 + impl.compiles):
                seconds[mode], outputs[mode] = time_call(call)
                r.first_call_s.setdefault(mode, seconds[mode])
        except Exception as error:  # reported in the table, the run goes on
            r.fail(_status_of(error), describe_error(error))
            break
        if seconds[mode] > budget_s:
            r.fail("too slow", f"one {mode} took {seconds[mode]:.1f} s > {budget_s:g} s")
            setattr(r, mode, Samples([seconds[mode]]).summary())
            break
    return outputs, seconds


def _reference(problem, outputs) -> agreement.Reference | None:
    reference = agreement.float64_reference(problem)
    if reference is not None:
        return reference
    for name, source in (("pot-numpy", "POT sinkhorn_log, float32 (float64 does not fit)"),
                         ("torch-reference", "plain PyTorch log-domain, float32")):
        out = outputs.get(name, {}).get("fwdbwd")
        if out is not None:
            return agreement.Reference(source, out.loss, out.numpy_grads(), name)
    return None


def _record_agreement(results, outputs, reference: agreement.Reference | None) -> None:
    for name, out in outputs.items():
        r = results[name]
        if "fwd" in out:
            r.loss = out["fwd"].loss
        if reference is None or reference.implementation == name:
            continue
        if "fwd" in out:
            r.loss_rel_diff = agreement.relative_loss_difference(out["fwd"].loss, reference)
        if "fwdbwd" in out:
            r.grad_rel_diff = agreement.relative_grad_difference(out["fwdbwd"], reference)


def _time_interleaved(calls, warm_s, results, options: Options) -> Load:
    """Time every call still running, interleaved; fills ``results[name].fwd/fwdbwd``."""
    timed = {}
    for name in calls:
        if results[name].status != "ok":
            continue
        for mode, call in (("fwd", calls[name].forward), ("fwdbwd", calls[name].forward_backward)):
            repeats = repeats_for(warm_s[name][mode], options.min_repeats, options.max_repeats,
                                  options.target_seconds)
            timed[name, mode] = (call, repeats)

    def failed(key, error):
        results[key[0]].fail(_status_of(error), describe_error(error))

    with watch_load() as load:
        samples = interleaved(timed, failed)
    for (name, mode), s in samples.items():
        if results[name].status == "ok":
            setattr(results[name], mode, s.summary())
    return load


def _ratios(results: dict[str, ImplementationResult], floors, real=None) -> None:
    ours = next((r for r in results.values() if r.name == "ours-torch"), None)
    for mode in ("fwd", "fwdbwd"):
        ours_timing = getattr(ours, mode) if ours is not None else None
        if ours_timing is None:
            continue
        ours.over_floor[mode] = ours_timing["median"] / getattr(floors, f"{mode}_s")
        if real is not None:
            ours.over_floor[f"{mode}_real_tokens"] = (
                ours_timing["median"] / getattr(real, f"{mode}_s"))
        for r in results.values():
            timing = getattr(r, mode)
            if timing is not None and r is not ours:
                r.ratio[mode] = timing["median"] / ours_timing["median"]
