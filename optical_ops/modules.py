"""``nn.Module`` form of the OPTICAL loss."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .dispatch import check_request
from .functional import check_loss_options, ot_distill_loss


class OTDistillLoss(nn.Module):
    """OT distillation loss module: ``OTDistillLoss(**options)(student, teacher, masks...)``.

    Takes the keyword options of :func:`~optical_ops.ot_distill_loss` (``cost``, ``eps``,
    ``n_iters``, ``tol``, ``tau``, ``debias``, ``reduction``, ``backend``, ``solver``,
    ``check_inputs``); ``forward`` takes its tensor arguments. Holds no parameters. The options
    are checked at construction (no solve), so a typo fails there.
    """

    def __init__(self, **options):
        super().__init__()
        tensor_args = {"student_mask", "teacher_mask", "student_weights", "teacher_weights"}
        passed = tensor_args.intersection(options)
        if passed:
            raise TypeError(f"pass {sorted(passed)} to forward(), not to the constructor")
        defaults = {name: p.default for name, p in _LOSS_OPTIONS.items()}
        unknown = set(options) - set(defaults)
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; expected some of "
                            f"{sorted(defaults)}")
        o = {**defaults, **options}
        check_loss_options(o["cost"], o["eps"], o["n_iters"], o["tol"], o["tau"], o["debias"],
                           o["reduction"])
        check_request(o["backend"], o["solver"], tau=o["tau"], debias=o["debias"])
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


_LOSS_OPTIONS = {name: p for name, p in inspect.signature(ot_distill_loss).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and not name.endswith("_weights")}
