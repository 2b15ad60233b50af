"""Rows from every process: the few ``torch.distributed`` collectives that losses and methods share.

Under ``torch.distributed`` (several processes, e.g. DDP), a loss that wants the negatives of every
process, a Sinkhorn that balances codes over the whole batch, or a batch norm that pools every
process's statistics needs the same four steps, kept here once:

* :func:`world_info` says whether to gather at all: ``(rank, world size)``, or None for one process;
* :func:`all_gather_rows` concatenates every rank's rows (a constant: no gradient);
* :func:`gather_rows` does the same with the gradient that makes the gather transparent;
* :func:`global_mean` turns this rank's share of a whole-batch loss into the loss every rank returns;
* :func:`average_gradients` averages the gradients over the processes after ``backward`` (what
  DDP does), for the training loop;
* :class:`GlobalBatchNorm1d` (and :func:`convert_sync_batchnorm`) is batch norm over the global batch.

Conventions
-----------
* ``world`` is what :func:`world_info` returns: ``(rank, size)`` with ``size > 1``. Functions that
  take it are only called when it is not None; with one process there is nothing to gather.
* Rows are concatenated in rank order: rank r's ``n`` rows are rows ``[r * n, (r + 1) * n)`` of the
  result. Every rank must hold the same number of rows.
* Collectives run on the default process group; every rank must call them, in the same order.

This module imports only torch: the losses (:mod:`clbook.losses`) and the methods build on it.
"""

from __future__ import annotations

import torch
import torch.distributed  # noqa: F401  (torch.distributed.* below)
from torch import Tensor, nn

__all__ = ["world_info", "all_gather_rows", "gather_rows", "global_mean", "average_gradients", "average_value",
           "GlobalBatchNorm1d", "convert_sync_batchnorm"]


def world_info(gather: bool) -> tuple[int, int] | None:
    """``(rank, world size)`` when ``gather`` is set and more than one process runs, else None.

    Parameters
    ----------
    gather : bool
        Whether the caller asked to use every process's rows (a loss's ``gather_distributed``).

    Returns
    -------
    tuple of (int, int) or None
        ``(rank, size)`` with ``size > 1``; None when ``gather`` is False, when
        ``torch.distributed`` is unavailable or not initialized, or when it runs one process.
        None means: compute on this process's rows alone.
    """
    if not gather or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    size = torch.distributed.get_world_size()
    return (torch.distributed.get_rank(), size) if size > 1 else None


def all_gather_rows(x: Tensor) -> Tensor:
    """Every rank's ``x``, concatenated in rank order, as a constant (no gradient).

    Parameters
    ----------
    x : Tensor, shape [n, ...]
        This rank's rows; every rank passes the same shape.

    Returns
    -------
    Tensor, shape [size * n, ...]
        Rank r's rows at ``[r * n, (r + 1) * n)``. Nothing is differentiated through it: use
        :func:`gather_rows` when the gathered rows need a gradient.
    """
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
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
        return all_gather_rows(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n], None, None


def gather_rows(x: Tensor, world: tuple[int, int]) -> Tensor:
    """Every rank's ``x``, concatenated in rank order, differentiable as if one process had them all.

    Parameters
    ----------
    x : Tensor, shape [n, ...]
        This rank's rows. ``n`` must be the same on every rank (checked: one all-gather of a number).
    world : tuple of (int, int)
        ``(rank, size)`` from :func:`world_info`.

    Returns
    -------
    Tensor, shape [size * n, ...]
        Rank r's rows at ``[r * n, (r + 1) * n)``. If ``x`` requires grad, backward sums the
        incoming gradient over all ranks (an all-reduce) and hands this rank its own slice: each
        rank's rows receive what every rank's loss sends them. Otherwise a constant, as from
        :func:`all_gather_rows`.

    Raises
    ------
    ValueError
        If the ranks hold different numbers of rows.
    """
    rank, size = world
    sizes = all_gather_rows(torch.tensor([x.shape[0]], device=x.device))
    if bool((sizes != x.shape[0]).any()):
        raise ValueError(f"gather_distributed needs the same batch size on every process, got {sizes.tolist()} "
                         "(use drop_last=True in the DataLoader or DistributedSampler)")
    return _GatherRows.apply(x, rank, size) if x.requires_grad else all_gather_rows(x)


def global_mean(share: Tensor, world: tuple[int, int] | None) -> Tensor:
    """The loss returned on every rank from this rank's ``share`` of the whole batch's loss.

    The shares sum to the loss on the whole batch. DDP averages gradients over ``size`` ranks,
    so the differentiable part is ``size * share``: the averaged gradient is then the whole
    batch's. Its value is replaced by the whole batch's loss (one all-reduce of a number), so
    that every rank reports the loss one process would have computed.

    Parameters
    ----------
    share : Tensor, shape []
        This rank's part of the whole batch's loss (the shares of all ranks sum to it).
    world : tuple of (int, int) or None
        ``(rank, size)`` from :func:`world_info`; None returns ``share`` unchanged.

    Returns
    -------
    Tensor, shape []
        The whole batch's loss as its value, with gradient ``size`` times that of ``share``.
    """
    if world is None:
        return share
    scaled = share * world[1]
    total = share.detach().clone()
    torch.distributed.all_reduce(total)
    return scaled + (total - scaled.detach())


def average_gradients(params: list[nn.Parameter]) -> None:
    """Replace every gradient by its mean over the processes, in place: what DDP does after ``backward``.

    The training loop (:func:`clbook.training.train_step`) calls this instead of wrapping the model
    in ``DistributedDataParallel``: a method may run the encoder several times per step (two
    views, a momentum copy), which DDP's one-forward-one-backward hooks do not model. One
    all-reduce on a flat copy of all gradients. Parameters without a gradient are skipped; every
    process has gradients on the same parameters (they run the same method). Nothing happens with
    one process.
    """
    world = world_info(True)
    grads = [p.grad for p in params if p.grad is not None]
    if world is None or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world[1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_value(value: Tensor) -> float:
    """The mean of a scalar over the processes (the value itself with one process).

    For logging a loss: a gathered loss is already the same on every rank, and a loss that is a
    mean over the rank's own rows (SimSiam, BYOL, SwAV) averages to the global batch's mean.
    """
    world = world_info(True)
    if world is None:
        return value.item()
    total = value.detach().reshape(1).clone()
    torch.distributed.all_reduce(total)
    return total.item() / world[1]


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """Batch norm of ``[B, C]`` rows with the statistics of the global batch (every process's rows).

    In training mode under several processes, this rank's rows are gathered with every other
    rank's (:func:`gather_rows`, so the gradient flows to every rank's rows), normalized together,
    and this rank's rows are returned: one process on the concatenated batch computes the same
    outputs, running statistics and, after the gradients are averaged, the same gradients.
    ``torch.nn.SyncBatchNorm`` does this on GPUs only; this works with gloo on the CPU too. With
    one process, or in eval mode, it is ``nn.BatchNorm1d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        world = world_info(True)
        if world is None or not self.training:
            return super().forward(x)
        rank, n = world[0], x.shape[0]
        return super().forward(gather_rows(x, world))[rank * n : (rank + 1) * n]


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm1d`` replaced by a :class:`GlobalBatchNorm1d` (weights and statistics kept).

    Changes ``module`` in place and returns it, like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d) and not isinstance(child, GlobalBatchNorm1d):
            new = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(next(iter(child.buffers()), torch.empty(0)).device)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module
