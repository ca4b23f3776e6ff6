"""``python -m benchmarks``: W1-W5 against every installed peer, in one run.

Prints the comparison, writes ``benchmarks/results/latest.json`` (and a dated copy), draws
``benchmarks/benchmark.png`` and regenerates the README's benchmark section. ``--quick`` runs a
reduced set in under a minute and writes only under ``benchmarks/results/``. See
``benchmarks/README.md`` for the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

from .machine import reexec_without_blas_overrides

DESCRIPTION = "The OPTICAL loss against POT, GeomLoss, OTT-JAX and plain PyTorch on W1-W5."
HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
PLOT = HERE / "benchmark.png"
README = HERE.parent / "README.md"
# --quick leaves out the slowest per-problem loop (ot.solve) and torch.compile's compile time.
QUICK_PEERS = ("pot-numpy", "pot-torch-batch", "geomloss", "ott-jax", "torch-reference")


def parse_args(argv=None) -> argparse.Namespace:
    from .workloads import WORKLOADS

    p = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION)
    p.add_argument("--quick", action="store_true",
                   help="W1 and a reduced W3, fewer repeats and peers, no memory probes (< 1 min)")
    p.add_argument("--workloads", help=f"comma-separated, from {', '.join(WORKLOADS)}")
    p.add_argument("--peers", help="comma-separated implementation names or groups "
                   "(pot, geomloss, ott, reference); ours is always run. Default: all "
                   f"(quick: {','.join(QUICK_PEERS)})")
    p.add_argument("--repeats", type=int, help="minimum repeats per call (default 5; quick 3)")
    p.add_argument("--max-repeats", type=int, help="maximum repeats (default 50; quick 10)")
    p.add_argument("--target-seconds", type=float,
                   help="timed seconds wanted per call, fast calls get more repeats "
                   "(default 2; quick 0.3)")
    p.add_argument("--budget", type=float, help="seconds one run of an implementation may take "
                   "before it is reported as too slow (default 60; quick 10)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument("--no-readme", action="store_true",
                   help="leave README.md and benchmarks/benchmark.png alone")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def select(args):
    """(workloads, implementations to run, {name: why not run})."""
    from .implementations import IMPLEMENTATIONS
    from .workloads import FULL_RUN, QUICK_RUN, WORKLOADS

    names = args.workloads.split(",") if args.workloads else (QUICK_RUN if args.quick else FULL_RUN)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    if args.peers:
        wanted = set(args.peers.split(","))
    else:
        wanted = set(QUICK_PEERS) if args.quick else None
    if wanted is not None:
        known = set(IMPLEMENTATIONS) | {i.group for i in IMPLEMENTATIONS.values()}
        if wanted - known:
            raise SystemExit(f"unknown peers {sorted(wanted - known)}; choose from {sorted(known)}")
    impls, not_run = [], {}
    for impl in IMPLEMENTATIONS.values():
        if wanted is not None and not impl.ours and not wanted & {impl.name, impl.group}:
            continue
        reason = impl.unavailable()
        if reason:
            not_run[impl.name] = reason
        else:
            impls.append(impl)
    return [WORKLOADS[n] for n in names], impls, not_run


def options_from(args):
    from .runner import Options

    quick = args.quick
    return Options(
        budget_s=args.budget or (10.0 if quick else 60.0),
        min_repeats=args.repeats or (3 if quick else 5),
        max_repeats=args.max_repeats or (10 if quick else 50),
        target_seconds=args.target_seconds or (0.3 if quick else 2.0),
        memory=not (quick or args.no_memory),
        seed=args.seed,
        threads=args.threads,
    )


def main(argv=None) -> None:
    # First, before numpy is imported anywhere: its OpenBLAS reads the environment on loading.
    reexec_without_blas_overrides()
    args = parse_args(argv)
    import torch

    from . import machine, plot, readme, report
    from .runner import run_workload

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    workloads, impls, not_run = select(args)
    options = options_from(args)
    info = machine.describe(args.threads)

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    log(f"{'QUICK ' if args.quick else ''}benchmark on {info['machine']['cpu']}, "
        f"{args.threads} threads; BLAS env removed: {info['env_removed'] or 'none'}")
    log(f"workloads {[w.name for w in workloads]}; implementations {[i.name for i in impls]}")
    result = {"quick": args.quick, "complete": False, "info": info,
              "options": dataclasses.asdict(options), "workloads": [], "not_run": not_run}
    suffix = "-quick" if args.quick else ""
    latest = args.output_dir / f"latest{suffix}.json"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for workload in workloads:
        log(f"{workload.name}: {workload.shape()}")
        result["workloads"].append(dataclasses.asdict(run_workload(workload, impls, options, log)))
        latest.write_text(json.dumps(result, indent=1))  # a long run keeps what it has measured
        print(report.text_table({**result, "workloads": result["workloads"][-1:]}), flush=True)

    result.update(complete=True, total_seconds=time.perf_counter() - started)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for path in (latest, args.output_dir / f"{stamp}{suffix}.json"):
        path.write_text(json.dumps(result, indent=1))
    print("\n" + "=" * 100 + "\n" + report.text_table(result))
    touch_committed = not (args.quick or args.no_readme)
    png = plot.draw(result, PLOT if touch_committed else args.output_dir / f"benchmark{suffix}.png")
    log(f"wrote {latest} and {png}")
    if touch_committed:
        section = report.markdown(result, PLOT.relative_to(README.parent).as_posix())
        updated = readme.update_readme(README, section)
        log("README benchmark section regenerated" if updated else
            f"README.md has no {readme.START} / {readme.END} markers: left alone")


if __name__ == "__main__":
    main()
