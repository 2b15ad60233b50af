"""What every pre-training method is: the hooks the training loop calls, and the recipe it trains with.

:func:`clbook.training.pretrain` (one process, in a notebook) and ``python -m clbook pretrain``
(one process or several under ``torchrun``) run every method through the same per-step code,
:func:`clbook.training.train_step`::

    method.setup(encoder, head)            # once: copies, queues, predictors
    for epoch in 1..epochs:
        method.start_epoch(epoch, epochs)
        for each batch (indices idx, inputs xb):
            views = [augment(xb), augment(xb)]            # method.n_views of them
            loss = method.loss(encoder, head, views, y[idx] or None, idx)
            loss.backward()                               # several processes: averaged here
            method.before_step(step, total)               # e.g. drop a gradient
            optimizer.step()                              # encoder, head, method's own
            method.after_step(encoder, head, step, total) # e.g. momentum update, enqueue
        history.metrics += method.end_epoch(encoder, head)  # figures of the epoch, by name

A method is an ``nn.Module`` so that its state (a queue, a key encoder) follows ``.to(device)`` and
appears in ``state_dict()``. Parameters of copies that must not be trained (a momentum encoder)
have ``requires_grad=False``; :meth:`Method.trainable_parameters` leaves them out.

Several processes: the loop sets ``method.gather = True``. A method then passes
``gather_distributed=True`` to its contrastive loss (every process's embeddings become negatives
for every other's) and shares what must be global (MoCo's queue, SwAV's Sinkhorn codes). Losses
that are a mean over the batch's own rows (SimSiam, BYOL) need nothing: averaging the processes'
gradients is the gradient of the global mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["Method", "LossMethod", "Recipe", "output_dim"]


class Method(nn.Module):
    """Base class of a pre-training method run by :func:`clbook.training.pretrain`.

    Attributes
    ----------
    name : str
        Shown in the progress bar; set by the registry (:data:`clbook.methods.REGISTRY`), the only
        place a method's name is written.
    n_views : int
        Augmented views per sample that the loop passes to :meth:`loss`.
    needs_labels : bool
        True if :meth:`loss` uses the labels (the loop refuses to run without them).
    needs_augment : bool
        True if the views must differ (the loop refuses to run without an augmentation).
    needs_negatives : bool
        True if the loss contrasts a sample with the others of its batch, so that a batch needs
        at least 2 samples per process.
    num_samples : int or None
        Size of the training set, set by the loop before :meth:`setup`.
    gather : bool
        Set by the loop: True when several processes train together.
    """

    name: str = "method"
    n_views: int = 2
    needs_labels: bool = False
    needs_augment: bool = True
    needs_negatives: bool = True

    def __init__(self) -> None:
        super().__init__()
        # Set by the loop before setup(): the number of training samples, for per-sample memories
        # (the ``index`` passed to loss() lies in [0, num_samples)), and whether processes share a batch.
        self.num_samples: int | None = None
        self.gather: bool = False

    @classmethod
    def check_batch(cls, batch_size: int, options: dict) -> None:
        """Refuse a global batch that the method with these options cannot train with (before any work).

        ``options`` are the keyword arguments the method will be built with. The base accepts any.
        """

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        """Called once before training: build what depends on the encoder (copies, predictors)."""

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        """Scalar loss of one batch.

        Parameters
        ----------
        encoder, head : nn.Module
            The online networks being trained.
        views : list of Tensor, each of shape [B, ...]
            ``n_views`` augmentations of the same B samples; row i of every view is sample i.
        y : Tensor, shape [B], or None
            Labels of the batch, when the loop was given labels.
        index : Tensor, shape [B], int64
            Positions of the batch's samples in the training set (for per-sample memories).
        """
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates besides the encoder's and the head's."""
        return [p for p in self.parameters() if p.requires_grad]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called at the start of every epoch (1-based)."""

    def before_step(self, step: int, total_steps: int) -> None:
        """Called after ``backward`` and before the optimizer step (0-based ``step``)."""

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        """Called after the optimizer step: momentum updates, enqueueing keys."""

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        """Figures to log for the epoch just finished; the loop appends them to ``History.metrics``."""
        return {}

    @staticmethod
    def project(encoder: nn.Module, head: nn.Module, views: list[Tensor]) -> Tensor:
        """Projections ``[B, V, D]`` of V views, computed as one batch of ``V * B`` rows."""
        b = views[0].shape[0]
        return head(encoder(torch.cat(views))).view(len(views), b, -1).transpose(0, 1)


class LossMethod(Method):
    """A plain loss on projections, made a method: the adapter behind ``pretrain(method=callable)``.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(z, y) -> scalar`` on projections ``z`` of shape [B, V, D] (one row per sample,
        one column per view) and labels ``y`` [B] or None.
    name : str, default "custom"
    """

    needs_augment = False

    def __init__(self, loss_fn: Callable[[Tensor, Tensor | None], Tensor], name: str = "custom") -> None:
        super().__init__()
        self.loss_fn, self.name = loss_fn, name

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        return self.loss_fn(self.project(encoder, head, views), y)


def output_dim(head: nn.Module) -> int:
    """Size of the projections ``head`` produces: the ``out_features`` of its last linear layer."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot tell the head's output size (it has no nn.Linear); pass its size to the method")
    return linears[-1].out_features


@dataclass(frozen=True)
class Recipe:
    """How the course trains a method on MNIST: the notebooks' and ``python -m clbook reproduce``'s settings.

    Attributes
    ----------
    encoder : {"cnn", "fc", "vit"}
    epochs, batch_size, lr
        Adam settings; ``epochs`` is an upper bound, the epoch is chosen on validation digits.
    augment : callable
        The views' augmentation (:data:`clbook.data.SIMCLR_AUGMENT` or ``LIGHT_AUGMENT``).
    temperature : float, optional
        For methods that take one.
    head : dict
        Options of :class:`clbook.encoders.ProjectionHead` (e.g. ``{"batchnorm": True}``).
    options : dict
        Options of the method (its constructor's keyword arguments).
    quick_epochs : int
        Epochs under ``reproduce --quick``.
    seeds : tuple of int
        Seeds of the ``reproduce`` row (three where a conclusion rests on a small gap).
    monitor : bool
        Log the collapse diagnostics every epoch (methods without negatives).
    reproduce : bool
        Whether ``python -m clbook reproduce`` has a row for it.
    """

    encoder: str
    epochs: int
    augment: Callable
    batch_size: int = 256
    lr: float = 1e-3
    temperature: float | None = None
    head: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    quick_epochs: int = 2
    seeds: tuple[int, ...] = (0,)
    monitor: bool = False
    reproduce: bool = True

    def config(self) -> dict:
        """Keyword arguments of :func:`clbook.training.pretrain` (``head`` for the projection head)."""
        cfg = dict(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if self.temperature is not None:
            cfg["temperature"] = self.temperature
        cfg["augment"] = self.augment
        if self.head:
            cfg["head"] = dict(self.head)
        if self.options:
            cfg["method_options"] = dict(self.options)
        return cfg
