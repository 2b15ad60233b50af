"""Checkers of notebook 09 (SwAV and Sinkhorn-Knopp).

The notebook is ``notebooks/09_swav_sinkhorn.ipynb``; its checked exercises:

* 09.1: :data:`check_sinkhorn`, Sinkhorn-Knopp in log space.
* 09.2: :data:`check_swav_loss`, SwAV's swapped prediction.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clbook.sinkhorn import sinkhorn_knopp
from clbook.exercises.core import Case, Mistake, _grad_wrt, exercise
from clbook.losses import swav_loss

__all__ = ["check_sinkhorn", "check_swav_loss"]


def _sinkhorn_reference(scores, epsilon, n_iter):
    return sinkhorn_knopp(scores, epsilon=epsilon, n_iter=n_iter)


def _sinkhorn_rows_first(scores, epsilon, n_iter):
    B, K = scores.shape
    log_q = scores.double() / epsilon
    for _ in range(n_iter):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(B / K)
    return log_q.exp().to(scores.dtype)


def _sinkhorn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(15)
    s = torch.tanh(torch.randn(8, 4, generator=g))  # cosine-like scores in [-1, 1]
    s6 = torch.tanh(torch.randn(6, 4, generator=g))
    stability = ("exp(S / epsilon) overflows float32 for epsilon = 0.01: normalize log Q with log-sum-exp "
                 "instead; reread 09 §2 (why sinkhorn_knopp works in log space)")
    return [
        Case("8 samples, 4 prototypes, epsilon = 0.05, 3 iterations", (s, 0.05, 3), hint=stability),
        Case("the same with 1 iteration", (s, 0.05, 1)),
        Case("20 iterations: the columns come close to B / K", (s, 0.5, 20)),
        Case("6 samples, 4 prototypes (B / K = 1.5), epsilon = 0.1", (s6, 0.1, 3)),
        Case("epsilon = 0.01", (s, 0.01, 3), hint=stability),
    ]


#: 09.1: Sinkhorn-Knopp in log space: rows sum to one, columns to B / K.
check_sinkhorn = exercise(
    "09.1", "Sinkhorn-Knopp in log space", "09 §2 (Sinkhorn-Knopp step by step, in log space)",
    reference=_sinkhorn_reference,
    cases=_sinkhorn_cases,
    forbidden=("clbook.sinkhorn.sinkhorn_knopp",),
    mistakes=[
        Mistake(_sinkhorn_rows_first,
                "each iteration normalizes the columns first, then the rows, so that every sample's row sums to one "
                "at the end"),
        Mistake(lambda s, eps, n: torch.softmax(s / eps, dim=1),
                "a row softmax is the start, not the answer: alternate column and row normalizations n_iter times"),
    ],
    rtol=1e-4, atol=1e-6,
)


def _swav_reference(scores1, scores2, q1, q2, tau):
    return swav_loss(scores1, scores2, q1, q2, temperature=tau)


def _swav_cases() -> list[Case]:
    g = torch.Generator().manual_seed(16)
    s1, s2 = torch.tanh(torch.randn(6, 4, generator=g)), torch.tanh(torch.randn(6, 4, generator=g))
    q1, q2 = torch.softmax(torch.randn(6, 4, generator=g), 1), torch.softmax(torch.randn(6, 4, generator=g), 1)
    hard = F.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    return [
        Case("6 samples, 4 prototypes, tau = 0.1", (s1, s2, q1, q2, 0.1)),
        Case("hard one-hot codes, tau = 0.5", (s1, s2, hard, hard.roll(1, 0), 0.5)),
        Case("tau = 0.005 (logits up to 200)", (s1, s2, q1, q2, 0.005),
             hint="exp(200) overflows float32: use log_softmax; reread 09 §3"),
        Case("the gradient reaching the scores", (s1, s2, q1, q2, 0.1), probe=_grad_wrt(0, 1)),
        Case("the gradient reaching the codes (must be zero)", (s1, s2, q1, q2, 0.1), probe=_grad_wrt(2, 3),
             hint="the codes are targets: no gradient flows into them (detach them); reread 09 §3"),
    ]


#: 09.2: SwAV's swapped prediction: each view's scores predict the other view's code.
check_swav_loss = exercise(
    "09.2", "SwAV's swapped prediction", "09 §3 (SwAV: the swapped prediction)",
    reference=_swav_reference,
    cases=_swav_cases,
    forbidden=("clbook.losses.swav_loss",),
    mistakes=[
        Mistake(lambda s1, s2, q1, q2, tau: _swav_reference(s1, s2, q2, q1, tau),
                "swap the views: the scores of view 1 predict the code of view 2, and the other way round"),
        Mistake(lambda s1, s2, q1, q2, tau: _swav_reference(s1, s2, q1, q2, 1.0),
                "the temperature is missing: reread 09 §3"),
        Mistake(lambda s1, s2, q1, q2, tau: 2 * _swav_reference(s1, s2, q1, q2, tau),
                "the loss is the mean of the two cross-entropies, not their sum"),
    ],
    rtol=1e-5, atol=1e-6,
)
