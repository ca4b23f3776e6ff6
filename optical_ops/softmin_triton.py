r"""The Triton kernels as :class:`~optical_ops.sinkhorn_loop.SoftMin` primitives.

Same objective, iterations and conventions as the PyTorch primitives (:mod:`.sinkhorn_loop`):
P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps), from f = 0, column update first. States are the
potentials f (B, n), g (B, m) in fp32. The cost is either factorised embeddings
(:class:`~optical_ops.costs.FactorisedCost`, the one model of a cost: its per-token scales and
offsets are the kernels' statistics) or a dense cost (B, n, m), read in place.

* :class:`TritonStreamingSoftMin`: one streaming launch per half-iteration
  (:mod:`optical_ops.kernels.sinkhorn_streaming`, online log-sum-exp over cost tiles).
* :class:`TritonFusedSoftMin`: the same primitive whose :meth:`solve` runs every iteration (and
  the ``tol`` check, per problem, on the device) in one launch of
  :func:`~optical_ops.kernels.sinkhorn_fused.sinkhorn_fused`: the cost tile in registers, or a
  dense cost swept in row strips.

fp16/bf16/fp32 inputs are read as they are and computed in fp32 (fp32 cost products in 3xTF32,
see :mod:`optical_ops.kernels.cost_tile`). With ``tol=None`` nothing is read on the host
(CUDA-graph capturable); with ``tol`` the fused solve still reads nothing, the streaming loop
reads one flag every CHECK_EVERY iterations.

N.B. The gradient products rebuild P tile by tile from the potentials
(:mod:`optical_ops.kernels.sinkhorn_backward`), never storing it. Importing this module needs
triton.
"""

from __future__ import annotations

import torch

from .costs import FactorisedCost
from .dispatch import dense_fits
from .kernels.cost_tile import COST_KINDS, DENSE, CostOperands, dense_operands
from .kernels.sinkhorn_backward import plan_matmul
from .kernels.sinkhorn_fused import sinkhorn_fused
from .kernels.sinkhorn_streaming import cost_matrix, softmin, transport_cost
from .sinkhorn_loop import CHECK_EVERY, LoopResult, SoftMin


def kernel_operands(fc: FactorisedCost) -> CostOperands:
    """The kernels' view of a factorised cost: raw embeddings and one fp32 statistic per token
    (1 / |x| for the cosine, |x|^2 for the squared Euclidean cost)."""
    cosine = fc.kind == "cosine"
    x_stat, y_stat = ((fc.row_scale, fc.col_scale) if cosine else (fc.row_offset, fc.col_offset))
    return CostOperands(COST_KINDS[fc.kind], fc.x, fc.y, x_stat.float().contiguous(),
                        y_stat.float().contiguous(), fc.x.shape[1], fc.y.shape[1], fc.x.shape[2])


def _log_weights(w: torch.Tensor) -> torch.Tensor:
    """(B, n) fp32 contiguous log-weights, -inf where a weight is 0."""
    return torch.log(w.to(torch.float32)).contiguous()


class TritonStreamingSoftMin(SoftMin):
    """Log-domain soft-min updates by the streaming kernels.

    Args:
        a, b: (B, n), (B, m) normalised weights.
        eps: the regularisation.
        fc: the factorised cost, or
        cost: a dense cost (B, n, m), read in place (exactly one of the two).
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, eps: float, *,
                 fc: FactorisedCost | None = None, cost: torch.Tensor | None = None):
        if (fc is None) == (cost is None):
            raise ValueError("give exactly one of fc (embeddings) and cost (a dense cost)")
        self.fc, self.cost, self.eps = fc, cost, eps
        self.a, self.b, self.log_a, self.log_b = a, b, _log_weights(a), _log_weights(b)

    @property
    def ops(self) -> CostOperands:
        return kernel_operands(self.fc) if self.cost is None else dense_operands(self.cost)

    def update_cols(self, f):
        return softmin(self.ops.transposed(), self.log_b, self.log_a, f, self.eps)

    def update_rows(self, g):
        return softmin(self.ops, self.log_a, self.log_b, g, self.eps)

    def potentials(self, f, g):
        return f, g

    def plan(self, f, g):
        return transport_cost(self.ops, self.log_a, self.log_b, f, g, self.eps, True)[1]

    def loss(self, f, g):
        return transport_cost(self.ops, self.log_a, self.log_b, f, g, self.eps)[0]

    def plan_products(self, f, g, x, y, x_scale, y_scale):
        """P y' and P^T x' with the scales applied inside the kernel (x', y' never written).

        P is rebuilt tile by tile for each block of features: from a dense cost built once
        when it fits (no dot products per block), else from the embeddings.
        """
        ops = self.ops
        if ops.kind != DENSE and dense_fits(ops.batch, ops.n, ops.m, torch.float32):
            ops = dense_operands(cost_matrix(ops, self.log_a, self.log_b))
        y_scale, x_scale = (s.to(torch.float32).contiguous() for s in (y_scale, x_scale))
        py = ptx = rows = cols = None  # a side not asked for (None) has no marginal either
        if y is not None:
            py, rows = plan_matmul(ops, self.log_a, self.log_b, f, g, self.eps, y, y_scale)
        if x is not None:
            ptx, cols = plan_matmul(ops.transposed(), self.log_b, self.log_a, g, f, self.eps, x,
                                    x_scale)
        return py, ptx, rows, cols


class TritonFusedSoftMin(TritonStreamingSoftMin):
    """The whole loop in one launch; ``resident``: the cost tile in registers (else strips over
    a dense cost); ``write_plan``: the solve also writes the dense plan."""

    def __init__(self, a, b, eps, *, fc=None, cost=None, resident: bool = True,
                 write_plan: bool = False):
        super().__init__(a, b, eps, fc=fc, cost=cost)
        self.resident, self.write_plan = resident, write_plan

    def solve(self, n_iters, tol, warm, norm):
        if warm or norm != 1:  # the kernel starts from f = 0 and checks the L1 error
            return None
        f, g, loss, iterations, plan = sinkhorn_fused(self.ops, self.log_a, self.log_b,
                                                      self.eps, n_iters, tol, CHECK_EVERY,
                                                      self.write_plan, self.resident)
        return LoopResult(f, g, iterations, loss=loss, plan=plan)


def triton_source(solver: str, fc: FactorisedCost, a, b) -> dict:
    """What the primitive of ``solver`` reads for embeddings: ``{"fc": fc}``, or for
    ``triton-strips`` and ``triton-dense`` ``{"cost": C}``, the dense cost built by a kernel."""
    if solver in ("triton-strips", "triton-dense"):
        return {"cost": cost_matrix(kernel_operands(fc), _log_weights(a), _log_weights(b))}
    return {"fc": fc}


def triton_softmin(solver: str, a, b, eps, *, fc=None, cost=None,
                   write_plan: bool = False) -> TritonStreamingSoftMin:
    """The primitive of a Triton solver (:data:`optical_ops.dispatch.SOLVERS`) over
    embeddings (``fc``; for strips and dense solvers the dense cost is built first,
    :func:`triton_source`) or a dense cost."""
    if cost is None and solver in ("triton-strips", "triton-dense"):
        fc, cost = None, triton_source(solver, fc, a, b)["cost"]
    if solver in ("triton-fused", "triton-strips"):
        return TritonFusedSoftMin(a, b, eps, fc=fc, cost=cost, write_plan=write_plan,
                                  resident=solver == "triton-fused")
    return TritonStreamingSoftMin(a, b, eps, fc=fc, cost=cost)
