"""Representation diagnostics: is an encoder spreading its inputs out, or collapsing them?

A loss without negatives (SimSiam, BYOL) has a trivial minimum: map every input to the same
vector. These functions measure how close a set of features is to that, without labels:

* :func:`alignment` and :func:`uniformity` (Wang and Isola, 2020): how close the two views of a
  positive pair are, and how evenly the features cover the unit sphere. A collapsed encoder has
  perfect alignment (0) and the worst uniformity (0).
* :func:`feature_std`: the mean per-dimension standard deviation of the L2-normalized features
  (SimSiam's collapse monitor, Chen and He, 2021): about ``1 / sqrt(d)`` for features spread over
  the sphere, 0 at collapse.
* :func:`effective_rank`: how many directions the features really use (RankMe, Garrido et al., 2023).

Conventions: features are ``[N, D]`` tensors, one row per sample; every function returns a
Python float; alignment, uniformity and std first L2-normalize the rows (as the losses do), the
effective rank uses the raw rows. Bad input raises ``ValueError``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbook.checks import check_features, check_real

__all__ = ["alignment", "uniformity", "feature_std", "effective_rank", "feature_metrics"]


def _unit_rows(z: Tensor) -> Tensor:
    """Rows scaled to unit length, in float64 (the diagnostics are cheap; rounding should not show)."""
    return F.normalize(z.detach().double(), dim=1)


@torch.no_grad()
def alignment(z1: Tensor, z2: Tensor, alpha: float = 2) -> float:
    r"""Mean distance between the two views of each positive pair, on the unit sphere.

    .. math:: \ell_{align} = \operatorname{mean}_i \lVert \hat z_{1,i} - \hat z_{2,i} \rVert_2^{\alpha}

    with :math:`\hat z` the L2-normalized rows. 0 when both views always coincide (for instance at
    collapse), 4 ** (alpha / 2) when they are always antipodal. Lower is better.

    Parameters
    ----------
    z1, z2 : Tensor, shape [N, D]
        Features of two views of the same N samples (row i of each is a positive pair).
    alpha : float, default 2
        Exponent of the distance, positive.

    Returns
    -------
    float
    """
    check_features("z1", z1, floating=True)
    check_features("z2", z2, floating=True)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {list(z1.shape)} and {list(z2.shape)}")
    alpha = check_real("alpha", alpha)
    dist = (_unit_rows(z1) - _unit_rows(z2)).norm(dim=1)
    return dist.pow(alpha).mean().item()


@torch.no_grad()
def uniformity(z: Tensor, t: float = 2) -> float:
    r"""Log of the mean Gaussian potential between all pairs of features, on the unit sphere.

    .. math:: \ell_{unif} = \log \frac{1}{N(N-1)/2} \sum_{i<j} e^{-t \lVert \hat z_i - \hat z_j \rVert_2^2}

    Computed in log space: the smallest squared distance :math:`m` is factored out,
    :math:`\ell = -t m + \log \operatorname{mean} e^{-t(d^2 - m)}`, so no term underflows. For a
    collapsed set every distance is exactly 0 (the differences of identical rows) and the value is
    exactly 0, the largest possible; the more uniformly the points cover the sphere, the lower it
    is. For N points forming a regular simplex (every pair at squared distance 2N / (N - 1)) it is
    :math:`-2tN / (N - 1)`.

    Parameters
    ----------
    z : Tensor, shape [N, D], N >= 2
    t : float, default 2
        Scale of the potential, positive.

    Returns
    -------
    float, <= 0
    """
    check_features("z", z, min_rows=2, floating=True)
    t = check_real("t", t)
    # pdist subtracts rows directly (no |a|^2 + |b|^2 - 2ab cancellation): identical rows give 0.
    sq = torch.pdist(_unit_rows(z)).pow(2)  # [N (N - 1) / 2]
    m = sq.min()
    return (-t * m + torch.exp(-t * (sq - m)).mean().log()).item()


@torch.no_grad()
def feature_std(z: Tensor) -> float:
    r"""Mean over dimensions of the standard deviation over samples of the L2-normalized features.

    For unit vectors :math:`\sum_k \operatorname{Var}(\hat z_k) \le 1`, so the mean std is at most
    :math:`1 / \sqrt{D}`, reached when the features are centred with an isotropic covariance (a
    regular simplex, points evenly spread on a circle); it is 0 at collapse. The population
    standard deviation (divisor N) is used, which makes those closed forms exact.

    Parameters
    ----------
    z : Tensor, shape [N, D]

    Returns
    -------
    float, in [0, 1 / sqrt(D)]
    """
    check_features("z", z, floating=True)
    return _unit_rows(z).std(dim=0, correction=0).mean().item()


@torch.no_grad()
def effective_rank(z: Tensor) -> float:
    r"""Effective rank (RankMe): exp of the entropy of the normalized singular values.

    .. math:: \operatorname{erank}(Z) = \exp\Big(-\sum_k p_k \log p_k\Big), \qquad p_k = \sigma_k / \sum_j \sigma_j

    with :math:`\sigma_k` the singular values of the raw (not normalized, not centred) feature
    matrix, as in Garrido et al. (2023). Between 1 (every row proportional to one vector: a
    collapsed encoder) and min(N, D) (all singular values equal). Terms with :math:`p_k = 0` count
    0 (the limit of :math:`p \log p`).

    Parameters
    ----------
    z : Tensor, shape [N, D], not all zero

    Returns
    -------
    float
    """
    check_features("z", z, floating=True)
    s = torch.linalg.svdvals(z.detach().double())
    if s.sum() <= 0:
        raise ValueError("z is all zeros: its effective rank is undefined")
    p = s / s.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum()).item()


def feature_metrics(z: Tensor, z_pair: Tensor | None = None) -> dict[str, float]:
    """All the diagnostics of one set of features, as a dict (for logging per epoch).

    Parameters
    ----------
    z : Tensor, shape [N, D]
        Features of N samples (e.g. held-out digits).
    z_pair : Tensor, shape [N, D], optional
        Features of a second view of the same samples; adds ``"alignment"``.

    Returns
    -------
    dict
        ``"std"`` (:func:`feature_std`), ``"uniformity"``, ``"effective_rank"`` and, with
        ``z_pair``, ``"alignment"``.
    """
    out = {"std": feature_std(z), "uniformity": uniformity(z), "effective_rank": effective_rank(z)}
    if z_pair is not None:
        out["alignment"] = alignment(z, z_pair)
    return out
