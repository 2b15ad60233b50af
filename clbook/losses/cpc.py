r"""CPC (van den Oord, Li and Vinyals, 2018): InfoNCE between predicted and true future latents, one term per step.

.. math:: \ell_{t,k} = -\log \frac{\exp(\hat z_{t,k} \cdot z_{t+k}/\tau)}
          {\sum_{z' \in \mathcal{C}_k} \exp(\hat z_{t,k} \cdot z'/\tau)},
          \qquad L = \operatorname{mean}_{k=1}^{K} \operatorname{mean}_{t} \ell_{t,k}

Shapes: ``predictions`` [B, T, K, D], entry ``[b, t, k - 1]`` the prediction
:math:`\hat z_{t,k} = W_k c_t` of sequence b's latent k steps after t; ``latents`` [B, T, D], the
latents :math:`z_t`. Step k has an anchor at every t with ``t + k < T``. Its candidates
:math:`\mathcal{C}_k` are the latents that are some anchor's target at that step, ``z[:, k:]``:
with ``negatives="batch"`` those of every sequence of the batch, ``B (T - k)`` candidates (the
other sequences and the other time steps are the negatives); with ``negatives="sequence"`` those
of the anchor's own sequence, ``T - k`` candidates. The positive is one of them.

The plain form, what runs: for ``"batch"``, step k is :func:`clbook.losses.info_nce_loss` in its
in-batch form on the ``B (T - k)`` flattened predictions and targets (so it tiles past 2,048^2
logits and gathers the targets of every process under ``gather_distributed``, as that loss
does); for ``"sequence"``, a batched cross-entropy over logits ``[B, T - k, T - k]``, one small
matrix per sequence, with the positive on the diagonal. CPC's own critic is log-bilinear,
``exp(z . W_k c)``: raw inner products, which are the defaults here (``temperature=1``,
``normalize=False``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.losses._checks import _check_positive, _result, _to_float32
from clbook.losses.info_nce import info_nce_loss

__all__ = ["cpc_loss", "cpc_logits", "CPCLoss", "NEGATIVES"]

#: Where a CPC anchor's negatives come from: every sequence of the batch, or its own sequence only.
NEGATIVES = ("batch", "sequence")


def _check_cpc_inputs(predictions: Tensor, latents: Tensor, negatives: str) -> None:
    """Shapes, dtypes and values of CPC's inputs: a one-line ``ValueError`` naming the first problem."""
    for name, x, rank, shape in (("predictions", predictions, 4, "[B, T, K, D]"), ("latents", latents, 3, "[B, T, D]")):
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != rank:
            raise ValueError(f"{name} must have shape {shape}, got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if 0 in x.shape:
            raise ValueError(f"{name} is empty (shape {list(x.shape)})")
        if not bool(torch.isfinite(x.detach()).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    b, t, k, d = predictions.shape
    if latents.shape != (b, t, d):
        raise ValueError(f"latents must have shape [B, T, D] = {[b, t, d]} to match predictions "
                         f"{list(predictions.shape)}, got {list(latents.shape)}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(map(repr, NEGATIVES))}; got {negatives!r}")
    if k >= t:
        raise ValueError(f"predictions reach K = {k} steps ahead in sequences of T = {t} latents: step K has no "
                         "anchor (t + K < T is needed); use fewer steps or longer sequences")
    candidates = (t - k) * (b if negatives == "batch" else 1)
    if candidates < 2:
        where = "in the batch" if negatives == "batch" else "in a sequence"
        raise ValueError(f"step K = {k} has {candidates} candidate {where} (T - K = {t - k}): the positive "
                         "needs at least one negative")


def _check_step(step: int, k: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= k:
        raise ValueError(f"step must be an integer in [1, {k}] (the predictions' K), got {step!r}")
    return step


def _prepared(x: Tensor, normalize: bool) -> Tensor:
    return F.normalize(x, dim=-1) if normalize else x


def cpc_logits(predictions: Tensor, latents: Tensor, step: int, temperature: float = 1.0, normalize: bool = False,
               *, negatives: str = "batch") -> tuple[Tensor, Tensor]:
    """The scores of step ``step``'s anchors against their candidates, and which candidate is the positive.

    Parameters
    ----------
    predictions : Tensor, shape [B, T, K, D]
    latents : Tensor, shape [B, T, D]
    step : int in [1, K]
        The prediction step k.
    temperature, normalize, negatives
        As in :func:`cpc_loss`.

    Returns
    -------
    logits : Tensor, shape [B (T - k), C]
        Row ``b (T - k) + t`` scores the prediction made at time t of sequence b against the
        candidates: ``C = B (T - k)`` latents ``z[:, k:]`` flattened sequence by sequence with
        ``negatives="batch"``, ``C = T - k`` latents ``z[b, k:]`` with ``"sequence"``.
    target : Tensor, shape [B (T - k)], int64
        The column of each row's positive, ``z[b, t + k]``. ``cross_entropy(logits, target)`` is
        step k's loss, and ``logits.argmax(1) == target`` says where the positive scored highest.
    """
    _check_cpc_inputs(predictions, latents, negatives)
    _check_positive("temperature", temperature)
    b, t, k_max, d = predictions.shape
    k = _check_step(step, k_max)
    query = _prepared(predictions[:, : t - k, k - 1], normalize) / temperature  # [B, T - k, D]
    key = _prepared(latents[:, k:], normalize)  # [B, T - k, D]
    if negatives == "batch":
        logits = query.reshape(-1, d) @ key.reshape(-1, d).T  # [B (T - k), B (T - k)]
        target = torch.arange(b * (t - k), device=logits.device)
    else:
        logits = (query @ key.transpose(1, 2)).reshape(-1, t - k)  # [B (T - k), T - k]
        target = torch.arange(t - k, device=logits.device).repeat(b)
    return logits, target


def cpc_loss(predictions: Tensor, latents: Tensor, temperature: float = 1.0, normalize: bool = False, *,
             negatives: str = "batch", per_step: bool = False, gather_distributed: bool = False) -> Tensor:
    r"""CPC's InfoNCE loss: each prediction must pick its true future latent among the candidates.

    For every step k = 1..K and every time t with ``t + k < T``, the prediction
    ``predictions[b, t, k - 1]`` (CPC's :math:`W_k c_t`) scores its target ``latents[b, t + k]``
    against the other candidates of step k (see ``negatives``), with a softmax over
    ``prediction . candidate / temperature``. The loss is the mean over the anchors of each step,
    then over the steps. With N candidates per anchor, :math:`I(z_{t+k}; c_t) \ge \log N - L_k`
    for the loss :math:`L_k` of step k (van den Oord et al., 2018; notebook 07's
    ``log(K + 1) - L`` with K + 1 = N).

    Parameters
    ----------
    predictions : Tensor, shape [B, T, K, D]
        ``predictions[b, t, k - 1]`` predicts ``latents[b, t + k]``. Entries with ``t + k >= T``
        predict nothing and are ignored (they receive zero gradient).
    latents : Tensor, shape [B, T, D]
        The encoder's latents; gradient flows into them through the positives and the negatives.
    temperature : float, default 1.0
        Divides every score. CPC's log-bilinear critic has none (1); its scale is learned in W_k.
    normalize : bool, default False
        L2-normalize predictions and latents first (cosine scores, then a temperature of about 0.1
        is usual). CPC uses raw inner products.
    negatives : {"batch", "sequence"}, default "batch"
        ``"batch"``: the candidates of step k are ``latents[:, k:]`` of every sequence, so the
        negatives are the other sequences' latents and the anchor's own sequence at other times;
        ``B (T - k)`` candidates. ``"sequence"``: only the anchor's own sequence, ``latents[b, k:]``,
        ``T - k`` candidates: what every candidate shares (the speaker, in speech) no longer tells
        the positive apart.
    per_step : bool, default False
        Return the K losses, one per step, instead of their mean.
    gather_distributed : bool, default False
        Under ``torch.distributed`` with ``negatives="batch"``, every process's latents are
        candidates for every process's predictions (:func:`clbook.losses.info_nce_loss` gathers
        them); equal B on every rank. ``"sequence"`` needs no gathering: its candidates are local.

    Returns
    -------
    Tensor, shape [] (or [K] with ``per_step``)
        In the dtype of the inputs; float16 and bfloat16 are computed in float32, float64 in
        float64. For an encoder that predicts nothing, step k's loss is near ``log`` of its number
        of candidates.

    Notes
    -----
    ``negatives="batch"`` reuses :func:`clbook.losses.info_nce_loss` (in-batch form,
    ``negatives=None``) once per step: its anchors are the ``B (T - k)`` flattened predictions of
    step k and its keys the ``B (T - k)`` flattened targets, key i being query i's positive.
    """
    _check_cpc_inputs(predictions, latents, negatives)
    _check_positive("temperature", temperature)
    (predictions, latents), dtype = _to_float32(predictions, latents)
    b, t, k_max, d = predictions.shape
    losses = []
    for k in range(1, k_max + 1):
        query, key = predictions[:, : t - k, k - 1], latents[:, k:]  # [B, T - k, D] each; row t's positive is key t
        if negatives == "batch":
            losses.append(info_nce_loss(query.reshape(-1, d), key.reshape(-1, d), None, temperature, normalize,
                                        gather_distributed=gather_distributed))
        else:
            q = _prepared(query, normalize) / temperature
            logits = q @ _prepared(key, normalize).transpose(1, 2)  # [B, T - k, T - k], positives on the diagonal
            target = torch.arange(t - k, device=logits.device).repeat(b)
            losses.append(F.cross_entropy(logits.reshape(-1, t - k), target))
    out = torch.stack([loss.to(losses[0].dtype) for loss in losses])
    if per_step:
        _result(out.max(), dtype, "cpc_loss")  # every step finite and within the dtype (the losses are >= 0)
        return out.to(dtype)
    return _result(out.mean(), dtype, "cpc_loss")


class CPCLoss(nn.Module):
    """Module form of :func:`cpc_loss`: ``loss(predictions, latents)``."""

    def __init__(self, temperature: float = 1.0, normalize: bool = False, *, negatives: str = "batch",
                 per_step: bool = False, gather_distributed: bool = False) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {', '.join(map(repr, NEGATIVES))}; got {negatives!r}")
        self.temperature, self.normalize, self.negatives = temperature, normalize, negatives
        self.per_step, self.gather_distributed = per_step, gather_distributed

    def forward(self, predictions: Tensor, latents: Tensor) -> Tensor:
        return cpc_loss(predictions, latents, self.temperature, self.normalize, negatives=self.negatives,
                        per_step=self.per_step, gather_distributed=self.gather_distributed)
