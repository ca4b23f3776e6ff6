"""optical-ot: entropic optimal transport as a token-level distillation loss (OPTICAL).

Public API::

    from optical_ops import sinkhorn, ot_distill_loss, OTDistillLoss, cost_matrix, SinkhornResult
"""

from .costs import cost_matrix
from .functional import SinkhornResult, ot_distill_loss, sinkhorn
from .modules import OTDistillLoss

__all__ = ["OTDistillLoss", "SinkhornResult", "cost_matrix", "ot_distill_loss", "sinkhorn"]
__version__ = "0.1.0"
