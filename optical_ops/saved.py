"""Everything a backward needs goes through ``ctx.save_for_backward``.

The solver state of a forward pass (primitives, cost factors, potentials, bucket indices) is a
small tree of our own objects holding tensors. :func:`release` moves every tensor out of the
tree, so the tensors can be saved the way autograd expects (version checks, no reference
cycles through ``ctx``) and the tensor-free tree can sit on ``ctx``; :func:`restore` puts the
saved tensors back in the same places.
"""

from __future__ import annotations

from dataclasses import is_dataclass

import torch

from .sinkhorn_loop import SoftMin

Slot = tuple[object, str]


def _holds_tensors(value) -> bool:
    """Our containers: dataclass instances and soft-min primitives."""
    return isinstance(value, SoftMin) or (is_dataclass(value) and not isinstance(value, type))


def _slots(obj) -> list[Slot]:
    if isinstance(obj, (list, tuple)):
        return [slot for item in obj if _holds_tensors(item) for slot in _slots(item)]
    found = []
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            found.append((obj, name))
        elif _holds_tensors(value) or isinstance(value, (list, tuple)):
            found += _slots(value)
    return found


def release(root) -> tuple[list[torch.Tensor], list[Slot]]:
    """(tensors, slots): every tensor reachable from ``root`` (one of our objects or a list of
    them), each replaced by None."""
    slots = _slots(root)
    tensors = [getattr(holder, name) for holder, name in slots]
    for holder, name in slots:
        object.__setattr__(holder, name, None)  # frozen dataclasses too
    return tensors, slots


def restore(slots: list[Slot], tensors) -> None:
    """Put ``tensors`` (as saved by autograd) back into ``slots``."""
    if len(slots) != len(tensors):
        raise RuntimeError(f"restore: {len(tensors)} tensors for {len(slots)} slots")
    for (holder, name), tensor in zip(slots, tensors):
        object.__setattr__(holder, name, tensor)
