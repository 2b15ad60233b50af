"""Pre-training methods that are more than a loss on projections.

SupCon and SimCLR need only a loss on ``head(encoder(views))``, and :func:`clbook.training.pretrain`
takes them by name. MoCo, a memory bank, SimSiam, BYOL and SwAV also own state of their own: a
key (momentum) encoder, a queue or bank of features, a predictor, prototypes. Each of those is a
:class:`Method` here, one class per method (as in lightly's method modules), and ``pretrain``
runs every one of them through the same loop, with the same progress bar, validation-chosen epoch
and history.

What ``pretrain`` does with a method, step by step::

    method.setup(encoder, head)                 # once: build copies, queues, predictors
    for epoch in 1..epochs:
        method.start_epoch(epoch, epochs)
        for each batch (indices idx, inputs xb):
            views = [augment(xb), augment(xb)]  # method.n_views of them
            loss = method.loss(encoder, head, views, y[idx] or None, idx)
            loss.backward()
            method.before_step(step, total_steps)   # e.g. drop the prototypes' gradient
            optimizer.step()                        # encoder, head and method.trainable_parameters()
            method.after_step(encoder, head, step, total_steps)  # e.g. momentum update, enqueue
        history.metrics[name].append(value) for name, value in method.end_epoch(encoder, head).items()

A method is an ``nn.Module`` so that its state (a queue, a key encoder) follows ``.to(device)`` and
appears in ``state_dict()``. Parameters of copies that must not be trained (a momentum encoder)
have ``requires_grad=False``; :meth:`Method.trainable_parameters` leaves them out.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["Method", "METHODS", "make_method"]


class Method(nn.Module):
    """Base class of a pre-training method run by :func:`clbook.training.pretrain`.

    Attributes
    ----------
    name : str
        Shown in the progress bar and used as the key of :data:`METHODS`.
    n_views : int
        Augmented views per sample that ``pretrain`` passes to :meth:`loss`.
    needs_labels : bool
        True if :meth:`loss` uses the labels (then ``pretrain`` refuses to run without them).
    """

    name: str = "method"
    n_views: int = 2
    needs_labels: bool = False

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
            Labels of the batch, when ``pretrain`` was given labels.
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
        """Figures to log for the epoch just finished; ``pretrain`` appends them to ``History.metrics``."""
        return {}


# Name -> class (or factory). Each method module section below registers itself here.
METHODS: dict[str, Callable[..., Method]] = {}


def make_method(name: str, temperature: float | None = None, **options) -> Method:
    """Build a registered method by name.

    ``temperature`` is passed only to methods that take one (SimSiam does not), so that
    ``pretrain(method=..., temperature=...)`` works for every method. Every other option must be
    a parameter of the method: an unknown one raises ``ValueError`` naming it.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    factory = METHODS[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} takes no option(s) {unknown}; it accepts {sorted(accepted)}")
    if temperature is not None and "temperature" in accepted:
        options = {**options, "temperature": temperature}
    return factory(**options)
