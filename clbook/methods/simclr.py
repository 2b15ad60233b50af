"""SimCLR (Chen et al., 2020): two augmented views of each sample, NT-Xent over the batch."""

from __future__ import annotations

from torch import Tensor, nn

from clbook.checks import check_real
from clbook.losses import nt_xent_loss
from clbook.methods.base import Method

__all__ = ["SimCLR"]


class SimCLR(Method):
    """SimCLR: :func:`clbook.losses.nt_xent_loss` between the projections of two views; no labels.

    Each sample's other view is its positive; the other ``2B - 2`` projections of the batch (of
    the global batch, under several processes) are its negatives.

    Parameters
    ----------
    temperature : float, default 0.1
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_real("temperature", temperature)

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if len(views) != 2:
            raise ValueError(f"SimCLR needs exactly two views, got {len(views)}; pass an augment")
        z = self.project(encoder, head, views)  # [B, 2, D]
        return nt_xent_loss(z[:, 0], z[:, 1], self.temperature, gather_distributed=self.gather)
