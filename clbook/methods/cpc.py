"""CPC (van den Oord, Li and Vinyals, 2018): predict the future in latent space, contrast it with the batch's other latents."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from clbook.checks import check_choice
from clbook.losses.cpc import NEGATIVES, _check_options, cpc_loss
from clbook.methods.base import Method

__all__ = ["CPC"]


class CPC(Method):
    """Contrastive Predictive Coding on sequences: :func:`clbook.losses.cpc_loss` on one view.

    The encoder is CPC's pair of networks, a :class:`clbook.encoders.CPCEncoder` (or any module
    with its two methods): ``encoder.encode(x)`` gives the latents ``z`` [B, T', D] of the
    sequences ``x`` [B, C, T] and ``encoder.context(z)`` the contexts ``c`` [B, T', C]. The head
    is the prediction maps, a :class:`clbook.encoders.CPCPredictor`: ``head(c)`` [B, T', K, D],
    one ``W_k c_t`` per step k. Per batch the loss makes each ``W_k c_t`` pick ``z_{t+k}`` among
    the candidates of step k, with CPC's log-bilinear critic ``z . W_k c`` (no temperature, no
    normalization).

    No augmentation and no labels: the positives come from the future of the same sequence
    (``n_views = 1``). The training loop keeps the encoder (both networks); the head goes, as a
    projection head does. ``encoder(x)``, the context at the last step, is what the loop's kNN
    monitoring and :func:`clbook.evaluation.extract_features` see.

    Several processes: with ``negatives="batch"`` the latents of every process are candidates for
    every process's predictions; ``"sequence"`` needs nothing shared; ``"other"``, ``exclude`` and
    ``num_negatives`` in the batch's layout run in one process only.

    Parameters
    ----------
    negatives : {"batch", "sequence", "other"}, default "batch"
        Where the negatives of a prediction come from: the latents of every sequence of the batch
        (other sequences and other time steps, CPC's default), only of its own sequence, or only
        of the other sequences.
    exclude : int, default 0
        Drop the anchor's own latents within this many steps of its positive from the candidates.
    num_negatives : int, or one int per prediction step, optional
        Keep this many negatives per anchor, drawn at random with replacement (PyTorch's global
        generator) among those left. See :func:`clbook.losses.cpc_loss` for all three.
    """

    n_views = 1
    needs_augment = False

    def __init__(self, negatives: str = "batch", exclude: int = 0,
                 num_negatives: int | Sequence[int] | None = None) -> None:
        super().__init__()
        self.negatives = check_choice("negatives", negatives, NEGATIVES)
        _check_options(negatives, exclude, num_negatives)
        self.exclude = exclude
        self.num_negatives = tuple(num_negatives) if isinstance(num_negatives, Sequence) else num_negatives

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if not (callable(getattr(encoder, "encode", None)) and callable(getattr(encoder, "context", None))):
            raise ValueError(f"{self.name} needs an encoder with encode(x) -> latents and context(z) -> contexts, "
                             f"such as clbook.encoders.CPCEncoder; got {type(encoder).__name__}")
        z = encoder.encode(views[0])  # [B, T', D]
        predictions = head(encoder.context(z))  # [B, T', K, D]
        return cpc_loss(predictions, z, negatives=self.negatives, exclude=self.exclude,
                        num_negatives=self.num_negatives, gather_distributed=self.gather)
