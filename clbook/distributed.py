"""Several processes training together: gathering rows, averaging gradients, batch norm over the global batch.

(Lead's part; merged with the gather primitives of the losses.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["world_size", "all_gather_rows", "average_gradients", "GlobalBatchNorm1d", "convert_sync_batchnorm"]


def world_size() -> int:
    """Processes in the default group (1 when ``torch.distributed`` is not initialized)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


@torch.no_grad()
def all_gather_rows(x: Tensor) -> Tensor:
    """Every process's ``x`` ``[B, ...]`` stacked in rank order: ``[world * B, ...]``, no gradient.

    Every process must pass the same shape. With one process, ``x`` itself.
    """
    size = world_size()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def average_gradients(params: list[nn.Parameter]) -> None:
    """Replace every gradient by its mean over the processes, in place (what DDP does after backward).

    Parameters without a gradient are skipped; every process must have gradients on the same
    parameters (true when all run the same method on batches of the same size). One all-reduce
    on a flat copy of all gradients, not one per parameter.
    """
    size = world_size()
    grads = [p.grad for p in params if p.grad is not None]
    if size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
