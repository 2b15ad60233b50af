"""MoCo (He et al., 2020): a momentum key encoder and a queue of earlier keys as negatives."""

from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.checks import check_int, check_probability, check_real
from clbook.distributed import all_gather_rows
from clbook.losses import info_nce_loss
from clbook.memory import FeatureQueue, momentum_update
from clbook.methods.base import Method, output_dim

__all__ = ["MoCo"]


class MoCo(Method):
    """MoCo: queries from the trained networks, keys from their momentum copies, a queue of old keys.

    Per step: queries ``q = head(encoder(view 1))`` (trained), keys ``k = key_head(key_encoder(view 2))``
    under ``no_grad``; loss :func:`clbook.losses.info_nce_loss` ``(q, k, negatives=queue)``. After
    the optimizer step the key networks move towards the online ones,
    ``theta_k <- m theta_k + (1 - m) theta_q`` (:func:`clbook.memory.momentum_update`), and the
    batch's keys are enqueued in place of the oldest ones. This is MoCo v1's asymmetric loss with
    v2's projection head.

    Several processes: the queries of every process meet the keys of every process, and every
    process enqueues the whole global batch's keys in rank order, so all queues hold the same
    negatives (and, since the online networks stay identical, so do the key networks).

    Batch norm: MoCo shuffles the samples across GPUs before the key encoder's batch norm, so
    that a query and its key never share batch statistics (which would let the network find its
    positive through them). clbook does not shuffle: the course's encoders and the default head
    have no batch norm. A head with batch norm under several processes should use
    ``--sync-batchnorm`` (statistics over the global batch, as MoCo v3 does); with one process the
    statistics are the batch's, and the leak is possible.

    Parameters
    ----------
    temperature : float, default 0.2
    queue_size : int, default 4096
        Negatives kept in the :class:`clbook.memory.FeatureQueue`. Until the queue holds a first
        batch (the very first step), the other keys of the batch are the negatives.
    momentum : float in [0, 1], default 0.99
        ``m``. With 0 the key networks are copies of the online ones after every step.

    Logged per epoch (``History.metrics``): ``pos_cos``, the mean cosine between a query and its
    key, and ``neg_cos``, between a query and the queued negatives.
    """

    def __init__(self, temperature: float = 0.2, queue_size: int = 4096, momentum: float = 0.99) -> None:
        super().__init__()
        self.momentum = check_probability("momentum", momentum)
        self.queue_size = check_int("queue_size", queue_size, 1)
        self.temperature = check_real("temperature", temperature)
        self.key_encoder: nn.Module | None = None
        self.key_head: nn.Module | None = None
        self.queue: FeatureQueue | None = None  # built in setup, when the head's output size is known
        self._keys: Tensor | None = None
        self._sums = torch.zeros(3)

    @classmethod
    def check_batch(cls, batch_size: int, options: dict) -> None:
        queue_size = options.get("queue_size", inspect.signature(cls).parameters["queue_size"].default)
        if queue_size < batch_size:  # one enqueue would overwrite keys of its own batch
            raise ValueError(f"queue_size must be at least the global batch ({batch_size}), got {queue_size}")

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        # Copies start equal to the online networks and are never trained by the optimizer.
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(head).requires_grad_(False)
        self.queue = FeatureQueue(self.queue_size, output_dim(head))

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._sums = torch.zeros(3)  # sum of pos_cos, sum of neg_cos, batches

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if self.key_encoder is None:
            raise RuntimeError("MoCo.setup(encoder, head) must run before loss()")
        q = head(encoder(views[0]))  # [B, D]
        with torch.no_grad():
            self.key_encoder.train(encoder.training)
            self.key_head.train(head.training)
            k = F.normalize(self.key_head(self.key_encoder(views[1])), dim=1)  # [B, D], constants
        negatives = self.queue.features() if len(self.queue) else None
        self._keys = k
        with torch.no_grad():
            qn = F.normalize(q.detach().float(), dim=1)
            pos = (qn * k.float()).sum(1).mean()
            neg = (qn @ negatives.float().mean(0)).mean() if negatives is not None else torch.tensor(0.0)
            self._sums += torch.stack([pos.cpu(), neg.cpu(), torch.tensor(1.0)])
        return info_nce_loss(q, k, negatives, self.temperature, gather_distributed=self.gather)

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        momentum_update(self.key_encoder, encoder, self.momentum)
        momentum_update(self.key_head, head, self.momentum)
        # Every process enqueues the global batch's keys, in rank order: one queue everywhere.
        self.queue.enqueue(all_gather_rows(self._keys) if self.gather else self._keys)
        self._keys = None

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        n = max(float(self._sums[2]), 1.0)
        return {"pos_cos": float(self._sums[0]) / n, "neg_cos": float(self._sums[1]) / n}
