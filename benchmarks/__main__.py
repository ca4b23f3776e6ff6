"""``python -m benchmarks``: our loss against every installed peer, in one run.

Three sizes of run, each labelled in its output:

- default: W1, W2 and W3 with every installed peer, 3-10 repeats, no memory probes (a few
  minutes on 2 cores); the workloads users meet most, every peer compared;
- ``--full``: W1-W9 with the protocol of ``benchmarks/README.md`` (memory probes, 5-50 repeats;
  the better part of an hour on 2 cores, mostly the slow peers on W4 and W5);
- ``--quick``: W1 and a reduced W3, five peers, under a minute (a smoke test).

Prints the comparison and writes ``benchmarks/results/latest{-default,-quick,}.json`` (and a
dated copy) and a plot beside them. Only ``--full --update-readme`` writes into the checkout:
``benchmarks/benchmark.png`` and the README's benchmark section.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

from .machine import reexec_without_blas_overrides

DESCRIPTION = "The OPTICAL loss against POT, GeomLoss, OTT-JAX and plain PyTorch on W1-W9."
HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
PLOT = HERE / "benchmark.png"
README = HERE.parent / "README.md"
# --quick leaves out the slowest per-problem loop (ot.solve) and torch.compile's compile time.
QUICK_PEERS = ("pot-numpy", "pot-torch-batch", "geomloss", "ott-jax", "torch-reference")
# The default run: the distillation-sized workloads, where every peer finishes in seconds;
# W4 and W5 (minutes per slow peer) are --full only. Their definitions never change.
DEFAULT_RUN = ("W1", "W2", "W3", "W6", "W7", "W8", "W9")
# Per mode: budget_s, min_repeats, max_repeats, target_seconds, memory probes.
MODE_OPTIONS = {
    "quick": (10.0, 3, 10, 0.3, False),
    "default": (20.0, 3, 10, 0.5, False),
    "full": (60.0, 5, 50, 2.0, True),
}
FULL_COMMAND = "python -m benchmarks --full  (make bench-full: also --update-readme)"


def parse_args(argv=None) -> argparse.Namespace:
    from .workloads import WORKLOADS

    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=DESCRIPTION,
        epilog=f"Default: {', '.join(DEFAULT_RUN)} with every installed peer, 3-10 repeats, no "
        f"memory probes (a few minutes). The full set: {FULL_COMMAND}.")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true",
                      help="W1-W9, 5-50 repeats, memory probes: full protocol (60-80 min, 2 cores)")
    size.add_argument("--quick", action="store_true",
                      help="W1 and a reduced W3, fewer repeats and peers (< 1 min)")
    p.add_argument("--workloads", help=f"comma-separated, from {', '.join(WORKLOADS)}")
    p.add_argument("--peers", help="comma-separated implementation names or groups "
                   "(pot, geomloss, ott, reference); ours is always run. Default: all "
                   f"(quick: {','.join(QUICK_PEERS)})")
    p.add_argument("--repeats", type=int,
                   help="minimum repeats per call (default 3; full 5)")
    p.add_argument("--max-repeats", type=int, help="maximum repeats (default 10; full 50)")
    p.add_argument("--target-seconds", type=float,
                   help="timed seconds wanted per call, fast calls get more repeats "
                   "(default 0.5; quick 0.3; full 2)")
    p.add_argument("--budget", type=float, help="seconds one run of an implementation may take "
                   "before it is reported as too slow (default 20; quick 10; full 60)")
    memory = p.add_mutually_exclusive_group()
    memory.add_argument("--memory", action="store_true",
                        help="run the memory probes (on by default only with --full)")
    memory.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument("--update-readme", action="store_true",
                   help="with --full: rewrite the README's benchmark section and "
                   "benchmarks/benchmark.png in this checkout")
    # The old opt-out: the README is now left alone unless --update-readme is given.
    p.add_argument("--no-readme", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.update_readme and not args.full:
        p.error("--update-readme needs --full: the README's table is the full W1-W9 protocol")
    if args.update_readme and args.no_readme:
        p.error("--update-readme and --no-readme contradict each other")
    return args


def mode_of(args) -> str:
    """``quick``, ``full`` or ``default``."""
    return "quick" if args.quick else "full" if args.full else "default"


def select(args):
    """(workloads, implementations to run, {name: why not run})."""
    from .implementations import IMPLEMENTATIONS
    from .workloads import FULL_RUN, QUICK_RUN, WORKLOADS

    default = {"quick": QUICK_RUN, "full": FULL_RUN, "default": DEFAULT_RUN}[mode_of(args)]
    names = args.workloads.split(",") if args.workloads else default
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

    budget, min_repeats, max_repeats, target, memory = MODE_OPTIONS[mode_of(args)]
    return Options(
        budget_s=args.budget or budget,
        min_repeats=args.repeats or min_repeats,
        max_repeats=args.max_repeats or max_repeats,
        target_seconds=args.target_seconds or target,
        memory=args.memory or (memory and not args.no_memory),
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

    mode = mode_of(args)
    log(f"{mode.upper()} benchmark on {info['machine']['cpu']}, "
        f"{args.threads} threads; BLAS env removed: {info['env_removed'] or 'none'}")
    log(info["native_cpu"])
    log(f"workloads {[w.name for w in workloads]}; implementations {[i.name for i in impls]}")
    result = {"quick": args.quick, "mode": mode, "complete": False, "info": info,
              "options": dataclasses.asdict(options), "workloads": [], "not_run": not_run}
    suffix = {"quick": "-quick", "default": "-default", "full": ""}[mode]
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
    png = plot.draw(result, PLOT if args.update_readme else
                    args.output_dir / f"benchmark{suffix}.png")
    log(f"wrote {latest} and {png}; total {result['total_seconds']:.0f} s")
    if args.update_readme:
        section = report.markdown(result, PLOT.relative_to(README.parent).as_posix())
        updated = readme.update_readme(README, section)
        log("README benchmark section regenerated" if updated else
            f"README.md has no {readme.START} / {readme.END} markers: left alone")
    elif mode != "full":
        log(f"the full set (W1-W9, memory probes, more repeats): {FULL_COMMAND}")


if __name__ == "__main__":
    main()
