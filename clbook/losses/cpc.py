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
of the anchor's own sequence, ``T - k`` candidates; with ``negatives="other"`` the positive and
the latents of the *other* sequences, ``(B - 1) (T - k) + 1`` candidates. The positive is one of
them. Two options narrow the candidates further, to separate where the negatives come from from
how many there are: ``exclude=w`` drops the anchor's own latents within w steps of the positive,
and ``num_negatives=n`` keeps n negatives per anchor, drawn at random (with replacement) among
those left.

The plain form, what runs: for ``"batch"``, step k is :func:`clbook.losses.info_nce_loss` in its
in-batch form on the ``B (T - k)`` flattened predictions and targets (so it tiles past 2,048^2
logits and gathers the targets of every process under ``gather_distributed``, as that loss
does); for ``"sequence"``, a batched cross-entropy over logits ``[B, T - k, T - k]``, one small
matrix per sequence, with the positive on the diagonal. The other settings build the same
logits (the batch's whole ``[B (T - k), B (T - k)]`` matrix for ``"other"``: no tiling) and take
a cross-entropy with the dropped candidates at ``-inf``, or over the positive and the n drawn
negatives. CPC's own critic is log-bilinear, ``exp(z . W_k c)``: raw inner products, which are
the defaults here (``temperature=1``, ``normalize=False``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.losses._checks import _check_positive, _result, _to_float32
from clbook.losses.info_nce import info_nce_loss

__all__ = ["cpc_loss", "cpc_logits", "CPCLoss", "NEGATIVES"]

#: Where a CPC anchor's negatives come from: every sequence of the batch, its own sequence only, or the
#: other sequences only.
NEGATIVES = ("batch", "sequence", "other")


def _check_options(negatives: str, exclude: int, num_negatives) -> None:
    """The options that say which candidates an anchor meets: a one-line ``ValueError`` otherwise."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(map(repr, NEGATIVES))}; got {negatives!r}")
    if isinstance(exclude, bool) or not isinstance(exclude, int) or exclude < 0:
        raise ValueError(f"exclude must be a non-negative integer (a number of steps), got {exclude!r}")
    counts = num_negatives if isinstance(num_negatives, Sequence) else [num_negatives]
    if num_negatives is not None and (not counts or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                                        for n in counts)):
        raise ValueError("num_negatives must be None, a positive integer, or one positive integer per step; "
                         f"got {num_negatives!r}")


def _check_cpc_inputs(predictions: Tensor, latents: Tensor, negatives: str, exclude: int = 0,
                      num_negatives: int | Sequence[int] | None = None) -> None:
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
    _check_options(negatives, exclude, num_negatives)
    if isinstance(num_negatives, Sequence) and len(num_negatives) != k:
        raise ValueError(f"num_negatives gives {len(num_negatives)} counts for K = {k} prediction steps; "
                         "give one per step, or one integer for all")
    if k >= t:
        raise ValueError(f"predictions reach K = {k} steps ahead in sequences of T = {t} latents: step K has no "
                         "anchor (t + K < T is needed); use fewer steps or longer sequences")
    candidates = {"batch": b * (t - k), "sequence": t - k, "other": (b - 1) * (t - k) + 1}[negatives]
    if candidates < 2:
        where = {"batch": "in the batch", "sequence": "in a sequence", "other": "with the other sequences"}[negatives]
        raise ValueError(f"step K = {k} has {candidates} candidate {where} (B = {b}, T - K = {t - k}): the positive "
                         "needs at least one negative")


def _check_step(step: int, k: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= k:
        raise ValueError(f"step must be an integer in [1, {k}] (the predictions' K), got {step!r}")
    return step


def _prepared(x: Tensor, normalize: bool) -> Tensor:
    return F.normalize(x, dim=-1) if normalize else x


@functools.lru_cache(maxsize=64)
def _candidates(b: int, n: int, negatives: str, exclude: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Which candidates each anchor of a step meets, and a table of its negatives (cached: shapes only).

    Rows are the anchors ``(b, t)``, row ``b n + t`` with ``n = T - k``; columns the candidates in
    the layout of the logits: ``b' n + s`` (latent ``z[b', k + s]``) for "batch" and "other", ``s``
    for "sequence". The positive of row ``b n + t`` is the candidate ``(b, t)``.

    Returns
    -------
    allowed : Tensor, shape [B n, C], bool
        The candidates of each anchor, its positive included.
    count : Tensor, shape [B n], int64
        How many negatives each anchor has.
    table : Tensor, shape [B n, max(count)], int64
        Row r's first ``count[r]`` entries are the columns of its negatives, in increasing order.
    """
    row = torch.arange(b * n, device=device)
    col = torch.arange(n if negatives == "sequence" else b * n, device=device)
    if negatives == "sequence":
        same = torch.ones(b * n, n, dtype=torch.bool, device=device)
        offset = col[None, :] - (row % n)[:, None]  # steps from the positive, in the anchor's own sequence
    else:
        same = (row // n)[:, None] == (col // n)[None, :]
        offset = (col % n)[None, :] - (row % n)[:, None]
    neighbour = same & (offset != 0)  # the anchor's own sequence, the positive left out
    allowed = ~neighbour if negatives == "other" else torch.ones_like(same)
    if exclude:
        allowed &= ~(neighbour & (offset.abs() <= exclude))
    negative = allowed & ~(same & (offset == 0))  # the positive is the candidate (b, t): same sequence, offset 0
    count = negative.sum(dim=1)
    table = torch.argsort((~negative).to(torch.int8), dim=1, stable=True)[:, : int(count.max())]
    return allowed, count, table


def _step_logits(query: Tensor, key: Tensor, negatives: str, exclude: int, num_negatives: int | None,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Logits and targets of one step from ``query`` (prepared, divided by the temperature) and ``key``, [B, n, D]."""
    b, n, d = query.shape
    narrowed = exclude > 0 or negatives == "other" or num_negatives is not None
    if narrowed:
        allowed, count, table = _candidates(b, n, negatives, exclude, query.device)
        if int(count.min()) < 1:
            raise ValueError(f"with negatives={negatives!r} and exclude={exclude}, some anchor has no negative "
                             f"left among B = {b} sequences of {n} targets; use a smaller exclude or more sequences")
    if negatives == "sequence":
        logits = (query @ key.transpose(1, 2)).reshape(-1, n)  # [B n, n], one matrix per sequence
        target = torch.arange(n, device=query.device).repeat(b)
    else:
        logits = query.reshape(-1, d) @ key.reshape(-1, d).T  # [B n, B n]
        target = torch.arange(b * n, device=query.device)
    if not narrowed:
        return logits, target
    if num_negatives is None:
        return logits.masked_fill(~allowed, float("-inf")), target
    # n negatives per anchor, each drawn uniformly among the anchor's negatives, with replacement
    # (as CPC's implementations draw them): a uniform index into the row's table. (Picking the
    # scores out of the whole matrix is faster on a CPU than scoring only the chosen keys.)
    u = torch.rand(b * n, num_negatives, generator=generator,
                   device=generator.device if generator is not None else query.device).to(query.device)
    position = (u * count[:, None]).long().clamp_max(count[:, None] - 1)
    chosen = torch.cat([target[:, None], table.gather(1, position)], dim=1)  # [B n, 1 + num], the positive first
    return logits.gather(1, chosen), torch.zeros_like(target)


def _per_step(num_negatives: int | Sequence[int] | None, k: int) -> int | None:
    """The number of negatives of step k (1-based) from ``num_negatives``."""
    return num_negatives[k - 1] if isinstance(num_negatives, Sequence) else num_negatives


def cpc_logits(predictions: Tensor, latents: Tensor, step: int, temperature: float = 1.0, normalize: bool = False,
               *, negatives: str = "batch", exclude: int = 0, num_negatives: int | Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The scores of step ``step``'s anchors against their candidates, and which candidate is the positive.

    Parameters
    ----------
    predictions : Tensor, shape [B, T, K, D]
    latents : Tensor, shape [B, T, D]
    step : int in [1, K]
        The prediction step k.
    temperature, normalize, negatives, exclude, num_negatives, generator
        As in :func:`cpc_loss`.

    Returns
    -------
    logits : Tensor, shape [B (T - k), C]
        Row ``b (T - k) + t`` scores the prediction made at time t of sequence b against the
        candidates: ``C = B (T - k)`` latents ``z[:, k:]`` flattened sequence by sequence with
        ``negatives="batch"`` or ``"other"``, ``C = T - k`` latents ``z[b, k:]`` with
        ``"sequence"``; a candidate the anchor does not meet (``"other"``'s own sequence, the
        latents that ``exclude`` drops) scores ``-inf``. With ``num_negatives=n``, ``C = n + 1``:
        the positive's score in column 0, then those of the n negatives drawn for the row
        (with replacement: a negative can appear twice).
    target : Tensor, shape [B (T - k)], int64
        The column of each row's positive, ``z[b, t + k]`` (0 with ``num_negatives``).
        ``cross_entropy(logits, target)`` is step k's loss, and ``logits.argmax(1) == target``
        says where the positive scored highest.
    """
    _check_cpc_inputs(predictions, latents, negatives, exclude, num_negatives)
    _check_positive("temperature", temperature)
    b, t, k_max, d = predictions.shape
    k = _check_step(step, k_max)
    query = _prepared(predictions[:, : t - k, k - 1], normalize) / temperature  # [B, T - k, D]
    key = _prepared(latents[:, k:], normalize)  # [B, T - k, D]
    return _step_logits(query, key, negatives, exclude, _per_step(num_negatives, k), generator)


def cpc_loss(predictions: Tensor, latents: Tensor, temperature: float = 1.0, normalize: bool = False, *,
             negatives: str = "batch", exclude: int = 0, num_negatives: int | Sequence[int] | None = None,
             generator: torch.Generator | None = None, per_step: bool = False,
             gather_distributed: bool = False) -> Tensor:
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
    negatives : {"batch", "sequence", "other"}, default "batch"
        ``"batch"``: the candidates of step k are ``latents[:, k:]`` of every sequence, so the
        negatives are the other sequences' latents and the anchor's own sequence at other times;
        ``B (T - k)`` candidates. ``"sequence"``: only the anchor's own sequence, ``latents[b, k:]``,
        ``T - k`` candidates: what every candidate shares (the speaker, in speech) no longer tells
        the positive apart. ``"other"``: the positive and the latents of the other sequences only,
        ``(B - 1) (T - k) + 1`` candidates (CPC's "excluding the current sequence").
    exclude : int, default 0
        Drop from the candidates the anchor's own latents within ``exclude`` steps of its positive,
        ``latents[b, t + k + j]`` for ``0 < |j| <= exclude``: the neighbours that share most with
        the positive. Anchors near either end lose fewer.
    num_negatives : int, or one int per step, optional
        Keep only this many negatives per anchor (per step k if a sequence of K), each drawn
        uniformly among the negatives that ``negatives`` and ``exclude`` leave, with replacement
        (as CPC's implementations draw them) and anew for every anchor and call: a way to give two
        settings the same number of candidates. The loss is then a random variable, the draws
        from ``generator``.
    generator : torch.Generator, optional
        The random draws of ``num_negatives``; PyTorch's global generator if None.
    per_step : bool, default False
        Return the K losses, one per step, instead of their mean.
    gather_distributed : bool, default False
        Under ``torch.distributed`` with ``negatives="batch"``, every process's latents are
        candidates for every process's predictions (:func:`clbook.losses.info_nce_loss` gathers
        them); equal B on every rank. ``"sequence"`` needs no gathering: its candidates are local.
        Not available with ``"other"``, ``exclude`` or ``num_negatives`` in the batch's layout.

    Returns
    -------
    Tensor, shape [] (or [K] with ``per_step``)
        In the dtype of the inputs; float16 and bfloat16 are computed in float32, float64 in
        float64. For an encoder that predicts nothing, step k's loss is near ``log`` of its number
        of candidates.

    Notes
    -----
    ``negatives="batch"`` (with no ``exclude`` or ``num_negatives``) reuses
    :func:`clbook.losses.info_nce_loss` (in-batch form, ``negatives=None``) once per step: its
    anchors are the ``B (T - k)`` flattened predictions of step k and its keys the ``B (T - k)``
    flattened targets, key i being query i's positive. Every other setting is a cross-entropy over
    :func:`cpc_logits`.
    """
    _check_cpc_inputs(predictions, latents, negatives, exclude, num_negatives)
    _check_positive("temperature", temperature)
    plain_batch = negatives == "batch" and exclude == 0 and num_negatives is None
    if gather_distributed and negatives != "sequence" and not plain_batch:
        raise ValueError("gather_distributed works with negatives='batch' without exclude or num_negatives, or "
                         f"with 'sequence'; got negatives={negatives!r}, exclude={exclude}, "
                         f"num_negatives={num_negatives!r}")
    (predictions, latents), dtype = _to_float32(predictions, latents)
    b, t, k_max, d = predictions.shape
    losses = []
    for k in range(1, k_max + 1):
        query, key = predictions[:, : t - k, k - 1], latents[:, k:]  # [B, T - k, D] each; row t's positive is key t
        if plain_batch:
            losses.append(info_nce_loss(query.reshape(-1, d), key.reshape(-1, d), None, temperature, normalize,
                                        gather_distributed=gather_distributed))
        else:
            logits, target = _step_logits(_prepared(query, normalize) / temperature, _prepared(key, normalize),
                                          negatives, exclude, _per_step(num_negatives, k), generator)
            losses.append(F.cross_entropy(logits, target))
    out = torch.stack([loss.to(losses[0].dtype) for loss in losses])
    if per_step:
        _result(out.max(), dtype, "cpc_loss")  # every step finite and within the dtype (the losses are >= 0)
        return out.to(dtype)
    return _result(out.mean(), dtype, "cpc_loss")


class CPCLoss(nn.Module):
    """Module form of :func:`cpc_loss`: ``loss(predictions, latents)``."""

    def __init__(self, temperature: float = 1.0, normalize: bool = False, *, negatives: str = "batch",
                 exclude: int = 0, num_negatives: int | Sequence[int] | None = None, per_step: bool = False,
                 gather_distributed: bool = False) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        _check_options(negatives, exclude, num_negatives)
        self.temperature, self.normalize, self.negatives = temperature, normalize, negatives
        self.exclude = exclude
        self.num_negatives = tuple(num_negatives) if isinstance(num_negatives, Sequence) else num_negatives
        self.per_step, self.gather_distributed = per_step, gather_distributed

    def forward(self, predictions: Tensor, latents: Tensor) -> Tensor:
        return cpc_loss(predictions, latents, self.temperature, self.normalize, negatives=self.negatives,
                        exclude=self.exclude, num_negatives=self.num_negatives, per_step=self.per_step,
                        gather_distributed=self.gather_distributed)
