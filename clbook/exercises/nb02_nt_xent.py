"""Checkers of notebook 02 (NT-Xent).

The notebook is ``notebooks/02_nt_xent.ipynb``; its checked exercises:

* 02.1: :data:`check_nt_xent`, NT-Xent, stable at tau 0.01 and in float16; ``nt_xent_loss`` and the
  notebook's ``stable_nt_xent`` are unavailable while it runs.
* 02.2: :data:`check_dropped_diagonal_targets`, cross-entropy targets with the diagonal dropped.
* 02.3: :data:`check_anchor_gradient`, the gradient of one anchor's loss, without autograd.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbook.exercises.core import Case, Mistake, exercise
from clbook.losses import nt_xent_loss

__all__ = ["check_nt_xent", "check_dropped_diagonal_targets", "check_anchor_gradient"]


def _nt_xent_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, generator=g)
    z1, z2 = x + 0.8 * torch.randn(4, 16, generator=g), x + 0.8 * torch.randn(4, 16, generator=g)
    # Views that are unrelated: many anchors have a negative closer than their positive, the case
    # where a shifted-but-not-log-space loss underflows at small temperatures.
    h1, h2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    stability = "reread 02 §5 (numerical stability: row max, log-sum-exp, -inf on the diagonal)"

    def half_case(tau):
        # A float16 answer is compared with the float32 value of the same inputs, within float16's
        # resolution of logits of size 1 / tau (02 §5.5).
        return Case(f"float16 views, tau = {tau}", (z1.half(), z2.half(), tau),
                    expected=lambda a, k: nt_xent_loss(a[0].float(), a[1].float(), a[2]),
                    atol=4 * 2**-10 / tau, rtol=0.0, hint=stability)

    return [
        Case("the toy batch of 02 §1 (N = 4, D = 16), tau = 0.5", (z1, z2, 0.5)),
        Case("unnormalized views 100x larger, tau = 0.5", (100 * z1, 100 * z2, 0.5),
             hint="cosine similarity compares directions: normalize the rows first (02 §1)"),
        Case("N = 1: the positive is the only other row, tau = 0.5", (z1[:1], z2[:1], 0.5)),
        Case("unrelated views (N = 6), tau = 0.1", (h1, h2, 0.1)),
        Case("the toy batch at tau = 0.01 (float32)", (z1, z2, 0.01), hint=stability),
        Case("unrelated views at tau = 0.01 (float32)", (h1, h2, 0.01), hint=stability),
        half_case(0.5),
        half_case(0.07),
    ]


def _nt_xent_reference(z1, z2, tau):
    # A wrapper, not clbook's function itself: passing nt_xent_loss as the answer must not count as the reference.
    return nt_xent_loss(z1, z2, tau)


def _diagonal_left_in(z1, z2, tau):
    # The most common slip: every anchor's similarity with itself, exp(1 / tau), stays in its denominator.
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = z.shape[0]
    return F.cross_entropy(z @ z.T / tau, torch.arange(m).roll(m // 2))


def _self_as_positive(z1, z2, tau):
    # Targets arange(2N): each anchor's "positive" is itself (the diagonal), not its other view.
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    return F.cross_entropy(z @ z.T / tau, torch.arange(z.shape[0]))


def _masked_before_exp(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = z.shape[0]
    logits = (z @ z.T / tau) * (1 - torch.eye(m, dtype=z.dtype))
    return (torch.logsumexp(logits, 1) - logits[torch.arange(m), torch.arange(m).roll(m // 2)]).mean()


def _unnormalized(z1, z2, tau):
    z = torch.cat([z1, z2])
    m = z.shape[0]
    logits = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
    return (torch.logsumexp(logits, 1) - logits[torch.arange(m), torch.arange(m).roll(m // 2)]).mean()


def _positive_left_out(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = z.shape[0]
    logits = z @ z.T / tau
    pos_col = torch.arange(m).roll(m // 2)
    pos = logits[torch.arange(m), pos_col]
    drop = torch.eye(m, dtype=torch.bool) | F.one_hot(pos_col, m).bool()
    return (torch.logsumexp(logits.masked_fill(drop, float("-inf")), 1) - pos).mean()


def _first_views_only(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = z.shape[0]
    logits = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
    per_anchor = torch.logsumexp(logits, 1) - logits[torch.arange(m), torch.arange(m).roll(m // 2)]
    return per_anchor[: m // 2].mean()


#: 02.1: NT-Xent from scratch, finite and correct at temperature 0.01 and in float16.
check_nt_xent = exercise(
    "02.1", "NT-Xent from scratch", "02 §2 and §5 (the formula, then the stable implementation)",
    reference=_nt_xent_reference,
    cases=_nt_xent_cases,
    forbidden=("clbook.losses.nt_xent_loss", "clbook.losses.NTXentLoss", "clbook.losses.supcon_loss",
               "clbook.losses.SupConLoss", "stable_nt_xent"),
    mistakes=[
        Mistake(_diagonal_left_in,
                "the diagonal is still in: each anchor's similarity with itself sits in its own denominator; "
                "reread 02 §2 (which k the denominator sums over) and §5.4"),
        Mistake(_self_as_positive,
                "the target of each anchor is its other view, not itself: reread 02 §1 (where the positive of "
                "row i sits) and §4"),
        Mistake(_masked_before_exp,
                "the diagonal logit became 0, so exp(0) = 1 joined every denominator: set the diagonal to "
                "-inf before the log-sum-exp; reread 02 §5.4"),
        Mistake(_positive_left_out,
                "the positive belongs in its own denominator: reread 02 §3"),
        Mistake(_unnormalized,
                "cosine similarity compares directions: normalize the rows first; reread 02 §1"),
        Mistake(lambda z1, z2, tau: nt_xent_loss(z1, z2, 1.0),
                "the temperature is missing: reread 02 §2"),
        Mistake(_first_views_only,
                "every one of the 2N views is an anchor, so the mean runs over 2N terms: reread 02 §2"),
    ],
)


def _dropped_diagonal_reference(n):
    positive = torch.arange(2 * n).roll(n)
    return positive - (positive > torch.arange(2 * n)).long()


#: 02.2: cross-entropy targets for the layout that drops the diagonal, ``[2N, 2N - 1]`` logits.
check_dropped_diagonal_targets = exercise(
    "02.2", "targets with the diagonal dropped", "02 §4 (layout (a): drop the diagonal)",
    reference=_dropped_diagonal_reference,
    cases=lambda: [Case(f"N = {n}", (n,)) for n in (1, 2, 4, 7)],
    mistakes=[
        Mistake(lambda n: torch.arange(2 * n).roll(n),
                "those are the targets of layout (b), which keeps the diagonal; after dropping it, the "
                "columns right of i move one to the left: reread 02 §4 (a)"),
        Mistake(lambda n: torch.zeros(2 * n, dtype=torch.long),
                "zeros are the targets of layout (c), positive first: reread 02 §4 (a)"),
    ],
    rtol=0.0, atol=0.0,
)


def _anchor_gradient_reference(sims, tau):
    s = sims.detach().clone().requires_grad_(True)
    loss = -s[0] / tau + torch.logsumexp(s / tau, dim=0)
    (grad,) = torch.autograd.grad(loss, s)
    return grad


def _anchor_gradient_cases() -> list[Case]:
    neg = torch.linspace(-1, 1, 9, dtype=torch.float64)
    row = torch.cat([torch.tensor([0.8], dtype=torch.float64), neg])
    stability = ("at small tau the exponentials overflow: compute the softmax stably; reread 02 §5.2 "
                 "(subtracting the row max)")
    return [
        Case("positive 0.8 and 9 negatives in [-1, 1], tau = 1", (row, 1.0)),
        Case("the same row, tau = 0.1", (row, 0.1)),
        Case("one negative only, tau = 0.5", (torch.tensor([0.2, 0.5], dtype=torch.float64), 0.5)),
        # In float32, where exp(1 / 0.01) = exp(100) is inf (float64 would hold it), so only a stable softmax
        # survives. Compared with the float64 value, within float32's rounding of logits near 100.
        Case("the same row in float32 at tau = 0.01", (row.float(), 0.01), hint=stability,
             expected=lambda a, k: _anchor_gradient_reference(a[0].double(), a[1]), rtol=1e-4, atol=1e-4),
    ]


def _negatives_only_softmax(sims, tau):
    # The probabilities P(k) taken over the negatives alone, the positive left out of the softmax.
    p = torch.softmax(sims[1:] / tau, dim=0)
    return torch.cat([torch.full_like(sims[:1], -1.0 / tau), p / tau])


#: 02.3: the gradient of one anchor's loss with respect to its similarities (positive first).
check_anchor_gradient = exercise(
    "02.3", "gradient of one anchor's loss", "02 §7.2 (the gradient weight per negative)",
    reference=_anchor_gradient_reference,
    cases=_anchor_gradient_cases,
    mistakes=[
        Mistake(lambda s, tau: _anchor_gradient_reference(s, tau) * tau,
                "the temperature is missing from the gradient: the chain rule goes through the division of "
                "the logits; reread 02 §7.2"),
        Mistake(lambda s, tau: torch.cat([(1 - torch.softmax(s / tau, 0)[:1]) / tau, torch.softmax(s / tau, 0)[1:] / tau]),
                "the sign of the positive's entry: the positive is pulled, the negatives are pushed; reread 02 §7.2"),
        Mistake(lambda s, tau: torch.softmax(s / tau, 0) / tau,
                "the positive's entry treats it like a negative: it also appears in the loss outside the "
                "log-sum-exp; reread 02 §7.2"),
        Mistake(_negatives_only_softmax,
                "the softmax runs over every similarity of the row, the positive's included: reread 02 §7.2"),
    ],
    rtol=1e-6, atol=1e-9,
    no_autograd=True,
)
