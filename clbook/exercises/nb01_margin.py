"""Checkers of notebook 01 (the margin losses: DrLIM's springs and the triplet loss).

The notebook is ``notebooks/01_spring_margin_loss.ipynb``; its checked exercises:

* 01.1: :data:`check_drlim_other_convention`, DrLIM's loss with ``y = 1`` for similar pairs.
* 01.2: :data:`check_drlim_force`, the force ``-dE/dD`` of one pair, without autograd.
* 01.3: :data:`check_triplet_loss`, the triplet loss.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbook.exercises.core import Case, Mistake, _input_gradient, exercise
from clbook.losses import margin_contrastive_loss, triplet_margin_loss

__all__ = ["check_drlim_other_convention", "check_drlim_force", "check_triplet_loss"]


def _drlim_other_reference(x1, x2, y, margin=1.0):
    return margin_contrastive_loss(x1, x2, 1 - y, margin)


def _drlim_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([1, 0, 1, 0, 0, 1])
    same = torch.ones(2, 2)
    return [
        Case("one similar pair (y = 1) 0.5 apart", (torch.tensor([[0.5, 0.0]]), torch.zeros(1, 2), torch.tensor([1]))),
        Case("one dissimilar pair (y = 0) 0.5 apart, margin 1",
             (torch.tensor([[0.5, 0.0]]), torch.zeros(1, 2), torch.tensor([0]))),
        Case("one dissimilar pair 1.5 apart, beyond the margin",
             (torch.tensor([[1.5, 0.0]]), torch.zeros(1, 2), torch.tensor([0])),
             hint="a dissimilar pair beyond the margin costs nothing: reread 01 §2 (the repulsive spring lets go)"),
        Case("a batch of 6 pairs in 3-D, margin 2", (x1, x2, y), {"margin": 2.0}),
        Case("two identical points, one pair of each label", (same, same.clone(), torch.tensor([1, 0]))),
        Case("the gradient at two identical points (must be finite)",
             (same, same.clone(), torch.tensor([1, 0])), probe=_input_gradient,
             hint="the slope of sqrt at 0 is infinite: do not take a square root for the attractive term, "
                  "and guard it in the repulsive one; reread 01 §3 (the comment on D = 0)"),
    ]


#: 01.1: the DrLIM loss with the other label convention, ``y = 1`` similar and ``y = 0`` dissimilar.
check_drlim_other_convention = exercise(
    "01.1", "DrLIM loss with y = 1 for similar pairs", "01 §2 (two different springs)",
    reference=_drlim_other_reference,
    cases=_drlim_cases,
    forbidden=("clbook.losses.margin_contrastive_loss", "clbook.losses.MarginContrastiveLoss"),
    mistakes=[
        Mistake(lambda x1, x2, y, margin=1.0: margin_contrastive_loss(x1, x2, y, margin),
                "this is clbook's convention (y = 0 similar); here y = 1 means similar: reread 01 §6 (the label trap)"),
        Mistake(lambda x1, x2, y, margin=1.0: 2 * margin_contrastive_loss(x1, x2, 1 - y, margin),
                "the energy is twice too large: reread 01 §1-2 (the energy stored in a spring)"),
        Mistake(lambda x1, x2, y, margin=1.0: margin_contrastive_loss(x1, x2, 1 - y, margin) * len(y),
                "the batch loss is the mean over pairs, not the sum: reread 01 §2"),
    ],
)


def _drlim_force_reference(distance, y, margin=1.0):
    # -dE/dD through clbook: pairs laid along the x axis, the force on x1 along +x.
    x1 = torch.stack([distance, torch.zeros_like(distance)], dim=1).to(torch.float64).requires_grad_(True)
    total = margin_contrastive_loss(x1, torch.zeros_like(x1), y, margin) * len(distance)
    (grad,) = torch.autograd.grad(total, x1)
    return -grad[:, 0]


def _drlim_force_cases() -> list[Case]:
    d = torch.tensor([0.1, 0.5, 0.99, 1.0, 1.5, 3.0], dtype=torch.float64)
    return [
        Case("similar pairs (y = 0) at distances 0.1 to 3", (d, torch.zeros(6, dtype=torch.long))),
        Case("dissimilar pairs (y = 1) at distances 0.1 to 3, margin 1", (d, torch.ones(6, dtype=torch.long))),
        Case("mixed labels, margin 2", (d, torch.tensor([0, 1, 0, 1, 1, 1])), {"margin": 2.0}),
    ]


#: 01.2: the force ``-dE/dD`` on one pair, as a function of the distance, label and margin.
check_drlim_force = exercise(
    "01.2", "force of the DrLIM springs", "01 §2-3 (energy and force against distance)",
    reference=_drlim_force_reference,
    cases=_drlim_force_cases,
    forbidden=("clbook.losses.margin_contrastive_loss", "clbook.losses.MarginContrastiveLoss", "energy_and_force"),
    no_autograd=True,
    mistakes=[
        Mistake(lambda d, y, margin=1.0: -_drlim_force_reference(d, y, margin),
                "the sign of the force: reread 01 §1 (force and energy)"),
        Mistake(lambda d, y, margin=1.0: torch.where(y == 0, -d, margin - d),
                "the repulsive spring lets go at the margin: reread 01 §2 (what happens beyond it)"),
        Mistake(lambda d, y, margin=1.0: torch.where(y == 1, -d, (margin - d).clamp(min=0)),
                "y = 0 is the similar pair (clbook's convention): reread 01 §6"),
    ],
)


def _triplet_reference(anchor, positive, negative, margin=1.0):
    # A wrapper, not clbook's function itself: passing triplet_margin_loss as the answer must not count as the reference.
    return triplet_margin_loss(anchor, positive, negative, margin)


def _triplet_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    a, p, n = (torch.randn(8, 4, generator=g) for _ in range(3))
    far = torch.tensor([[5.0, 0.0]])
    return [
        Case("one triplet that violates the margin", (torch.zeros(1, 2), torch.tensor([[0.6, 0.0]]), torch.tensor([[0.0, 0.8]]))),
        Case("one triplet already satisfied (negative far away)", (torch.zeros(1, 2), torch.tensor([[0.5, 0.0]]), far),
             hint="a satisfied triplet costs exactly 0: reread 01 §5 (the hinge max(0, ...))"),
        Case("8 random triplets in 4-D, margin 0.5", (a, p, n), {"margin": 0.5}),
        Case("the gradient when anchor and positive coincide (must be finite)",
             (torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[0.3, 0.0]])),
             probe=_input_gradient,
             hint="sqrt has an infinite slope at 0: guard the distance when two points coincide (01 §3)"),
    ]


#: 01.3: the triplet loss ``mean max(0, m + d(a, p) - d(a, n))``.
check_triplet_loss = exercise(
    "01.3", "triplet loss", "01 §5 (the same with the triplet loss)",
    reference=_triplet_reference,
    cases=_triplet_cases,
    forbidden=("clbook.losses.triplet_margin_loss", "clbook.losses.TripletMarginLoss",
               "torch.nn.functional.triplet_margin_loss", "torch.nn.functional.triplet_margin_with_distance_loss"),
    mistakes=[
        Mistake(lambda a, p, n, margin=1.0: F.relu(margin + (a - p).pow(2).sum(1) - (a - n).pow(2).sum(1)).mean(),
                "the distances are Euclidean, not squared: reread 01 §5"),
        Mistake(lambda a, p, n, margin=1.0: (margin + (a - p).norm(dim=1) - (a - n).norm(dim=1)).mean(),
                "a triplet that already satisfies the margin must cost 0: reread 01 §5 (max(0, ...))"),
    ],
)
