"""Ours: ``optical_ops.ot_distill_loss`` on the padded batch with masks, ``reduction="sum"``
(with a workload's ``tol``: POT's stopping rule, ``tol_norm="l2"``)."""

from __future__ import annotations

import torch

from ..workloads import Problem
from .base import Calls, Implementation
from .torch_calls import torch_calls


def _calls(problem: Problem, backend: str, device: torch.device) -> Calls:
    from optical_ops import ot_distill_loss

    mask_x, mask_y = (None if m is None else m.to(device) for m in problem.masks())

    def solve(x, y, a, b):
        loss = ot_distill_loss(x, y, mask_x, mask_y, eps=problem.eps,
                               n_iters=problem.iterations, tol=problem.tol, tol_norm="l2",
                               backend=backend, reduction="sum")
        return loss, loss

    return torch_calls(problem, solve, batched=True, device=device)


class OursTorch(Implementation):
    name = "ours-torch"
    group = "ours"
    how = 'ot_distill_loss(X, Y, masks, backend="torch", reduction="sum")'
    requires = ("optical_ops",)
    ours = True

    def setup(self, problem: Problem) -> Calls:
        return _calls(problem, "torch", torch.device("cpu"))


class OursTriton(Implementation):
    name = "ours-triton"
    group = "ours"
    how = 'ot_distill_loss(X, Y, masks, backend="triton", reduction="sum") on the GPU'
    requires = ("optical_ops", "triton")
    ours = True
    device = "cuda"

    def unavailable(self) -> str | None:
        missing = super().unavailable()
        if missing:
            return missing
        return None if torch.cuda.is_available() else "no CUDA device"

    def setup(self, problem: Problem) -> Calls:
        return _calls(problem, "triton", torch.device("cuda"))
