"""Contrastive losses: DrLIM margin loss, triplet loss, NT-Xent (SimCLR) and SupCon.

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
        # In place on normalize's fresh output (its backward needs its input, not its output):
        # no second [M, D] buffer.
        return F.normalize(z, dim=1).mul_(temperature**-0.5)
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
    L_out needs no ``[M, M]`` positive mask (M = V * N rows). Its positive term is a batch total,
    :math:`\sum_i \frac{1}{|P(i)|}\sum_{p \in P(i)} z_i \cdot z_p`, and all anchors of a class
    share :math:`P`, so per class it is :math:`(\lVert S_c \rVert^2 - \sum_{i \in c} \lVert z_i
    \rVert^2) / (|c| - 1)` with :math:`S_c` the sum of the class's rows; with a mask, one
    ``[N, N] @ [N, D]`` product. The log-denominators come from one ``F.cross_entropy`` call.
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

    views = features.unsqueeze(1) if features.dim() == 2 else features  # [N, V, D]
    v = views.shape[1]
    rows = v * n
    # View-major order, as in SupContrast: rows 0..N-1 are view 0, rows N..2N-1 view 1, ...
    # Scaled by 1 / sqrt(t): every inner product below is already divided by the temperature.
    z = _scaled_rows(views.transpose(0, 1).reshape(rows, -1), temperature, normalize)  # [M, D], M = V * N

    # Group structure at the level of samples: labels -> classes; no labels and no mask -> each
    # sample its own class (only its other views are positives).
    if mask is None:
        if labels is None:
            group, k = torch.arange(n, device=features.device), n
        else:
            group, k = _class_index(labels)
    if variant == "in":
        return _supcon_in(z, v, n, group if mask is None else None, mask, features)

    # L_out_i = log sum_{a != i} exp(l_ia) - mean_{p in P(i)} l_ip, with l_ij = z_i . z_j.
    # The first term is cross-entropy against some off-diagonal column c(i) plus l_i,c(i):
    # F.cross_entropy is one fused kernel forward and backward, where torch.logsumexp makes
    # extra [M, M] temporaries. c(i) = i + s is the next view of the same sample (s = N), or the
    # next row (s = 1) when V = 1.
    s = n if v > 1 else 1
    targets = torch.arange(rows, device=z.device).roll(-s)
    if labels is None and mask is None and v == 2:
        # Each row's only positive is the other view, which is its target c(i): this is NT-Xent.
        return F.cross_entropy(_masked_logits(z), targets)

    # The rest adds up per class, with no per-row [M, D] tensor: over a class's rows,
    # sum_i z_i . (S_c - z_i) = |S_c|^2 - sum_i |z_i|^2 with S_c the sum of the class's rows
    # (a row is not its own positive); for a mask, S_c is replaced by one [N, N] @ [N, D] product.
    # Every view of a sample has the same positives, so the weights 1/|P| live at sample level.
    z_views = z.view(v, n, -1)
    sample_sums = z_views.sum(dim=0)  # [N, D]: a sample's views added up
    # Normalized rows have squared norm 1 / t whatever the input: that term has no gradient.
    sq = (z_views.detach() if normalize else z_views).pow(2).sum(dim=(0, 2))  # [N]
    if mask is None:
        num_pos = torch.bincount(group, minlength=k).to(z.dtype) * v - 1  # [K]: positives of a row of class c
        # 1/|P| per class. With V > 1 every row has a positive, and an empty class (a label value
        # not in the batch) has zero sums; with V = 1 a class of one sample has none: weight 0.
        weight = num_pos.clamp_min(1).reciprocal() if v > 1 else torch.where(num_pos > 0, 1 / num_pos, 0)
        class_sums = z.new_zeros(k, z.shape[1]).index_add(0, group, sample_sums)  # [K, D]
        class_sq = z.new_zeros(k).index_add(0, group, sq)  # [K]
        pos_total = torch.dot(class_sums.pow(2).sum(dim=1) - class_sq, weight)
        row_has_pos = None if v > 1 else (num_pos > 0)[group]  # with V > 1 every row has one
    else:
        m = mask.to(z.dtype)
        self_in_sum = m.diagonal()  # views of the sample itself are positives when mask[i, i] is set
        num_pos = m.sum(dim=1) * v - self_in_sum  # [N]
        weight = torch.where(num_pos > 0, 1 / num_pos.clamp_min(1), 0)  # [N]
        pos_total = (torch.dot((sample_sums * weight[:, None]).flatten(), (m @ sample_sums).flatten())
                     - torch.dot(sq, weight * self_in_sum))
        row_has_pos = num_pos > 0
    valid = rows if row_has_pos is None else int(row_has_pos.sum()) * v  # anchors with a positive
    if valid == 0:
        return _connected_zero(features)

    logits = _masked_logits(z)  # [M, M], diagonal -inf
    if v == 2:  # sum_i z_i . z_c(i) = 2 sum_j z_0j . z_1j = sum_j |z_0j + z_1j|^2 - |z_0j|^2 - |z_1j|^2
        pair_total = torch.dot(sample_sums.flatten(), sample_sums.flatten()) - sq.sum()
    else:
        pair_total = torch.dot(z.flatten(), z.roll(-s, dims=0).flatten())
    if valid == rows:  # the usual case
        ce_total = F.cross_entropy(logits, targets, reduction="sum")
    else:  # leave out the anchors without positives (their rows still serve as negatives)
        keep = row_has_pos.repeat(v)  # [M]
        drop = (~keep).nonzero().squeeze(1)
        ce_total = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
        pair_total = pair_total - (z[drop] * z[(drop + s) % rows]).sum()
    return (ce_total + pair_total - pos_total) / valid


def _supcon_in(z: Tensor, v: int, n: int, group: Tensor | None, mask: Tensor | None, features: Tensor) -> Tensor:
    """L_in of :func:`supcon_loss` on view-major scaled rows ``z`` [V * N, D]; ``group`` or ``mask``."""
    if mask is None:
        group_m = group.repeat(v)
        positive = group_m[:, None] == group_m[None, :]
    else:
        positive = mask.bool().repeat(v, v)
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
