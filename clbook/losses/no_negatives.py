r"""Losses without negatives: SimSiam's negative cosine (Chen and He, 2021) and BYOL's normalized MSE (Grill et al., 2020).

.. math::
    L_{SimSiam} = -\operatorname{mean}_i \cos(p_i, \mathrm{sg}(z_i)),
    \qquad
    L_{BYOL} = \operatorname{mean}_i \lVert \hat p_i - \mathrm{sg}(\hat z_i) \rVert^2 = 2 - 2 \cos(p_i, z_i)

Shapes: predictions ``p`` and targets ``z`` [N, D], row i of each a pair (one view's prediction,
the other view's projection); :math:`\mathrm{sg}` is stop-gradient (``stop_gradient=True``) and
:math:`\hat x` the L2-normalized row. Nothing here pushes rows apart: what keeps the methods from
collapsing is the stop-gradient and the predictor (notebook 08). The plain forms below are what
runs; there is no fast path.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from clbook.losses._checks import _check_embeddings, _check_same_shape, _result, _to_float32

__all__ = ["negative_cosine_loss", "normalized_mse_loss"]


def negative_cosine_loss(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    r"""SimSiam's :math:`D(p, \mathrm{sg}(z)) = -\operatorname{mean}_i \cos(p_i, z_i)` (Chen and He, 2021).

    The prediction ``p`` of one view is pulled towards the projection ``z`` of the other view,
    which is treated as a constant target (stop-gradient). There are no negatives, so a constant
    encoder reaches the minimum, -1; the stop-gradient (with a predictor) is what keeps SimSiam
    from getting there. The symmetric loss of a pair of views is
    ``negative_cosine_loss(p1, z2) / 2 + negative_cosine_loss(p2, z1) / 2``.

    Parameters
    ----------
    p : Tensor, shape [N, D]
        Predictions (predictor outputs) for one view. Need not be normalized.
    z : Tensor, shape [N, D]
        Targets: projections of the other view, row i the partner of ``p``'s row i.
    stop_gradient : bool, default True
        Detach ``z``. ``False`` lets the gradient flow into the target too: the ablation under
        which SimSiam collapses.

    Returns
    -------
    Tensor, shape []
        In [-1, 1]; -1 when every prediction points the same way as its target. A zero row has
        cosine 0 with everything (no NaN).
    """
    _check_prediction_target(p, z)
    (p, z), dtype = _to_float32(p, z)
    if stop_gradient:
        z = z.detach()
    return _result(-F.cosine_similarity(p, z, dim=1).mean(), dtype, "negative_cosine_loss")


def normalized_mse_loss(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    r"""BYOL's loss: squared distance of the L2-normalized rows, :math:`\lVert \hat p - \hat z \rVert^2 = 2 - 2\cos(p, z)`.

    Grill et al. (2020) compare the online network's prediction of one view with the target
    network's projection of the other view. For unit vectors the squared distance is
    ``2 - 2 cos``, so this is :func:`negative_cosine_loss` times 2 plus 2: same gradients up to
    the factor 2, values in [0, 4] instead of [-1, 1].

    Parameters
    ----------
    p : Tensor, shape [N, D]
        Online predictions for one view.
    z : Tensor, shape [N, D]
        Target projections of the other view (the target network needs no gradient anyway).
    stop_gradient : bool, default True
        Detach ``z``, as BYOL does.

    Returns
    -------
    Tensor, shape []
        Mean over the N rows of ``2 - 2 cos(p_i, z_i)``, in [0, 4]; 0 when every pair points the
        same way. A zero row is left at zero by the normalization (distance 1 to any unit vector).
    """
    _check_prediction_target(p, z)
    (p, z), dtype = _to_float32(p, z)
    if stop_gradient:
        z = z.detach()
    # The distance of the unit vectors, not 2 - 2 cos: identical rows then give exactly 0.
    loss = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(dim=1).mean()
    return _result(loss, dtype, "normalized_mse_loss")


def _check_prediction_target(p: Tensor, z: Tensor) -> None:
    _check_embeddings("p", p)
    _check_embeddings("z", z)
    _check_same_shape(("p", "z"), (p, z))
