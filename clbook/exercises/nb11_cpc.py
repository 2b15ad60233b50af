"""Checkers of notebook 11 (CPC: predicting the future in latent space).

The notebook is ``notebooks/11_cpc.ipynb``; its checked exercises:

* 11.1: :data:`check_cpc_step_loss`, the InfoNCE loss of one prediction step with the batch's negatives.
* 11.2: :data:`check_cpc_mi_bound`, the mutual-information lower bound of every step, log N_k - L_k.
* 11.3: :data:`check_cpc_sequence_loss`, the same loss with negatives from the anchor's own sequence only.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import math

import torch

from clbook.exercises.core import Case, Mistake, _grad_wrt, exercise
from clbook.losses import cpc_loss

__all__ = ["check_cpc_step_loss", "check_cpc_mi_bound", "check_cpc_sequence_loss"]


def _inputs(B: int, T: int, K: int, D: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, K, D, generator=g), torch.randn(B, T, D, generator=g)


# ----------------------------------------------------------------------------- 11.1


def _step_reference(predictions, latents, k):
    return cpc_loss(predictions, latents, per_step=True)[k - 1]


def _step_cases() -> list[Case]:
    p, z = _inputs(3, 6, 3, 4, seed=21)
    p1, z1 = _inputs(1, 5, 2, 4, seed=22)
    return [
        Case("3 sequences of 6 latents, K = 3, step k = 1", (p, z, 1)),
        Case("the same batch, step k = 3 (the last)", (p, z, 3),
             hint="step k compares the prediction made at time t with the latent k steps later, for every t that has one: "
                  "reread 11 §2"),
        Case("one sequence (every negative is another time step of it), k = 2", (p1, z1, 2)),
        Case("scores 30x larger (logits in the hundreds), k = 2", (30 * p, z, 2),
             hint="exp of a few hundred overflows float32: work in log space; reread 02 §5"),
        Case("the gradients reaching predictions and latents, k = 2", (p, z, 2), probe=_grad_wrt(0, 1),
             hint="no stop-gradient in CPC: the latents are trained through positives and negatives alike"),
    ]


def _step_target_one_early(predictions, latents, k):
    # Targets z[t + k - 1]: the prediction of step k scored against the latent one step too early.
    shifted = torch.cat([latents[:, :1], latents[:, :-1]], dim=1)  # shifted[:, s] = latents[:, s - 1]
    return cpc_loss(predictions, shifted, per_step=True)[k - 1]


def _step_sequence_only(predictions, latents, k):
    return cpc_loss(predictions, latents, negatives="sequence", per_step=True)[k - 1]


def _step_positive_left_out(predictions, latents, k):
    b, t, _, d = predictions.shape
    q, key = predictions[:, : t - k, k - 1].reshape(-1, d), latents[:, k:].reshape(-1, d)
    logits = q @ key.T
    off = ~torch.eye(len(q), dtype=torch.bool)
    return (torch.logsumexp(logits.masked_fill(~off, float("-inf")), dim=1) - logits.diagonal()).mean()


def _step_detached_latents(predictions, latents, k):
    return _step_reference(predictions, latents.detach(), k)


#: 11.1: InfoNCE of step k, the batch's other sequences and time steps as negatives.
check_cpc_step_loss = exercise(
    "11.1", "CPC's loss of one step", "11 §2 (the loss: which latents are candidates)",
    reference=_step_reference,
    cases=_step_cases,
    mistakes=[
        Mistake(_step_target_one_early,
                "the positive is the latent k steps after the anchor, not k - 1: reread 11 §2"),
        Mistake(_step_sequence_only,
                "the candidates of step k come from every sequence of the batch, not only the anchor's own: reread 11 §2"),
        Mistake(_step_positive_left_out,
                "the positive belongs in its own denominator: one softmax over all the candidates; reread 07 §1"),
        Mistake(_step_detached_latents,
                "the latents must receive gradient too (CPC trains the encoder through its targets); do not detach them"),
    ],
    rtol=1e-5, atol=1e-6,
    # The loss itself is the exercise (info_nce_loss may do the softmax: choosing anchors and targets is the point).
    forbidden=("clbook.losses.cpc_loss", "clbook.losses.cpc_logits", "clbook.losses.CPCLoss", "cpc_loss_by_hand"),
)


# ----------------------------------------------------------------------------- 11.2


def _bound_reference(predictions, latents):
    b, t, k_max, _ = predictions.shape
    per_step = cpc_loss(predictions, latents, per_step=True)
    candidates = torch.tensor([math.log(b * (t - k)) for k in range(1, k_max + 1)], dtype=per_step.dtype)
    return candidates - per_step


def _bound_cases() -> list[Case]:
    p, z = _inputs(4, 8, 3, 5, seed=23)
    good = torch.zeros_like(p)  # good[:, t, k - 1] = 3 z[:, t + k]: each prediction points at its target
    for k in range(1, 4):
        good[:, : 8 - k, k - 1] = 3 * z[:, k:]
    return [
        Case("4 sequences of 8 latents, K = 3", (p, z)),
        Case("all predictions zero (a critic that knows nothing: the bound is 0)", (torch.zeros_like(p), z),
             hint="with equal scores the loss of step k is log N_k exactly, so its bound must be 0"),
        Case("predictions that point at their targets (a good critic)", (good, z)),
    ]


def _bound_negatives_counted(predictions, latents):
    b, t, k_max, _ = predictions.shape
    per_step = cpc_loss(predictions, latents, per_step=True)
    return torch.tensor([math.log(b * (t - k) - 1) for k in range(1, k_max + 1)], dtype=per_step.dtype) - per_step


def _bound_all_latents(predictions, latents):
    b, t, k_max, _ = predictions.shape
    return math.log(b * t) - cpc_loss(predictions, latents, per_step=True)


def _bound_mean_loss(predictions, latents):
    b, t, k_max, _ = predictions.shape
    mean = cpc_loss(predictions, latents)
    return torch.tensor([math.log(b * (t - k)) for k in range(1, k_max + 1)], dtype=mean.dtype) - mean


#: 11.2: the lower bound log N_k - L_k on I(z_{t+k}; c_t), one per step.
check_cpc_mi_bound = exercise(
    "11.2", "the mutual-information bound of every step", "11 §2 (the bound) and 11 §5",
    reference=_bound_reference,
    cases=_bound_cases,
    mistakes=[
        Mistake(_bound_negatives_counted,
                "N_k counts every candidate, the positive included, as 07's log(K + 1) counts K negatives and the positive"),
        Mistake(_bound_all_latents,
                "step k's candidates are the latents that some anchor of step k predicts, not every latent of the batch"),
        Mistake(_bound_mean_loss, "each step has its own loss L_k: per_step=True gives them"),
    ],
    rtol=1e-5, atol=1e-6,
)


# ----------------------------------------------------------------------------- 11.3


def _sequence_reference(predictions, latents, k):
    return cpc_loss(predictions, latents, negatives="sequence", per_step=True)[k - 1]


def _sequence_cases() -> list[Case]:
    p, z = _inputs(3, 6, 3, 4, seed=24)
    return [
        Case("3 sequences of 6 latents, K = 3, step k = 1", (p, z, 1)),
        Case("the same batch, step k = 3 (three candidates per anchor)", (p, z, 3),
             hint="step k compares the prediction made at time t with the latent k steps later, for every t that has one: "
                  "reread 11 §2"),
        Case("scores 30x larger (logits in the hundreds), k = 2", (30 * p, z, 2),
             hint="exp of a few hundred overflows float32: work in log space; reread 02 §5"),
        Case("the gradients reaching predictions and latents, k = 1", (p, z, 1), probe=_grad_wrt(0, 1)),
    ]


def _sequence_positive_left_out(predictions, latents, k):
    b, t, _, d = predictions.shape
    logits = predictions[:, : t - k, k - 1] @ latents[:, k:].transpose(1, 2)  # [B, T - k, T - k]
    diagonal = torch.eye(t - k, dtype=torch.bool).expand(b, -1, -1)
    return (torch.logsumexp(logits.masked_fill(diagonal, float("-inf")), dim=2)
            - logits.diagonal(dim1=1, dim2=2)).mean()


def _sequence_target_one_early(predictions, latents, k):
    shifted = torch.cat([latents[:, :1], latents[:, :-1]], dim=1)
    return cpc_loss(predictions, shifted, negatives="sequence", per_step=True)[k - 1]


#: 11.3: InfoNCE of step k with negatives from the anchor's own sequence only.
check_cpc_sequence_loss = exercise(
    "11.3", "CPC's loss with negatives from the same sequence", "11 §7 (where the negatives come from)",
    reference=_sequence_reference,
    cases=_sequence_cases,
    mistakes=[
        Mistake(_step_reference,
                "here the candidates come from the anchor's own sequence only: one small softmax per sequence"),
        Mistake(_sequence_positive_left_out,
                "the positive belongs in its own denominator: a softmax over the T - k candidates, the positive among them"),
        Mistake(_sequence_target_one_early,
                "the positive is the latent k steps after the anchor, not k - 1: reread 11 §2"),
    ],
    rtol=1e-5, atol=1e-6,
    forbidden=("clbook.losses.cpc_loss", "clbook.losses.cpc_logits", "clbook.losses.CPCLoss", "cpc_step_loss"),
)
