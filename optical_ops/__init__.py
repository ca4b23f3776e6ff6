"""optical-ot: entropic optimal transport as a token-level distillation loss (OPTICAL).

Public API::

    from optical_ops import sinkhorn, ot_distill_loss, OTDistillLoss, cost_matrix, SinkhornResult
    from optical_ops import solver_plan, SolverPlan, SOLVERS   # which solver runs, and why
"""

from .build_info import native_cpu_status
from .costs import cost_matrix
from .dispatch import SOLVERS, SolverPlan, solver_plan
from .functional import SinkhornResult, ot_distill_loss, ot_distill_plan, sinkhorn
from .modules import OTDistillLoss

__all__ = [
    "SOLVERS",
    "OTDistillLoss",
    "SinkhornResult",
    "SolverPlan",
    "cost_matrix",
    "native_cpu_status",
    "ot_distill_loss",
    "ot_distill_plan",
    "sinkhorn",
    "solver_plan",
]
__version__ = "0.1.0"  # the one source: setup.py reads it
