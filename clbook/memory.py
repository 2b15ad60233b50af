"""Negatives and targets that outlive a batch.

* :class:`FeatureQueue`: MoCo's first-in-first-out store of the most recent keys (He et al., 2020).
* :class:`MemoryBank`: one stored feature per training sample, updated with momentum
  (instance discrimination, Wu et al., 2018).
* :func:`momentum_update`: exponential moving average of a network's weights, shared by MoCo (a
  momentum key encoder) and BYOL (a momentum target).

Both stores are ``nn.Module`` s whose contents are buffers: they follow ``.to(device)``, appear
in ``state_dict()`` (so that a run can resume) and never carry a gradient. Stored rows are unit
vectors, since the losses compare them by cosine similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.checks import check_int, check_probability

__all__ = ["FeatureQueue", "MemoryBank", "momentum_update"]


def _check_rows(name: str, x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != dim:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape [B, {dim}], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


class FeatureQueue(nn.Module):
    """First-in-first-out store of the last ``size`` keys: MoCo's queue of negatives.

    Parameters
    ----------
    size : int
        Number of keys kept (K, MoCo's 4,096 to 65,536).
    dim : int
        Feature dimension D.
    dtype : torch.dtype, default float32
        Storage dtype; enqueued keys are converted to it.

    Notes
    -----
    The queue starts empty and :meth:`features` returns only the rows filled so far. Each
    :meth:`enqueue` overwrites the oldest rows, wrapping around the end of the storage. A batch
    larger than the queue keeps only its newest (last) ``size`` rows. The storage moves to the
    device of the keys it is given. (lightly's ``MemoryBankModule`` starts full of random unit
    vectors and, at the end of its storage, drops the part of a batch that does not fit instead of
    wrapping; when the batch size divides ``size`` the two agree once both are full.)
    """

    queue: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        size, dim = check_int("size", size, 1), check_int("dim", dim, 1)
        self.size, self.dim = size, dim
        self.register_buffer("queue", torch.zeros(size, dim, dtype=dtype))  # [K, D]
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # rows filled so far

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Store ``keys`` ``[B, D]``, L2-normalized and detached, in place of the oldest rows."""
        _check_rows("keys", keys, self.dim)
        if self.queue.device != keys.device:
            self.to(keys.device)
        keys = F.normalize(keys.detach()[-self.size :].to(self.queue.dtype), dim=1)
        b, ptr = keys.shape[0], int(self.ptr)
        first = min(b, self.size - ptr)  # rows up to the end of the storage, the rest wraps to 0
        self.queue[ptr : ptr + first] = keys[:first]
        self.queue[: b - first] = keys[first:]
        self.ptr.fill_((ptr + b) % self.size)
        self.count.fill_(min(int(self.count) + b, self.size))

    def features(self) -> Tensor:
        """The stored keys ``[n, D]``, n = ``len(self)`` <= size, in storage order; a detached copy.

        A copy, so that enqueueing later cannot change negatives that a loss has already used.
        """
        return self.queue[: int(self.count)].detach().clone()

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, filled={int(self.count)}"


class MemoryBank(nn.Module):
    r"""One stored unit vector per training sample: the memory bank of instance discrimination.

    Parameters
    ----------
    num_samples : int
        Number of training samples N; sample i owns row i.
    dim : int
        Feature dimension D.
    momentum : float in [0, 1), default 0.5
        How much of the old entry survives an update (Wu et al. use 0.5). 0 overwrites.
    generator : torch.Generator, optional
        Draws the initial random unit vectors (the global generator if None).

    Notes
    -----
    :meth:`update` sets :math:`v_i \leftarrow \operatorname{normalize}(m v_i + (1 - m) f_i)` with
    :math:`f_i` the L2-normalized new feature. Until sample i is first updated its row is a random
    unit vector, and ``seen[i]`` is False; the first update stores :math:`f_i` itself (averaging
    with a random vector would only add noise).
    """

    bank: Tensor
    seen: Tensor

    def __init__(self, num_samples: int, dim: int, momentum: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        num_samples, dim = check_int("num_samples", num_samples, 1), check_int("dim", dim, 1)
        momentum = check_probability("momentum", momentum, high_open=True)
        self.num_samples, self.dim, self.momentum = num_samples, dim, momentum
        self.register_buffer("bank", F.normalize(torch.randn(num_samples, dim, generator=generator), dim=1))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))

    def _check_indices(self, indices: Tensor) -> Tensor:
        if not isinstance(indices, Tensor) or indices.dim() != 1 or indices.is_floating_point():
            raise ValueError("indices must be a 1-d integer tensor of sample positions")
        if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < self.num_samples):
            raise ValueError(f"indices must lie in [0, {self.num_samples}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        return indices.to(self.bank.device, torch.long)

    def get(self, indices: Tensor) -> Tensor:
        """Stored rows ``[B, D]`` of the samples ``indices`` ``[B]``; a detached copy."""
        return self.bank[self._check_indices(indices)].detach().clone()

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor) -> None:
        """Move the rows of ``indices`` ``[B]`` towards ``features`` ``[B, D]`` (see Notes).

        Indices must be distinct: with duplicates the result would depend on the write order.
        """
        idx = self._check_indices(indices)
        _check_rows("features", features, self.dim)
        if features.shape[0] != idx.shape[0]:
            raise ValueError(f"features has {features.shape[0]} rows but indices has {idx.shape[0]}")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("indices must be distinct")
        f = F.normalize(features.detach().to(self.bank.device, self.bank.dtype), dim=1)
        m = torch.where(self.seen[idx], self.momentum, 0.0).to(f.dtype)[:, None]  # [B, 1]
        self.bank[idx] = F.normalize(m * self.bank[idx] + (1.0 - m) * f, dim=1)
        self.seen[idx] = True

    def negatives(self, k: int, exclude: Tensor | None = None, generator: torch.Generator | None = None,
                  seen_only: bool = False) -> Tensor:
        """``k`` stored rows ``[k, D]``, drawn uniformly without replacement among the samples not in ``exclude``.

        Parameters
        ----------
        k : int
            Number of negatives; at most ``num_samples - len(unique(exclude))``.
        exclude : Tensor, shape [B], optional
            Samples that must not be drawn (the batch's own samples: they are positives).
        generator : torch.Generator, optional
            CPU generator for the draw (the global one if None).
        seen_only : bool, default False
            Draw only rows that have been updated at least once (never a random initial vector).
            Then fewer than ``k`` rows are returned, possibly none, while fewer are available.

        Returns
        -------
        Tensor, shape [k, D] (or [n, D], n < k, with ``seen_only``)
            A detached copy.
        """
        k = check_int("k", k, 1)
        allowed = self.seen.cpu().clone() if seen_only else torch.ones(self.num_samples, dtype=torch.bool)
        if exclude is not None:
            allowed[self._check_indices(exclude).cpu()] = False
        pool = allowed.nonzero().squeeze(1)  # [n_allowed]
        if seen_only:
            k = min(k, pool.numel())
        elif k > pool.numel():
            raise ValueError(f"k = {k} negatives requested but only {pool.numel()} samples are not excluded")
        pick = pool[torch.randperm(pool.numel(), generator=generator)[:k]]
        return self.bank[pick.to(self.bank.device)].detach().clone()

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, dim={self.dim}, momentum={self.momentum}"


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, m: float) -> None:
    r"""Exponential moving average of weights, in place: :math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_o`.

    Parameters
    ----------
    target : nn.Module
        The slow copy (MoCo's key encoder, BYOL's target network); updated in place.
    online : nn.Module
        The network trained by gradient descent; only read.
    m : float in [0, 1]
        Momentum. ``m = 0`` copies ``online`` into ``target``; ``m = 1`` leaves ``target`` as it is.

    Buffers (e.g. BatchNorm's running statistics) are copied, not averaged. Raises ``ValueError``
    if the two modules do not have the same parameter and buffer names and shapes.
    """
    m = check_probability("momentum m", m)  # a 0-d tensor too, e.g. a scheduled momentum; NaN fails
    t_params, o_params = dict(target.named_parameters()), dict(online.named_parameters())
    t_bufs, o_bufs = dict(target.named_buffers()), dict(online.named_buffers())
    for kind, t, o in (("parameter", t_params, o_params), ("buffer", t_bufs, o_bufs)):
        if t.keys() != o.keys():
            missing, extra = sorted(o.keys() - t.keys()), sorted(t.keys() - o.keys())
            raise ValueError(f"target and online differ in {kind} names: only in online {missing}, "
                             f"only in target {extra}")
        for name in t:
            if t[name].shape != o[name].shape:
                raise ValueError(f"{kind} {name!r} has shape {list(t[name].shape)} in target but "
                                 f"{list(o[name].shape)} in online")
    for name, p in t_params.items():
        p.mul_(m).add_(o_params[name].detach(), alpha=1.0 - m)
    for name, b in t_bufs.items():
        b.copy_(o_bufs[name])
