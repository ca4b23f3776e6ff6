"""Loss and gradient agreement with POT's log-domain Sinkhorn in float64.

The reference runs the POT numpy peer on the same inputs cast to float64 (cost built in float64,
same eps and fixed iterations, unpadded problems), with the envelope gradient through the cost.
Where the float64 cost of one problem exceeds ``REFERENCE_MAX_BYTES`` (W5: 2 GiB, several times
that in POT's temporaries), the float32 POT numpy result of the same run is the reference, and
the report says so.

The loss of these problems is close to 1 per problem (random embeddings are nearly orthogonal,
C ~ 1 - N(0, 1/d)), so a relative error of 1e-4 in it is an absolute error of ~1e-4 in
<P, cos>.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .implementations.base import Output
from .implementations.pot_peers import PotNumpy, quiet
from .implementations.torch_calls import cosine_cost
from .workloads import Problem

TOLERANCE = 1e-4
REFERENCE_MAX_BYTES = 2**30
FLOAT64_BYTES = 8


@dataclass
class Reference:
    source: str
    loss: float
    grads: tuple[np.ndarray, np.ndarray] | None
    implementation: str | None = None  # the benchmarked implementation it comes from, if any
    iterations: int | None = None  # with a tol: the most any problem needed


def iterations_to_tol(problem: Problem) -> int:
    """The most iterations POT's float64 ``sinkhorn_log`` runs on any of the problems before
    its column error is <= ``problem.tol`` (checked at iterations 1, 11, 21, ...)."""
    import ot

    most = 0
    wide = problem.to(torch.float64)
    for xb, yb in wide.unpadded(wide.x, wide.y):
        a, b = (np.full(len(t), 1.0 / len(t)) for t in (xb, yb))
        with quiet():
            _, log = ot.sinkhorn(a, b, cosine_cost(xb, yb).numpy(), problem.eps,
                                 method="sinkhorn_log", numItermax=problem.iterations,
                                 stopThr=problem.tol, log=True)
        most = max(most, log["niter"] + 1)
    return most


def float64_reference(problem: Problem) -> Reference | None:
    """POT float64 on the problem, or None when it does not fit ``REFERENCE_MAX_BYTES``."""
    largest = int((problem.x_len * problem.y_len).max()) * FLOAT64_BYTES
    if largest > REFERENCE_MAX_BYTES:
        return None
    out = PotNumpy().setup(problem.to(torch.float64)).forward_backward()
    iterations = None if problem.tol is None else iterations_to_tol(problem)
    return Reference("POT sinkhorn_log, float64", out.loss, out.numpy_grads(),
                     iterations=iterations)


def relative_loss_difference(loss: float, reference: Reference) -> float:
    return abs(loss - reference.loss) / abs(reference.loss)


def relative_grad_difference(output: Output, reference: Reference) -> float | None:
    """max over X and Y of max|g - g_ref| / max|g_ref|."""
    if reference.grads is None or output.grads is None:
        return None
    return max(float(np.abs(g - r).max() / np.abs(r).max())
               for g, r in zip(output.numpy_grads(), reference.grads))
