"""Argument checks shared by every module: one place, one wording.

Each check returns the value in the type the caller should use (``int``, ``float``) and raises
``ValueError`` naming the argument otherwise. Numbers may be Python, NumPy or 0-d tensor values;
``bool`` is never taken for a number (``True`` is an ``int`` in Python, but never what was meant).

Images
------
Image batches are float tensors with values in [0, 1]. A ``uint8`` batch (0-255, as read from an
image file) is converted the way torchvision's ``ToTensor`` converts it: divided by 255 into a new
float32 tensor (:func:`check_images`). Every clbook function that takes images (the image
encoders, :class:`clbook.data.DigitAugment`) follows this one rule; other integer or bool dtypes
are refused.

Examples
--------
>>> check_int("epochs", 3, minimum=1)
3
>>> check_real("lr", 0.1)
0.1
>>> check_probability("momentum", 0.99, high_open=True)
0.99
>>> check_interval("scale", (0.4, 1.0), 0.0, 1.0)
(0.4, 1.0)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

import torch
from torch import Tensor

__all__ = [
    "as_number",
    "check_array",
    "check_int",
    "check_real",
    "check_probability",
    "check_bool",
    "check_choice",
    "check_features",
    "check_labels",
    "check_features_labels",
    "check_interval",
    "check_images",
]


def _scalar(value):
    """A 0-d tensor as a Python number (bool and complex tensors are left alone, and so rejected)."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype != torch.bool and not value.is_complex():
        return value.item() if value.is_floating_point() else int(value)
    return value


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer in ``[minimum, maximum]`` (either bound optional).

    The message reads "must be a positive integer" for ``minimum=1`` and "a non-negative
    integer" for ``minimum=0`` (without ``maximum``), the course's usual wording.
    """
    value = _scalar(value)
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return int(value)
    if minimum is not None and maximum is not None:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {value!r}")
    if maximum is None and minimum in (0, 1):
        raise ValueError(f"{name} must be a {'positive' if minimum == 1 else 'non-negative'} integer, got {value!r}")
    if maximum is not None:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")
    bound = f" >= {minimum}" if minimum is not None else ""
    raise ValueError(f"{name} must be an integer{bound}, got {value!r}")


def check_real(name: str, value, minimum: float | None = 0.0, strict: bool = True,
               maximum: float | None = None) -> float:
    """``value`` as a finite ``float`` greater than ``minimum`` (or equal, if not ``strict``), at most ``maximum``.

    ``minimum=None`` accepts any finite number.
    """
    if isinstance(value, Tensor) and value.dim() == 0:
        value = _scalar(value.detach())
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if ok:
        return float(value)
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if strict else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"<= {maximum}")
    raise ValueError(f"{name} must be a finite number{' ' + ' and '.join(parts) if parts else ''}, got {value!r}")


def check_probability(name: str, value, high_open: bool = False) -> float:
    """``value`` as a ``float`` in [0, 1] (or [0, 1) with ``high_open``)."""
    value = _scalar(value)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0
    if not ok or (high_open and value == 1.0):
        raise ValueError(f"{name} must be a number in [0, 1{')' if high_open else ']'}, got {value!r}")
    return float(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is a ``bool`` (a NumPy bool too): flags given as 0/1 or strings are refused."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def check_choice(name: str, value, choices) -> object:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value


def check_features(name: str, feats, width: int | None = None, *, min_rows: int = 1,
                   floating: bool = False) -> None:
    """Features ``[N, D]``: a tensor with at least ``min_rows`` rows and one column, no NaN or inf.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    feats : Tensor
    width : int, optional
        Required number of columns D.
    min_rows : int, default 1
        Fewest rows accepted (2 for statistics over pairs of rows).
    floating : bool, default False
        Refuse integer and bool tensors.
    """
    if not isinstance(feats, Tensor) or feats.dim() != 2:
        shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise ValueError(f"{name} must be a tensor of shape [N, D], got {shape}")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(feats.shape)})")
    if feats.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got shape {tuple(feats.shape)}")
    if width is not None and feats.shape[1] != width:
        raise ValueError(f"{name} has {feats.shape[1]} columns, expected {width} (the reference's D)")
    if floating and not feats.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {feats.dtype}")
    if feats.is_floating_point() and not bool(torch.isfinite(feats).all()):
        # A NaN row would be every query's nearest neighbour, a NaN feature a NaN probe.
        raise ValueError(f"{name} contains NaN or infinite values")


# Labels index one-hot columns and bincounts: a label of 10**12 would ask the allocator for
# terabytes. No classification problem in the course comes near this many classes.
MAX_CLASSES = 1 << 16


def check_labels(name: str, y, n: int | None = None, of: str = "X") -> None:
    """Integer class labels ``[N]`` (``N = n`` if given), all in ``[0, MAX_CLASSES)``."""
    if not isinstance(y, Tensor) or y.dim() != 1 or (n is not None and y.shape[0] != n):
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        want = f"[{n}], one per row of {of}" if n is not None else "[N]"
        raise ValueError(f"{name} (labels) must have shape {want}; got {shape}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} must hold class labels >= 0, got {int(y.min())}")
    if y.numel() and int(y.max()) >= MAX_CLASSES:
        raise ValueError(f"{name} holds the label {int(y.max())}; class labels must be below {MAX_CLASSES} "
                         "(relabel the classes 0, 1, 2, ...)")


def check_features_labels(feats, y, feats_name: str, y_name: str) -> None:
    """Features ``[N, D]`` (see :func:`check_features`) and their labels ``[N]`` (see :func:`check_labels`)."""
    check_features(feats_name, feats)
    check_labels(y_name, y, feats.shape[0], of=feats_name)


def check_interval(name: str, value, minimum: float | None = None, maximum: float | None = None,
                   strict_minimum: bool = True) -> tuple[float, float]:
    """A range ``(low, high)`` of finite numbers, ``low <= high``, inside ``(minimum, maximum]``.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : pair of numbers
    minimum : float, optional
        ``low`` must exceed it (or equal it, if not ``strict_minimum``).
    maximum : float, optional
        ``high`` must not exceed it.

    Returns
    -------
    (float, float)
    """
    try:
        low, high = (_scalar(v) for v in value)
    except (TypeError, ValueError):
        low = high = None
    ok = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high))
    ok = ok and low <= high
    if ok and minimum is not None:
        ok = low > minimum if strict_minimum else low >= minimum
    if ok and maximum is not None:
        ok = high <= maximum
    if ok:
        return float(low), float(high)
    bounds = ""
    if minimum is not None:
        bounds += f"{minimum} {'<' if strict_minimum else '<='} "
    bounds += "low <= high"
    if maximum is not None:
        bounds += f" <= {maximum}"
    raise ValueError(f"{name} must be a pair (low, high) of finite numbers with {bounds}, got {value!r}")


def check_images(name: str, x: Tensor) -> Tensor:
    """An image batch as floats: ``uint8`` is divided by 255 into float32 (torchvision's ``ToTensor`` rule).

    Floating-point batches are returned as they are (values are expected in [0, 1]); the caller's
    tensor is never modified. Other dtypes (int64, bool, ...) are refused: their scale is unknown.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    x : Tensor
        Images of any shape, e.g. ``[N, C, H, W]``.

    Returns
    -------
    Tensor
        ``x`` itself, or a new float32 tensor in [0, 1] if ``x`` is ``uint8``.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor of images, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not x.is_floating_point():
        raise ValueError(f"{name} must hold float images in [0, 1] or uint8 images in [0, 255], "
                         f"got dtype {x.dtype}")
    return x


def as_number(value):
    """A 0-d tensor or 0-d array as its Python number; anything else unchanged."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def check_array(X, name: str = "X") -> np.ndarray:
    """``X`` as a float64 NumPy array ``[n, d]``: numeric, non-empty, finite, and small enough that
    sums of squared distances cannot overflow float64 (a tensor is moved to the CPU first)."""
    if hasattr(X, "detach"):  # a torch tensor; avoid importing torch here
        X = X.detach().cpu().numpy()
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array of shape [n, d]: {err}") from None
    if X.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d] (rank 2), got shape {list(X.shape)}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {list(X.shape)})")
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    # Sums of n squared distances over d coordinates stay below float64's maximum when every
    # coordinate is below this (about 1e154 / sqrt(n d)); beyond it they would overflow to inf.
    limit = math.sqrt(np.finfo(np.float64).max / X.size) / 2
    largest = float(np.abs(X).max())
    if largest > limit:
        raise ValueError(f"{name} has values up to {largest:.3g}: squared distances would overflow float64 "
                         f"(keep values below {limit:.3g}); rescale it")
    return X
