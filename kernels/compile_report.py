"""Ahead-of-time compile report: registers, spills and shared memory of every kernel config.

    python -m optical_ops.kernels.compile_report [--json] [--arch 80 90] [--quick]

Runs the real launchers (fused forward with the tile in registers and in strips over the dense
cost, cost matrix, streaming soft-min and transport cost, backward) on
meta tensors for a grid of shapes (the benchmark workloads W1-W5 and the distillation range
n, m <= 256, d <= 1024) and dtypes, records each launch instead of running it, compiles every
distinct (kernel, block sizes, specialisation) for sm_80 and sm_90 with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` (no GPU needed), and runs
Triton's bundled ``ptxas-blackwell -v`` on the PTX. Prints a table, or JSON with ``--json``.
Exit status 1 when any config spills or needs more shared memory than the target has.

Must run without TRITON_INTERPRET (the interpreter replaces the compiler).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from . import sinkhorn_backward, sinkhorn_fused, sinkhorn_streaming
from ._launch import Launch, recording
from .cost_tile import dense_operands, embedding_operands

# Shared memory per block (opt-in maximum): A100 163 KiB, H100 227 KiB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
GPU_NAME = {80: "sm_80", 90: "sm_90a"}  # triton targets sm_90a on capability 9.0
WORKLOADS = [  # name, B, n, m, d (BENCHMARKS.md; W2's ragged lengths pad to 128)
    ("W1", 64, 32, 32, 768), ("W2", 32, 128, 128, 768), ("W3", 1, 1024, 1024, 768),
    ("W4", 1, 4096, 4096, 256), ("W5", 1, 16384, 16384, 64),
]
DISTILL_SIZES = [(1, 7), (7, 33), (16, 16), (32, 32), (64, 64), (17, 128), (64, 128), (100, 50),
                 (65, 65), (128, 100), (128, 128), (200, 77), (256, 33), (65, 256), (256, 256)]
DISTILL_D = [100, 1024]
# The largest resident tile; strips of 128, 64 and 256 columns (and the streaming blocks).
QUICK_SIZES = [(64, 128), (128, 128), (200, 50), (256, 256)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@dataclass
class Row:
    kernel: str
    config: str
    arch: int
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    shared: int
    used_by: list[str]

    @property
    def ok(self) -> bool:
        return self.spill_stores == 0 and self.spill_loads == 0 and self.shared <= SMEM_LIMIT[
            self.arch]


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def record_launches(batch, n, m, d, dtype, cost) -> list[Launch]:
    """The launches of one forward (fixed iterations and with tol) and one backward, on every
    path the caller may take for this shape."""
    log_a, log_b = _meta(batch, n), _meta(batch, m)
    f, g = _meta(batch, n), _meta(batch, m)
    if cost == "dense":
        ops = dense_operands(_meta(batch, n, m, dtype=dtype))
    else:
        x, y = _meta(batch, n, d, dtype=dtype), _meta(batch, m, d, dtype=dtype)
        valid_x = torch.ones(batch, n, dtype=torch.bool, device="meta")
        valid_y = torch.ones(batch, m, dtype=torch.bool, device="meta")
        ops = embedding_operands(x, y, cost, valid_x, valid_y, 1e-12)
    dense = cost == "dense"
    with recording() as launches:
        if sinkhorn_fused.fused_config(n, m, ops.d, dtype) is not None:  # resident
            for tol in (None, 1e-6):
                sinkhorn_fused.sinkhorn_fused(ops, log_a, log_b, 0.05, 100, tol, 10,
                                              write_plan=dense)
        else:
            built = ops if dense else dense_operands(
                sinkhorn_streaming.cost_matrix(ops, log_a, log_b))
            if sinkhorn_fused.strip_config(n, m) is not None:  # strips over a dense cost
                for tol in (None, 1e-6):
                    sinkhorn_fused.sinkhorn_fused(built, log_a, log_b, 0.05, 100, tol, 10,
                                                  write_plan=dense)
            # Streaming, beyond the strip bounds or the dense budget: over recomputed tiles,
            # and (embeddings) over a dense cost built once.
            for iterate in [ops] if dense else [ops, built]:
                sinkhorn_streaming.softmin(iterate.transposed(), log_b, log_a, f, 0.05)
                sinkhorn_streaming.softmin(iterate, log_a, log_b, g, 0.05)
                sinkhorn_streaming.transport_cost(iterate, log_a, log_b, f, g, 0.05,
                                                  write_plan=dense)
        if not dense:  # the backward, from the embeddings or from a dense cost built once
            x_scale, y_scale = (ops.x_stat, ops.y_stat) if cost == "cosine" else (None, None)
            built = dense_operands(sinkhorn_streaming.cost_matrix(ops, log_a, log_b))
            for rebuild in (ops, built):
                sinkhorn_backward.plan_matmul(rebuild, log_a, log_b, f, g, 0.05, ops.y, y_scale)
                sinkhorn_backward.plan_matmul(rebuild.transposed(), log_b, log_a, g, f, 0.05,
                                              ops.x, x_scale)
    return launches


def shape_grid(quick: bool):
    sizes = QUICK_SIZES if quick else DISTILL_SIZES
    for dtype in DTYPES:
        for name, batch, n, m, d in WORKLOADS:
            if not quick or name in ("W1", "W5"):
                yield f"{name} {str(dtype)[6:]}", batch, n, m, d, dtype, "cosine"
        for n, m in sizes:
            for d in DISTILL_D[:1] if quick else DISTILL_D:
                for cost in ("cosine", "sqeuclidean"):
                    yield f"{n}x{m}x{d} {cost} {str(dtype)[6:]}", 4, n, m, d, dtype, cost
            yield f"{n}x{m} dense {str(dtype)[6:]}", 4, n, m, 0, dtype, "dense"


def _specialise(launch: Launch, backend):
    """What the JIT would compile for these arguments: signature, constexprs, attrs, options."""
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    return kernel._pack_args(backend, dict(launch.meta), bound, specialization, options)


def _describe(launch: Launch, signature) -> str:
    meta = dict(launch.meta)
    options = f"warps={meta.pop('num_warps')} stages={meta.pop('num_stages')}"
    meta.pop("enable_fp_fusion")
    dtypes = "/".join(sorted({signature[a].lstrip("*") for a in ("x_ptr", "y_ptr")}))
    return " ".join(f"{k}={v}" for k, v in meta.items()) + f" {options} {dtypes}"


def ptxas_stats(ptx: str, arch: int) -> dict:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                         "ptxas-blackwell")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        out = subprocess.run([ptxas, "-v", f"--gpu-name={GPU_NAME[arch]}", path, "-o",
                              os.devnull], capture_output=True, text=True, check=True).stderr

    def grab(pattern):
        found = re.search(pattern, out)
        if found is None:
            raise RuntimeError(f"ptxas output without {pattern!r}:\n{out}")
        return int(found.group(1))

    return dict(registers=grab(r"Used (\d+) registers"), stack=grab(r"(\d+) bytes stack frame"),
                spill_stores=grab(r"(\d+) bytes spill stores"),
                spill_loads=grab(r"(\d+) bytes spill loads"))


def config_key(launch: Launch, signature) -> tuple:
    """One compile per kernel, operand dtypes, block sizes and flags, and launch options; the
    alignment specialisations of the first shape that uses it are kept."""
    return (launch.kernel.fn.__name__, signature["x_ptr"], signature["y_ptr"],
            tuple(sorted(launch.meta.items())))


def compile_all(archs, quick: bool) -> list[Row]:
    rows: list[Row] = []
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        seen: dict[tuple, Row] = {}
        for label, batch, n, m, d, dtype, cost in shape_grid(quick):
            for launch in record_launches(batch, n, m, d, dtype, cost):
                options, signature, constexprs, attrs = _specialise(launch, backend)
                key = config_key(launch, signature)
                if key in seen:
                    seen[key].used_by.append(label)
                    continue
                src = ASTSource(launch.kernel, signature, constexprs, attrs)
                compiled = triton.compile(src, target=target, options=options.__dict__)
                row = Row(launch.kernel.fn.__name__, _describe(launch, signature),
                          arch, shared=compiled.metadata.shared, used_by=[label],
                          **ptxas_stats(compiled.asm["ptx"], arch))
                seen[key] = row
                rows.append(row)
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("arch", "kernel", "config", "regs", "spill st/ld", "smem KiB", "ok",
              "first shape (+ others)")
    table = [header] + [
        (f"sm_{r.arch}", r.kernel, r.config, str(r.registers),
         f"{r.spill_stores}/{r.spill_loads}", f"{r.shared / 1024:.1f}", "yes" if r.ok else "NO",
         f"{r.used_by[0]} (+{len(r.used_by) - 1})")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--quick", action="store_true", help="a small shape grid")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile")
    rows = compile_all(args.arch, args.quick)
    if args.json:
        print(json.dumps([dict(asdict(r), ok=r.ok) for r in rows], indent=1))
    else:
        print_table(rows)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
