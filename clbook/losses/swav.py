r"""SwAV's swapped prediction (Caron et al., 2020): each view predicts the other view's code.

.. math:: \ell(s, q) = -\sum_k q_k \log \operatorname{softmax}(s / \tau)_k, \qquad
          L = \tfrac12 \operatorname{mean}_i \big[\ell(s^{(1)}_i, q^{(2)}_i) + \ell(s^{(2)}_i, q^{(1)}_i)\big]

Shapes: prototype scores ``scores1``, ``scores2`` and codes ``q1``, ``q2`` [B, K], row i of each
belonging to sample i; the codes are constant targets (detached), e.g. from
:func:`clbook.sinkhorn.sinkhorn_knopp`. A cross-entropy against soft targets: the plain form below
is what runs; there is no fast path.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor

from clbook.losses._checks import _check_embeddings, _check_positive, _check_same_shape, _result, _to_float32

__all__ = ["swav_loss", "swav_multicrop_loss"]



def swav_loss(scores1: Tensor, scores2: Tensor, q1: Tensor, q2: Tensor, temperature: float = 0.1) -> Tensor:
    r"""SwAV's swapped prediction (Caron et al., 2020): each view predicts the other view's code.

    With prototype scores :math:`s` (cosine similarities of a view's embedding with K prototypes)
    and codes :math:`q` (soft assignments, e.g. from :func:`clbook.sinkhorn.sinkhorn_knopp`),

    .. math:: \ell(s, q) = -\sum_k q_k \log \operatorname{softmax}(s / \tau)_k, \qquad
              L = \tfrac12 \operatorname{mean}_i \big[\ell(s^{(1)}_i, q^{(2)}_i) + \ell(s^{(2)}_i, q^{(1)}_i)\big].

    The codes are targets: they are detached, so the gradient reaches only the scores (and
    through them the encoder and the prototypes). If both views agree perfectly the loss is the
    entropy of the codes, not zero.

    Parameters
    ----------
    scores1, scores2 : Tensor, shape [B, K]
        Prototype scores of the two views; row i of each belongs to sample i.
    q1, q2 : Tensor, shape [B, K]
        Codes of the two views: non-negative, rows normally summing to one.
    temperature : float, default 0.1
        Softmax temperature of the prediction, positive.

    Returns
    -------
    Tensor, shape []
        The mean of the two cross-entropies (SwAV's code averages over its views the same way).
        Half-precision scores are computed in float32 and the result cast back.
    """
    for name, t in (("scores1", scores1), ("scores2", scores2), ("q1", q1), ("q2", q2)):
        _check_embeddings(name, t)
    _check_same_shape(("scores1", "scores2", "q1", "q2"), (scores1, scores2, q1, q2))
    temperature = _check_positive("temperature", temperature)
    if bool((q1 < 0).any()) or bool((q2 < 0).any()):
        raise ValueError("codes q1 and q2 must be non-negative (assignments, not scores)")
    (scores1, scores2), dtype = _to_float32(scores1, scores2)

    def predict(scores: Tensor, code: Tensor) -> Tensor:
        log_p = F.log_softmax(scores / temperature, dim=1)
        return -(code.detach().to(log_p.dtype) * log_p).sum(dim=1).mean()

    return _result(0.5 * (predict(scores1, q2) + predict(scores2, q1)), dtype, "swav_loss")


def swav_multicrop_loss(scores: Sequence[Tensor], codes: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    r"""SwAV's swapped prediction over several crops (multi-crop, Caron et al., 2020).

    The first ``len(codes)`` views (the global crops) have codes; every view, the small local
    crops included, predicts the code of each *other* view that has one:

    .. math:: L = \frac{1}{G} \sum_{g < G} \frac{1}{V - 1} \sum_{v \ne g} \operatorname{mean}_i\,
              \ell(s^{(v)}_i, q^{(g)}_i),

    with :math:`\ell` the cross-entropy of :func:`swav_loss`, G codes and V views (the loop of
    SwAV's ``main_swav.py``). With two views and two codes it is :func:`swav_loss`.

    Parameters
    ----------
    scores : sequence of V Tensors, each of shape [B, K]
        Prototype scores of the views; row i of each belongs to sample i.
    codes : sequence of G Tensors, each of shape [B, K], 1 <= G <= V, V >= 2
        Codes of the first G views (non-negative; detached, they are targets).
    temperature : float, default 0.1

    Returns
    -------
    Tensor, shape []
        Half-precision scores are computed in float32 and the result cast back.
    """
    scores, codes = list(scores), list(codes)
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(f"need at least 2 views and between 1 and {max(len(scores), 1)} codes, "
                         f"got {len(scores)} views and {len(codes)} codes")
    names = [f"scores[{v}]" for v in range(len(scores))] + [f"codes[{g}]" for g in range(len(codes))]
    for name, t in zip(names, scores + codes):
        _check_embeddings(name, t)
    _check_same_shape(tuple(names), tuple(scores + codes))
    temperature = _check_positive("temperature", temperature)
    if any(bool((q < 0).any()) for q in codes):
        raise ValueError("codes must be non-negative (assignments, not scores)")
    scores, dtype = _to_float32(*scores)
    log_p = [F.log_softmax(s / temperature, dim=1) for s in scores]
    total = 0.0
    for g, q in enumerate(codes):
        q = q.detach()
        total = total + sum(-(q.to(log_p[v].dtype) * log_p[v]).sum(dim=1).mean()
                            for v in range(len(scores)) if v != g) / (len(scores) - 1)
    return _result(total / len(codes), dtype, "swav_multicrop_loss")
