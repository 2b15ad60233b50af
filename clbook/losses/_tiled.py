"""Tiled log-denominators: the softmax losses at any batch size, in O(M D + M B) memory.

Every softmax loss here is "log-denominator minus positive logit": with rows already divided by
sqrt(t), L = (sum_i w_i lse_i - positive term) / A. The positive term is O(M D) and left to
autograd; the log-denominators lse_i = log sum_j exp(z_i . z_j) need all M^2 logits. The two
Functions below compute them over blocks of B rows and recompute each block's logits in
backward instead of saving an [M, M] softmax, so memory is O(M D + M B) (the idea of GradCache
and Inf-CL) where the untiled path's is O(M^2).

Private. :func:`_auto_block` decides when the losses tile (it reads the thresholds below at call
time, so patching ``clbook.losses._tiled._UNTILED_MAX_LOGITS`` changes the choice); the same
Functions serve ``gather_distributed``, whose columns are every process's rows.
"""

from __future__ import annotations

import numbers

import torch
import torch.distributed  # noqa: F401  (torch.distributed.* below)
from torch import Tensor

from clbook.distributed import all_gather_rows, gather_rows, global_mean
from clbook.losses._checks import _class_index, _connected_zero

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


def _check_block_size(block_size: int | None) -> int | None:
    """A module's ``block_size`` argument, checked when the module is built."""
    return None if block_size is None else _auto_block(1, 1, block_size)


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


# ----------------------------------------------------------------------------- SupCon's L_out, tiled or gathered


def _supcon_out_tiled(z: Tensor, v: int, labels: Tensor | None, mask: Tensor | None, block: int | None,
                      world: tuple[int, int] | None, features: Tensor) -> Tensor:
    """L_out of :func:`clbook.losses.supcon_loss` on scaled sample-major rows ``z`` [M, D], M = N * V:
    tiled, or with every rank's rows as columns (``world``), or both.

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
    cols = z if world is None else gather_rows(z, world)  # [size * M, D], this rank's rows from rank * M
    if mask is None:
        if labels is None:  # each sample its own class, numbered across ranks
            group = torch.arange(size * n, device=z.device)
            k = size * n
        else:
            group, k = _class_index(labels if world is None else all_gather_rows(labels))
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
    return global_mean((lse - positive) / valid, world)
