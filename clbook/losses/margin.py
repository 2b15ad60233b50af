r"""Margin losses on distances: DrLIM's spring energy (Hadsell, Chopra and LeCun, 2006) and the triplet loss.

.. math::
    L_{DrLIM} = \operatorname{mean}_i \big[(1-y_i)\tfrac12 d_i^2 + y_i \tfrac12 \max(0, m-d_i)^2\big],
    \qquad
    L_{triplet} = \operatorname{mean}_i \max(0, m + d(a_i, p_i) - d(a_i, n_i))

with Euclidean (not squared) distances :math:`d`. Shapes: pairs or triplets of ``[N, D]`` rows,
row i of each forming one example; the result is a scalar. There is no softmax and no fast path:
the plain form below is what runs. The one care taken is :func:`_safe_norm`, whose gradient is
finite (zero) where two points coincide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.losses._checks import _check_embeddings, _check_positive, _check_same_shape, _result, _safe_norm, _to_float32

__all__ = ["margin_contrastive_loss", "triplet_margin_loss", "MarginContrastiveLoss", "TripletMarginLoss"]


def margin_contrastive_loss(x1: Tensor, x2: Tensor, y: Tensor, margin: float = 1.0) -> Tensor:
    r"""DrLIM spring-energy loss (Hadsell, Chopra and LeCun, 2006).

    .. math:: L = \operatorname{mean}_i \big[(1-y_i)\tfrac12 d_i^2 + y_i \tfrac12 \max(0, m-d_i)^2\big]

    with :math:`d_i = \lVert x1_i - x2_i \rVert_2`. Similar pairs are attractive springs of rest
    length 0; dissimilar pairs are repulsive springs that let go once they are ``margin`` apart.

    Parameters
    ----------
    x1, x2 : Tensor, shape [N, D]
        The two embeddings of each pair.
    y : Tensor, shape [N]
        Pair labels, **0 for similar and 1 for dissimilar** (the paper's convention; some
        libraries use the opposite one). Any numeric or bool dtype holding only 0 and 1.
    margin : float, default 1.0
        Distance beyond which a dissimilar pair contributes nothing. Must be positive.

    Returns
    -------
    Tensor, shape []
        The mean loss over the N pairs. The gradient is finite (zero) when ``x1 == x2``.
    """
    _check_embeddings("x1", x1)
    _check_embeddings("x2", x2)
    _check_same_shape(("x1", "x2"), (x1, x2))
    margin = _check_positive("margin", margin)
    if not isinstance(y, Tensor) or y.shape != (x1.shape[0],):
        shape = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be a tensor of shape [{x1.shape[0]}] (one label per pair), got {shape}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("y must hold only 0 (similar) and 1 (dissimilar)")
    (x1, x2), dtype = _to_float32(x1, x2)
    diff = x1 - x2
    # The attractive term uses the squared distance directly: no sqrt, so no kink at d = 0.
    attract = 0.5 * diff.pow(2).sum(dim=1)
    repel = 0.5 * F.relu(margin - _safe_norm(diff)).pow(2)
    # Select, not (1 - y) * attract + y * repel: 0 * inf would be NaN for a far dissimilar pair.
    return _result(torch.where(y.bool(), repel, attract).mean(), dtype, "margin_contrastive_loss")


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0) -> Tensor:
    r"""Triplet loss :math:`\operatorname{mean}_i \max(0, m + d(a_i, p_i) - d(a_i, n_i))`.

    Parameters
    ----------
    anchor, positive, negative : Tensor, shape [N, D]
        Row i of each forms one triplet. Distances are Euclidean (not squared).
    margin : float, default 1.0
        How much farther the negative must be than the positive. Must be positive.

    Returns
    -------
    Tensor, shape []
        Mean over the N triplets; triplets already satisfying the margin contribute 0.
    """
    for name, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        _check_embeddings(name, t)
    _check_same_shape(("anchor", "positive", "negative"), (anchor, positive, negative))
    margin = _check_positive("margin", margin)
    (anchor, positive, negative), dtype = _to_float32(anchor, positive, negative)
    d_ap = _safe_norm(anchor - positive)
    d_an = _safe_norm(anchor - negative)
    return _result(F.relu(margin + d_ap - d_an).mean(), dtype, "triplet_margin_loss")


class MarginContrastiveLoss(nn.Module):
    """Module form of :func:`margin_contrastive_loss` (``y = 0`` similar, ``y = 1`` dissimilar)."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = _check_positive("margin", margin)

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor) -> Tensor:
        return margin_contrastive_loss(x1, x2, y, self.margin)


class TripletMarginLoss(nn.Module):
    """Module form of :func:`triplet_margin_loss`."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = _check_positive("margin", margin)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_margin_loss(anchor, positive, negative, self.margin)
