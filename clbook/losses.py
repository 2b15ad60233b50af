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
    return bool(low.isfinite() & high.isfinite())


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


def _similarity_logits(z: Tensor, temperature: float, normalize: bool) -> Tensor:
    """``[M, D] -> [M, M]`` logits ``z_i . z_j / temperature`` with the diagonal set to -inf.

    The diagonal (an anchor against itself) is excluded from every softmax by giving it
    ``exp(-inf) = 0`` weight; it is never the target, so no ``log(0)`` can appear. Both
    in-place steps act on fresh tensors that autograd does not need to keep.
    """
    if normalize:
        z = F.normalize(z, dim=1)
    logits = z @ z.T
    logits.div_(temperature)
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
    logits = _similarity_logits(torch.cat([z1, z2]), temperature, normalize=True)
    # Row i < N has its positive at column i + N; row i >= N at column i - N.
    targets = torch.arange(2 * n, device=z1.device).roll(n)
    return F.cross_entropy(logits, targets)


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
    For L_out the positive term needs only sums of positive embeddings,
    :math:`\sum_{p} z_i \cdot z_p = z_i \cdot \sum_p z_p`, so no ``[M, M]`` mask is built:
    with labels the sums are per-class sums, with a mask one ``[N, N] @ [N, D]`` product.
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
    z = views.transpose(0, 1).reshape(rows, -1)  # [M, D], M = V * N
    if normalize:
        z = F.normalize(z, dim=1)

    # Group structure at the level of samples: labels -> classes; no labels and no mask -> each
    # sample its own class (only its other views are positives).
    if mask is None:
        if labels is None:
            group = torch.arange(n, device=features.device)
        else:
            _, group = torch.unique(labels, return_inverse=True)  # [N] in 0..K-1

    if variant == "out":
        z_views = z.view(v, n, -1)
        if mask is None:
            k = int(group.max()) + 1
            sample_sums = z_views.sum(dim=0)  # [N, D]: a sample's views added up
            class_sums = torch.zeros(k, z.shape[1], dtype=z.dtype, device=z.device).index_add(0, group, sample_sums)
            # Every view of every positive minus the anchor itself (it is not its own positive).
            # Every view of a sample has the same positives: [N]-sized terms broadcast over views.
            # index_select, not class_sums[group]: its backward is index_add, several times faster
            # than the scatter_add that indexing back-propagates through.
            pos_sums = class_sums.index_select(0, group) - z_views  # [V, N, D]
            num_pos = (torch.bincount(group, minlength=k)[group] * v - 1).to(z.dtype)  # [N]
        else:
            m = mask.to(z.dtype)
            self_in_sum = m.diagonal()
            pos_sums = m @ z_views.sum(dim=0) - self_in_sum[:, None] * z_views
            num_pos = m.sum(dim=1) * v - self_in_sum
        has_pos = num_pos > 0  # [N]
        valid = int(has_pos.sum())
        if valid == 0:
            return _connected_zero(features)
        pos_mean = pos_sums / num_pos.clamp_min(1)[:, None]  # [V, N, D]
        # The log-denominator, logsumexp over a != i, is computed as cross-entropy against some
        # off-diagonal column c(i) plus the logit z_i . z_c(i) / t: F.cross_entropy is one fused
        # kernel forward and backward, where torch.logsumexp makes extra [M, M] temporaries.
        # c(i) is the next view of the same sample (the next row when V = 1). The added logit is
        # taken from the embeddings, so the gradient of the sum is exactly the softmax.
        shift = n if v > 1 else 1
        targets = torch.arange(rows, device=z.device).roll(-shift)
        logits = _similarity_logits(z, temperature, normalize=False)  # [M, M], diagonal -inf
        cross_entropy = F.cross_entropy(logits, targets, reduction="none")  # [M]
        # L_out_i = log_denominator_i - z_i . pos_mean_i / t = ce_i + z_i . (z_c(i) - pos_mean_i) / t
        offset = z.roll(-shift, dims=0) - pos_mean.reshape(rows, -1)
        per_anchor = cross_entropy + (z * offset).sum(dim=1) / temperature
        if valid == n:  # the usual case: skip the gather
            return per_anchor.mean()
        has_pos = has_pos.repeat(v)  # [M]
    else:
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
        log_prob = F.log_softmax(_similarity_logits(z, temperature, normalize=False), dim=1)  # [M, M]
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
