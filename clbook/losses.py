"""Contrastive losses: DrLIM margin loss, triplet loss, NT-Xent (SimCLR), SupCon and InfoNCE (MoCo);
the losses without negatives of SimSiam (negative cosine) and BYOL (normalized MSE); and SwAV's
swapped prediction.

Conventions shared by every function here
-----------------------------------------
* A batch is a tensor whose first dimension indexes samples: ``[N, D]`` for N embeddings of
  size D, or ``[N, V, D]`` for V views of each of N samples (as in the SupContrast reference).
* Every loss returns a scalar: the mean over the anchors (or pairs, or triplets) that have a
  defined loss.
* Softmax losses are computed in log space (log-sum-exp over the row, diagonal excluded), so
  they stay finite at temperature 0.01 and for large unnormalized inputs.
* Half precision (float16, bfloat16, e.g. under GPU autocast) is computed in float32 and the
  loss is returned in the input's dtype: every loss starts with
  ``(x1, x2), dtype = _to_float32(x1, x2)`` and ends with ``return _result(loss, dtype, name)``.
  ``_to_float32`` upcasts only half-precision tensors (float32 and float64 pass untouched, at no
  cost); ``_result`` raises ``ValueError`` instead of returning inf or NaN when a value overflowed
  (inputs near float32's range, a tiny temperature) or does not fit the returned dtype. New losses
  follow the same two lines.
* Numbers (``temperature``, ``margin``) may be Python or NumPy numbers or 0-d tensors; a 0-d tensor
  that requires grad (a learnable temperature) keeps its gradient. No function changes a tensor it
  was given.
* Bad input raises ``ValueError`` naming the problem; nothing here returns a silent NaN.
"""

from __future__ import annotations

import math
import numbers
from functools import reduce

import torch
import torch.distributed  # noqa: F401  (torch.distributed.* below)
import torch.nn.functional as F
from numpy import bool_ as np_bool
from torch import Tensor, nn

__all__ = [
    "margin_contrastive_loss",
    "triplet_margin_loss",
    "nt_xent_loss",
    "supcon_loss",
    "info_nce_loss",
    "negative_cosine_loss",
    "normalized_mse_loss",
    "swav_loss",
    "MarginContrastiveLoss",
    "TripletMarginLoss",
    "NTXentLoss",
    "SupConLoss",
    "InfoNCELoss",
]


# ----------------------------------------------------------------------------- input checks


def _check_positive(name: str, value: float | Tensor) -> float | Tensor:
    """``value`` as a usable number: a float, or a 0-d tensor that requires grad (kept as is).

    Accepts any real number (Python, NumPy) or a 0-d real tensor; rejects bools and strings.
    """
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex() and value.dtype != torch.bool:
        number = float(value.detach())
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):  # NumPy numbers are Real
        number = float(value)
    else:
        number = None
    if number is None or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if isinstance(value, Tensor) and value.requires_grad:
        return value
    return number


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
    if 0 in x.shape[1:]:
        raise ValueError(f"{name} has an empty dimension (shape {list(x.shape)})")
    if x.numel() and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or infinite values")


def _all_finite(x: Tensor) -> bool:
    # Two reductions instead of an elementwise isfinite mask: about 4x faster on typical batches
    # (the check runs on every call). aminmax propagates NaN, and an infinity is an extreme.
    low, high = torch.aminmax(x.detach())
    return math.isfinite(low.item()) and math.isfinite(high.item())


_HALF = (torch.float16, torch.bfloat16)


def _to_float32(*tensors: Tensor) -> tuple[list[Tensor], torch.dtype]:
    """Half-precision tensors upcast to float32 (others unchanged), and the dtype to return.

    Every loss computes in float32 when given float16 or bfloat16: their sums of squares, exps and
    sums over thousands of rows overflow float16 (max 65,504), and the clamps that keep a zero row
    finite underflow. The returned dtype is the inputs' promoted dtype, what the loss would have
    had without the upcast. float32 and float64 inputs are returned as they are (no copy).
    """
    dtypes = {t.dtype for t in tensors}
    dtype = reduce(torch.promote_types, dtypes)
    if dtypes.isdisjoint(_HALF):  # the float32 / float64 path: nothing to do
        return list(tensors), dtype
    return [t.float() if t.dtype in _HALF else t for t in tensors], dtype


