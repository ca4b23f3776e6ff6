"""``nn.Module`` form of the OPTICAL loss."""

from __future__ import annotations

import torch
from torch import nn

from . import _validation as v
from .functional import BACKENDS, _torch_only, ot_distill_loss


class OTDistillLoss(nn.Module):
    """OT distillation loss module: ``OTDistillLoss(**options)(student, teacher, masks...)``.

    Takes the keyword options of :func:`~optical_ops.ot_distill_loss` (``cost``, ``eps``,
    ``n_iters``, ``tol``, ``reduction``, ``backend``, ``check_inputs``, ``strategy``);
    ``forward`` takes its tensor arguments. Holds no parameters.
    """

    def __init__(self, **options):
        super().__init__()
        tensor_args = {"student_mask", "teacher_mask", "student_weights", "teacher_weights"}
        passed = tensor_args.intersection(options)
        if passed:
            raise TypeError(f"pass {sorted(passed)} to forward(), not to the constructor")
        # Check the options once, on a tiny CPU problem with the PyTorch backend, so a typo
        # fails at construction whatever device the loss will run on.
        checked = dict(options)
        backend = checked.pop("backend", "auto")
        v.check_choice("backend", backend, BACKENDS)
        _torch_only(backend, tau=options.get("tau"), debias=options.get("debias", False))
        probe = torch.ones(1, 1)
        ot_distill_loss(probe, probe, backend="torch", **checked)
        self.options = options

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        student_mask: torch.Tensor | None = None,
        teacher_mask: torch.Tensor | None = None,
        student_weights: torch.Tensor | None = None,
        teacher_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return ot_distill_loss(
            student, teacher, student_mask, teacher_mask,
            student_weights=student_weights, teacher_weights=teacher_weights, **self.options,
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())
