"""Ahead-of-time compilation of every Triton kernel config for sm_80 and sm_90, no GPU needed.

Runs ``python -m optical_ops.kernels.compile_report --json --quick`` in a subprocess without
TRITON_INTERPRET (the interpreter replaces the compiler; conftest.py sets it in this process):
every kernel at the block sizes its launcher picks for the benchmark and distillation shapes
is compiled with ``triton.compile`` and its PTX checked by ``ptxas -v``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")
compile_report = pytest.importorskip("optical_ops.kernels.compile_report")
pytestmark = pytest.mark.compile

KERNELS = {"_sinkhorn_fused_kernel", "_softmin_kernel", "_plan_cost_kernel",
           "_cost_matrix_kernel", "_plan_matmul_kernel"}


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "optical_ops.kernels.compile_report", "--json", "--quick"],
        env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    assert proc.stdout.strip(), proc.stderr[-4000:]
    return proc.returncode, json.loads(proc.stdout)


def test_every_kernel_compiles_for_both_targets(report):
    _, rows = report
    assert {r["kernel"] for r in rows} == KERNELS
    for arch in (80, 90):
        for dtype in ("fp32", "fp16", "bf16"):
            compiled = {r["kernel"] for r in rows if r["arch"] == arch and dtype in r["config"]}
            assert compiled == KERNELS, (arch, dtype)
    assert all(r["registers"] > 0 for r in rows)


def test_both_fused_modes_compile_for_both_targets(report):
    """The fused kernel with its tile in registers (RESIDENT=True) and in strips of 64, 128 and
    256 columns over a dense cost (RESIDENT=False), for every operand dtype (the strips read
    fp32 costs built from any embeddings, and users' fp16/bf16/fp32 costs)."""
    _, rows = report
    fused = [r for r in rows if r["kernel"] == "_sinkhorn_fused_kernel"]
    for arch in (80, 90):
        for dtype in ("fp32", "fp16", "bf16"):
            modes = {"RESIDENT=True" in r["config"] for r in fused
                     if r["arch"] == arch and dtype in r["config"]}
            assert modes == {True, False}, (arch, dtype)
        widths = {c for r in fused if r["arch"] == arch and "RESIDENT=False" in r["config"]
                  for c in r["config"].split() if c.startswith("BLOCK_M=")}
        assert widths == {"BLOCK_M=64", "BLOCK_M=128", "BLOCK_M=256"}, arch


def test_no_spills_and_shared_memory_within_the_target(report):
    returncode, rows = report
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spills, spills
    over = [r for r in rows if r["shared"] > compile_report.SMEM_LIMIT[r["arch"]]]
    assert not over, over
    assert all(r["ok"] for r in rows) and returncode == 0


def test_a_spilling_config_is_flagged():
    row = compile_report.Row("k", "", 80, registers=255, spill_stores=8, spill_loads=4, stack=8,
                             shared=1024, used_by=["x"])
    assert not row.ok
    row.spill_stores = row.spill_loads = 0
    assert row.ok
    row.shared = compile_report.SMEM_LIMIT[80] + 1
    assert not row.ok


def test_mixed_and_strided_inputs_and_the_widest_resident_tiles_compile(report):
    """Configs the launchers pick that the report once skipped: fp16 with bf16 (the most
    registers), feature-strided embeddings, and the resident 32 x 256 tile."""
    _, rows = report
    for arch in (80, 90):
        fused = [r for r in rows if r["arch"] == arch and r["kernel"] == "_sinkhorn_fused_kernel"]
        assert any("bf16/fp16" in r["config"] for r in fused), arch
        assert any("strided" in label for r in rows if r["arch"] == arch
                   for label in r["used_by"]), arch
        assert any("RESIDENT=True" in r["config"] and "BLOCK_N=32 BLOCK_M=256" in r["config"]
                   for r in fused), arch


def test_dense_cost_reads_are_vectorised_and_pipelined(report):
    """The strips over a dense cost with 16-entry rows (the cost the strip mode builds) load
    C with 16-byte cp.async (the load mask is the bounds, weights are applied after), and the
    streaming soft-min over a dense cost is pipelined (cp.async). Before: 4-byte cp.async
    only in the strips, no cp.async at all in the dense soft-min."""
    _, rows = report
    for arch in (80, 90):
        strips = [r for r in rows if r["arch"] == arch and r["kernel"] == "_sinkhorn_fused_kernel"
                  and "RESIDENT=False" in r["config"]]
        # Over the cost built from embeddings, whatever m (its rows are read to their padded
        # width, a multiple of 16: 200 x 50 too, which loaded 4 bytes per copy when masked by m).
        built = [r for r in strips if r["config"].endswith("fp32")
                 and re.fullmatch(r"\d+x\d+x\d+ cosine float32", r["used_by"][0])]
        assert built and all(r["memory_ops"].get("cp.async 16", 0) > 0 for r in built), built
        # fp32 costs (the one the solvers build, and users'); a 2-byte user cost on unaligned
        # rows cannot use cp.async (4 bytes at least per copy).
        dense_softmin = [r for r in rows if r["arch"] == arch and r["kernel"] == "_softmin_kernel"
                         and "COST=0" in r["config"] and r["config"].endswith("fp32")]
        assert dense_softmin and all(r["cp_async"] > 0 for r in dense_softmin), dense_softmin


def test_no_device_division(report):
    """pot / eps would compile to the approximate div.full.f32: the kernels multiply by a
    host-computed 1 / eps instead."""
    _, rows = report
    assert all(r["divisions"] == 0 for r in rows), [r for r in rows if r["divisions"]][:3]


SPECIALISATION_KEYS = """
import json, torch
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import make_backend
from optical_ops.kernels import compile_report as cr

backend = make_backend(GPUTarget("cuda", 90, 32))
keys = {}
for n, m in %s:
    for launch in cr.record_launches(4, n, m, 256, torch.float32, "cosine"):
        keys.setdefault(launch.kernel.fn.__name__, set()).add(cr.specialise(launch, backend)[0])
print(json.dumps({k: len(v) for k, v in keys.items()}))
"""


def _count_keys(sizes):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SPECIALISATION_KEYS % (sizes,)], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_nearby_lengths_share_one_compiled_variant():
    """The runtime's cache key (compile_report.specialise) of every launch, for lengths in one
    power-of-two bucket: the row count (33, 48, 64: one of them divisible by 16) and the
    iteration count are not specialised, so one binary per kernel serves them all (resident
    64 x 128 tiles, and 128 x 256 strips over a cost built by the cost kernel)."""
    for sizes in ([(33, 100), (48, 100), (64, 100)], [(130, 200), (144, 200), (160, 200)]):
        counts = _count_keys(sizes)
        assert counts["_sinkhorn_fused_kernel"] == 2, counts  # with and without tol
        assert counts.get("_cost_matrix_kernel", 1) == 1, counts
