r"""InfoNCE (van den Oord et al., 2018) in MoCo's form (He et al., 2020): a query against its key and K negatives.

.. math:: \ell_i = -\log \frac{\exp(q_i \cdot k_i/\tau)}
          {\exp(q_i \cdot k_i/\tau) + \sum_{j=1}^{K} \exp(q_i \cdot n_j/\tau)},
          \qquad L = \operatorname{mean}_i \ell_i

Shapes: ``query``, ``key`` [N, D], key i the positive of query i; ``negatives`` [K, D], shared by
all queries and constant (a queue or a memory bank), or None for the in-batch form where the
other N - 1 keys are the negatives. Rows are L2-normalized first unless ``normalize=False``.

The plain form, what runs on an ordinary batch, is cross-entropy over logits ``[N, 1 + K]``
whose column 0 is the positive (or ``[N, N]`` with the positive on the diagonal); past 2,048^2
logits, with ``block_size=`` or ``gather_distributed=``, :func:`info_nce_loss` computes the same
value and gradient from :mod:`clbook.losses._tiled` without them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.distributed import gather_rows, global_mean, world_info
from clbook.losses._checks import _check_embeddings, _check_positive, _check_same_shape, _result
from clbook.losses._tiled import _auto_block, _check_block_size, _CrossLSE

__all__ = ["info_nce_loss", "InfoNCELoss"]


def info_nce_loss(
    query: Tensor,
    key: Tensor,
    negatives: Tensor | None = None,
    temperature: float = 0.07,
    normalize: bool = True,
    *,
    block_size: int | None = None,
    gather_distributed: bool = False,
) -> Tensor:
    r"""InfoNCE (van den Oord et al., 2018) in the form MoCo uses (He et al., 2020).

    Query i has one positive, key i, and K negatives shared by all queries:

    .. math:: \ell_i = -\log \frac{\exp(q_i \cdot k_i/\tau)}
              {\exp(q_i \cdot k_i/\tau) + \sum_{j=1}^{K} \exp(q_i \cdot n_j/\tau)}

    i.e. cross-entropy over logits ``[N, 1 + K]`` whose column 0 is the positive (target 0),
    computed in log space. With :math:`L = \operatorname{mean}_i \ell_i`, the mutual information
    between the two views satisfies :math:`I \ge \log(K + 1) - L` (notebook 07).

    Parameters
    ----------
    query : Tensor, shape [N, D]
        Anchors; the gradient flows back through them.
    key : Tensor, shape [N, D]
        Row i is the positive of query i. Gradient reaches ``key`` only if it requires one (MoCo
        computes keys under ``no_grad``).
    negatives : Tensor, shape [K, D], optional
        Negatives shared by every query, e.g. a queue (:class:`clbook.memory.FeatureQueue`) or
        rows of a memory bank. They are treated as constants: no gradient ever reaches them.
        When None, the in-batch form: the other N - 1 keys are query i's negatives (K = N - 1;
        the logits are the [N, N] matrix ``q k^T`` with the positive on the diagonal, which is the
        same cross-entropy with the columns in another order). Needs N >= 2.
    temperature : float, default 0.07
        Softmax temperature, positive (MoCo v1's value).
    normalize : bool, default True
        L2-normalize query, key and negatives first (cosine similarity). ``False`` uses raw
        inner products.
    block_size : int, optional
        Compute forward and backward over blocks of this many queries, recomputing each block's
        logits in backward: memory O((N + K) D + B K) instead of O(N K), same value and gradient.
        None (default) chooses: untiled up to 2,048^2 logits, blocks above.
    gather_distributed : bool, default False
        Under ``torch.distributed`` (several processes), the loss of one process on the
        concatenated batches (equal N on every rank), and under DDP the averaged gradient is that
        of the whole batch. In the in-batch form every rank's keys are negatives (query i's
        positive is key ``rank * N + i`` of the gathered keys); with ``negatives`` (a queue shared
        by all ranks, to which MoCo enqueues every rank's keys) nothing else needs gathering.
        Ignored when ``torch.distributed`` is not initialized or runs one process.

    Returns
    -------
    Tensor, shape []
        Mean over the N queries, in the dtype of ``query``. Float16 and bfloat16 inputs are
        computed in float32 (float64 inputs in float64) and the result is cast back.
        For random features it sits near ``ln(K + 1)``.

    Notes
    -----
    This is the loss of lightly's ``NTXentLoss(memory_bank_size=(K, D))`` on ``(out0, out1)``,
    with ``negatives`` the K rows that lightly's bank held *before* that call (lightly enqueues
    ``out1`` afterwards). Without negatives it differs from :func:`nt_xent_loss`: NT-Xent makes
    every one of the 2N views an anchor and also uses the other queries as negatives.
    """
    _check_embeddings("query", query)
    _check_embeddings("key", key)
    _check_same_shape(("query", "key"), (query, key))
    _check_positive("temperature", temperature)
    inputs = {"query": query, "key": key}
    if negatives is not None:
        _check_embeddings("negatives", negatives)
        if negatives.shape[1] != key.shape[1]:
            raise ValueError(f"negatives must have the same D as key: key {list(key.shape)}, "
                             f"negatives {list(negatives.shape)}")
        inputs["negatives"] = negatives
    elif query.shape[0] < 2:
        raise ValueError("the in-batch form (negatives=None) needs N >= 2 queries: with one, there is no negative")
    dtype = _info_nce_dtype(inputs)

    def prepared(x: Tensor) -> Tensor:
        x = x.to(dtype)
        return F.normalize(x, dim=1) if normalize else x

    # The temperature is folded into the queries: one [N, D] pass instead of one over [N, 1 + K].
    q = prepared(query) / temperature  # [N, D]
    k = prepared(key)  # [N, D]
    n = q.shape[0]
    world = world_info(gather_distributed)
    if negatives is None:
        cols = k if world is None else gather_rows(k, world)  # every rank's keys, this rank's from rank * N
    else:
        cols = prepared(negatives.detach())  # [K, D], a constant
    # Which path: the plain one while the logits are small, up to 2,048^2 of them
    # (_tiled._UNTILED_MAX_LOGITS, about 50 MB at 12 bytes each); blocks of queries past it, where
    # memory would grow as N K (measured: see _tiled), or whenever block_size is given; every
    # process's keys as columns under gather_distributed (in-batch form).
    block = _auto_block(n, cols.shape[0] + (negatives is not None), block_size)
    if world is None and block is None:
        if negatives is None:
            logits = q @ k.T  # [N, N], positive of row i in column i
            target = torch.arange(q.shape[0], device=q.device)
        else:
            positive = (q * k).sum(dim=1, keepdim=True)  # [N, 1]
            logits = torch.cat([positive, q @ cols.T], dim=1)  # [N, 1 + K]
            target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return _result(F.cross_entropy(logits, target), query.dtype, "info_nce_loss")
    # Tiled: the log-denominators of the queries against the columns (the positive key is one of
    # them in the in-batch form, an extra logit per row with a queue), minus the positive logits.
    positive = (q * k).sum(dim=1)  # [N]
    extra = None if negatives is None else positive
    lse = _CrossLSE.apply(q, cols, extra, None, None, block or n)
    share = (lse - positive.sum()) / (n * (world[1] if world else 1))
    return _result(global_mean(share, world), query.dtype, "info_nce_loss")


def _info_nce_dtype(tensors: dict[str, Tensor]) -> torch.dtype:
    """The dtype InfoNCE computes in: float64 if any input is float64, else float32.

    Half-precision inputs (float16, bfloat16) are upcast: a logit of 1 / 0.01 = 100 is still a
    float16 number, but its exponential and the sums of the softmax are not.
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors.values()) else torch.float32


class InfoNCELoss(nn.Module):
    """Module form of :func:`info_nce_loss`: ``loss(query, key, negatives=None)``."""

    def __init__(self, temperature: float = 0.07, normalize: bool = True, *, block_size: int | None = None,
                 gather_distributed: bool = False) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        self.temperature, self.normalize = temperature, normalize
        self.block_size, self.gather_distributed = _check_block_size(block_size), gather_distributed

    def forward(self, query: Tensor, key: Tensor, negatives: Tensor | None = None) -> Tensor:
        return info_nce_loss(query, key, negatives, self.temperature, self.normalize, block_size=self.block_size,
                             gather_distributed=self.gather_distributed)
