r"""The Triton streaming kernels as a :class:`~optical_ops.sinkhorn_loop.SoftMin` primitive.

Same iterations as :class:`~optical_ops.softmin_streaming.StreamingSoftMin` (log-domain, cost
rebuilt tile by tile and never stored), one kernel launch per half-iteration
(:mod:`optical_ops.kernels.sinkhorn_streaming`). States are the potentials f (B, n), g (B, m)
in fp32. Importing this module needs triton.
"""

from __future__ import annotations

import torch

from .kernels.cost_tile import CostOperands
from .kernels.sinkhorn_backward import plan_matmul
from .kernels.sinkhorn_streaming import softmin, transport_cost
from .sinkhorn_loop import SoftMin
from .softmin_dense import col_error_from_log_ratio


class TritonStreamingSoftMin(SoftMin):
    """Log-domain soft-min updates by the streaming kernels.

    Args:
        ops: the cost operands (embeddings and statistics, or a dense cost).
        b: (B, m) column weights (for the marginal error).
        log_a, log_b: (B, n), (B, m) fp32 contiguous log-weights (-inf where a weight is 0).
        eps: the regularisation.
    """

    def __init__(self, ops: CostOperands, b: torch.Tensor, log_a: torch.Tensor,
                 log_b: torch.Tensor, eps: float):
        self.ops, self.eps = ops, eps
        self.b, self.log_a, self.log_b = b, log_a, log_b

    def initial_f_state(self) -> torch.Tensor:
        return torch.zeros_like(self.log_a)

    def update_cols(self, f):
        return softmin(self.ops.transposed(), self.log_b, self.log_a, f, self.eps)

    def update_rows(self, g):
        return softmin(self.ops, self.log_a, self.log_b, g, self.eps)

    def col_error(self, g, next_g):
        return col_error_from_log_ratio(self.b, (g - next_g) / self.eps)

    def potentials(self, f, g):
        return f, g

    def plan(self, f, g):
        return transport_cost(self.ops, self.log_a, self.log_b, f, g, self.eps, True)[1]

    def loss(self, f, g):
        return transport_cost(self.ops, self.log_a, self.log_b, f, g, self.eps)[0]

    def plan_products(self, f, g, x, y, x_scale, y_scale):
        """P y' and P^T x' with the scales applied inside the kernel (x', y' never written)."""
        def scale(s):
            return s.to(torch.float32).contiguous()

        py, rows = plan_matmul(self.ops, self.log_a, self.log_b, f, g, self.eps, y,
                               scale(y_scale))
        ptx, cols = plan_matmul(self.ops.transposed(), self.log_b, self.log_a, g, f, self.eps, x,
                                scale(x_scale))
        return py, ptx, rows, cols
