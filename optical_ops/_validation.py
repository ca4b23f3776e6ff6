"""Input checks shared by the public ops.

Shape, dtype, device and option checks cost nothing and always run. Checks that read tensor
values (mask values, weight signs, empty problems, finite inputs) need one device-to-host
sync; they run before any iteration and can be switched off with ``check_inputs=False``
(e.g. inside a CUDA graph or ``torch.compile``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


# The native loops count iterations in a C int.
MAX_ITERS = 2**31 - 1


def _is_real(value) -> bool:
    """A real number (Python or NumPy scalar), not a bool and not a tensor."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, torch.Tensor))


def check_solver_options(eps: float, n_iters: int, tol: float | None) -> None:
    if not _is_real(eps):
        raise TypeError(f"eps must be a real number (float), got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    if isinstance(n_iters, bool) or not isinstance(n_iters, numbers.Integral):
        raise TypeError(f"n_iters must be an int, got {type(n_iters).__name__}")
    if not 1 <= n_iters <= MAX_ITERS:
        raise ValueError(f"n_iters must be in [1, {MAX_ITERS}], got {n_iters}")
    if tol is not None and not (_is_real(tol) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be None or a finite number > 0, got {tol!r}")


def check_tau(tau: float | None) -> None:
    if tau is None:
        return
    if not _is_real(tau):
        raise TypeError(f"tau must be None or a Python float, got {type(tau).__name__}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be None (balanced OT) or a finite number > 0, got {tau}")


def check_eps_scaling(factor: float | None) -> None:
    if factor is None:
        return
    if not _is_real(factor):
        raise TypeError(f"eps_scaling must be None or a float, got {type(factor).__name__}")
    if not 0 < factor < 1:
        raise ValueError(f"eps_scaling must be None or a factor in (0, 1), got {factor}")


def check_float_tensor(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    first_name, first = next(iter(devices.items()))
    for k, dev in devices.items():
        if dev != first:
            raise ValueError(
                f"all tensors must be on one device: {first_name} is on {first}, {k} is on {dev}"
            )
    return first


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else (fp32, fp16, bf16) is computed in fp32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check_finite(name: str, t: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """``t`` must be finite wherever ``valid`` (broadcastable to ``t``) is True."""
    bad = ~torch.isfinite(t.detach())
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        raise ValueError(f"{name} contains NaN or inf at unmasked positions")


def check_cost(cost: torch.Tensor, row_mass: torch.Tensor, col_mass: torch.Tensor) -> None:
    """A cost (B, n, m) with no NaN or -inf where both weights are > 0; +inf (a forbidden pair)
    is allowed while every row and column with mass keeps a finite entry. One host sync."""
    valid = row_mass[:, :, None] & col_mass[:, None, :]
    c = cost.detach()
    finite = torch.isfinite(c) & valid
    bad = torch.stack([((torch.isnan(c) | (c == -torch.inf)) & valid).any(),
                       (row_mass & ~finite.any(2)).any(), (col_mass & ~finite.any(1)).any()])
    nan, row, col = bad.tolist()
    if nan:
        raise ValueError("cost contains NaN or -inf at unmasked positions")
    if row or col:
        side = "row" if row else "column"
        raise ValueError(f"cost has a {side} with mass whose entries are all +inf (forbidden): "
                         "no transport plan exists")


def _check_shape(arg: str, t: torch.Tensor, expected: tuple, device: torch.device) -> torch.Tensor:
    """``t`` of shape ``expected`` (B, n); a 1-D (n,) tensor is broadcast over the batch."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() == 1 and t.shape[0] == expected[1]:
        t = t.expand(expected)
    if tuple(t.shape) != expected:
        raise ValueError(f"{arg} must have shape {expected} or ({expected[1]},), got "
                         f"{tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{arg} is on {t.device}, expected {device} like the inputs")
    return t


def marginal(
    size: int,
    batch: int,
    mask: torch.Tensor | None,
    weights: torch.Tensor | None,
    *,
    mask_name: str,
    weights_name: str,
    dtype: torch.dtype,
    device: torch.device,
    check_values: bool,
) -> torch.Tensor:
    """Normalised marginal (batch, size) from an optional 0/1 mask and optional weights.

    ``mask`` is bool or 0/1 (a Hugging Face ``attention_mask`` works as is); ``weights`` are
    non-negative and finite. Their product is divided by its sum per problem; zero entries
    carry no mass. The ``*_name`` arguments are the user-facing names used in errors.
    """
    expected = (batch, size)
    w = None  # None: all ones
    given = []
    if mask is not None:
        mask = _check_shape(mask_name, mask, expected, device)
        if mask.dtype != torch.bool and check_values and bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(f"{mask_name} must be bool or contain only 0 and 1")
        w = (mask if mask.dtype == torch.bool else mask != 0).to(dtype)
        given.append(mask_name)
    if weights is not None:
        weights = _check_shape(weights_name, weights, expected, device)
        if weights.dtype == torch.bool or weights.is_complex():
            raise TypeError(
                f"{weights_name} must be a real float or integer tensor, got {weights.dtype}"
            )
        if check_values:
            if not bool(torch.isfinite(weights).all()):
                raise ValueError(f"{weights_name} must be finite")
            if bool((weights < 0).any()):
                raise ValueError(f"{weights_name} must be non-negative")
        if weights.is_floating_point():
            # Scaled by the largest weight of each problem in their own dtype first, so that
            # finite weights whose sum (or whose value in the compute dtype) overflows stay
            # finite; the normalisation below removes the scale.
            top = weights.detach().abs().amax(dim=1, keepdim=True)
            weights = weights / torch.where(top > 0, top, torch.ones_like(top))
        weights = weights.to(dtype)
        w = weights if w is None else w * weights
        given.append(weights_name)
    if not given:
        return torch.full(expected, 1.0 / size, dtype=dtype, device=device)
    total = w.sum(dim=1, keepdim=True)
    if check_values and not bool((total > 0).all()):  # one sync; the indices only to word it
        empty = (~(total[:, 0] > 0)).nonzero().flatten().tolist()
        raise ValueError(
            f"{' and '.join(given)} leave no mass in problem(s) at batch index {empty}: "
            "every problem needs at least one token with positive weight"
        )
    return w / total


def potentials(name: str, t: torch.Tensor | None, expected: tuple, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor | None:
    """Potentials (B, n) (or (n,) for an unbatched problem) in the compute dtype, or None."""
    if t is None:
        return None
    check_float_tensor(name, t)
    if t.dim() == 1 and expected[0] == 1:
        t = t[None]
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device} like the inputs")
    return t.detach().to(dtype)
