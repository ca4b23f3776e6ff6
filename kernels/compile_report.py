"""Ahead-of-time compile report: registers, spills, shared memory, load widths and cp.async
pipelining of every kernel config.

    python -m optical_ops.kernels.compile_report [--json] [--arch 80 90] [--quick]

Runs the real launchers (fused forward with the tile in registers and in strips over the dense
cost, cost matrix, streaming soft-min and transport cost, backward) on meta tensors for a grid
of shapes (the benchmark workloads W1-W5, the distillation range n, m <= 256 and the widest
resident tiles 16 x 512 and 32 x 256, d <= 1024), dtypes (fp32, fp16, bf16, an fp16 student
with a bf16 teacher) and layouts (contiguous, and embeddings with a feature stride != 1),
records each launch instead of running it, and compiles every distinct specialisation (the
runtime's cache key: kernel, argument types, integer and alignment specialisations,
constexprs, options) for sm_80 and sm_90 with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32))``, no GPU needed. Registers and spills are read from the
log of the ``ptxas`` run inside that compile (``TRITON_DUMP_PTXAS_LOG``): the same ptxas
binary (``ptxas`` below sm_90, ``ptxas-blackwell`` from sm_90 on) and flags
(``-lineinfo --regAllocOptLevel=2``, ``--fmad``) as a launch on a GPU. From the PTX it counts
the global loads and ``cp.async`` copies by width (16 bytes: vectorised; 4: one fp32 per
instruction). Prints a table, or JSON with ``--json``. Exit status 1 when any config spills or
needs more shared memory than the target has.

Must run without TRITON_INTERPRET (the interpreter replaces the compiler).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from ._launch import Launch, recording

# Shared memory per block (opt-in maximum): A100 163 KiB, H100 227 KiB.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
GPU_NAME = {80: "sm_80", 90: "sm_90a"}  # triton targets sm_90a on capability 9.0
WORKLOADS = [  # name, B, n, m, d (BENCHMARKS.md; W2's ragged lengths pad to 128)
    ("W1", 64, 32, 32, 768), ("W2", 32, 128, 128, 768), ("W3", 1, 1024, 1024, 768),
    ("W4", 1, 4096, 4096, 256), ("W5", 1, 16384, 16384, 64),
]
DISTILL_SIZES = [(1, 7), (7, 33), (16, 16), (32, 32), (64, 64), (17, 128), (64, 128), (100, 50),
                 (65, 65), (128, 100), (128, 128), (200, 77), (256, 33), (65, 256), (256, 256),
                 (16, 512), (32, 256)]
DISTILL_D = [100, 1024]
# The resident tiles 64 x 128 and 32 x 256; strips of 128, 64 and 256 columns (and the
# streaming blocks).
QUICK_SIZES = [(64, 128), (32, 256), (128, 128), (200, 50), (256, 256)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Layouts beside contiguous same-dtype embeddings, on these sizes: an fp16 student with a bf16
# teacher (the cost dot meets in fp32: the most registers, 253-254 of 255 on sm_80), and
# embeddings with feature stride != 1 (no vector loads along d).
VARIANT_SIZES = [(64, 128), (16, 512), (128, 128)]
VARIANTS = ["mixed", "strided"]


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
    # Global loads and cp.async copies by width in bytes, from the PTX ({"ld 16": 3, ...}).
    memory_ops: dict = field(default_factory=dict)
    # fp32 divisions in the PTX (div.full / div.rn / div.approx): none expected, the kernels
    # multiply by a host-computed 1 / eps.
    divisions: int = 0

    @property
    def vector_bytes(self) -> int:
        """The widest global load or cp.async (16: vectorised)."""
        return max((int(k.split()[1]) for k in self.memory_ops), default=0)

    @property
    def cp_async(self) -> int:
        return sum(v for k, v in self.memory_ops.items() if k.startswith("cp.async"))

    @property
    def ok(self) -> bool:
        return self.spill_stores == 0 and self.spill_loads == 0 and self.shared <= SMEM_LIMIT[
            self.arch]


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _embeddings(batch, n, d, dtype, strided: bool):
    if strided:  # feature stride n: a (B, d, n) tensor seen as (B, n, d)
        return _meta(batch, d, n, dtype=dtype).transpose(1, 2)
    return _meta(batch, n, d, dtype=dtype)


def record_launches(batch, n, m, d, dtype, cost, y_dtype=None, strided=False) -> list[Launch]:
    """The launches of one forward (fixed iterations, and with tol where the solver checks it
    on the device) and one backward, for the solver the dispatch plan
    (:func:`optical_ops.dispatch.solver_plan`) picks for this shape on a CUDA device: the
    primitive it builds runs on meta tensors, so nothing executes. ``y_dtype``: the teacher's
    dtype when it differs; ``strided``: embeddings with feature stride != 1."""
    from optical_ops.costs import factorise
    from optical_ops.dispatch import solver_plan
    from optical_ops.sinkhorn_loop import run_sinkhorn
    from optical_ops.softmin_triton import TritonFusedSoftMin, triton_softmin

    dense = cost == "dense"
    a, b = _meta(batch, n), _meta(batch, m)
    solver = solver_plan(batch, n, m, None if dense else d, device="cuda", dtype=dtype,
                         backend="triton", check_inputs=False).solver
    with recording() as launches:
        if dense:
            source = dict(cost=_meta(batch, n, m, dtype=dtype), write_plan=True)
        else:
            x = _embeddings(batch, n, d, dtype, strided)
            y = _embeddings(batch, m, d, y_dtype or dtype, strided)
            fc = factorise(x, y, cost, a > 0, b > 0, sync_ok=False)
            source = dict(fc=fc)
        op = triton_softmin(solver, a, b, 0.05, **source)
        fused = isinstance(op, TritonFusedSoftMin)
        for tol in (None, 1e-6) if fused else (None,):  # the loop's tol check reads the host
            res = run_sinkhorn(op, 100, tol)
        if not fused:
            op.loss(res.f_state, res.g_state)
            if dense:
                op.plan(res.f_state, res.g_state)
        if not dense:
            op.plan_products(res.f_state, res.g_state, fc.x, fc.y, fc.row_scale, fc.col_scale)
    return launches


def shape_grid(quick: bool):
    """(label, batch, n, m, d, dtype, cost, extra record_launches kwargs) of the report."""
    sizes = QUICK_SIZES if quick else DISTILL_SIZES
    for dtype in DTYPES:
        name_t = str(dtype)[6:]
        for name, batch, n, m, d in WORKLOADS:
            if not quick or name in ("W1", "W5"):
                yield f"{name} {name_t}", batch, n, m, d, dtype, "cosine", {}
        for n, m in sizes:
            for d in DISTILL_D[:1] if quick else DISTILL_D:
                for cost in ("cosine", "sqeuclidean"):
                    yield f"{n}x{m}x{d} {cost} {name_t}", 4, n, m, d, dtype, cost, {}
            yield f"{n}x{m} dense {name_t}", 4, n, m, 0, dtype, "dense", {}
    for n, m in VARIANT_SIZES[:2] if quick else VARIANT_SIZES:
        for d in DISTILL_D[:1] if quick else DISTILL_D:
            yield (f"{n}x{m}x{d} cosine fp16/bf16", 4, n, m, d, torch.float16, "cosine",
                   dict(y_dtype=torch.bfloat16))
            yield (f"{n}x{m}x{d} cosine fp32 strided", 4, n, m, d, torch.float32, "cosine",
                   dict(strided=True))


def specialise(launch: Launch, backend):
    """What the JIT would compile for these arguments: (key, (options, signature, constexprs,
    attrs)). The key is what the runtime's kernel cache distinguishes: the kernel, every
    argument's type and specialisation (integer == 1 / divisible by 16, pointer alignment,
    constexpr values) and the compile options; two launches with one key share a binary."""
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    packed = kernel._pack_args(backend, dict(launch.meta), bound, specialization, options)
    key = (kernel.fn.__name__, repr(specialization), repr(sorted(options.items())))
    return key, packed


def _specialise(launch: Launch, backend):
    return specialise(launch, backend)[1]


def _describe(launch: Launch, signature) -> str:
    meta = dict(launch.meta)
    options = f"warps={meta.pop('num_warps')} stages={meta.pop('num_stages')}"
    meta.pop("enable_fp_fusion")
    dtypes = "/".join(sorted({signature[a].lstrip("*") for a in ("x_ptr", "y_ptr")}))
    return " ".join(f"{k}={v}" for k, v in meta.items()) + f" {options} {dtypes}"


def ptxas_stats(log: str) -> dict:
    """Registers, stack and spills from a ``ptxas -v`` log."""

    def grab(pattern):
        found = re.search(pattern, log)
        if found is None:
            raise RuntimeError(f"ptxas output without {pattern!r}:\n{log}")
        return int(found.group(1))

    return dict(registers=grab(r"Used (\d+) registers"), stack=grab(r"(\d+) bytes stack frame"),
                spill_stores=grab(r"(\d+) bytes spill stores"),
                spill_loads=grab(r"(\d+) bytes spill loads"))


_CP_ASYNC = re.compile(r"cp\.async\.c[ag]\.shared\.global\S*\s+\[[^\]]+\],\s*\[[^\]]+\],"
                       r"\s*(0x[0-9a-fA-F]+|\d+)")
_LD_GLOBAL = re.compile(r"\bld\.global\S*?(?:\.v(\d))?\.[bfsu](\d+)\s")


def memory_ops(ptx: str) -> dict:
    """Global loads ("ld W") and cp.async copies ("cp.async W") in the PTX, by width W in
    bytes: 16 is a vectorised access, 4 one fp32 per instruction."""
    counts: Counter = Counter()
    for line in ptx.splitlines():
        found = _CP_ASYNC.search(line)
        if found:
            counts[f"cp.async {int(found.group(1), 0)}"] += 1
            continue
        found = _LD_GLOBAL.search(line)
        if found:
            counts[f"ld {int(found.group(1) or 1) * int(found.group(2)) // 8}"] += 1
    return dict(sorted(counts.items()))


@contextlib.contextmanager
def _runtime_ptxas_log():
    """Compile for real (no cache hit) and capture the log of the compile's own ptxas run,
    which Triton prints when TRITON_DUMP_PTXAS_LOG is set."""
    saved = {k: os.environ.get(k) for k in ("TRITON_ALWAYS_COMPILE", "TRITON_DUMP_PTXAS_LOG")}
    os.environ.update(TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1")
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def compile_one(launch: Launch, packed, target) -> tuple[dict, dict, int]:
    """(ptxas stats, memory ops, shared bytes) of one specialisation, compiled as at runtime."""
    options, signature, constexprs, attrs = packed
    src = ASTSource(launch.kernel, signature, constexprs, attrs)
    with _runtime_ptxas_log() as log:
        compiled = triton.compile(src, target=target, options=options.__dict__)
    ptx = compiled.asm["ptx"]
    stats = dict(ptxas_stats(log.getvalue()), divisions=len(re.findall(r"\bdiv\.\S*f32", ptx)))
    return stats, memory_ops(ptx), compiled.metadata.shared


def config_key(launch: Launch, signature) -> tuple:
    """Kernel, operand dtypes, block sizes and flags, and launch options: coarser than the
    runtime's key (:func:`specialise`), the dedup of ``--quick`` (the first shape's
    specialisation stands for the others)."""
    return (launch.kernel.fn.__name__, signature["x_ptr"], signature["y_ptr"],
            tuple(sorted(launch.meta.items())))


def compile_all(archs, quick: bool) -> list[Row]:
    rows: list[Row] = []
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        seen: dict[tuple, Row] = {}
        for label, batch, n, m, d, dtype, cost, extra in shape_grid(quick):
            for launch in record_launches(batch, n, m, d, dtype, cost, **extra):
                key, packed = specialise(launch, backend)
                if quick:  # one specialisation per config, to fit a test's time
                    key = config_key(launch, packed[1])
                if key in seen:
                    seen[key].used_by.append(label)
                    continue
                stats, mem, shared = compile_one(launch, packed, target)
                row = Row(launch.kernel.fn.__name__, _describe(launch, packed[1]), arch,
                          shared=shared, used_by=[label], memory_ops=mem, **stats)
                seen[key] = row
                rows.append(row)
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("arch", "kernel", "config", "regs", "spill st/ld", "smem KiB", "vec B",
              "cp.async 16/4", "ok", "first shape (+ others)")
    table = [header] + [
        (f"sm_{r.arch}", r.kernel, r.config, str(r.registers),
         f"{r.spill_stores}/{r.spill_loads}", f"{r.shared / 1024:.1f}", str(r.vector_bytes),
         f"{r.memory_ops.get('cp.async 16', 0)}/{r.memory_ops.get('cp.async 4', 0)}",
         "yes" if r.ok else "NO", f"{r.used_by[0]} (+{len(r.used_by) - 1})")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--quick", action="store_true",
                        help="a small shape grid, one specialisation per config")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile")
    rows = compile_all(args.arch, args.quick)
    if args.json:
        print(json.dumps([dict(asdict(r), ok=r.ok, vector_bytes=r.vector_bytes,
                               cp_async=r.cp_async) for r in rows], indent=1))
    else:
        print_table(rows)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
