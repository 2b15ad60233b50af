"""Checkers of notebook 13 (a small ViT, MoCo v3 and DINO).

The notebook is ``notebooks/13_vit_mocov3_dino.ipynb``; its checked exercises:

* 13.1: :data:`check_patchify`, cutting a batch of images into the ViT's patches, row by row.
* 13.2: :data:`check_dino_loss`, DINO's loss from the student's and the teacher's outputs.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbook.exercises.core import Case, Mistake, _grad_wrt, exercise
from clbook.losses import dino_loss

__all__ = ["check_patchify", "check_dino_loss"]


# ----------------------------------------------------------------------------- 13.1 patches


def _patchify_reference(x, p):
    n, _, s, _ = x.shape
    g = s // p
    # [N, g, p, g, p] (patch row, pixel row, patch column, pixel column) -> [N, g*g, p*p], patches row by row
    return x.reshape(n, g, p, g, p).permute(0, 1, 3, 2, 4).reshape(n, g * g, p * p)


def _patchify_cases() -> list[Case]:
    g = torch.Generator().manual_seed(31)
    digits = torch.rand(2, 1, 28, 28, generator=g)
    ramp = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28) / 784  # every pixel different
    return [
        Case("2 digits of 28 x 28, patches of 7", (digits, 7)),
        Case("a ramp (every pixel different), patches of 7", (ramp, 7),
             hint="patches go row by row (left to right, then down), and so do the pixels inside a patch; "
                  "reread 13 §1"),
        Case("patches of 4 (7 x 7 of them)", (digits, 4)),
        Case("a 14 x 14 local crop, patches of 7 (2 x 2 of them)", (digits[:, :, :14, 7:21], 7),
             hint="the number of patches follows the image's side: (S / p)^2; reread 13 §1"),
        Case("one image", (ramp[:1], 14)),
    ]


def _columns_first(x, p):
    # Patches taken column by column.
    n, _, s, _ = x.shape
    g = s // p
    return x.view(n, g, p, g, p).permute(0, 3, 1, 2, 4).reshape(n, g * g, p * p)


def _pixels_transposed(x, p):
    # Patches row by row, but the pixels inside each patch column by column.
    n, _, s, _ = x.shape
    g = s // p
    return x.view(n, g, p, g, p).permute(0, 1, 3, 4, 2).reshape(n, g * g, p * p)


def _strips(x, p):
    # A plain reshape: consecutive runs of p*p pixels, which are strips of rows, not square patches.
    return x.reshape(x.shape[0], -1, p * p)


#: 13.1: images [N, 1, S, S] to patches [N, (S/p)^2, p*p], as the ViT's patch projection sees them.
check_patchify = exercise(
    "13.1", "patches of an image", "13 §1 (the patch embedding)",
    reference=_patchify_reference,
    cases=_patchify_cases,
    mistakes=[
        Mistake(_columns_first, "the patches are numbered row by row (the first patch is top-left, the second is "
                                "its right neighbour); reread 13 §1"),
        Mistake(_pixels_transposed, "inside a patch the pixels are flattened row by row too; reread 13 §1"),
        Mistake(_strips, "a patch is a p x p square of the image, not p*p consecutive pixels of a row; reread 13 §1"),
    ],
    rtol=1e-6, atol=1e-7,
    forbidden=("torch.nn.functional.unfold",),
)


# ----------------------------------------------------------------------------- 13.2 DINO's loss


def _dino_reference(student, teacher, center, tau_s, tau_t):
    return dino_loss(list(student.unbind(0)), list(teacher.unbind(0)), center, tau_s, tau_t)


def _dino_cases() -> list[Case]:
    g = torch.Generator().manual_seed(32)
    b, k = 6, 8
    student = torch.randn(4, b, k, generator=g)  # 2 global views, then 2 local
    teacher = student[:2] + 0.5 * torch.randn(2, b, k, generator=g)
    center = 0.3 * torch.randn(k, generator=g)
    stability = "the teacher's logits reach 25 at temperature 0.04: use softmax and log_softmax, never exp then log; " \
                "reread 13 §3"
    return [
        Case("2 global views only, no center", (student[:2], teacher, torch.zeros(k), 0.1, 0.04)),
        Case("2 global + 2 local views, with a center", (student, teacher, center, 0.1, 0.04),
             hint="every teacher view is the target of every student view except its own view; reread 13 §3"),
        Case("the same, teacher temperature 0.07", (student, teacher, center, 0.1, 0.07),
             hint="the teacher's outputs are centered, then divided by the teacher's temperature; reread 13 §3"),
        Case("outputs 10x larger", (10 * student, 10 * teacher, center, 0.1, 0.04), hint=stability),
        Case("the gradient reaching the student", (student, teacher, center, 0.1, 0.04), probe=_grad_wrt(0)),
        Case("the gradient reaching the teacher (none)", (student, teacher, center, 0.1, 0.04), probe=_grad_wrt(1),
             hint="the teacher's targets are constants: no gradient may reach the teacher; reread 13 §3"),
    ]


def _with_own_view(student, teacher, center, tau_s, tau_t):
    targets = F.softmax((teacher - center) / tau_t, dim=-1)
    log_p = F.log_softmax(student / tau_s, dim=-1)
    return torch.stack([-(t * s).sum(-1).mean() for t in targets for s in log_p]).mean()


def _no_center(student, teacher, center, tau_s, tau_t):
    return _dino_reference(student, teacher, None, tau_s, tau_t)


def _center_added(student, teacher, center, tau_s, tau_t):
    return _dino_reference(student, teacher, -center, tau_s, tau_t)


def _temperatures_swapped(student, teacher, center, tau_s, tau_t):
    return _dino_reference(student, teacher, center, tau_t, tau_s)


def _sum_over_pairs(student, teacher, center, tau_s, tau_t):
    pairs = teacher.shape[0] * (student.shape[0] - 1)
    return pairs * _dino_reference(student, teacher, center, tau_s, tau_t)


def _teacher_not_detached(student, teacher, center, tau_s, tau_t):
    targets = F.softmax((teacher - center) / tau_t, dim=-1)  # gradient flows into the teacher
    log_p = F.log_softmax(student / tau_s, dim=-1)
    terms = [-(targets[t] * log_p[s]).sum(-1).mean() for t in range(len(targets)) for s in range(len(log_p)) if s != t]
    return torch.stack(terms).mean()


#: 13.2: DINO's cross-entropy from the teacher's centered, sharpened targets to every other view of the student.
check_dino_loss = exercise(
    "13.2", "DINO's loss", "13 §3 (DINO: centering, sharpening, the loss)",
    reference=_dino_reference,
    cases=_dino_cases,
    mistakes=[
        Mistake(_with_own_view, "a view is never its own target: skip the pairs where the student's view is the "
                                "teacher's; reread 13 §3"),
        Mistake(_no_center, "center the teacher's outputs (subtract the center) before its softmax; reread 13 §3"),
        Mistake(_center_added, "the center is subtracted from the teacher's outputs, not added; reread 13 §3"),
        Mistake(_temperatures_swapped, "the teacher uses the low temperature (sharpening), the student the higher "
                                       "one; reread 13 §3"),
        Mistake(_sum_over_pairs, "average over the pairs of views (and over the samples), do not sum; reread 13 §3"),
        Mistake(_teacher_not_detached, "the teacher's targets are constants (detach them): the teacher learns only "
                                       "through its momentum update; reread 13 §3"),
    ],
    rtol=1e-5, atol=1e-6,
    forbidden=("clbook.losses.dino_loss", "clbook.losses.teacher_probabilities", "clbook.losses.DINOLoss"),
)
