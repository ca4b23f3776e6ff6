"""Bad input gets a clear error naming the argument and what was expected."""

from __future__ import annotations

import pytest
import torch

from optical_ops import OTDistillLoss, cost_matrix, ot_distill_loss, sinkhorn

X = torch.randn(2, 5, 8)
Y = torch.randn(2, 6, 8)


def call(**overrides):
    kwargs = dict(student=X, teacher=Y)
    kwargs.update(overrides)
    return ot_distill_loss(**kwargs)


@pytest.mark.parametrize(
    "overrides,error,pattern",
    [
        (dict(teacher=torch.randn(3, 6, 8)), ValueError, r"same batch size B, got 2 and 3"),
        (dict(teacher=torch.randn(2, 6, 9)), ValueError, r"same embedding size d, got 8 and 9"),
        (dict(teacher=torch.randn(6, 8)), ValueError, r"must both be \(n, d\) or both \(B, n, d\)"),
        (dict(student=torch.randn(5)), ValueError, r"must both be \(n, d\) or both \(B, n, d\)"),
        (dict(student=torch.randn(2, 0, 8)), ValueError, r"at least one token"),
        (dict(student=X.long()), TypeError, r"student must be float16, bfloat16, float32 or"),
        (dict(teacher=Y.numpy()), TypeError, r"teacher must be a torch.Tensor"),
        (dict(student_mask=torch.ones(2, 6)), ValueError, r"student_mask must have shape \(2, 5\)"),
        (dict(teacher_mask=torch.ones(5)), ValueError,
         r"teacher_mask must have shape \(2, 6\) or \(6,\)"),
        (dict(student_mask=torch.full((2, 5), 2)), ValueError, r"student_mask must be bool or .*0"),
        (dict(teacher_weights=-torch.ones(2, 6)), ValueError, r"teacher_weights must be non-neg"),
        (dict(student_weights=torch.full((2, 5), float("nan"))), ValueError,
         r"student_weights must be finite"),
        (dict(student_weights=torch.ones(2, 5, dtype=torch.bool)), TypeError,
         r"student_weights must be a real"),
        (dict(eps=0.0), ValueError, r"eps must be a finite number > 0, got 0.0"),
        (dict(eps=-1.0), ValueError, r"eps must be a finite number > 0"),
        (dict(eps=float("inf")), ValueError, r"eps must be a finite number > 0"),
        (dict(eps=torch.tensor(0.1)), TypeError, r"eps must be a real number"),
        (dict(n_iters=0), ValueError, r"n_iters must be in \[1, 2147483647\], got 0"),
        (dict(n_iters=2.5), TypeError, r"n_iters must be an int"),
        (dict(tol=-1e-3), ValueError, r"tol must be None or a finite number > 0"),
        (dict(cost="l1"), ValueError, r"cost must be one of \('cosine', 'sqeuclidean'\)"),
        (dict(backend="cuda"), ValueError, r"backend must be one of \('auto', 'torch', 'triton'"),
        (dict(reduction="max"), ValueError, r"reduction must be one of \('mean', 'sum', 'none'\)"),
        (dict(solver="fast"), ValueError, r"solver must be one of"),
        (dict(student_mask=torch.ones(2, 5, device="meta")), ValueError,
         r"one device: student is on cpu, student_mask is on meta"),
    ],
)
def test_distill_loss_rejects(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        call(**overrides)


def test_empty_problem_names_its_batch_index():
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match=r"student_mask leave no mass in problem\(s\) at batch "
                                         r"index \[1\]"):
        ot_distill_loss(torch.randn(3, 5, 8), torch.randn(3, 6, 8), mask)
    weights = torch.ones(3, 6)
    weights[0] = weights[2] = 0
    with pytest.raises(ValueError, match=r"teacher_weights leave no mass .* index \[0, 2\]"):
        ot_distill_loss(torch.randn(3, 5, 8), torch.randn(3, 6, 8), teacher_weights=weights)
    # Mask and weights together: each non-empty alone, empty combined.
    w = torch.ones(3, 5)
    w[2, :2] = 0
    m = torch.ones(3, 5)
    m[2, 2:] = 0
    with pytest.raises(ValueError, match=r"student_mask and student_weights .* index \[2\]"):
        ot_distill_loss(torch.randn(3, 5, 8), torch.randn(3, 6, 8), m, student_weights=w)


def test_non_finite_embeddings_at_unmasked_tokens():
    x = X.clone()
    x[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"student contains NaN or inf at unmasked positions"):
        ot_distill_loss(x, Y)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 2] = False
    assert torch.isfinite(ot_distill_loss(x, Y, mask))  # masked: fine


def test_module_rejects_options_at_construction():
    with pytest.raises(ValueError, match=r"eps must be a finite number > 0"):
        OTDistillLoss(eps=0)
    with pytest.raises(TypeError, match=r"pass \['student_mask'\] to forward"):
        OTDistillLoss(student_mask=torch.ones(1, 1))


@pytest.mark.parametrize(
    "args,kwargs,error,pattern",
    [
        ((torch.rand(3),), {}, ValueError, r"cost must be \(n, m\) or \(B, n, m\)"),
        ((torch.rand(3, 4).int(),), {}, TypeError, r"cost must be float16"),
        ((torch.rand(3, 4), torch.ones(4)), {}, ValueError, r"a must have shape \(1, 3\)"),
        ((torch.rand(2, 3, 4), None, torch.ones(5)), {}, ValueError,
         r"b must have shape \(2, 4\) or \(4,\)"),
        ((torch.rand(3, 4), -torch.ones(3)), {}, ValueError, r"a must be non-negative"),
        ((torch.rand(3, 4), torch.zeros(3)), {}, ValueError, r"a leave no mass .* index \[0\]"),
        ((torch.full((3, 4), float("nan")),), {}, ValueError, r"cost contains NaN or -inf"),
        ((torch.rand(3, 4),), dict(eps=0), ValueError, r"eps must be a finite number > 0"),
        ((torch.rand(3, 4),), dict(n_iters=0), ValueError, r"n_iters must be in \[1, "),
        ((torch.rand(3, 4),), dict(backend="numpy"), ValueError, r"backend must be one of"),
    ],
)
def test_sinkhorn_rejects(args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        sinkhorn(*args, **kwargs)


def test_cost_matrix_rejects():
    with pytest.raises(ValueError, match=r"cost must be one of"):
        cost_matrix(X, Y, cost="dot")
    with pytest.raises(ValueError, match=r"must share the batch size and d"):
        cost_matrix(X, torch.randn(2, 6, 7))
