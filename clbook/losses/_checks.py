"""What every loss of :mod:`clbook.losses` shares: input checks, the float32 rule, norms, logits.

Private: the public losses import these names; nothing outside :mod:`clbook.losses` should. A new
loss starts with the checks and ``(x1, x2), dtype = _to_float32(x1, x2)``, and ends with
``return _result(loss, dtype, name)`` (see the package's docstring).
"""

from __future__ import annotations

import math
import numbers
from functools import reduce

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- input checks


def _check_positive(name: str, value: float | Tensor) -> float | Tensor:
    """``value`` as a usable number: a float, or a 0-d tensor that requires grad (kept as is).

    Accepts any real number (Python, NumPy) or a 0-d real tensor; rejects bools and strings.
    """
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
        number = float(value.detach())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):  # NumPy numbers are Real
        number = float(value)
    else:
        number = None
    if number is None or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if isinstance(value, Tensor) and value.requires_grad:
        return value
    return number


def _check_embeddings(name: str, x: Tensor, rank: int | tuple[int, ...] = 2) -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        shapes = " or ".join({2: "[N, D]", 3: "[N, V, D]"}[r] for r in ranks)
        raise ValueError(f"{name} must have shape {shapes}, got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {list(x.shape)})")
    if 0 in x.shape[1:]:
        raise ValueError(f"{name} has an empty dimension (shape {list(x.shape)})")
    if x.numel() and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or infinite values")


def _all_finite(x: Tensor) -> bool:
    # Two reductions instead of an elementwise isfinite mask: about 4x faster on typical batches
    # (the check runs on every call). aminmax propagates NaN, and an infinity is an extreme.
    low, high = torch.aminmax(x.detach())
    return math.isfinite(low.item()) and math.isfinite(high.item())


def _check_same_shape(names: tuple[str, ...], tensors: tuple[Tensor, ...]) -> None:
    shapes = [list(t.shape) for t in tensors]
    if any(s != shapes[0] for s in shapes):
        described = ", ".join(f"{n} {s}" for n, s in zip(names, shapes))
        raise ValueError(f"shapes must match: {described}")


# ----------------------------------------------------------------------------- float32 in, the input's dtype out


_HALF = (torch.float16, torch.bfloat16)


def _to_float32(*tensors: Tensor) -> tuple[list[Tensor], torch.dtype]:
    """Half-precision tensors upcast to float32 (others unchanged), and the dtype to return.

    Every loss computes in float32 when given float16 or bfloat16: their sums of squares, exps and
    sums over thousands of rows overflow float16 (max 65,504), and the clamps that keep a zero row
    finite underflow. The returned dtype is the inputs' promoted dtype, what the loss would have
    had without the upcast. float32 and float64 inputs are returned as they are (no copy).
    """
    dtypes = {t.dtype for t in tensors}
    dtype = reduce(torch.promote_types, dtypes)
    if dtypes.isdisjoint(_HALF):  # the float32 / float64 path: nothing to do
        return list(tensors), dtype
    return [t.float() if t.dtype in _HALF else t for t in tensors], dtype


