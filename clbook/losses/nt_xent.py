r"""NT-Xent, the SimCLR loss (Chen et al., 2020): each view finds its partner among the 2N - 1 others.

.. math:: \ell_i = -\log \frac{\exp(s_{i,p(i)}/\tau)}{\sum_{k \ne i} \exp(s_{ik}/\tau)},
          \qquad L = \operatorname{mean}_{i < 2N} \ell_i

Shapes: ``z1``, ``z2`` [N, D], row i of each a view of sample i; the 2N rows of ``cat(z1, z2)``
are the anchors, row i's positive is row ``(i + N) mod 2N``; :math:`s` is cosine similarity.

The plain form, what runs on an ordinary batch, is three lines of :func:`nt_xent_loss`: rows
normalized and divided by :math:`\sqrt\tau`, their ``[2N, 2N]`` inner products with the diagonal
at -inf, and cross-entropy against the partner's column. Beside it, the fast path for batches
past 2,048 rows (or ``block_size=``, or ``gather_distributed=``) computes the same value and
gradient from :mod:`clbook.losses._tiled` without the ``[2N, 2N]`` matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.distributed import gather_rows, global_mean, world_info
from clbook.losses._checks import (_check_embeddings, _check_positive, _check_same_shape, _masked_logits, _result,
                                   _scaled_rows, _to_float32)
from clbook.losses._tiled import _auto_block, _check_block_size, _CrossLSE, _SelfLSE

__all__ = ["nt_xent_loss", "NTXentLoss"]


def nt_xent_loss(
    z1: Tensor,
    z2: Tensor,
    temperature: float = 0.5,
    *,
    block_size: int | None = None,
    gather_distributed: bool = False,
) -> Tensor:
    r"""NT-Xent, the SimCLR loss (Chen et al., 2020).

    The 2N rows of ``cat(z1, z2)`` are anchors. Anchor i's positive is the other view of the same
    sample; its denominator runs over the other 2N - 1 rows:

    .. math:: \ell_i = -\log \frac{\exp(s_{i,p(i)}/\tau)}{\sum_{k \ne i} \exp(s_{ik}/\tau)}

    with cosine similarity :math:`s`. This is cross-entropy over 2N - 1 classes whose target is the
    positive's column, which is how it is computed.

    Parameters
    ----------
    z1, z2 : Tensor, shape [N, D]
        Two views of the same N samples: row i of ``z1`` and row i of ``z2`` are a positive pair.
        Need not be normalized.
    temperature : float, default 0.5
        Softmax temperature, positive.
    block_size : int, optional
        Compute forward and backward over blocks of this many rows, recomputing each block's
        logits in backward: memory O(N D + N B) instead of O(N^2), same value and gradient.
        None (default) chooses: one [2N, 2N] matrix up to 2,048 rows, blocks above.
    gather_distributed : bool, default False
        Under ``torch.distributed`` (several processes), use every process's rows as negatives:
        the loss is that of one process on the concatenated batches (equal N on every rank),
        and under DDP the averaged gradient is that of the whole batch. Ignored when
        ``torch.distributed`` is not initialized or runs one process.

    Returns
    -------
    Tensor, shape []
        Mean over the 2N anchors. For random features it sits near ``ln(2N - 1)``.

    Notes
    -----
    The tiled path (``block_size``, or any batch past 2,048 rows) and ``gather_distributed``
    write their gradient out, so they have no second derivatives (``create_graph=True`` raises).
    """
    _check_embeddings("z1", z1)
    _check_embeddings("z2", z2)
    _check_same_shape(("z1", "z2"), (z1, z2))
    temperature = _check_positive("temperature", temperature)
    (z1, z2), dtype = _to_float32(z1, z2)
    n = z1.shape[0]
    world = world_info(gather_distributed)
    rows = _scaled_rows(torch.cat([z1, z2]), temperature, normalize=True)
    # Which path: the plain one while the logits are small, up to 2,048 rows (_tiled._UNTILED_MAX_LOGITS
    # = 2,048^2 logits, about 50 MB at 12 bytes each); blocks past it, where memory would grow as N^2
    # and blocks run at about the same speed (measured: see _tiled), or whenever block_size is given;
    # every process's rows as columns under gather_distributed.
    block = _auto_block(2 * n, 2 * n * (world[1] if world else 1), block_size)
    if world is None and block is None:
        logits = _masked_logits(rows)
        # Row i < N has its positive at column i + N; row i >= N at column i - N.
        targets = torch.arange(2 * n, device=z1.device).roll(n)
        return _result(F.cross_entropy(logits, targets), dtype, "nt_xent_loss")
    # Log-denominators tiled; the positive logits z1_i . z2_i (each counted for both anchors) by autograd.
    positive = 2 * torch.dot(rows[:n].flatten(), rows[n:].flatten())
    if world is None:
        return _result((_SelfLSE.apply(rows, None, block) - positive) / (2 * n), dtype, "nt_xent_loss")
    rank, size = world
    # Positives stay on their own rank; the columns are everyone's rows, this rank's from 2N * rank.
    lse = _CrossLSE.apply(rows, gather_rows(rows, world), None, None, 2 * n * rank, block or 2 * n)
    return _result(global_mean((lse - positive) / (2 * n * size), world), dtype, "nt_xent_loss")


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss`."""

    def __init__(self, temperature: float = 0.5, *, block_size: int | None = None,
                 gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = _check_positive("temperature", temperature)
        self.block_size, self.gather_distributed = _check_block_size(block_size), gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent_loss(z1, z2, self.temperature, block_size=self.block_size,
                            gather_distributed=self.gather_distributed)
