"""Checkers of notebook 03 (SupCon on a toy batch).

The notebook is ``notebooks/03_supcon_toy_batch.ipynb``; its checked exercises:

* 03.1: :data:`check_supcon_out`, SupCon L_out, anchors without positives left out.
* 03.2: :data:`check_supcon_in`, SupCon L_in (the mean inside the log).
* 03.3: :data:`check_supcon_pair_weighted`, the pair-weighted form of the notes' worked example.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import torch

from clbook.exercises.core import Case, Mistake, exercise
from clbook.losses import supcon_loss

__all__ = ["check_supcon_out", "check_supcon_in", "check_supcon_pair_weighted"]


def _supcon_out_reference(z, labels, tau):
    return supcon_loss(z, labels=labels, temperature=tau, normalize=False)


def _supcon_in_reference(z, labels, tau):
    return supcon_loss(z, labels=labels, temperature=tau, normalize=False, variant="in")


def _log_fractions(z, labels, tau):
    """``log F_ip`` on raw inner products, and the positive mask (03 steps 2-8, in log space)."""
    eye = torch.eye(len(labels), dtype=torch.bool)
    logits = (z @ z.T / tau).masked_fill(eye, float("-inf"))
    log_f = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return log_f, (labels[:, None] == labels[None, :]) & ~eye


def _supcon_pair_reference(z, labels, tau):
    # The notes' worked example (its hard-coded /6): a flat mean of -log F_ip over every (anchor, positive) pair.
    log_f, pos = _log_fractions(z, labels, tau)
    return -log_f[pos].mean()


def _supcon_zero_counted(z, labels, tau):
    _, pos = _log_fractions(z, labels, tau)
    has = pos.any(dim=1)
    return _supcon_out_reference(z, labels, tau) * has.sum() / len(labels)


def _supcon_in_without_log_count(z, labels, tau):
    _, pos = _log_fractions(z, labels, tau)
    counts = pos.sum(dim=1)
    return _supcon_in_reference(z, labels, tau) - counts[counts > 0].double().log().mean().to(z.dtype)


def _supcon_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    toy = torch.randn(4, 2, generator=g)
    z8 = torch.randn(8, 3, generator=g)
    z6 = torch.randn(6, 4, generator=g)
    return [
        Case("a batch of 4 in 2-D, labels [1, 2, 1, 1] (anchor 1 has no positive), tau = 1",
             (toy, torch.tensor([1, 2, 1, 1]), 1.0),
             hint="an anchor without positives is left out of the mean: reread 03 step 9 and the Summary"),
        Case("4 samples, labels [1, 2, 1, 2] (every anchor has one positive), tau = 0.5",
             (toy, torch.tensor([1, 2, 1, 2]), 0.5)),
        Case("6 samples: classes of 3, 2 and 1, tau = 0.5", (z6, torch.tensor([0, 0, 0, 1, 1, 2]), 0.5),
             hint="reread 03 'A batch where they differ' (classes of different sizes)"),
        Case("8 samples, 3 classes, tau = 0.1", (z8, torch.tensor([0, 1, 2, 0, 1, 2, 0, 0]), 0.1)),
        Case("the 8 samples 20x longer, tau = 0.1 (logits in the hundreds)",
             (20 * z8, torch.tensor([0, 1, 2, 0, 1, 2, 0, 0]), 0.1),
             hint="exp overflows: work in log space with the diagonal at -inf; reread 03 'The stable form'"),
    ]


_SUPCON_SECTION = "03 steps 2-9 (SupCon step by step) and 'The stable form'"

#: 03.1: SupCon's L_out on raw inner products, leaving out the anchors without positives.
check_supcon_out = exercise(
    "03.1", "SupCon L_out, anchors without positives left out", _SUPCON_SECTION,
    reference=_supcon_out_reference,
    cases=_supcon_cases,
    forbidden=("clbook.losses.supcon_loss", "clbook.losses.SupConLoss", "clbook.reference.supcontrast_loss", "supcon_two_ways"),
    mistakes=[
        Mistake(_supcon_zero_counted,
                "an anchor without positives counts 0 here, which rescales the loss (the SupContrast "
                "reference does that); leave it out of the mean instead: reread 03 step 9"),
        Mistake(_supcon_pair_reference,
                "that is the pair-weighted form of the notes' worked example; L_out averages over each anchor's own "
                "positives first, then over anchors: reread 03 'Another road to 2.4826'"),
        Mistake(_supcon_in_reference,
                "the mean over positives goes outside the log in L_out (inside is L_in): reread 03 "
                "'L_out against L_in'"),
        Mistake(lambda z, labels, tau: supcon_loss(z, labels=labels, temperature=tau),
                "this notebook uses raw inner products z_i . z_a, not cosines: do not normalize; reread 03 step 1"),
    ],
)

#: 03.2: SupCon's L_in (the mean over positives inside the log).
check_supcon_in = exercise(
    "03.2", "SupCon L_in", "03 'L_out against L_in'",
    reference=_supcon_in_reference,
    cases=_supcon_cases,
    forbidden=("clbook.losses.supcon_loss", "clbook.losses.SupConLoss", "clbook.reference.supcontrast_loss"),
    mistakes=[
        Mistake(_supcon_out_reference,
                "that is L_out; L_in takes -log of the mean fraction F_ip over the positives: reread 03 "
                "'L_out against L_in'"),
        Mistake(_supcon_in_without_log_count,
                "the mean inside the log divides by |P(i)|: -log of the *mean* fraction, not of the sum; "
                "reread 03 'L_out against L_in'"),
    ],
)

#: 03.3: the pair-weighted form of the notes' worked example, a flat mean over all (anchor, positive) pairs.
check_supcon_pair_weighted = exercise(
    "03.3", "SupCon, the pair-weighted form", "03 'Another road to 2.4826'",
    reference=_supcon_pair_reference,
    cases=_supcon_cases,
    forbidden=("clbook.losses.supcon_loss", "clbook.losses.SupConLoss", "clbook.reference.supcontrast_loss", "supcon_two_ways"),
    mistakes=[
        Mistake(_supcon_out_reference,
                "that is the anchor-weighted L_out; the pair-weighted form divides every anchor's summed "
                "-log F by the number of positive pairs of the whole batch: reread 03 'A batch where they differ'"),
    ],
)
