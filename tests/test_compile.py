"""ot_distill_loss under torch.compile: one opaque custom op (optical_ops.compiled), no graph
break with check_inputs=False, the same loss and gradients as eager."""

from __future__ import annotations

import pytest
import torch
from reference import random_tokens

from optical_ops import ot_distill_loss
from optical_ops.compiled import ot_value, ot_value_backward


def test_no_graph_break_and_fullgraph_matches_eager(gen):
    x = random_tokens(gen, 3, 7, 16, dtype=torch.float32).requires_grad_()
    y = random_tokens(gen, 3, 9, 16, dtype=torch.float32)
    w = (torch.rand(3, 7, generator=gen) + 0.1).requires_grad_()
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False

    def step(x, y, mask, w):
        return ot_distill_loss(x, y, mask, student_weights=w, check_inputs=False, n_iters=30)

    explained = torch._dynamo.explain(step)(x, y, mask, w)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(step, fullgraph=True)(x, y, mask, w)
    compiled.backward()
    grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    eager = step(x, y, mask, w)
    eager.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0)
    torch.testing.assert_close(grads[0], x.grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(grads[1], w.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("solver", ["dense", "dense-log", "streaming"])
def test_custom_op_gradients_equal_the_autograd_function(gen, solver):
    """The op's registered backward (rebuilt from the potentials) against the eager Function,
    and torch.library's own checks of the op (schema, fake tensor, autograd registration)."""
    x = random_tokens(gen, 2, 5, 8, dtype=torch.float64).requires_grad_()
    y = random_tokens(gen, 2, 6, 8, dtype=torch.float64).requires_grad_()
    a = torch.full((2, 5), 0.2, dtype=torch.float64, requires_grad=True)
    b = torch.full((2, 6), 1 / 6, dtype=torch.float64)
    args = (x, y, a / a.sum(1, keepdim=True), b, None, solver, "cosine", 0.1, 50, None, 1, None,
            None, False)  # the weights normalised as ot_distill_loss does
    value = ot_value(*args)[0]
    grads = torch.autograd.grad(value.sum(), (x, y, a))
    eager = ot_distill_loss(x, y, student_weights=a, eps=0.1, n_iters=50, solver=solver,
                            reduction="sum", check_inputs=False)
    for got, want in zip(grads, torch.autograd.grad(eager, (x, y, a))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.library.opcheck(ot_value, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_backward_op_returns_empty_tensors_for_sides_not_asked_for(gen):
    """The backward custom op called for no side (or one) returns empty tensors there."""
    x = random_tokens(gen, 2, 5, 8, dtype=torch.float32)
    y = random_tokens(gen, 2, 6, 8, dtype=torch.float32)
    a, b = torch.full((2, 5), 0.2), torch.full((2, 6), 1 / 6)
    f, g = torch.zeros(2, 5), torch.zeros(2, 6)
    args = (torch.ones(2), x, y, a, b, f, g, "dense", "cosine", 0.05, None)
    dx, dy = ot_value_backward(*args, False, False)
    assert dx.numel() == 0 and dy.numel() == 0
    dx, dy = ot_value_backward(*args, True, False)
    assert dx.shape == x.shape and torch.isfinite(dx).all() and dy.numel() == 0
