"""Ahead-of-time compilation of every Triton kernel config for sm_80 and sm_90, no GPU needed.

Runs ``python -m optical_ops.kernels.compile_report --json --quick`` in a subprocess without
TRITON_INTERPRET (the interpreter replaces the compiler; conftest.py sets it in this process):
every kernel at the block sizes its launcher picks for the benchmark and distillation shapes
is compiled with ``triton.compile`` and its PTX checked by ``ptxas -v``.
"""

from __future__ import annotations

import json
import os
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
