"""Checkers of notebook 12 (from CMC to CLIP).

The notebook is ``notebooks/12_cmc_clip.ipynb``; its checked exercises:

* 12.1: :data:`check_multiview_loss`, CMC's loss over the core pairs or the full graph.
* 12.2: :data:`check_clip_loss`, CLIP's symmetric loss from its learned log-scale (the paper's Figure 3).
* 12.3: :data:`check_prompt_ensemble`, zero-shot class embeddings from an ensemble of prompts.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clbook.exercises.core import Case, Mistake, _grad_wrt, exercise
from clbook.losses import clip_loss, multiview_info_nce

__all__ = ["check_multiview_loss", "check_clip_loss", "check_prompt_ensemble"]


# ----------------------------------------------------------------------------- 12.1 CMC's loss


def _multiview_reference(views, pairing, tau):
    return multiview_info_nce(list(views), pairing, tau)


def _pairs(m, pairing):
    return [(0, b) for b in range(1, m)] if pairing == "core" else [(a, b) for a in range(m) for b in range(a + 1, m)]


def _one_way(views, pairing, tau):
    z = [F.normalize(v, dim=1) for v in views]
    target = torch.arange(len(z[0]))
    return sum(F.cross_entropy(z[a] @ z[b].T / tau, target) for a, b in _pairs(len(z), pairing))


def _mean_over_pairs(views, pairing, tau):
    return multiview_info_nce(list(views), pairing, tau) / len(_pairs(len(views), pairing))


def _always_full(views, pairing, tau):
    return multiview_info_nce(list(views), "full", tau)


def _own_view_negatives(views, pairing, tau):
    # NT-Xent on each pair: the anchor's own view's other rows join its negatives.
    from clbook.losses import nt_xent_loss

    return sum(2 * nt_xent_loss(views[a], views[b], tau) for a, b in _pairs(len(views), pairing))


def _multiview_cases() -> list[Case]:
    g = torch.Generator().manual_seed(21)
    base = torch.randn(5, 6, generator=g)
    views = [base + 0.7 * torch.randn(5, 6, generator=g) for _ in range(4)]
    stability = "at tau = 0.01 the logits reach 100: use cross-entropy (log-softmax), never exp then log; reread 02 §5"
    return [
        Case("3 views of 5 samples, core pairing, tau = 0.1", (views[:3], "core", 0.1)),
        Case("the same 3 views, full graph", (views[:3], "full", 0.1),
             hint="the full graph links every pair of views: (1, 2), (1, 3) and (2, 3); reread 12 §1"),
        Case("4 views, core pairing, tau = 0.5", (views, "core", 0.5),
             hint="core links view 1 to each other view, and no other pair; reread 12 §1"),
        Case("4 views, full graph, tau = 0.5", (views, "full", 0.5)),
        Case("2 views (core and full are the same), tau = 0.2", (views[:2], "core", 0.2)),
        Case("3 views 40x longer, full graph", ([40 * v for v in views[:3]], "full", 0.1),
             hint="the similarities are cosines: L2-normalize every view's rows first"),
        Case("tau = 0.01", (views[:3], "full", 0.01), hint=stability),
    ]


#: 12.1: CMC's loss, summed over the pairs of views that the pairing links, each pair both ways.
check_multiview_loss = exercise(
    "12.1", "CMC's multi-view loss", "12 §1 (the loss of Contrastive Multiview Coding)",
    reference=_multiview_reference,
    cases=_multiview_cases,
    mistakes=[
        Mistake(_one_way, "each pair is contrasted both ways: view a's rows look for their partner among view b's "
                          "rows, and view b's rows among view a's"),
        Mistake(_mean_over_pairs, "CMC sums the losses of the linked pairs (no mean over pairs)"),
        Mistake(_always_full, "the core pairing links view 1 with each other view only, not every pair"),
        Mistake(_own_view_negatives, "an anchor's negatives are the other samples of the *other* view; the rows "
                                     "of its own view are not in its denominator (this is not NT-Xent)"),
    ],
    rtol=1e-5, atol=1e-6,
    forbidden=("clbook.losses.multiview_info_nce",),
)


# ----------------------------------------------------------------------------- 12.2 CLIP's loss


def _clip_reference(image_emb, text_emb, t):
    return clip_loss(image_emb, text_emb, torch.as_tensor(t).exp())


def _clip_cases() -> list[Case]:
    g = torch.Generator().manual_seed(22)
    image = torch.randn(8, 5, generator=g)
    text = image + torch.randn(8, 5, generator=g)
    t = torch.tensor(math.log(1 / 0.07))
    return [
        Case("8 pairs, t = log(1 / 0.07) (CLIP's start)", (image, text, t)),
        Case("t = 0 (a scale of 1)", (image, text, torch.tensor(0.0)),
             hint="the logits are the cosines times exp(t), the scale, not times t"),
        Case("embeddings 30x longer", (30 * image, 30 * text, t),
             hint="normalize both embeddings (l2_normalize in the pseudo-code) before the cosines"),
        Case("t = log(100), CLIP's largest scale", (image, text, torch.tensor(math.log(100.0))),
             hint="logits reach 100: use cross-entropy on the logits (log-softmax), never exp then log"),
        Case("the gradient reaching t", (image, text, t), probe=_grad_wrt(2),
             hint="t is learned: compute exp(t) with torch so that its gradient flows (no math.exp, no .item())"),
        Case("the gradient reaching the image embeddings", (image, text, t), probe=_grad_wrt(0)),
    ]


def _image_to_text_only(image_emb, text_emb, t):
    logits = F.normalize(image_emb, dim=1) @ F.normalize(text_emb, dim=1).T * torch.as_tensor(t).exp()
    return F.cross_entropy(logits, torch.arange(len(logits)))


#: 12.2: CLIP's symmetric loss with the learned log-scale t, as in the paper's Figure 3.
check_clip_loss = exercise(
    "12.2", "CLIP's symmetric loss", "12 §4 (from CMC to CLIP: the loss)",
    reference=_clip_reference,
    cases=_clip_cases,
    mistakes=[
        Mistake(_image_to_text_only, "the loss is symmetric: the mean of the image-to-text cross-entropy (along the "
                                     "rows) and the text-to-image one (along the columns)"),
        Mistake(lambda i, x, t: 2 * _clip_reference(i, x, t), "average the two directions: (loss_i + loss_t) / 2"),
        Mistake(lambda i, x, t: _clip_reference(i, x, torch.as_tensor(t).exp()),
                "t is the log of the scale: multiply the cosines by exp(t), once"),
        Mistake(lambda i, x, t: clip_loss(i, x, torch.as_tensor(t).clamp_min(1e-3)),
                "the logits are the cosines times exp(t): t itself is the log of the scale"),
        Mistake(lambda i, x, t: clip_loss(i, x, (-torch.as_tensor(t)).exp()),
                "exp(t) multiplies the cosines (it is 1 / temperature); do not divide by it"),
    ],
    rtol=1e-5, atol=1e-6,
    forbidden=("clbook.losses.clip_loss", "clbook.losses.clip.clip_logits"),
)


# ----------------------------------------------------------------------------- 12.3 prompt ensembling


def _ensemble_reference(prompt_emb):
    return F.normalize(F.normalize(prompt_emb, dim=-1).mean(dim=1), dim=-1)


def _ensemble_cases() -> list[Case]:
    g = torch.Generator().manual_seed(23)
    emb = torch.randn(3, 4, 5, generator=g)
    lengths = torch.tensor([1.0, 10.0, 0.2, 3.0]).view(1, 4, 1)  # prompts of very different norms
    return [
        Case("3 classes, 4 prompts each, 5-D embeddings", (emb,)),
        Case("one prompt per class", (emb[:, :1],)),
        Case("prompts of very different lengths", (emb * lengths,),
             hint="normalize each prompt's embedding before averaging: a long vector would outvote the others"),
    ]


#: 12.3: zero-shot class embeddings from an ensemble of prompts: normalize, average, normalize.
check_prompt_ensemble = exercise(
    "12.3", "prompt ensembling", "12 §7 (zero-shot classification)",
    reference=_ensemble_reference,
    cases=_ensemble_cases,
    mistakes=[
        Mistake(lambda e: F.normalize(e.mean(dim=1), dim=-1),
                "normalize each prompt's embedding before averaging, so that every prompt has one vote"),
        Mistake(lambda e: F.normalize(e, dim=-1).mean(dim=1),
                "normalize the averaged vector again: class embeddings must be unit vectors, or a class whose "
                "prompts agree more would win every comparison"),
        Mistake(lambda e: F.normalize(F.normalize(e, dim=-1).mean(dim=0), dim=-1),
                "average over the prompts of one class (dimension 1), not over the classes"),
    ],
    rtol=1e-5, atol=1e-6,
)
