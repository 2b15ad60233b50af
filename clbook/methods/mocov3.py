"""MoCo v3 (Chen, Xie and He, 2021): MoCo with a predictor and in-batch keys, for Vision Transformers."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from clbook.checks import check_int, check_probability, check_real
from clbook.encoders import PredictionHead
from clbook.losses import info_nce_loss
from clbook.memory import momentum_update
from clbook.methods.base import Method, output_dim

__all__ = ["MoCoV3", "cosine_momentum"]


def cosine_momentum(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """The momentum at optimizer step ``step`` (0-based): ``start`` at step 0, rising to ``end`` along a half cosine."""
    frac = step / max(total_steps, 1)
    return end - (end - start) * (math.cos(math.pi * frac) + 1) / 2


class MoCoV3(Method):
    r"""MoCo v3 (Chen, Xie and He, 2021): "MoCo v2 + SimSiam", the lecture notes say.

    From MoCo (notebook 07) it keeps the momentum key encoder and InfoNCE; from SimSiam and BYOL
    (notebook 08) the predictor on the query side and the symmetric loss. It drops the queue: with
    large batches the other keys of the batch are negatives enough. For views :math:`x_1, x_2`,
    queries :math:`q_v = \mathrm{pred}(h(f(x_v)))` and keys :math:`k_v = h_k(f_k(x_v))` (no
    gradient), with the loss

    .. math:: L = \mathrm{ctr}(q_1, k_2) + \mathrm{ctr}(q_2, k_1), \qquad
              \mathrm{ctr}(q, k) = 2\tau \cdot \mathrm{InfoNCE}(q, k)

    where InfoNCE is :func:`clbook.losses.info_nce_loss` in its in-batch form (key i is query i's
    positive, the other keys its negatives). The factor :math:`2\tau` is the paper's (it makes the
    gradient's scale independent of :math:`\tau`). The key networks move towards the query ones
    after every step with a momentum rising from ``momentum`` to ``final_momentum`` along a cosine.

    The paper's finding for ViTs: training is unstable, with sudden spikes in the gradient (first in
    the patch projection) that show as dips in accuracy; freezing the random patch projection
    (``ViT(freeze_patch_projection=True)``) removed them. This method records, per step, the loss
    and the gradient norm of the encoder's parameters, to look for the spikes
    (``step_loss``, ``step_grad_norm``).

    Parameters
    ----------
    temperature : float, default 0.2
        MoCo v3's for ViTs.
    momentum : float in [0, 1], default 0.99
        Momentum at the first step (the paper's).
    final_momentum : float in [momentum, 1], default 1.0
    pred_hidden : int, default 128
        Hidden width of the predictor (:class:`clbook.encoders.PredictionHead`, with batch norm;
        MoCo v3's is wider than its output, 4096 for 256).
    proj_dim : int, optional
        Size of the head's output; read from the head if omitted.

    Notes
    -----
    Logged per epoch: ``"pos_cos"`` (mean cosine of a query with its positive key), ``"grad_norm"``
    (mean over the epoch's steps) and ``"max_grad_norm"``.
    """

    def __init__(self, temperature: float = 0.2, momentum: float = 0.99, final_momentum: float = 1.0,
                 pred_hidden: int = 128, proj_dim: int | None = None) -> None:
        super().__init__()
        self.temperature = check_real("temperature", temperature)
        self.base_momentum = check_probability("momentum", momentum)
        self.final_momentum = check_probability("final_momentum", final_momentum)
        if self.final_momentum < self.base_momentum:
            raise ValueError(f"final_momentum ({final_momentum}) must be at least momentum ({momentum})")
        self.momentum = self.base_momentum
        self.pred_hidden = check_int("pred_hidden", pred_hidden, 1)
        self.proj_dim = None if proj_dim is None else check_int("proj_dim", proj_dim, 1)
        self.predictor: nn.Module | None = None
        self.key_encoder: nn.Module | None = None
        self.key_head: nn.Module | None = None
        self.step_loss: list[float] = []
        self.step_grad_norm: list[float] = []
        self._encoder_params: list[nn.Parameter] = []
        self._epoch = torch.zeros(2)
        self._first_step = 0

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        dim = self.proj_dim if self.proj_dim is not None else output_dim(head)
        self.predictor = PredictionHead(dim, self.pred_hidden)
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(head).requires_grad_(False)
        # A plain list (not registered): the encoder's parameters, whose gradient norm is recorded.
        self._encoder_params = list(encoder.parameters())
        self.step_loss, self.step_grad_norm = [], []

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._epoch = torch.zeros(2)  # sum of pos_cos, batches
        self._first_step = len(self.step_grad_norm)

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if self.key_encoder is None:
            raise RuntimeError("MoCoV3.setup(encoder, head) must run before loss()")
        if len(views) != 2:
            raise ValueError(f"{self.name} needs exactly two views, got {len(views)}")
        b = views[0].shape[0]
        q = self.predictor(head(encoder(torch.cat(views))))  # [2B, D], both views in one batch
        with torch.no_grad():
            self.key_encoder.train(encoder.training)
            self.key_head.train(head.training)
            k = self.key_head(self.key_encoder(torch.cat(views)))  # [2B, D], constants
        q1, q2, k1, k2 = q[:b], q[b:], k[:b], k[b:]
        scale = 2 * self.temperature
        loss = scale * (info_nce_loss(q1, k2, None, self.temperature, gather_distributed=self.gather)
                        + info_nce_loss(q2, k1, None, self.temperature, gather_distributed=self.gather))
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(q.detach().float(), torch.cat([k2, k1]).float()).mean()
            self._epoch += torch.stack([cos.cpu(), torch.tensor(1.0)])
        self.step_loss.append(loss.item())
        return loss

    def before_step(self, step: int, total_steps: int) -> None:
        grads = [p.grad.detach().float().norm() for p in self._encoder_params if p.grad is not None]
        self.step_grad_norm.append(torch.stack(grads).norm().item() if grads else 0.0)

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        momentum_update(self.key_encoder, encoder, self.momentum)
        momentum_update(self.key_head, head, self.momentum)

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        norms = self.step_grad_norm[self._first_step:] or [0.0]
        return {"pos_cos": float(self._epoch[0]) / max(float(self._epoch[1]), 1.0),
                "grad_norm": sum(norms) / len(norms), "max_grad_norm": max(norms)}