def _result(loss: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """``loss`` in ``dtype``, after checking that it is finite and fits that dtype.

    The inputs were checked finite, so a non-finite loss means an intermediate value overflowed
    (inputs near the dtype's range, a tiny temperature): an error, never a silent inf or NaN.
    """
    value = loss.item()
    if not math.isfinite(value):
        raise ValueError(f"{name} overflowed {loss.dtype} (got {value}): the inputs are too large "
                         "(or the temperature too small) for this dtype; rescale them")
    if loss.dtype != dtype:
        if abs(value) > torch.finfo(dtype).max:
            raise ValueError(f"{name} is {value:.6g}, beyond the largest {dtype} "
                             f"({torch.finfo(dtype).max:.6g}); compute it from float32 inputs")
        loss = loss.to(dtype)
    return loss


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
    if not math.isfinite(sq.detach().sum().item()):  # a sum is ~5x cheaper than isfinite().all()
        # Squares beyond the dtype's range (|diff| > ~1.8e19 in float32), where the norm itself is
        # representable: divide each row by its largest entry first. Rare, so checked, not default.
        scale = diff.detach().abs().amax(dim=-1).clamp_min(torch.finfo(diff.dtype).tiny)
        return scale * _safe_norm(diff / scale[..., None])
    return torch.where(sq > 0, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


def _row_norms(z: Tensor) -> Tensor:
    """Euclidean norms ``[M, 1]`` of the rows of ``z`` [M, D], also for entries beyond ~1e19.

    The plain sum of squares overflows there in float32, and every such row would become a zero
    row after normalization. Then, and only then, each row is divided by its largest entry first,
    which keeps every square in range. (Underflow needs no care: norms below the ``1e-12`` clamp
    of :func:`_scaled_rows` are clamped anyway.)
    """
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    if math.isfinite(norm.detach().sum().item()):  # a sum is ~5x cheaper than isfinite().all()
        return norm
    scale = z.detach().abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    return torch.linalg.vector_norm(z / scale, dim=1, keepdim=True) * scale


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
    margin = _check_positive("margin", margin)
    if not isinstance(y, Tensor) or y.shape != (x1.shape[0],):
        shape = list(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be a tensor of shape [{x1.shape[0]}] (one label per pair), got {shape}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("y must hold only 0 (similar) and 1 (dissimilar)")
    (x1, x2), dtype = _to_float32(x1, x2)
    diff = x1 - x2
    # The attractive term uses the squared distance directly: no sqrt, so no kink at d = 0.
    attract = 0.5 * diff.pow(2).sum(dim=1)
    repel = 0.5 * F.relu(margin - _safe_norm(diff)).pow(2)
    # Select, not (1 - y) * attract + y * repel: 0 * inf would be NaN for a far dissimilar pair.
    return _result(torch.where(y.bool(), repel, attract).mean(), dtype, "margin_contrastive_loss")


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
    margin = _check_positive("margin", margin)
    (anchor, positive, negative), dtype = _to_float32(anchor, positive, negative)
    d_ap = _safe_norm(anchor - positive)
    d_an = _safe_norm(anchor - negative)
    return _result(F.relu(margin + d_ap - d_an).mean(), dtype, "triplet_margin_loss")


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
        norm = _row_norms(z).clamp_min(1e-12)
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


def nt_xent_loss(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    block_size: int | None = None,
    gather_distributed: bool = False,
) -> Tensor:
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
    block_size : int, optional
        Compute forward and backward over blocks of this many rows, recomputing each block's
        logits in backward: memory O(N D + N B) instead of O(N^2), same value and gradient.
        None (default) chooses: one [2N, 2N] matrix up to 2,048 rows, blocks above.
    gather_distributed : bool, default False
        Under ``torch.distributed`` (several processes), use every process's rows as negatives:
        the loss is that of one process on the concatenated batches (equal N on every rank),
        and under DDP the averaged gradient is that of the whole batch. Ignored when
        ``torch.distributed`` is not initialized or runs one process.

    Returns
    -------
    Tensor, shape []
        Mean over the 2N anchors. For random features it sits near ``ln(2N - 1)``.

    Notes
    -----
    The tiled path (``block_size``, or any batch past 2,048 rows) and ``gather_distributed``
    write their gradient out, so they have no second derivatives (``create_graph=True`` raises).
    """
    _check_embeddings("z1", z1)
    _check_embeddings("z2", z2)
    _check_same_shape(("z1", "z2"), (z1, z2))
    temperature = _check_positive("temperature", temperature)
    (z1, z2), dtype = _to_float32(z1, z2)
    n = z1.shape[0]
    world = _world(gather_distributed)
    rows = _scaled_rows(torch.cat([z1, z2]), temperature, normalize=True)
    block = _auto_block(2 * n, 2 * n * (world[1] if world else 1), block_size)
    if world is None and block is None:
        logits = _masked_logits(rows)
        # Row i < N has its positive at column i + N; row i >= N at column i - N.
        targets = torch.arange(2 * n, device=z1.device).roll(n)
        return _result(F.cross_entropy(logits, targets), dtype, "nt_xent_loss")
    # Log-denominators tiled; the positive logits z1_i . z2_i (each counted for both anchors) by autograd.
    positive = 2 * torch.dot(rows[:n].flatten(), rows[n:].flatten())
    if world is None:
        return _result((_SelfLSE.apply(rows, None, block) - positive) / (2 * n), dtype, "nt_xent_loss")
    rank, size = world
    # Positives stay on their own rank; the columns are everyone's rows, this rank's from 2N * rank.
    lse = _CrossLSE.apply(rows, _gather_rows(rows, world), None, None, 2 * n * rank, block or 2 * n)
    return _result(_global_mean((lse - positive) / (2 * n * size), world), dtype, "nt_xent_loss")


# ----------------------------------------------------------------------------- tiled log-denominators
#
# Every softmax loss here is "log-denominator minus positive logit": with rows already divided by
# sqrt(t), L = (sum_i w_i lse_i - positive term) / A. The positive term is O(M D) and left to
# autograd; the log-denominators lse_i = log sum_j exp(z_i . z_j) need all M^2 logits. The two
# Functions below compute them over blocks of B rows and recompute each block's logits in
# backward instead of saving an [M, M] softmax, so memory is O(M D + M B) (the idea of GradCache
# and Inf-CL) where the untiled path's is O(M^2).

# Untiled up to this many logits (M rows x C columns), where the [M, C] path's memory is small
# (about 12 bytes per logit) and its speed already tuned. Above it, blocks of about _TILE_LOGITS
# logits (32 MB in float32), and at least 4 blocks: the upper triangle saves half the products only
# when there are several. Measured forward plus backward on 2 busy cores, tiled over untiled, at
# 8,192 rows: one thread, NT-Xent 0.29x to 0.33x and SupCon (10 classes) 0.76x to 1.12x for blocks
# of 128 to 1,024 rows; two threads, NT-Xent 1.47x, 0.96x, 1.01x and SupCon 1.48x, 1.31x, 1.40x for
# blocks of 512, 1,024 and 2,048 rows. Each block runs a dozen full-size operations, and on two
# threads of a busy machine each of them waits for both threads, so blocks are not made smaller.
_UNTILED_MAX_LOGITS = 2048 * 2048
_TILE_LOGITS = 1 << 23


def _auto_block(rows: int, cols: int, block_size: int | None) -> int | None:
    """Rows per block for ``rows`` anchors against ``cols`` columns: None means untiled."""
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")
        return int(block_size)
    if rows * cols <= _UNTILED_MAX_LOGITS:
        return None
    return max(32, min(_TILE_LOGITS // cols, -(-rows // 4)))


def _merge_lse(top: Tensor, total: Tensor, logits: Tensor, dim: int) -> None:
    """Fold ``logits`` reduced over ``dim`` into the running (max, sum of exp) pair, in place.

    ``top`` and ``total`` are views of the rows (``dim=1``) or columns (``dim=0``) the block
    covers. ``logits`` is consumed (overwritten with exponentials).
    """
    block_top = logits.amax(dim=dim).clamp_min(torch.finfo(logits.dtype).min)  # -inf rows stay finite
    block_sum = logits.sub_(block_top.unsqueeze(dim)).exp_().sum(dim=dim)
    new_top = torch.maximum(top, block_top)
    total.mul_((top - new_top).exp_()).add_(block_sum * (block_top - new_top).exp_())
    top.copy_(new_top)


class _SelfLSE(torch.autograd.Function):
    r""":math:`\sum_i w_i \operatorname{lse}_i`, :math:`\operatorname{lse}_i = \log\sum_{j \ne i} \exp(z_i \cdot z_j)`, tiled.

    The logits are symmetric, so only the upper triangle is computed: row block ``[s, e)`` meets
    columns ``[s, M)`` once, and that block serves the log-denominators of its rows (reduced over
    columns) and of the later rows (reduced over its rows), merged online as in a streaming
    log-sum-exp. Backward, with :math:`P_{ij} = w_i \exp(z_i \cdot z_j - \operatorname{lse}_i)`,
    is :math:`\partial / \partial z = (P + P^\top) z`; for a pair i < j in different blocks the
    block holds :math:`G_{ij} = P_{ij} + P_{ji}`, which goes to row i times :math:`z_j` and to row
    j times :math:`z_i`. Half the logits and two exponentials each, where the untiled path
    computes them all: tiling costs little time.
    """

    @staticmethod
    def forward(ctx, z: Tensor, weight: Tensor | None, block: int) -> Tensor:
        """``z`` [M, D] scaled rows; ``weight`` [M] (None: all 1) of each row's log-denominator."""
        m = z.shape[0]
        top = z.new_full((m,), float("-inf"))
        total = z.new_zeros(m)
        for s in range(0, m, block):
            e = min(s + block, m)
            logits = z[s:e] @ z[s:].T  # [B, M - s]
            logits[:, : e - s].fill_diagonal_(float("-inf"))
            if e < m:  # the later rows' share first, on a copy: the rows' share consumes the block
                _merge_lse(top[e:], total[e:], logits[:, e - s :].clone(), dim=0)
            _merge_lse(top[s:e], total[s:e], logits, dim=1)
        lse = top + total.log()
        ctx.save_for_backward(z, weight, lse)
        ctx.block = block
        return lse.sum() if weight is None else torch.dot(weight, lse)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("the tiled losses have no second derivatives (create_graph=True); "
                               "pass block_size=None on a small batch")
        z, weight, lse = ctx.saved_tensors
        m, block = z.shape[0], ctx.block
        # exp(l - lse + log w) = w exp(l - lse): a weight of 0 gives shift +inf and exp(-inf) = 0.
        shift = lse if weight is None else lse - weight.log()
        grad_z = torch.zeros_like(z)
        for s in range(0, m, block):
            e = min(s + block, m)
            logits = z[s:e] @ z[s:].T
            logits[:, : e - s].fill_diagonal_(float("-inf"))
            g = (logits - shift[s:e, None]).exp_()  # P_ij for the block's rows
            if e < m:  # plus P_ji for the later rows, in place of their logits
                g[:, e - s :] += logits[:, e - s :].sub_(shift[None, e:]).exp_()
            del logits
            grad_z[s:e].addmm_(g, z[s:])
            grad_z[s:].addmm_(g.T, z[s:e])
        return grad_z.mul_(grad), None, None


class _CrossLSE(torch.autograd.Function):
    r""":math:`\sum_i w_i \operatorname{lse}_i` for rows ``r`` [M, D] against columns ``c`` [C, D], tiled.

    :math:`\operatorname{lse}_i = \log(e^{x_i} + \sum_j \exp(r_i \cdot c_j))`, where the optional
    ``extra`` [M] is one more logit per row (InfoNCE's positive against a queue), and with
    ``offset`` set, column ``offset + i`` is left out of row i's sum (the anchor itself, when the
    rows are one rank's part of gathered columns). Each block of rows meets all columns at once;
    backward recomputes the block's softmax :math:`P` and adds :math:`P c` to the rows' gradient
    and :math:`P^\top r` to the columns' (only when the columns need one).
    """

    @staticmethod
    def forward(ctx, rows: Tensor, cols: Tensor, extra: Tensor | None, weight: Tensor | None,
                offset: int | None, block: int) -> Tensor:
        lse = rows.new_empty(rows.shape[0])
        for s in range(0, rows.shape[0], block):
            e = min(s + block, rows.shape[0])
            lse[s:e] = torch.logsumexp(_CrossLSE.logits(rows, cols, offset, s, e), dim=1)
        if extra is not None:
            lse = torch.logaddexp(lse, extra)
        ctx.save_for_backward(rows, cols, extra, weight, lse)
        ctx.offset, ctx.block = offset, block
        return lse.sum() if weight is None else torch.dot(weight, lse)

    @staticmethod
    def logits(rows: Tensor, cols: Tensor, offset: int | None, s: int, e: int) -> Tensor:
        logits = rows[s:e] @ cols.T  # [B, C]
        if offset is not None:
            logits[:, offset + s : offset + e].fill_diagonal_(float("-inf"))
        return logits

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("the tiled losses have no second derivatives (create_graph=True); "
                               "pass block_size=None on a small batch")
        rows, cols, extra, weight, lse = ctx.saved_tensors
        # exp(l - lse + log w) = w exp(l - lse): a weight of 0 gives shift +inf and exp(-inf) = 0.
        shift = lse if weight is None else lse - weight.log()
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_cols = torch.zeros_like(cols) if ctx.needs_input_grad[1] else None
        for s in range(0, rows.shape[0], ctx.block):
            e = min(s + ctx.block, rows.shape[0])
            prob = _CrossLSE.logits(rows, cols, ctx.offset, s, e).sub_(shift[s:e, None]).exp_()
            if grad_rows is not None:
                torch.mm(prob, cols, out=grad_rows[s:e])
            if grad_cols is not None:
                grad_cols.addmm_(prob.T, rows[s:e])
        grad_extra = (extra - shift).exp_().mul_(grad) if ctx.needs_input_grad[2] else None
        return (None if grad_rows is None else grad_rows.mul_(grad),
                None if grad_cols is None else grad_cols.mul_(grad), grad_extra, None, None, None)


# ----------------------------------------------------------------------------- negatives from every process


def _world(gather: bool) -> tuple[int, int] | None:
    """(rank, world size) if ``gather`` and torch.distributed runs more than one process, else None."""
    if not gather or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    size = torch.distributed.get_world_size()
    return (torch.distributed.get_rank(), size) if size > 1 else None


def _all_gather(x: Tensor, size: int) -> Tensor:
    """``[n, ...]`` from every rank, concatenated in rank order: ``[size * n, ...]``, no gradient."""
    parts = [torch.empty_like(x) for _ in range(size)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherRows(torch.autograd.Function):
    """All ranks' rows ``[size * n, D]``, with the gradient that makes the gather transparent.

    Every rank's loss depends on every rank's rows, so the gradient of one rank's rows is the sum
    over ranks of what each loss sends them: backward all-reduces (sums) the incoming gradient
    and returns this rank's slice. (Returning only the local gradient, as a plain ``all_gather``
    does, drops the other ranks' share: the bug of pytorch#120386 and sthalles/SimCLR#59.)
    """

    @staticmethod
    def forward(ctx, x: Tensor, rank: int, size: int) -> Tensor:
        ctx.rank, ctx.n = rank, x.shape[0]
        return _all_gather(x, size)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None


def _gather_rows(x: Tensor, world: tuple[int, int]) -> Tensor:
    rank, size = world
    sizes = _all_gather(torch.tensor([x.shape[0]], device=x.device), size)
    if bool((sizes != x.shape[0]).any()):
        raise ValueError(f"gather_distributed needs the same batch size on every process, got {sizes.tolist()} "
                         "(use drop_last=True in the DataLoader or DistributedSampler)")
    return _GatherRows.apply(x, rank, size) if x.requires_grad else _all_gather(x, size)


def _global_mean(share: Tensor, world: tuple[int, int] | None) -> Tensor:
    """The loss returned on every rank from this rank's ``share`` of the whole batch's loss.

    The shares sum to the loss on the whole batch. DDP averages gradients over ``size`` ranks,
    so the differentiable part is ``size * share``: the averaged gradient is then the whole
    batch's. Its value is replaced by the whole batch's loss (one all-reduce of a number), so
    that every rank reports the loss one process would have computed.
    """
    if world is None:
        return share
    scaled = share * world[1]
    total = share.detach().clone()
    torch.distributed.all_reduce(total)
    return scaled + (total - scaled.detach())


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
    *,
    block_size: int | None = None,
    gather_distributed: bool = False,
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
    block_size : int, optional
        L_out only. Compute forward and backward over blocks of this many rows, recomputing each
        block's logits in backward: memory O(M D + M B) instead of O(M^2) for M = V * N rows,
        same value and gradient. None (default) chooses: untiled up to 2,048 rows, blocks above.
    gather_distributed : bool, default False
        L_out only. Under ``torch.distributed`` (several processes), every process's rows are
        negatives and positives (labels are gathered too; without labels only a sample's own
        views are its positives): the loss of one process on the concatenated batches (equal N
        on every rank), and under DDP the averaged gradient is that of the whole batch. With a
        ``mask``, pass this rank's rows of the whole batch's mask, shape [N, world_size * N]
        (columns in rank order). Ignored when ``torch.distributed`` is not initialized or runs
        one process.

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
    temperature = _check_positive("temperature", temperature)
    if variant not in ("out", "in"):
        raise ValueError(f'variant must be "out" or "in", got {variant!r}')
    if not isinstance(normalize, (bool, np_bool)):
        raise ValueError(f"normalize must be True or False, got {normalize!r}")
    if labels is not None and mask is not None:
        raise ValueError("pass labels or mask, not both")
    world = _world(gather_distributed)
    if variant == "in" and (block_size is not None or world is not None):
        raise ValueError('block_size and gather_distributed apply to variant="out" only')
    n = features.shape[0]
    n_cols = n * (world[1] if world else 1)  # samples the mask's columns index
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.shape != (n,):
            shape = list(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must have shape [{n}] to match features' N = {n}, got {shape}")
        if labels.is_floating_point() and not torch.isfinite(labels).all():
            raise ValueError("labels contain NaN or infinite values")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != (n, n_cols):
            shape = list(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must have shape [{n}, {n_cols}] to match features' N = {n}, got {shape}")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold only 0/1 (or False/True)")

    (features,), dtype = _to_float32(features)
    v = features.shape[1] if features.dim() == 3 else 1
    rows = v * n
    # Sample-major rows (row s * V + a is view a of sample s): a free reshape, no copy. The loss
    # is a sum over anchors, so the order of the rows does not change it.
    # Scaled by 1 / sqrt(t): every inner product below is already divided by the temperature.
    z = _scaled_rows(features.reshape(rows, -1), temperature, normalize)  # [M, D], M = V * N

    block = _auto_block(rows, rows * (world[1] if world else 1), block_size) if variant == "out" else None
    if world is not None or block is not None:
        return _result(_supcon_out_tiled(z, v, labels, mask, block, world, features), dtype, "supcon_loss")

    # Group structure at the level of samples: labels -> classes; no labels and no mask -> each
    # sample its own class (only its other views are positives).
    if mask is None:
        group, k = (torch.arange(n, device=z.device), n) if labels is None else _class_index(labels)
    if variant == "in":
        return _result(_supcon_in(z, v, group if mask is None else None, mask, features), dtype, "supcon_loss")

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
        return _result(_connected_zero(features), dtype, "supcon_loss")
    return _result(_SupConOut.apply(z, pos_mean, pos_mean_t, keep, valid), dtype, "supcon_loss")


def _supcon_out_tiled(z: Tensor, v: int, labels: Tensor | None, mask: Tensor | None, block: int | None,
                      world: tuple[int, int] | None, features: Tensor) -> Tensor:
    """L_out of :func:`supcon_loss` on scaled sample-major rows ``z`` [M, D], M = N * V: tiled, or
    with every rank's rows as columns (``world``), or both.

    L_out = (sum over anchors of lse_i - sum_i z_i . m_i) / A. The log-denominators come from
    :class:`_SelfLSE` (one process) or :class:`_CrossLSE` (this rank's rows against everyone's).
    The positive term needs no [M, M] matrix: with labels,
    sum_{i in c} z_i . (S_c - z_i) / (|c| - 1) = (S_c . S_c - sum_{i in c} |z_i|^2) / (|c| - 1)
    from the class sums S_c; with a mask, the same from sums of each sample's views.
    Autograd differentiates it, through the gather too.
    """
    m, d = z.shape
    n = m // v
    rank, size = world if world is not None else (0, 1)
    cols = z if world is None else _gather_rows(z, world)  # [size * M, D], this rank's rows from rank * M
    if mask is None:
        if labels is None:  # each sample its own class, numbered across ranks
            group = torch.arange(size * n, device=z.device)
            k = size * n
        else:
            group, k = _class_index(labels if world is None else _all_gather(labels, size))
        with torch.no_grad():
            group_rows = group.repeat_interleave(v)  # [size * M]
            class_size = torch.bincount(group, minlength=k) * v  # [K]
            weight = torch.where(class_size > 1, 1 / (class_size - 1).clamp_min(1).to(z.dtype), 0)  # [K]
            keep = (class_size > 1).index_select(0, group_rows)  # rows with a positive, all ranks
            valid = int(keep.sum())
            keep = keep[rank * m : (rank + 1) * m]
            local_rows = group_rows[rank * m : (rank + 1) * m]
        if valid == 0:
            return _connected_zero(features)
        sums = z.new_zeros(k, d).index_add(0, group_rows, cols)  # S_c over every rank's rows
        local_sums = sums if world is None else z.new_zeros(k, d).index_add(0, local_rows, z)
        local_sq = z.new_zeros(k).index_add(0, local_rows, (z * z).sum(dim=1))
        positive = torch.dot(weight, (local_sums * sums).sum(dim=1) - local_sq)
    else:
        with torch.no_grad():
            own = torch.arange(n, device=z.device)
            w = mask.to(z.dtype)  # [N, size * N], this rank's samples against all
            num_pos = w.sum(dim=1) * v - w[own, rank * n + own]  # a row is never its own positive
            w = w * torch.where(num_pos > 0, 1 / num_pos.clamp_min(1), 0)[:, None]
            keep = (num_pos > 0).repeat_interleave(v)
            count = keep.sum()
            if world is not None:
                torch.distributed.all_reduce(count)
            valid = int(count)
        if valid == 0:
            return _connected_zero(features)
        sample_sums = cols.view(size * n, v, d).sum(dim=1)  # [size * N, D]
        local_sums = z.view(n, v, d).sum(dim=1)
        local_sq = (z * z).sum(dim=1).view(n, v).sum(dim=1)
        positive = (local_sums * (w @ sample_sums)).sum() - torch.dot(w[own, rank * n + own], local_sq)
    weight_rows = None if bool(keep.all()) else keep.to(z.dtype)
    if world is None:
        lse = _SelfLSE.apply(z, weight_rows, block)
    else:
        lse = _CrossLSE.apply(z, cols, None, weight_rows, rank * m, block or m)
    return _global_mean((lse - positive) / valid, world)


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
        # Always a copy, never the caller's mask: the diagonal is cleared and the mask inverted in
        # place below. Row s * V + a holds sample s: each mask entry covers a V x V block.
        if v == 1:
            positive = mask.to(torch.bool, copy=True)
        else:
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


# ----------------------------------------------------------------------------- InfoNCE with negatives


def _info_nce_dtype(tensors: dict[str, Tensor]) -> torch.dtype:
    """The dtype InfoNCE computes in: float64 if any input is float64, else float32.

    Half-precision inputs (float16, bfloat16) are upcast: a logit of 1 / 0.01 = 100 is still a
    float16 number, but its exponential and the sums of the softmax are not.
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors.values()) else torch.float32


def info_nce_loss(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.07,
    normalize: bool = True,
    *,
    block_size: int | None = None,
    gather_distributed: bool = False,
) -> Tensor:
    r"""InfoNCE (van den Oord et al., 2018) in the form MoCo uses (He et al., 2020).

    Query i has one positive, key i, and K negatives shared by all queries:

    .. math:: \ell_i = -\log \frac{\exp(q_i \cdot k_i/\tau)}
              {\exp(q_i \cdot k_i/\tau) + \sum_{j=1}^{K} \exp(q_i \cdot n_j/\tau)}

    i.e. cross-entropy over logits ``[N, 1 + K]`` whose column 0 is the positive (target 0),
    computed in log space. With :math:`L = \operatorname{mean}_i \ell_i`, the mutual information
    between the two views satisfies :math:`I \ge \log(K + 1) - L` (notebook 07).

    Parameters
    ----------
    query : Tensor, shape [N, D]
        Anchors; the gradient flows back through them.
    key : Tensor, shape [N, D]
        Row i is the positive of query i. Gradient reaches ``key`` only if it requires one (MoCo
        computes keys under ``no_grad``).
    negatives : Tensor, shape [K, D], optional
        Negatives shared by every query, e.g. a queue (:class:`clbook.memory.FeatureQueue`) or
        rows of a memory bank. They are treated as constants: no gradient ever reaches them.
        When None, the in-batch form: the other N - 1 keys are query i's negatives (K = N - 1;
        the logits are the [N, N] matrix ``q k^T`` with the positive on the diagonal, which is the
        same cross-entropy with the columns in another order). Needs N >= 2.
    temperature : float, default 0.07
        Softmax temperature, positive (MoCo v1's value).
    normalize : bool, default True
        L2-normalize query, key and negatives first (cosine similarity). ``False`` uses raw
        inner products.
    block_size : int, optional
        Compute forward and backward over blocks of this many queries, recomputing each block's
        logits in backward: memory O((N + K) D + B K) instead of O(N K), same value and gradient.
        None (default) chooses: untiled up to 2,048^2 logits, blocks above.
    gather_distributed : bool, default False
        Under ``torch.distributed`` (several processes), the loss of one process on the
        concatenated batches (equal N on every rank), and under DDP the averaged gradient is that
        of the whole batch. In the in-batch form every rank's keys are negatives (query i's
        positive is key ``rank * N + i`` of the gathered keys); with ``negatives`` (a queue shared
        by all ranks, to which MoCo enqueues every rank's keys) nothing else needs gathering.
        Ignored when ``torch.distributed`` is not initialized or runs one process.

    Returns
    -------
    Tensor, shape []
        Mean over the N queries, in the dtype of ``query``. Float16 and bfloat16 inputs are
        computed in float32 (float64 inputs in float64) and the result is cast back.
        For random features it sits near ``ln(K + 1)``.

    Notes
    -----
    This is the loss of lightly's ``NTXentLoss(memory_bank_size=(K, D))`` on ``(out0, out1)``,
    with ``negatives`` the K rows that lightly's bank held *before* that call (lightly enqueues
    ``out1`` afterwards). Without negatives it differs from :func:`nt_xent_loss`: NT-Xent makes
    every one of the 2N views an anchor and also uses the other queries as negatives.
    """
    _check_embeddings("query", query)
    _check_embeddings("key", key)
    _check_same_shape(("query", "key"), (query, key))
    _check_positive("temperature", temperature)
    inputs = {"query": query, "key": key}
    if negatives is not None:
        _check_embeddings("negatives", negatives)
        if negatives.shape[1] != key.shape[1]:
            raise ValueError(f"negatives must have the same D as key: key {list(key.shape)}, "
                             f"negatives {list(negatives.shape)}")
        inputs["negatives"] = negatives
    elif query.shape[0] < 2:
        raise ValueError("the in-batch form (negatives=None) needs N >= 2 queries: with one, there is no negative")
    dtype = _info_nce_dtype(inputs)

    def prepared(x: Tensor) -> Tensor:
        x = x.to(dtype)
        return F.normalize(x, dim=1) if normalize else x

    # The temperature is folded into the queries: one [N, D] pass instead of one over [N, 1 + K].
    q = prepared(query) / temperature  # [N, D]
    k = prepared(key)  # [N, D]
    n = q.shape[0]
    world = _world(gather_distributed)
    if negatives is None:
        cols = k if world is None else _gather_rows(k, world)  # every rank's keys, this rank's from rank * N
    else:
        cols = prepared(negatives.detach())  # [K, D], a constant
    block = _auto_block(n, cols.shape[0] + (negatives is not None), block_size)
    if world is not None or block is not None:
        # Tiled: the log-denominators of the queries against the columns (the positive key is one of
        # them in the in-batch form, an extra logit per row with a queue), minus the positive logits.
        positive = (q * k).sum(dim=1)  # [N]
        extra = None if negatives is None else positive
        lse = _CrossLSE.apply(q, cols, extra, None, None, block or n)
        share = (lse - positive.sum()) / (n * (world[1] if world else 1))
        return _result(_global_mean(share, world), query.dtype, "info_nce_loss")
    if negatives is None:
        logits = q @ k.T  # [N, N], positive of row i in column i
        target = torch.arange(q.shape[0], device=q.device)
    else:
        neg = prepared(negatives.detach())  # [K, D], a constant
        positive = (q * k).sum(dim=1, keepdim=True)  # [N, 1]
        logits = torch.cat([positive, q @ neg.T], dim=1)  # [N, 1 + K]
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return _result(F.cross_entropy(logits, target), query.dtype, "info_nce_loss")


# ----------------------------------------------------------------------------- losses without negatives


def _check_prediction_target(p: Tensor, z: Tensor) -> None:
    _check_embeddings("p", p)
    _check_embeddings("z", z)
    _check_same_shape(("p", "z"), (p, z))


def negative_cosine_loss(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    r"""SimSiam's :math:`D(p, \mathrm{sg}(z)) = -\operatorname{mean}_i \cos(p_i, z_i)` (Chen and He, 2021).

    The prediction ``p`` of one view is pulled towards the projection ``z`` of the other view,
    which is treated as a constant target (stop-gradient). There are no negatives, so a constant
    encoder reaches the minimum, -1; the stop-gradient (with a predictor) is what keeps SimSiam
    from getting there. The symmetric loss of a pair of views is
    ``negative_cosine_loss(p1, z2) / 2 + negative_cosine_loss(p2, z1) / 2``.

    Parameters
    ----------
    p : Tensor, shape [N, D]
        Predictions (predictor outputs) for one view. Need not be normalized.
    z : Tensor, shape [N, D]
        Targets: projections of the other view, row i the partner of ``p``'s row i.
    stop_gradient : bool, default True
        Detach ``z``. ``False`` lets the gradient flow into the target too: the ablation under
        which SimSiam collapses.

    Returns
    -------
    Tensor, shape []
        In [-1, 1]; -1 when every prediction points the same way as its target. A zero row has
        cosine 0 with everything (no NaN).
    """
    _check_prediction_target(p, z)
    (p, z), dtype = _to_float32(p, z)
    if stop_gradient:
        z = z.detach()
    return _result(-F.cosine_similarity(p, z, dim=1).mean(), dtype, "negative_cosine_loss")


def normalized_mse_loss(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    r"""BYOL's loss: squared distance of the L2-normalized rows, :math:`\lVert \hat p - \hat z \rVert^2 = 2 - 2\cos(p, z)`.

    Grill et al. (2020) compare the online network's prediction of one view with the target
    network's projection of the other view. For unit vectors the squared distance is
    ``2 - 2 cos``, so this is :func:`negative_cosine_loss` times 2 plus 2: same gradients up to
    the factor 2, values in [0, 4] instead of [-1, 1].

    Parameters
    ----------
    p : Tensor, shape [N, D]
        Online predictions for one view.
    z : Tensor, shape [N, D]
        Target projections of the other view (the target network needs no gradient anyway).
    stop_gradient : bool, default True
        Detach ``z``, as BYOL does.

    Returns
    -------
    Tensor, shape []
        Mean over the N rows of ``2 - 2 cos(p_i, z_i)``, in [0, 4]; 0 when every pair points the
        same way. A zero row is left at zero by the normalization (distance 1 to any unit vector).
    """
    _check_prediction_target(p, z)
    (p, z), dtype = _to_float32(p, z)
    if stop_gradient:
        z = z.detach()
    # The distance of the unit vectors, not 2 - 2 cos: identical rows then give exactly 0.
    loss = (F.normalize(p, dim=1) - F.normalize(z, dim=1)).pow(2).sum(dim=1).mean()
    return _result(loss, dtype, "normalized_mse_loss")


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
    temperature = _check_positive("temperature", temperature)
    if bool((q1 < 0).any()) or bool((q2 < 0).any()):
        raise ValueError("codes q1 and q2 must be non-negative (assignments, not scores)")
    (scores1, scores2), dtype = _to_float32(scores1, scores2)

    def predict(scores: Tensor, code: Tensor) -> Tensor:
        log_p = F.log_softmax(scores / temperature, dim=1)
        return -(code.detach().to(log_p.dtype) * log_p).sum(dim=1).mean()

    return _result(0.5 * (predict(scores1, q2) + predict(scores2, q1)), dtype, "swav_loss")


# ----------------------------------------------------------------------------- nn.Module wrappers


class MarginContrastiveLoss(nn.Module):
    """Module form of :func:`margin_contrastive_loss` (``y = 0`` similar, ``y = 1`` dissimilar)."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = _check_positive("margin", margin)

    def forward(self, x1: Tensor, x2: Tensor, y: Tensor) -> Tensor:
        return margin_contrastive_loss(x1, x2, y, self.margin)


class TripletMarginLoss(nn.Module):
    """Module form of :func:`triplet_margin_loss`."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = _check_positive("margin", margin)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return triplet_margin_loss(anchor, positive, negative, self.margin)


def _check_block_size(block_size: int | None) -> int | None:
    return None if block_size is None else _auto_block(1, 1, block_size)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss`."""

    def __init__(self, temperature: float = 0.5, *, block_size: int | None = None,
                 gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)
        self.block_size, self.gather_distributed = _check_block_size(block_size), gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent_loss(z1, z2, self.temperature, block_size=self.block_size,
                            gather_distributed=self.gather_distributed)


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss`."""

    def __init__(self, temperature: float = 0.1, normalize: bool = True, variant: str = "out", *,
                 block_size: int | None = None, gather_distributed: bool = False) -> None:
        super().__init__()
        temperature = _check_positive("temperature", temperature)
        if variant not in ("out", "in"):
            raise ValueError(f'variant must be "out" or "in", got {variant!r}')
        if variant == "in" and (block_size is not None or gather_distributed):
            raise ValueError('block_size and gather_distributed apply to variant="out" only')
        self.temperature, self.normalize, self.variant = temperature, normalize, variant
        self.block_size, self.gather_distributed = _check_block_size(block_size), gather_distributed

    def forward(self, features: Tensor, labels: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        return supcon_loss(features, labels, mask, self.temperature, self.normalize, self.variant,
                           block_size=self.block_size, gather_distributed=self.gather_distributed)



class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce_loss`: ``loss(query, key, negatives=None)``."""

    def __init__(self, temperature: float = 0.07, normalize: bool = True, *, block_size: int | None = None,
                 gather_distributed: bool = False) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature, self.normalize = temperature, normalize
        self.block_size, self.gather_distributed = _check_block_size(block_size), gather_distributed

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> Tensor:
        return info_nce_loss(query, key, negatives, self.temperature, self.normalize, block_size=self.block_size,
                             gather_distributed=self.gather_distributed)
