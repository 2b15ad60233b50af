r"""SupCon, the supervised contrastive loss (Khosla et al., 2020); self-supervised when unlabelled.

.. math::
    L^{out}_i = -\frac{1}{|P(i)|}\sum_{p \in P(i)} \log \frac{\exp(z_i \cdot z_p/\tau)}
                {\sum_{a \ne i}\exp(z_i \cdot z_a/\tau)}
    \qquad
    L^{in}_i = -\log \frac{1}{|P(i)|}\sum_{p \in P(i)} \frac{\exp(z_i \cdot z_p/\tau)}
                {\sum_{a \ne i}\exp(z_i \cdot z_a/\tau)}

Shapes: ``features`` [N, D] or [N, V, D] (V views of N samples), flattened to M = N * V
sample-major rows (row ``s * V + a`` is view a of sample s); ``labels`` [N] or ``mask`` [N, N]
say which samples are positives of each other. Every row is an anchor; P(i) are the *other* rows
it shares a class with; the loss is the mean over the anchors with at least one positive.

Read top to bottom: :func:`supcon_loss` checks its input and dispatches; :func:`_supcon_in` and
:func:`_supcon_out` below it are the plain forms on one ``[M, M]`` matrix of logits. L_out is a
log-denominator minus one inner product, :math:`L^{out}_i = \operatorname{lse}_i - z_i \cdot m_i`
with :math:`m_i` the mean of i's positives, and :class:`_SupConOut` computes exactly that with
its gradient written out. Past 2,048 rows, with ``block_size=`` or ``gather_distributed=``, L_out
is computed by ``_supcon_out_tiled`` (:mod:`clbook.losses._tiled`) without the ``[M, M]`` matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from numpy import bool_ as np_bool
from torch import Tensor, nn

from clbook.distributed import world_info
from clbook.losses._checks import (_check_embeddings, _check_positive, _class_index, _connected_zero,
                                   _masked_logits, _result, _scaled_rows, _to_float32)
from clbook.losses._tiled import _auto_block, _check_block_size, _supcon_out_tiled

__all__ = ["supcon_loss", "SupConLoss"]


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    variant: str = "out",
    *,
    base_temperature: float | None = None,
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
    base_temperature : float, optional
        If given, the loss is multiplied by ``temperature / base_temperature``, as in the
        SupContrast code (its ``base_temperature``, 0.07 there). With respect to the similarities
        :math:`s`, the gradient of a softmax over :math:`s/\tau` carries a factor :math:`1/\tau`
        (notebook 02, section 7.2); the factor turns it into ``1 / base_temperature``. The lecture
        notes' ``scale_by_temperature=True`` is ``base_temperature=1``: their loss is
        ``supcon_loss(f, labels, temperature=t, normalize=False, base_temperature=1.0)``.
        None (default): no factor, the loss of Khosla et al.'s formula.
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

    The lecture notes' ``SupConLoss`` (SupContrast's early code with the normalization removed)
    computes the same L_out on raw inner products, but not the same way: it subtracts each row's
    maximum *including the diagonal* :math:`\lVert f_i \rVert^2/\tau`, exponentiates, then masks
    the diagonal out. On unnormalized features the diagonal is usually the row's largest logit by
    far; once features are long enough that :math:`(\lVert f_i \rVert^2 - f_i \cdot f_j)/\tau`
    exceeds about 104 for every j (where float32's ``exp`` underflows), every remaining term is 0,
    the denominator is 0, ``log(0) = -inf``, and the masked sum turns ``inf * 0`` into NaN. This
    function takes the log-sum-exp over :math:`a \ne i` only (the diagonal set to :math:`-\infty`
    first), which stays finite; notebook 02 (section 5, underflow and the diagonal) explains why.
    Wherever the notes' code is finite, the two agree in value and gradient
    (``tests/test_notes_loss.py``).
    """
    _check_embeddings("features", features, rank=(2, 3))
    temperature = _check_positive("temperature", temperature)
    if variant not in ("out", "in"):
        raise ValueError(f'variant must be "out" or "in", got {variant!r}')
    if not isinstance(normalize, (bool, np_bool)):
        raise ValueError(f"normalize must be True or False, got {normalize!r}")
    if base_temperature is not None:
        base_temperature = _check_positive("base_temperature", base_temperature)
    if labels is not None and mask is not None:
        raise ValueError("pass labels or mask, not both")
    world = world_info(gather_distributed)
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

    # Which path. L_in: always the plain one, autograd through one [M, M] log-softmax. L_out: the
    # plain one (one [M, M] softmax, gradient written out) while the logits are small, up to 2,048
    # rows (_tiled._UNTILED_MAX_LOGITS = 2,048^2 logits); blocks past it, where memory would grow as
    # M^2 (measured: see _tiled), or whenever block_size is given; every process's rows as columns
    # under gather_distributed.
    if variant == "in":
        group = _sample_groups(labels, n, z.device)[0] if mask is None else None
        loss = _supcon_in(z, v, group, mask, features)
    else:
        block = _auto_block(rows, rows * (world[1] if world else 1), block_size)
        if world is None and block is None:
            loss = _supcon_out(z, v, labels, mask, features)
        else:
            loss = _supcon_out_tiled(z, v, labels, mask, block, world, features)
    if base_temperature is not None:
        # A scalar factor on the mean: every path above (plain, tiled, gathered) scales alike.
        loss = loss * (temperature / base_temperature)
    return _result(loss, dtype, "supcon_loss")


def _sample_groups(labels: Tensor | None, n: int, device: torch.device) -> tuple[Tensor, int]:
    """(class index ``[N]``, number of classes K): labels -> classes; no labels -> each sample its own
    class (only its other views are positives)."""
    return (torch.arange(n, device=device), n) if labels is None else _class_index(labels)


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


def _supcon_out(z: Tensor, v: int, labels: Tensor | None, mask: Tensor | None, features: Tensor) -> Tensor:
    """L_out of :func:`supcon_loss` on sample-major scaled rows ``z`` [N * V, D], on one [M, M] softmax.

    The positive means m = Q z are computed here (no [M, M] mask with labels); :class:`_SupConOut`
    takes the log-denominators from the softmax and supplies the gradient.
    """
    n = len(z) // v
    rows = len(z)
    # Everything about positives is bookkeeping on detached rows: _SupConOut's backward supplies
    # the gradient of the positive term itself.
    with torch.no_grad():
        if mask is None:
            group, k = _sample_groups(labels, n, z.device)
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


class SupConLoss(nn.Module):
    """Module form of :func:`supcon_loss`."""

    def __init__(self, temperature: float = 0.1, normalize: bool = True, variant: str = "out", *,
                 base_temperature: float | None = None, block_size: int | None = None,
                 gather_distributed: bool = False) -> None:
        super().__init__()
        temperature = _check_positive("temperature", temperature)
        if base_temperature is not None:
            base_temperature = _check_positive("base_temperature", base_temperature)
        if variant not in ("out", "in"):
            raise ValueError(f'variant must be "out" or "in", got {variant!r}')
        if variant == "in" and (block_size is not None or gather_distributed):
            raise ValueError('block_size and gather_distributed apply to variant="out" only')
        self.temperature, self.normalize, self.variant = temperature, normalize, variant
        self.base_temperature = base_temperature
        self.block_size, self.gather_distributed = _check_block_size(block_size), gather_distributed

    def forward(self, features: Tensor, labels: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        return supcon_loss(features, labels, mask, self.temperature, self.normalize, self.variant,
                           base_temperature=self.base_temperature, block_size=self.block_size,
                           gather_distributed=self.gather_distributed)
