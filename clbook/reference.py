"""Deliberately plain versions of the losses, kept for teaching and comparison.

Nothing here is meant for training. ``naive_nt_xent_loss`` is the textbook formula typed in
directly; notebook 02 shows it overflowing, and the loss benchmark times it.
``supcontrast_loss`` follows the algorithm of the SupContrast repository's ``losses.py``
(Khosla et al., 2020), re-written here so that tests and benchmarks can compare against it
without cloning that repository.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["naive_nt_xent_loss", "supcontrast_loss"]


def naive_nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent written as ``-log(exp(pos) / sum(exp(others)))`` with no numerical care.

    Same conventions as :func:`clbook.losses.nt_xent_loss` (``z1``, ``z2`` of shape [N, D], two
    views per sample, mean over 2N anchors). ``exp`` of a large logit overflows to ``inf``
    (cosine / 0.01 = 100 already does in float32), ``inf / inf`` is ``nan``, and the diagonal is
    removed by multiplying with a mask, so an overflowing self-similarity poisons the row anyway.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    sim = z @ z.T / temperature  # [2N, 2N]
    exp_sim = torch.exp(sim)
    not_self = 1.0 - torch.eye(n2, dtype=z.dtype)
    denominator = (exp_sim * not_self).sum(dim=1)  # [2N]
    positive_col = torch.arange(n2).roll(n2 // 2)
    numerator = exp_sim[torch.arange(n2), positive_col]  # [2N]
    return -torch.log(numerator / denominator).mean()


def supcontrast_loss(
    features: Tensor,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
) -> Tensor:
    """SupCon as the SupContrast reference computes it (``contrast_mode="all"``).

    Parameters
    ----------
    features : Tensor, shape [N, V, D]
        Already L2-normalized features, V views per sample (the reference does not normalize).
    labels : Tensor, shape [N], optional
    mask : Tensor, shape [N, N], optional
        Sample-level positive mask; with neither, views of one sample are the positives.
    temperature, base_temperature : float
        The reference scales the loss by ``temperature / base_temperature``; pass equal values
        to get the plain loss of Khosla et al.

    Returns
    -------
    Tensor, shape []
        Mean over all V * N anchors; an anchor with no positive contributes 0 (as in the
        reference's later versions).
    """
    n, v = features.shape[0], features.shape[1]
    if labels is not None:
        mask = (labels.view(-1, 1) == labels.view(1, -1)).float()
    elif mask is None:
        mask = torch.eye(n)
    mask = mask.float()
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)  # [V*N, D], view-major
    logits = contrast @ contrast.T / temperature
    # Shift by the row max for stability; it cancels in the softmax.
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(v, v)
    logits_mask = 1.0 - torch.eye(v * n)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(dim=1, keepdim=True))
    pos_count = mask.sum(dim=1)
    pos_count = torch.where(pos_count < 1e-6, torch.ones_like(pos_count), pos_count)
    mean_log_prob_pos = (mask * log_prob).sum(dim=1) / pos_count
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.mean()
