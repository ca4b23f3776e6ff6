"""Benchmark harness: the OPTICAL loss against POT, GeomLoss, OTT-JAX and plain PyTorch.

``python -m benchmarks`` runs the workloads of ``BENCHMARKS.md`` (W1-W5) against every installed
peer; ``benchmarks/README.md`` describes the protocol, the columns and the floor.
"""
