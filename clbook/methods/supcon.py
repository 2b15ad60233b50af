"""SupCon (Khosla et al., 2020): every sample of the same class is a positive."""

from __future__ import annotations

from torch import Tensor, nn

from clbook.checks import check_real
from clbook.losses import supcon_loss
from clbook.methods.base import Method

__all__ = ["SupCon"]


class SupCon(Method):
    """Supervised contrastive learning: :func:`clbook.losses.supcon_loss` (L_out) with labels.

    With an augmentation each sample contributes two views; without one, a single view (every
    sample still has positives: the others of its class in the batch).

    Parameters
    ----------
    temperature : float, default 0.1
    base_temperature : float, optional
        Multiply the loss by ``temperature / base_temperature``, as the SupContrast code does
        (0.07 there); None (default) leaves the loss as Khosla et al. write it.
    """

    needs_labels = True
    needs_augment = False

    def __init__(self, temperature: float = 0.1, base_temperature: float | None = None) -> None:
        super().__init__()
        self.temperature = check_real("temperature", temperature)
        self.base_temperature = None if base_temperature is None else check_real("base_temperature", base_temperature)

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        z = self.project(encoder, head, views)  # [B, V, D]
        return supcon_loss(z, labels=y, temperature=self.temperature, base_temperature=self.base_temperature,
                           gather_distributed=self.gather)
