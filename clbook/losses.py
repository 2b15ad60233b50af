"""Contrastive losses: DrLIM margin loss, triplet loss, NT-Xent (SimCLR), SupCon and SwAV's swapped prediction.

Conventions shared by every function here
-----------------------------------------
* A batch is a tensor whose first dimension indexes samples: ``[N, D]`` for N embeddings of
  size D, or ``[N, V, D]`` for V views of each of N samples (as in the SupContrast reference).
* Every loss returns a scalar: the mean over the anchors (or pairs, or triplets) that have a
  defined loss.
* Softmax losses are computed in log space (log-sum-exp over the row, diagonal excluded), so
  they stay finite at temperature 0.01 and for large unnormalized inputs.
* Bad input raises ``ValueError`` naming the problem; nothing here returns a silent NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "margin_contrastive_loss",
    "triplet_margin_loss",
    "nt_xent_loss",
    "supcon_loss",
    "swav_loss",
    "MarginContrastiveLoss",
    "TripletMarginLoss",
    "NTXentLoss",
    "SupConLoss",
]


# ----------------------------------------------------------------------------- input checks


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_embeddings(name: str, x: Tensor, rank: int | tuple[int, ...] = 2) -> None:
    ranks = (rank,) if isinstance(rank, int) else rank
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        shapes = " or ".join({2: "[N, D]", 3: "[N, V, D]"}[r] for r in ranks)
        raise ValueError(f"{name} must have shape {shapes}, got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {list(x.shape)})")
    if x.numel() and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or infinite values")


def _all_finite(x: Tensor) -> bool:
    # Two reductions instead of an elementwise isfinite mask: about 4x faster on typical batches
    # (the check runs on every call). aminmax propagates NaN, and an infinity is an extreme.
    low, high = torch.aminmax(x.detach())
    return math.isfinite(low.item()) and math.isfinite(high.item())


def _check_same_shape(names: tuple[str, ...], tensors: tuple[Tensor, ...]) -> None:
    shapes = [list(t.shape) for t in tensors]
    if any(s != shapes[0] for s in shapes):
        described = ", ".join(f"{n} {s}" for n, s in zip(names, shapes))
        raise ValueError(f"shapes must match: {described}")


def _safe_norm(diff: Tensor) -> Tensor:
    """Euclidean norm over the last dimension with a finite (zero) gradient at 0.

    ``sqrt`` has an infinite slope at 0, so ``torch.norm`` back-propagates NaN when two points
    coincide. Clamping inside the sqrt keeps the unused branch finite; ``where`` keeps the
    value exact.
    """
    sq = diff.pow(2).sum(dim=-1)
    return torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


# ----------------------------------------------------------------------------- margin losses


def margin_contrastive_loss(x1: Tensor, x2: Tensor, y: Tensor, margin: float = 1.0) -> Tensor:
    r"""DrLIM spring-energy loss (Hadsell, Chopra and LeCun, 2006).

    .. math:: L = \operatorname{mean}_i \big[(1-y_i)\tfrac12 d_i^2 + y_i \tfrac12 \max(0, m-d_i)^2\big]

    with :math:`d_i = \lVert x1_i - x2_i \rVert_2`. Similar pairs are attractive springs of rest
    length 0; dissimilar pairs are repulsive springs that let go once they are ``margin`` apart.

    Parameters
    ----------
    x1, x2 : Tensor, shape [N, D]
        The two embeddings of each pair.
    y : Tensor, shape [N]
        Pair labels, **0 for similar and 1 for dissimilar** (the paper's convention; some
        libraries use the opposite one). Any numeric or bool dtype holding only 0 and 1.
    margin : float, default 1.0
        Distance beyond which a dissimilar pair contributes nothing. Must be positive.

    Returns
    -------
    Tensor, shape []
        The mean loss over the N pairs. The gradient is finite (zero) when ``x1 == x2``.
    """
    _check_embeddings("x1", x1)
    _check_embeddings("x2", x2)
    _check_same_shape(("x1", "x2"), (x1, x2))
    _check_positive("margin", margin)
    if not isinstance(y, Tensor) or y.shape != (x1.shape[0],):
        shape = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be a tensor of shape [{x1.shape[0]}] (one label per pair), got {shape}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("y must hold only 0 (similar) and 1 (dissimilar)")
    y = y.to(x1.dtype)
    diff = x1 - x2
    # The attractive term uses the squared distance directly: no sqrt, so no kink at d = 0.
    attract = 0.5 * diff.pow(2).sum(dim=1)
    repel = 0.5 * F.relu(margin - _safe_norm(diff)).pow(2)
    return ((1 - y) * attract + y * repel).mean()


def triplet_margin_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 1.0) -> Tensor:
    r"""Triplet loss :math:`\operatorname{mean}_i \max(0, m + d(a_i, p_i) - d(a_i, n_i))`.

    Parameters
    ----------
    anchor, positive, negative : Tensor, shape [N, D]
        Row i of each forms one triplet. Distances are Euclidean (not squared).
    margin : float, default 1.0
        How much farther the negative must be than the positive. Must be positive.

    Returns
    -------
    Tensor, shape []
        Mean over the N triplets; triplets already satisfying the margin contribute 0.
    """
    for name, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        _check_embeddings(name, t)
    _check_same_shape(("anchor", "positive", "negative"), (anchor, positive, negative))
    _check_positive("margin", margin)
    d_ap = _safe_norm(anchor - positive)
    d_an = _safe_norm(anchor - negative)
    return F.relu(margin + d_ap - d_an).mean()


# ----------------------------------------------------------------------------- softmax losses


def _scaled_rows(z: Tensor, temperature: float, normalize: bool) -> Tensor:
    """Rows ``z / sqrt(temperature)``, L2-normalized first if ``normalize``: ``[M, D] -> [M, D]``.

    Their inner products are the logits ``z_i . z_j / temperature``. Scaling the [M, D] rows
    costs one small pass, where dividing the [M, M] logits costs a large one forward and backward.
    """
    if normalize:
        # One [M, 1] column of factors folds normalization and temperature together (a product:
        # its backward is cheaper than a division's). The clamp is F.normalize's, so an all-zero
        # row stays zero instead of becoming NaN.
        norm = torch.linalg.vector_norm(z, dim=1, keepdim=True).clamp_min(1e-12)
        return z * (norm * temperature**0.5).reciprocal()
    return z * temperature**-0.5


def _masked_logits(rows: Tensor) -> Tensor:
    """``[M, D] -> [M, M]`` inner products of the rows, with the diagonal set to -inf.

    The diagonal (an anchor against itself) is excluded from every softmax by giving it
    ``exp(-inf) = 0`` weight; it is never the target, so no ``log(0)`` can appear.
    """
    logits = rows @ rows.T
    # Outside autograd: no loss depends on a diagonal entry (its softmax weight is exactly 0 and
    # it is never a target), so its gradient is exactly 0 anyway, and recording the in-place fill
    # would make backward clone the whole [M, M] gradient just to zero its diagonal.
    with torch.no_grad():
        logits.fill_diagonal_(float("-inf"))
    return logits


def _connected_zero(features: Tensor) -> Tensor:
    """A zero that still belongs to the graph: backward gives zero gradients, not an error."""
    # 0 * sum rather than sum * 0.0, which prints as -0.0 for a negative sum.
    return features.new_zeros(()) + 0.0 * features.sum()


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    r"""NT-Xent, the SimCLR loss (Chen et al., 2020).

    The 2N rows of ``cat(z1, z2)`` are anchors. Anchor i's positive is the other view of the same
    sample; its denominator runs over the other 2N - 1 rows:

    .. math:: \ell_i = -\log \frac{\exp(s_{i,p(i)}/\tau)}{\sum_{k \ne i} \exp(s_{ik}/\tau)}

    with cosine similarity :math:`s`. This is cross-entropy over 2N - 1 classes whose target is the
    positive's column, which is how it is computed.

    Parameters
    ----------
    z1, z2 : Tensor, shape [N, D]
        Two views of the same N samples: row i of ``z1`` and row i of ``z2`` are a positive pair.
        Need not be normalized.
    temperature : float, default 0.5
        Softmax temperature, positive.

    Returns
    -------
    Tensor, shape []
        Mean over the 2N anchors. For random features it sits near ``ln(2N - 1)``.
    """
    _check_embeddings("z1", z1)
    _check_embeddings("z2", z2)
    _check_same_shape(("z1", "z2"), (z1, z2))
    _check_positive("temperature", temperature)
    n = z1.shape[0]
    logits = _masked_logits(_scaled_rows(torch.cat([z1, z2]), temperature, normalize=True))
    # Row i < N has its positive at column i + N; row i >= N at column i - N.
    targets = torch.arange(2 * n, device=z1.device).roll(n)
    return F.cross_entropy(logits, targets)


def _class_index(labels: Tensor) -> tuple[Tensor, int]:
    """Labels ``[N]`` -> (class index of each sample ``[N]``, number of indices K).

    Small non-negative integer labels (the usual case) index the classes directly, empty classes
    included, which spares a sort; anything else is renumbered 0..K-1 by ``torch.unique``.
    """
    if not labels.is_floating_point() and labels.dtype != torch.bool and labels.numel():
        low, high = (int(x) for x in torch.aminmax(labels))
        if low >= 0 and high < 4 * labels.numel() + 16:
            return labels.long(), high + 1
    classes, group = torch.unique(labels, return_inverse=True)
    return group, len(classes)


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    variant: str = "out",
) -> Tensor:
    r"""Supervised contrastive loss (Khosla et al., 2020), self-supervised when unlabelled.

    Every view of every sample is an anchor. Its positives are all *other* views whose samples
    share its label (or are marked in ``mask``); its denominator runs over all other views.
    With neither ``labels`` nor ``mask``, only the other views of the same sample are positives,
    which with V = 2 is exactly :func:`nt_xent_loss`.

    .. math::
        L^{out}_i = -\frac{1}{|P(i)|}\sum_{p \in P(i)} \log \frac{\exp(z_i \cdot z_p/\tau)}
                    {\sum_{a \ne i}\exp(z_i \cdot z_a/\tau)}
        \qquad
        L^{in}_i = -\log \frac{1}{|P(i)|}\sum_{p \in P(i)} \frac{\exp(z_i \cdot z_p/\tau)}
                    {\sum_{a \ne i}\exp(z_i \cdot z_a/\tau)}

    Parameters
    ----------
    features : Tensor, shape [N, D] or [N, V, D]
        N samples, optionally with V views each.
    labels : Tensor, shape [N], optional
        Class of each sample (any integer or float values). Exclusive with ``mask``.
    mask : Tensor, shape [N, N], optional
        ``mask[i, j]`` true (or 1) when sample j is a positive for sample i. Views of the same
        sample are positives of each other when ``mask[i, i]`` is set. Exclusive with ``labels``.
    temperature : float, default 0.1
        Softmax temperature, positive.
    normalize : bool, default True
        L2-normalize the features first (cosine similarity). ``False`` uses raw inner products.
    variant : {"out", "in"}, default "out"
        ``"out"`` averages ``-log p`` over positives (the paper's preferred L_out); ``"in"`` takes
        ``-log`` of the mean positive probability (L_in).

    Returns
    -------
    Tensor, shape []
        Mean over the anchors that have at least one positive. If none has, a zero that is still
        connected to ``features`` (backward gives zero gradients, not an error or NaN).

    Notes
    -----
    With rows :math:`z_i` already divided by :math:`\sqrt\tau`, L_out is a log-denominator minus
    one inner product: :math:`L^{out}_i = \operatorname{lse}_i - z_i \cdot m_i`, where
    :math:`\operatorname{lse}_i = \log\sum_{a \ne i} \exp(z_i \cdot z_a)` and :math:`m_i` is the
    mean of i's positives. With labels, :math:`m_i = (S_c - z_i) / (|c| - 1)` from the sum
    :math:`S_c` of the rows of i's class, so no ``[M, M]`` positive mask is built (M = V * N rows).
    Its gradient is written out (see :class:`_SupConOut`), so L_out has no second derivatives:
    ``create_graph=True`` raises. L_in is differentiated by autograd.
    """
    _check_embeddings("features", features, rank=(2, 3))
    _check_positive("temperature", temperature)
    if variant not in ("out", "in"):
        raise ValueError(f'variant must be "out" or "in", got {variant!r}')
    if labels is not None and mask is not None:
        raise ValueError("pass labels or mask, not both")
    n = features.shape[0]
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != (n,):
            shape = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must have shape [{n}] to match features' N = {n}, got {shape}")
        if labels.is_floating_point() and not torch.isfinite(labels).all():
            raise ValueError("labels contain NaN or infinite values")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != (n, n):
            shape = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must have shape [{n}, {n}] to match features' N = {n}, got {shape}")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold only 0/1 (or False/True)")

    v = features.shape[1] if features.dim() == 3 else 1
    rows = v * n
    # Sample-major rows (row s * V + a is view a of sample s): a free reshape, no copy. The loss
    # is a sum over anchors, so the order of the rows does not change it.
    # Scaled by 1 / sqrt(t): every inner product below is already divided by the temperature.
    z = _scaled_rows(features.reshape(rows, -1), temperature, normalize)  # [M, D], M = V * N

    # Group structure at the level of samples: labels -> classes; no labels and no mask -> each
    # sample its own class (only its other views are positives).
    if mask is None:
        group, k = (torch.arange(n, device=z.device), n) if labels is None else _class_index(labels)
    if variant == "in":
        return _supcon_in(z, v, group if mask is None else None, mask, features)

    # Everything about positives is bookkeeping on detached rows: _SupConOut's backward supplies
    # the gradient of the positive term itself.
    with torch.no_grad():
        if mask is None:
            group_rows = group.repeat_interleave(v)  # [M]
            size = torch.bincount(group, minlength=k) * v  # [K]: rows per class
            # A row's positives are the other |c| - 1 rows of its class. A class of one row (V = 1)
            # has none: weight 1 there is harmless, since S_c - z_i = 0.
            weight = 1 / (size - 1).clamp_min(1).to(z.dtype)  # [K]
            class_sums = z.new_zeros(k, z.shape[1]).index_add_(0, group_rows, z)  # [K, D]
            pos_mean = (class_sums.index_select(0, group_rows) - z).mul_(weight.index_select(0, group_rows)[:, None])
            pos_mean_t = None  # the weights are symmetric: Q^T z = Q z
            keep = None if v > 1 else (size > 1).index_select(0, group_rows)  # with V > 1 every row has one
        else:
            # Q at sample level: W[i, j] = mask[i, j] / |P(i)|; a row is never its own positive.
            m = mask.to(z.dtype)
            self_pos = m.diagonal()  # views of the sample itself are positives when mask[i, i] is set
            num_pos = m.sum(dim=1) * v - self_pos  # [N]
            w = m * torch.where(num_pos > 0, 1 / num_pos.clamp_min(1), 0)[:, None]  # [N, N]
            sample_sums = z.view(n, v, -1).sum(dim=1)  # [N, D]
            own = w.diagonal().repeat_interleave(v)[:, None] * z  # the row itself, counted in its sample's sum
            pos_mean = (w @ sample_sums).repeat_interleave(v, dim=0) - own
            pos_mean_t = (w.T @ sample_sums).repeat_interleave(v, dim=0) - own
            keep = (num_pos > 0).repeat_interleave(v)
        valid = rows if keep is None else int(keep.sum())  # anchors with a positive
        if keep is not None:
            keep = None if valid == rows else keep.to(z.dtype)
    if valid == 0:
        return _connected_zero(features)
    return _SupConOut.apply(z, pos_mean, pos_mean_t, keep, valid)


# Below this many rows, P + P^T is built once and multiplied once (P fits in cache, so the strided
# transposed add is cheap); above, two products with P and P^T are cheaper. Measured on 2 cores,
# forward plus backward relative to the fused NT-Xent form: 256 rows, one product 0.97x, two 1.06x;
# 1024 rows, one 0.92x, two 0.75x; 4096 rows, one 0.77x, two 0.51x.
_ONE_PRODUCT_MAX_ROWS = 768


class _SupConOut(torch.autograd.Function):
    r"""L_out from scaled rows, with its gradient written out.

    Forward: :math:`L = \frac{1}{A} \sum_{i \in \text{anchors}} (\operatorname{lse}_i - z_i \cdot m_i)`
    with :math:`m = Q z`, :math:`Q_{ij}` = 1/|P(i)| when j is a positive of i.
    Backward: with :math:`P` the row softmax over :math:`a \ne i` (rows of non-anchors zeroed),
    :math:`\partial L / \partial z = ((P + P^\top) z - (Q + Q^\top) z) / A`: each anchor is pushed
    away from the softmax-weighted mean of all rows and pulled towards the mean of its positives.
    Written out, backward needs only the softmax saved in forward and one or two products with
    ``z`` (see ``_ONE_PRODUCT_MAX_ROWS``); autograd through cross-entropy would keep and clone more
    ``[M, M]`` matrices.
    """

    @staticmethod
    def forward(ctx, z: Tensor, pos_mean: Tensor, pos_mean_t: Tensor | None, keep: Tensor | None,
                valid: int) -> Tensor:
        """``z`` [M, D] scaled rows; ``pos_mean`` [M, D] = Q z; ``pos_mean_t`` = Q^T z, or None when
        Q is symmetric; ``keep`` [M] 1.0 for anchors (None: all rows); ``valid`` = number of anchors."""
        logits = _masked_logits(z)  # [M, M], diagonal -inf
        # The row softmax in place, the stable way: subtract the row max, exponentiate, normalize.
        # Its normalizer gives the log-denominators: lse = max + log sum exp(l - max).
        top = logits.amax(dim=1, keepdim=True)
        prob = logits.sub_(top).exp_()
        total = prob.sum(dim=1, keepdim=True)
        prob.div_(total)
        lse = (top + total.log()).squeeze(1)  # [M]
        if keep is not None:  # rows without positives are negatives only: no loss, no softmax term
            prob.mul_(keep[:, None])
            lse = lse * keep
        ctx.symmetric = len(z) <= _ONE_PRODUCT_MAX_ROWS
        if ctx.symmetric:  # backward needs only P + P^T: build it now and let P go
            prob = prob + prob.T
        ctx.save_for_backward(z, prob, pos_mean, pos_mean_t)
        ctx.valid = valid
        return (lse.sum() - torch.dot(z.flatten(), pos_mean.flatten())) / valid

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # backward(create_graph=True): the result would be a constant
            raise RuntimeError('supcon_loss(variant="out") has no second derivatives (create_graph=True); '
                               'variant="in" is differentiated by autograd and has them')
        z, prob, pos_mean, pos_mean_t = ctx.saved_tensors
        scale = float(grad) / ctx.valid
        # (Q + Q^T) z, scaled into the product's beta: one fused multiply-add, no extra [M, D] pass.
        pull, beta = (pos_mean, -2 * scale) if pos_mean_t is None else (pos_mean + pos_mean_t, -scale)
        if ctx.symmetric:  # prob holds P + P^T
            grad_z = torch.addmm(pull, prob, z, beta=beta, alpha=scale)
        else:
            grad_z = torch.addmm(pull, prob, z, beta=beta, alpha=scale).addmm_(prob.T, z, alpha=scale)
        return grad_z, None, None, None, None


def _supcon_in(z: Tensor, v: int, group: Tensor | None, mask: Tensor | None, features: Tensor) -> Tensor:
    """L_in of :func:`supcon_loss` on sample-major scaled rows ``z`` [N * V, D]; ``group`` or ``mask``."""
    if mask is None:
        group_rows = group.repeat_interleave(v)
        positive = group_rows[:, None] == group_rows[None, :]
    else:
        # Row s * V + a holds sample s: broadcast each mask entry over a V x V block in one copy.
        positive = mask.bool()[:, None, :, None].expand(-1, v, -1, v).reshape(len(z), len(z))
    positive.fill_diagonal_(False)
    has_pos = positive.any(dim=1)
    if not bool(has_pos.any()):
        return _connected_zero(features)
    num_pos = positive.sum(dim=1).to(z.dtype)
    # log_softmax is one fused kernel; the logits are not needed once it has run.
    log_prob = F.log_softmax(_masked_logits(z), dim=1)  # [M, M]
    # In place: the boolean mask turns into its complement without a second [M, M] buffer.
    log_pos = torch.logsumexp(log_prob.masked_fill(positive.logical_not_(), float("-inf")), dim=1)
    # -log(mean_p prob_p) = log |P| - logsumexp_p log prob_p
    per_anchor = torch.log(num_pos.clamp_min(1)) - log_pos
    return per_anchor[has_pos].mean()


# ----------------------------------------------------------------------------- SwAV


def swav_loss(scores1: Tensor, scores2: Tensor, q1: Tensor, q2: Tensor, temperature: float = 0.1) -> Tensor:
    r"""SwAV's swapped prediction (Caron et al., 2020): each view predicts the other view's code.

    With prototype scores :math:`s` (cosine similarities of a view's embedding with K prototypes)
    and codes :math:`q` (soft assignments, e.g. from :func:`clbook.cluster.sinkhorn_knopp`),

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
    _check_positive("temperature", temperature)
    if bool((q1 < 0).any()) or bool((q2 < 0).any()):
        raise ValueError("codes q1 and q2 must be non-negative (assignments, not scores)")
    dtype = torch.promote_types(scores1.dtype, scores2.dtype)
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def predict(scores: Tensor, code: Tensor) -> Tensor:
        log_p = F.log_softmax(scores.to(work) / temperature, dim=1)
        return -(code.detach().to(work) * log_p).sum(dim=1).mean()

    return (0.5 * (predict(scores1, q2) + predict(scores2, q1))).to(dtype)


# ----------------------------------------------------------------------------- nn.Module wrappers


class MarginContrastiveLoss(nn.Module):
    """Module form of :func:`margin_contrastive_loss` (``y = 0`` similar, ``y = 1`` dissimilar)."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        _check_positive("margin", margin)
        self.margin = margin

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor) -> Tensor:
        return margin_contrastive_loss(x1, x2, y, self.margin)


class TripletMarginLoss(nn.Module):
    """Module form of :func:`triplet_margin_loss`."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        _check_positive("margin", margin)
        self.margin = margin

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_margin_loss(anchor, positive, negative, self.margin)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss`."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature = temperature

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent_loss(z1, z2, self.temperature)


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss`."""

    def __init__(self, temperature: float = 0.1, normalize: bool = True, variant: str = "out") -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        if variant not in ("out", "in"):
            raise ValueError(f'variant must be "out" or "in", got {variant!r}')
        self.temperature, self.normalize, self.variant = temperature, normalize, variant

    def forward(self, features: Tensor, labels: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        return supcon_loss(features, labels, mask, self.temperature, self.normalize, self.variant)
