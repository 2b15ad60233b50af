r"""CLIP's loss (Radford et al., 2021): a symmetric InfoNCE between images and their texts, with a learned scale.

With N image embeddings :math:`u_i` and the N embeddings :math:`v_i` of their texts (row i of each
a pair), both L2-normalized, and a logit scale :math:`s = e^{t}` (CLIP learns :math:`t`):

.. math:: \text{logits}_{ij} = s\, u_i \cdot v_j, \qquad
          L = \tfrac12 \Big[\operatorname{mean}_i -\log \operatorname{softmax}_j(\text{logits}_{ij})_{j=i}
          + \operatorname{mean}_j -\log \operatorname{softmax}_i(\text{logits}_{ij})_{i=j}\Big]

the image-to-text cross-entropy along the rows and the text-to-image one along the columns
(Figure 3 of the paper). It is :func:`clbook.losses.multiview_info_nce` for two views, halved, with
temperature :math:`1/s`; what CLIP adds is that :math:`s` is a parameter.

Shapes: ``image_emb``, ``text_emb`` [N, D]; ``logit_scale`` a positive number or a 0-d tensor
(``log_scale.exp()`` of a trainable ``log_scale``: the gradient reaches it). The plain form is what
runs; under several processes (``gather_distributed=True``) every process's pairs are negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clbook.distributed import gather_rows, global_mean, world_info
from clbook.losses._checks import _check_embeddings, _check_positive, _check_same_shape, _result, _to_float32

__all__ = ["clip_loss", "clip_logits"]


def clip_logits(image_emb: Tensor, text_emb: Tensor, logit_scale: float | Tensor, normalize: bool = True) -> Tensor:
    """The ``[N, M]`` logits ``logit_scale * cos(image_i, text_j)`` (or inner products if not ``normalize``).

    Row i scores image i against every text: zero-shot classification and retrieval read it.
    """
    _check_embeddings("image_emb", image_emb)
    _check_embeddings("text_emb", text_emb)
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image_emb and text_emb must have the same D: image_emb {list(image_emb.shape)}, "
                         f"text_emb {list(text_emb.shape)}")
    logit_scale = _check_positive("logit_scale", logit_scale)
    if normalize:
        image_emb, text_emb = F.normalize(image_emb, dim=1), F.normalize(text_emb, dim=1)
    return logit_scale * image_emb @ text_emb.T


def clip_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: float | Tensor,
    normalize: bool = True,
    *,
    gather_distributed: bool = False,
) -> Tensor:
    r"""CLIP's symmetric InfoNCE: each image finds its text among the batch's texts, and each text its image.

    .. math:: L = \tfrac12\big[\operatorname{CE}_\text{rows}(s\, U V^\top)
              + \operatorname{CE}_\text{columns}(s\, U V^\top)\big]

    with U, V the L2-normalized embeddings and target i for row (column) i: the mean of the
    image-to-text and text-to-image cross-entropies (module docstring).

    Parameters
    ----------
    image_emb : Tensor, shape [N, D]
        Image embeddings (after the image projection :math:`W_i`).
    text_emb : Tensor, shape [N, D]
        Row i is the embedding of image i's text (after :math:`W_t`).
    logit_scale : float or 0-d Tensor
        The positive multiplier of the cosines, :math:`e^{t}` (1 / temperature); CLIP starts at
        1 / 0.07 and clips it at 100. A tensor that requires grad (``log_scale.exp()``) gets its gradient.
    normalize : bool, default True
        L2-normalize both embeddings first, as CLIP does. ``False`` uses them as given (for
        embeddings normalized already, the result is the same).
    gather_distributed : bool, default False
        Under ``torch.distributed`` (several processes), every process's pairs are negatives: the
        loss of one process on the concatenated batches (equal N on every rank). Ignored when
        ``torch.distributed`` is not initialized or runs one process.

    Returns
    -------
    Tensor, shape []
        For unrelated embeddings it sits near ``ln N``. Half precision is computed in float32 and
        cast back.
    """
    _check_embeddings("image_emb", image_emb)
    _check_embeddings("text_emb", text_emb)
    _check_same_shape(("image_emb", "text_emb"), (image_emb, text_emb))
    logit_scale = _check_positive("logit_scale", logit_scale)
    n = image_emb.shape[0]
    if n < 2:
        raise ValueError("clip_loss needs N >= 2 pairs: with one, an image has no text to tell apart from its own")
    (image_emb, text_emb), dtype = _to_float32(image_emb, text_emb)
    if normalize:
        image_emb, text_emb = F.normalize(image_emb, dim=1), F.normalize(text_emb, dim=1)
    world = world_info(gather_distributed)
    if world is None:
        logits = logit_scale * image_emb @ text_emb.T  # [N, N], pair i on the diagonal
        target = torch.arange(n, device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        return _result(loss, dtype, "clip_loss")
    rank, size = world
    # This rank's images against every rank's texts, and its texts against every rank's images.
    target = torch.arange(n, device=image_emb.device) + rank * n
    per_image = logit_scale * image_emb @ gather_rows(text_emb, world).T  # [N, size * N]
    per_text = logit_scale * text_emb @ gather_rows(image_emb, world).T
    share = 0.5 * (F.cross_entropy(per_image, target, reduction="sum")
                   + F.cross_entropy(per_text, target, reduction="sum")) / (n * size)
    return _result(global_mean(share, world), dtype, "clip_loss")
