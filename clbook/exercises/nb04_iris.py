"""Checkers of notebook 04 (Iris).

The notebook is ``notebooks/04_iris.ipynb``; its checked exercises:

* 04.1: :data:`check_standardize`, standardize with training statistics only.
* 04.2: :data:`check_choose_k`, kNN's k chosen on validation data.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clbook.evaluation import knn_accuracy
from clbook.exercises.core import Case, Mistake, exercise

__all__ = ["check_standardize", "check_choose_k"]


def _standardize_reference(train_feats, test_feats):
    mean, std = train_feats.mean(dim=0), train_feats.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant feature: leave it centred
    return (train_feats - mean) / std, (test_feats - mean) / std


def _standardize_own_stats(train_feats, test_feats):
    return _standardize_reference(train_feats, train_feats)[0], _standardize_reference(test_feats, test_feats)[0]


def _standardize_pooled(train_feats, test_feats):
    both = torch.cat([train_feats, test_feats])
    mean, std = both.mean(dim=0), both.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train_feats - mean) / std, (test_feats - mean) / std


def _standardize_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    train = torch.randn(20, 4, generator=g) * torch.tensor([1.0, 5.0, 0.1, 30.0]) + torch.tensor([0.0, 2.0, -1.0, 10.0])
    test = torch.randn(7, 4, generator=g) * 3 + 1
    const = train.clone()
    const[:, 2] = 4.0
    return [
        Case("20 training rows and 7 test rows, 4 features of very different scales", (train, test)),
        Case("a test set of one row", (train, test[:1])),
        Case("a feature that is constant on the training rows", (const, test),
             hint="a constant training feature has std 0: divide by 1 instead (as fit_linear_probe does); "
                  "reread 04 'Why such a small task makes the comparison weak'"),
    ]


#: 04.1: standardize train and test features with the training mean and std only.
check_standardize = exercise(
    "04.1", "standardize with training statistics", "04 §'The lecture notes' experiment' (standardize the features)",
    reference=_standardize_reference,
    cases=_standardize_cases,
    mistakes=[
        Mistake(_standardize_own_stats,
                "the test rows were standardized with their own statistics: use the training mean and std for "
                "both, the test set must not shape the features"),
        Mistake(_standardize_pooled,
                "the statistics came from training and test rows together: that leaks the test set; use the "
                "training rows only"),
        Mistake(lambda a, b: tuple((x - a.mean(0)) / a.std(0, correction=0).clamp_min(1e-8).where(a.std(0) > 1e-8, torch.ones(()))
                                   for x in (a, b)),
                "use the sample standard deviation (divisor n - 1, torch's default), as fit_linear_probe does"),
    ],
)


def _choose_k_reference(train_feats, train_y, val_feats, val_y, ks):
    scores = [knn_accuracy(train_feats, train_y, val_feats, val_y, k=k) for k in ks]
    return ks[int(np.argmax(scores))]  # argmax: the first (smallest listed) k among the best


def _choose_k_euclidean(train_feats, train_y, val_feats, val_y, ks):
    # kNN's vote with the nearest neighbours in Euclidean distance instead of cosine similarity.
    def accuracy(k):
        idx = torch.cdist(val_feats, train_feats).topk(k, largest=False).indices
        votes = F.one_hot(train_y[idx], int(train_y.max()) + 1).sum(1)
        return (votes.argmax(1) == val_y).float().mean()

    return ks[int(np.argmax([accuracy(k) for k in ks]))]


def _choose_k_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(3, 5, generator=g) * 1.5
    y = torch.arange(60) % 3
    x = centres[y] + torch.randn(60, 5, generator=g)
    yv = torch.arange(30) % 3
    xv = centres[yv] + torch.randn(30, 5, generator=g)
    noisy_y = y.clone()
    noisy_y[::4] = (noisy_y[::4] + 1) % 3  # every fourth training label wrong: a larger k helps
    return [
        Case("3 blobs in 5-D, k in [1, 3, 5, 15]", (x, y, xv, yv, [1, 3, 5, 15])),
        Case("the same with every fourth training label wrong, k in [1, 3, 9, 21]", (x, noisy_y, xv, yv, [1, 3, 9, 21])),
        Case("k listed from large to small: [21, 9, 3, 1]", (x, noisy_y, xv, yv, [21, 9, 3, 1]),
             hint="among equally good k, return the first one listed"),
    ]


#: 04.2: choose kNN's k on validation data (never on the test flowers).
check_choose_k = exercise(
    "04.2", "choose kNN's k on validation data", "04 Summary (pick everything on validation data)",
    reference=_choose_k_reference,
    cases=_choose_k_cases,
    mistakes=[
        Mistake(_choose_k_euclidean,
                "the neighbours are found by cosine similarity (clbook.training.knn_predict), not Euclidean distance"),
    ],
    rtol=0.0, atol=0.0,
)

