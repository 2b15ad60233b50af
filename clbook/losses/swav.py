r"""SwAV's swapped prediction (Caron et al., 2020): each view predicts the other view's code.

.. math:: \ell(s, q) = -\sum_k q_k \log \operatorname{softmax}(s / \tau)_k, \qquad
          L = \tfrac12 \operatorname{mean}_i \big[\ell(s^{(1)}_i, q^{(2)}_i) + \ell(s^{(2)}_i, q^{(1)}_i)\big]

Shapes: prototype scores ``scores1``, ``scores2`` and codes ``q1``, ``q2`` [B, K], row i of each
belonging to sample i; the codes are constant targets (detached), e.g. from
:func:`clbook.sinkhorn.sinkhorn_knopp`. A cross-entropy against soft targets: the plain form below
is what runs; there is no fast path.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from clbook.losses._checks import _check_embeddings, _check_positive, _check_same_shape, _result, _to_float32

__all__ = ["swav_loss"]



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
