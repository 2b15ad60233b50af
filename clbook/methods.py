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
import math
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


# ----------------------------------------------------------------------------- SimSiam and BYOL


def _output_dim(head: nn.Module) -> int:
    """Size of the projections ``head`` produces: the ``out_features`` of its last linear layer."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot tell the head's output size (it has no nn.Linear); pass proj_dim")
    return linears[-1].out_features


class SimSiam(Method):
    r"""SimSiam (Chen and He, 2021): two views, a predictor, a stop-gradient, no negatives.

    For views :math:`x_1, x_2`: projections :math:`z_v = h(f(x_v))`, predictions
    :math:`p_v = \mathrm{pred}(z_v)`, and the symmetric loss
    :math:`\tfrac12 D(p_1, \mathrm{sg}(z_2)) + \tfrac12 D(p_2, \mathrm{sg}(z_1))` with
    :func:`clbook.losses.negative_cosine_loss`. Both views go through the networks in one batch.

    Parameters
    ----------
    pred_hidden : int, default 32
        Bottleneck width of the :class:`clbook.encoders.PredictionHead`.
    proj_dim : int, optional
        Size of the head's output; read from the head's last ``nn.Linear`` if omitted.
    stop_gradient : bool, default True
        ``False`` is the ablation that lets gradients through the targets (it collapses).
    predictor : bool, default True
        ``False`` is the ablation without predictor (:math:`p_v = z_v`; it collapses too).

    Logged per epoch in ``History.metrics``: ``"proj_std"``, the mean over the epoch's batches of
    :func:`clbook.metrics.feature_std` of the projections :math:`z` (the paper's collapse monitor,
    to compare with ``1 / sqrt(proj_dim)``).
    """

    name = "simsiam"
    n_views = 2

    def __init__(self, pred_hidden: int = 32, proj_dim: int | None = None, stop_gradient: bool = True,
                 predictor: bool = True) -> None:
        super().__init__()
        if pred_hidden < 1:
            raise ValueError(f"pred_hidden must be a positive int, got {pred_hidden!r}")
        self.pred_hidden, self.proj_dim = pred_hidden, proj_dim
        self.stop_gradient, self.use_predictor = bool(stop_gradient), bool(predictor)
        self.predictor: nn.Module = nn.Identity()
        self._std_sum, self._std_batches = 0.0, 0

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        from clbook.encoders import PredictionHead

        dim = self.proj_dim if self.proj_dim is not None else _output_dim(head)
        if self.use_predictor:
            self.predictor = PredictionHead(dim, self.pred_hidden)

    def _project(self, encoder: nn.Module, head: nn.Module, views: list[Tensor]) -> tuple[Tensor, int]:
        """Projections ``z`` [2B, D] of both views (view 1 in rows :B), computed as one batch; and B."""
        if len(views) != 2:
            raise ValueError(f"{self.name} needs exactly two views, got {len(views)}")
        b = views[0].shape[0]
        z = head(encoder(torch.cat(views)))
        self._log_std(z[:b])
        return z, b

    def _log_std(self, z: Tensor) -> None:
        from clbook.metrics import feature_std

        self._std_sum += feature_std(z.detach())
        self._std_batches += 1

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._std_sum, self._std_batches = 0.0, 0

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        from clbook.losses import negative_cosine_loss

        z, b = self._project(encoder, head, views)
        p = self.predictor(z)
        z1, z2, p1, p2 = z[:b], z[b:], p[:b], p[b:]
        return 0.5 * (negative_cosine_loss(p1, z2, self.stop_gradient)
                      + negative_cosine_loss(p2, z1, self.stop_gradient))

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        return {"proj_std": self._std_sum / max(self._std_batches, 1)}


class BYOL(SimSiam):
    r"""BYOL (Grill et al., 2020): an online network predicts a slow-moving target network.

    The target encoder and head are copies of the online ones, never trained by gradients; after
    every optimizer step they move towards the online weights,
    :math:`\xi \leftarrow m\,\xi + (1 - m)\,\theta` (:func:`clbook.memory.momentum_update`), with
    the momentum raised from ``momentum`` to ``final_momentum`` along a cosine over all steps:
    :math:`m_k = 1 - (1 - m_0)\,(\cos(\pi k / K) + 1) / 2`. The loss is
    :func:`clbook.losses.normalized_mse_loss` between the online prediction of one view and the
    target projection of the other, symmetrized (averaged over both directions).

    Parameters
    ----------
    pred_hidden : int, default 32
    proj_dim : int, optional
        As for :class:`SimSiam`.
    momentum : float in [0, 1], default 0.99
        Momentum at the first step. 0 makes the target a copy of the online network after every
        step: SimSiam with stop-gradient (up to the normalized-MSE scale).
    final_momentum : float in [momentum, 1], default 1.0
        Momentum at the last step.
    predictor : bool, default True
        ``False`` is the ablation without predictor.

    Logged per epoch: ``"proj_std"`` (online projections, as for SimSiam) and ``"momentum"``
    (its value at the epoch's last step).
    """

    name = "byol"

    def __init__(self, pred_hidden: int = 32, proj_dim: int | None = None, momentum: float = 0.99,
                 final_momentum: float = 1.0, predictor: bool = True) -> None:
        super().__init__(pred_hidden, proj_dim, stop_gradient=True, predictor=predictor)
        for name, value in (("momentum", momentum), ("final_momentum", final_momentum)):
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if final_momentum < momentum:
            raise ValueError(f"final_momentum ({final_momentum}) must be at least momentum ({momentum})")
        self.base_momentum, self.final_momentum = float(momentum), float(final_momentum)
        self.momentum = self.base_momentum
        self.target_encoder: nn.Module | None = None
        self.target_head: nn.Module | None = None

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        import copy

        super().setup(encoder, head)
        self.target_encoder, self.target_head = copy.deepcopy(encoder), copy.deepcopy(head)
        for p in list(self.target_encoder.parameters()) + list(self.target_head.parameters()):
            p.requires_grad_(False)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The scheduled momentum at optimizer step ``step`` (0-based) of ``total_steps``: ``momentum`` at step 0."""
        frac = step / max(total_steps, 1)
        return self.final_momentum - (self.final_momentum - self.base_momentum) * (math.cos(math.pi * frac) + 1) / 2

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        from clbook.losses import normalized_mse_loss

        if self.target_encoder is None:
            raise RuntimeError("BYOL.setup(encoder, head) must run before loss()")
        z, b = self._project(encoder, head, views)
        p = self.predictor(z)
        with torch.no_grad():
            t = self.target_head(self.target_encoder(torch.cat(views)))
        return 0.5 * (normalized_mse_loss(p[:b], t[b:]) + normalized_mse_loss(p[b:], t[:b]))

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        from clbook.memory import momentum_update

        self.momentum = self.momentum_at(step, total_steps)
        momentum_update(self.target_encoder, encoder, self.momentum)
        momentum_update(self.target_head, head, self.momentum)

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        return {**super().end_epoch(encoder, head), "momentum": self.momentum}


METHODS["simsiam"] = SimSiam
METHODS["byol"] = BYOL