def _result(loss: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """``loss`` in ``dtype``, after checking that it is finite and fits that dtype.

    The inputs were checked finite, so a non-finite loss means an intermediate value overflowed
    (inputs near the dtype's range, a tiny temperature): an error, never a silent inf or NaN.
    """
    value = loss.item()
    if not math.isfinite(value):
        raise ValueError(f"{name} overflowed {loss.dtype} (got {value}): the inputs are too large "
                         "(or the temperature too small) for this dtype; rescale them")
    if loss.dtype != dtype:
        if abs(value) > torch.finfo(dtype).max:
            raise ValueError(f"{name} is {value:.6g}, beyond the largest {dtype} "
                             f"({torch.finfo(dtype).max:.6g}); compute it from float32 inputs")
        loss = loss.to(dtype)
    return loss


def _connected_zero(features: Tensor) -> Tensor:
    """A zero that still belongs to the graph: backward gives zero gradients, not an error."""
    # 0 * sum rather than sum * 0.0, which prints as -0.0 for a negative sum.
    return features.new_zeros(()) + 0.0 * features.sum()


# ----------------------------------------------------------------------------- norms


def _safe_norm(diff: Tensor) -> Tensor:
    """Euclidean norm over the last dimension with a finite (zero) gradient at 0.

    ``sqrt`` has an infinite slope at 0, so ``torch.norm`` back-propagates NaN when two points
    coincide. Clamping inside the sqrt keeps the unused branch finite; ``where`` keeps the
    value exact.
    """
    sq = diff.pow(2).sum(dim=-1)
    if not math.isfinite(sq.detach().sum().item()):  # a sum is ~5x cheaper than isfinite().all()
        # Squares beyond the dtype's range (|diff| > ~1.8e19 in float32), where the norm itself is
        # representable: divide each row by its largest entry first. Rare, so checked, not default.
        scale = diff.detach().abs().amax(dim=-1).clamp_min(torch.finfo(diff.dtype).tiny)
        return scale * _safe_norm(diff / scale[..., None])
    return torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


def _row_norms(z: Tensor) -> Tensor:
    """Euclidean norms ``[M, 1]`` of the rows of ``z`` [M, D], also for entries beyond ~1e19.

    The plain sum of squares overflows there in float32, and every such row would become a zero
    row after normalization. Then, and only then, each row is divided by its largest entry first,
    which keeps every square in range. (Underflow needs no care: norms below the ``1e-12`` clamp
    of :func:`_scaled_rows` are clamped anyway.)
    """
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    if math.isfinite(norm.detach().sum().item()):  # a sum is ~5x cheaper than isfinite().all()
        return norm
    scale = z.detach().abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    return torch.linalg.vector_norm(z / scale, dim=1, keepdim=True) * scale


# ----------------------------------------------------------------------------- the logits of the softmax losses


def _scaled_rows(z: Tensor, temperature: float, normalize: bool) -> Tensor:
    """Rows ``z / sqrt(temperature)``, L2-normalized first if ``normalize``: ``[M, D] -> [M, D]``.

    Their inner products are the logits ``z_i . z_j / temperature``. Scaling the [M, D] rows
    costs one small pass, where dividing the [M, M] logits costs a large one forward and backward.
    """
    if normalize:
        # One [M, 1] column of factors folds normalization and temperature together (a product:
        # its backward is cheaper than a division's). The clamp is F.normalize's, so an all-zero
        # row stays zero instead of becoming NaN.
        norm = _row_norms(z).clamp_min(1e-12)
        return z * (norm * temperature**0.5).reciprocal()
    return z * temperature**-0.5


def _masked_logits(rows: Tensor) -> Tensor:
    """``[M, D] -> [M, M]`` inner products of the rows, with the diagonal set to -inf.

    The diagonal (an anchor against itself) is excluded from every softmax by giving it
    ``exp(-inf) = 0`` weight; it is never the target, so no ``log(0)`` can appear.
    """
    logits = rows @ rows.T
    # Outside autograd: no loss depends on a diagonal entry (its softmax weight is exactly 0 and
    # it is never a target), so its gradient is exactly 0 anyway, and recording the in-place fill
    # would make backward clone the whole [M, M] gradient just to zero its diagonal.
    with torch.no_grad():
        logits.fill_diagonal_(float("-inf"))
    return logits


def _class_index(labels: Tensor) -> tuple[Tensor, int]:
    """Labels ``[N]`` -> (class index of each sample ``[N]``, number of indices K).

    Small non-negative integer labels (the usual case) index the classes directly, empty classes
    included, which spares a sort; anything else is renumbered 0..K-1 by ``torch.unique``.
    """
    if not labels.is_floating_point() and labels.dtype != torch.bool and labels.numel():
        low, high = (int(x) for x in torch.aminmax(labels))
        if low >= 0 and high < 4 * labels.numel() + 16:
            return labels.long(), high + 1
    classes, group = torch.unique(labels, return_inverse=True)
    return group, len(classes)
