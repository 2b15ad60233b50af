"""BYOL (Grill et al., 2020): an online network predicts a slowly moving target network."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from clbook.checks import check_probability
from clbook.losses import normalized_mse_loss
from clbook.memory import momentum_update
from clbook.methods.simsiam import SimSiam

__all__ = ["BYOL"]


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
    per_view_batchnorm : bool, default False
    pred_head : dict, optional
        As for :class:`SimSiam` (with ``per_view_batchnorm`` the target networks see one view per pass too).

    Logged per epoch: ``"proj_std"`` (online projections, as for SimSiam) and ``"momentum"``
    (its value at the epoch's last step).
    """

    def __init__(self, pred_hidden: int = 32, proj_dim: int | None = None, momentum: float = 0.99,
                 final_momentum: float = 1.0, predictor: bool = True, per_view_batchnorm: bool = False,
                 pred_head: dict | None = None) -> None:
        super().__init__(pred_hidden, proj_dim, stop_gradient=True, predictor=predictor,
                         per_view_batchnorm=per_view_batchnorm, pred_head=pred_head)
        momentum = check_probability("momentum", momentum)
        final_momentum = check_probability("final_momentum", final_momentum)
        if final_momentum < momentum:
            raise ValueError(f"final_momentum ({final_momentum}) must be at least momentum ({momentum})")
        self.base_momentum, self.final_momentum = float(momentum), float(final_momentum)
        self.momentum = self.base_momentum
        self.target_encoder: nn.Module | None = None
        self.target_head: nn.Module | None = None

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
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
        if self.target_encoder is None:
            raise RuntimeError("BYOL.setup(encoder, head) must run before loss()")
        z, b = self._project(encoder, head, views)
        p = self._predict(z, b)
        with torch.no_grad():
            t = self._forward(self.target_encoder, self.target_head, views)
        return 0.5 * (normalized_mse_loss(p[:b], t[b:]) + normalized_mse_loss(p[b:], t[:b]))

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        self.momentum = self.momentum_at(step, total_steps)
        momentum_update(self.target_encoder, encoder, self.momentum)
        momentum_update(self.target_head, head, self.momentum)

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        return {**super().end_epoch(encoder, head), "momentum": self.momentum}
