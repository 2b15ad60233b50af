"""Checkers of notebook 08 (BYOL, SimSiam and collapse).

The notebook is ``notebooks/08_byol_simsiam_collapse.ipynb``; its checked exercises:

* 08.1: :data:`check_alignment_uniformity`, alignment and uniformity, in log space.
* 08.2: :data:`check_simsiam_loss`, SimSiam's symmetric loss, stop-gradient.
* 08.3: :data:`check_effective_rank`, the effective rank (RankMe).

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clbook.exercises.core import Case, Mistake, _grad_wrt, exercise
from clbook.losses import negative_cosine_loss
from clbook.metrics import alignment, effective_rank, uniformity

__all__ = ["check_alignment_uniformity", "check_simsiam_loss", "check_effective_rank"]


def _align_uniform_reference(z1, z2, t=2.0):
    return alignment(z1, z2), uniformity(z1, t=t)


def _align_uniform_cases() -> list[Case]:
    g = torch.Generator().manual_seed(12)
    z1 = torch.randn(16, 8, generator=g)
    z2 = z1 + 0.6 * torch.randn(16, 8, generator=g)
    point = torch.randn(1, 8, generator=g)
    collapsed = point.repeat(10, 1) * torch.linspace(0.5, 3, 10)[:, None]  # one direction, many lengths
    # Three directions 120 degrees apart: every squared distance is 3, and exp(-300 * 3) underflows.
    angles = torch.tensor([0.0, 2.0, 4.0]) * math.pi / 3
    spread = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * torch.tensor([[1.0], [2.0], [0.5]])
    return [
        Case("16 pairs of views in 8-D, t = 2", (z1, z2)),
        Case("the same views 30x longer, t = 2", (30 * z1, 30 * z2),
             hint="both metrics live on the unit sphere: L2-normalize the rows first (08 'The diagnostics')"),
        Case("a collapsed encoder: every feature points the same way (must give 0 and 0, finite)",
             (collapsed, collapsed.clone()),
             hint="at collapse every pairwise distance is 0 and the uniformity is exactly log 1 = 0: average over "
                  "pairs i < j (no point with itself); reread 08 'The diagnostics'"),
        Case("three points 120 degrees apart, t = 300", (spread, spread.flip(0)), {"t": 300.0},
             hint="exp(-t d^2) underflows to 0 and log 0 = -inf: factor the smallest distance out (log space); "
                  "reread 08 'The diagnostics'"),
    ]


def _uniformity_with_self(z1, z2, t=2.0):
    z = F.normalize(z1.double(), dim=1)
    sq = torch.cdist(z, z).pow(2)
    return alignment(z1, z2), torch.exp(-t * sq).mean().log().item()


def _uniformity_not_squared(z1, z2, t=2.0):
    z = F.normalize(z1.double(), dim=1)
    d = torch.pdist(z)
    return alignment(z1, z2), (-t * d.min() + torch.exp(-t * (d - d.min())).mean().log()).item()


def _alignment_not_squared(z1, z2, t=2.0):
    return alignment(z1, z2, alpha=1), uniformity(z1, t=t)


#: 08.1: alignment and uniformity (Wang and Isola), in log space and finite at collapse.
check_alignment_uniformity = exercise(
    "08.1", "alignment and uniformity", "08 'The diagnostics'",
    reference=_align_uniform_reference,
    cases=_align_uniform_cases,
    forbidden=("clbook.metrics.alignment", "clbook.metrics.uniformity", "clbook.metrics.feature_metrics"),
    mistakes=[
        Mistake(_uniformity_with_self,
                "the mean runs over the pairs i < j; a point and itself (distance 0) do not count"),
        Mistake(_uniformity_not_squared,
                "the Gaussian potential uses the *squared* distance: reread 08 'The diagnostics'"),
        Mistake(_alignment_not_squared, "alignment is the mean *squared* distance between the two views (alpha = 2)"),
    ],
    rtol=1e-6, atol=1e-9,
)


def _simsiam_reference(p1, p2, z1, z2):
    return 0.5 * negative_cosine_loss(p1, z2) + 0.5 * negative_cosine_loss(p2, z1)


def _simsiam_cases() -> list[Case]:
    g = torch.Generator().manual_seed(13)
    p1, p2, z1, z2 = (torch.randn(6, 5, generator=g) for _ in range(4))
    p_zero = p1.clone()
    p_zero[2] = 0.0
    return [
        Case("6 pairs in 5-D", (p1, p2, z1, z2)),
        Case("predictions 100x longer than the targets", (100 * p1, 100 * p2, z1, z2)),
        Case("a prediction that is exactly zero (cosine 0, not nan)", (p_zero, p2, z1, z2),
             hint="a zero vector has no direction: F.normalize and F.cosine_similarity guard the division"),
        Case("the gradient reaching the predictions p1, p2", (p1, p2, z1, z2), probe=_grad_wrt(0, 1)),
        Case("the gradient reaching the targets z1, z2 (must be zero)", (p1, p2, z1, z2), probe=_grad_wrt(2, 3),
             hint="stop-gradient: the targets z are constants (detach them); without it SimSiam collapses, "
                  "reread 08 §2"),
    ]


def _simsiam_unswapped(p1, p2, z1, z2):
    return _simsiam_reference(p1, p2, z2, z1)


#: 08.2: SimSiam's symmetric negative-cosine loss with stop-gradient.
check_simsiam_loss = exercise(
    "08.2", "SimSiam's symmetric loss", "08 §1-2 (a loss without negatives; SimSiam with and without stop-gradient)",
    reference=_simsiam_reference,
    cases=_simsiam_cases,
    forbidden=("clbook.losses.negative_cosine_loss", "clbook.losses.normalized_mse_loss"),
    mistakes=[
        Mistake(_simsiam_unswapped,
                "each view's prediction is compared with the *other* view's projection"),
        Mistake(lambda p1, p2, z1, z2: -_simsiam_reference(p1, p2, z1, z2),
                "the loss is the *negative* cosine: minimizing it makes prediction and target point the same way"),
        Mistake(lambda p1, p2, z1, z2: 2 * _simsiam_reference(p1, p2, z1, z2),
                "the symmetric loss is the mean of the two terms, not their sum: reread 08 §1"),
    ],
    rtol=1e-5, atol=1e-6,
)


def _effective_rank_reference(z):
    return effective_rank(z)


def _effective_rank_cases() -> list[Case]:
    g = torch.Generator().manual_seed(14)
    z = torch.randn(32, 8, generator=g)
    direction = torch.randn(1, 8, generator=g)
    collapsed = torch.linspace(0.5, 2, 20)[:, None] * direction
    low = torch.randn(32, 3, generator=g) @ torch.randn(3, 8, generator=g)  # rank 3: five zero singular values
    return [
        Case("32 random features in 8-D", (z,)),
        Case("a collapsed set: every row a multiple of one vector (effective rank 1)", (collapsed,),
             hint="0 log 0 counts 0 (torch.special.xlogy); reread 08 'The diagnostics'"),
        Case("features of rank 3 in 8-D", (low,),
             hint="singular values that are (numerically) 0 contribute 0 log 0 = 0 to the entropy, not nan"),
        Case("an orthogonal matrix scaled by 5 (all singular values equal)", (5 * torch.eye(6),)),
    ]


def _effective_rank_squared(z):
    s = torch.linalg.svdvals(z.double()).pow(2)
    p = s / s.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum()).item()


def _effective_rank_centred(z):
    return _effective_rank_reference(z - z.mean(dim=0))


#: 08.3: the effective rank (RankMe) of a feature matrix.
check_effective_rank = exercise(
    "08.3", "effective rank", "08 'The diagnostics' (effective rank)",
    reference=_effective_rank_reference,
    cases=_effective_rank_cases,
    forbidden=("clbook.metrics.effective_rank", "clbook.metrics.feature_metrics"),
    mistakes=[
        Mistake(_effective_rank_squared,
                "p_k come from the singular values themselves, not their squares (eigenvalues): reread 08 "
                "'The diagnostics' (effective rank)"),
        Mistake(lambda z: math.log(_effective_rank_reference(z)),
                "the effective rank is exp of the entropy (1 at collapse), not the entropy itself"),
        Mistake(_effective_rank_centred, "use the raw features, not centred ones (RankMe)"),
    ],
    rtol=1e-5, atol=1e-6,
)
