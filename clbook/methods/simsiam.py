"""SimSiam (Chen and He, 2021): two views, a predictor, a stop-gradient, and no negatives."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clbook.checks import check_bool, check_int
from clbook.encoders import PredictionHead
from clbook.losses import negative_cosine_loss
from clbook.methods.base import Method, output_dim
from clbook.metrics import feature_std

__all__ = ["SimSiam"]


class SimSiam(Method):
    r"""SimSiam (Chen and He, 2021): two views, a predictor, a stop-gradient, no negatives.

    For views :math:`x_1, x_2`: projections :math:`z_v = h(f(x_v))`, predictions
    :math:`p_v = \mathrm{pred}(z_v)`, and the symmetric loss
    :math:`\tfrac12 D(p_1, \mathrm{sg}(z_2)) + \tfrac12 D(p_2, \mathrm{sg}(z_1))` with
    :func:`clbook.losses.negative_cosine_loss`. Both views go through the networks in one batch,
    unless ``per_view_batchnorm``.

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
    per_view_batchnorm : bool, default False
        Pass each view through encoder and head in its own forward pass, as the reference code of
        SimSiam and BYOL does: batch norm then takes its statistics over the B rows of one view,
        not over the 2B rows of both (the same network; only what a batch norm sees changes).
    pred_head : dict, optional
        Keyword arguments for the predictor, a :class:`clbook.encoders.PredictionHead`, e.g.
        ``{"norm": None}`` (no normalization in it) or ``{"norm": "group", "weight_standardization": True}``.

    Notes
    -----
    Logged per epoch in ``History.metrics``: ``"proj_std"``, the mean over the epoch's batches of
    :func:`clbook.metrics.feature_std` of the projections :math:`z` (the paper's collapse monitor,
    to compare with ``1 / sqrt(proj_dim)``).

    Several processes: the loss is a mean over the batch's own rows, so averaging the processes'
    gradients gives the global batch's gradient; batch norm in the head sees only this process's
    rows unless ``--sync-batchnorm`` is on.
    """

    needs_negatives = False  # the loss compares each sample with itself only

    def __init__(self, pred_hidden: int = 32, proj_dim: int | None = None, stop_gradient: bool = True,
                 predictor: bool = True, per_view_batchnorm: bool = False, pred_head: dict | None = None) -> None:
        super().__init__()
        self.pred_hidden = check_int("pred_hidden", pred_hidden, 1)
        self.proj_dim = None if proj_dim is None else check_int("proj_dim", proj_dim, 1)
        self.stop_gradient = check_bool("stop_gradient", stop_gradient)
        self.use_predictor = check_bool("predictor", predictor)
        self.per_view_batchnorm = check_bool("per_view_batchnorm", per_view_batchnorm)
        if pred_head is not None and not isinstance(pred_head, dict):
            raise ValueError(f"pred_head must be a dict of PredictionHead options, got {type(pred_head).__name__}")
        self.pred_head = dict(pred_head or {})  # a copy: the caller's dict is never changed
        PredictionHead(2, 1, **self.pred_head)  # bad options fail here, not at setup
        self.predictor: nn.Module = nn.Identity()
        self._std_sum, self._std_batches = 0.0, 0

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        dim = self.proj_dim if self.proj_dim is not None else output_dim(head)
        if self.use_predictor:
            self.predictor = PredictionHead(dim, self.pred_hidden, **self.pred_head)

    def _forward(self, encoder: nn.Module, head: nn.Module, views: list[Tensor]) -> Tensor:
        """``head(encoder(.))`` of both views, ``[2B, D]`` (view 1 in rows :B): one batch, or one per view."""
        if self.per_view_batchnorm:
            return torch.cat([head(encoder(v)) for v in views])
        return head(encoder(torch.cat(views)))

    def _predict(self, z: Tensor, b: int) -> Tensor:
        """Predictions ``[2B, D]`` of projections ``z`` [2B, D]: one batch, or one per view."""
        if self.per_view_batchnorm:
            return torch.cat([self.predictor(z[:b]), self.predictor(z[b:])])
        return self.predictor(z)

    def _project(self, encoder: nn.Module, head: nn.Module, views: list[Tensor]) -> tuple[Tensor, int]:
        """Projections ``z`` [2B, D] of both views (view 1 in rows :B); and B."""
        if len(views) != 2:
            raise ValueError(f"{self.name} needs exactly two views, got {len(views)}")
        b = views[0].shape[0]
        z = self._forward(encoder, head, views)
        self._log_std(z[:b])
        return z, b

    def _log_std(self, z: Tensor) -> None:
        self._std_sum += feature_std(z.detach())
        self._std_batches += 1

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._std_sum, self._std_batches = 0.0, 0

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        z, b = self._project(encoder, head, views)
        p = self._predict(z, b)
        z1, z2, p1, p2 = z[:b], z[b:], p[:b], p[b:]
        return 0.5 * (negative_cosine_loss(p1, z2, self.stop_gradient)
                      + negative_cosine_loss(p2, z1, self.stop_gradient))

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        return {"proj_std": self._std_sum / max(self._std_batches, 1)}
