r"""Contrastive Multiview Coding (Tian, Krishnan and Isola, 2019): InfoNCE between every pair of views that is linked.

With M views :math:`z^{(1)}, \dots, z^{(M)}` of the same N samples (row i of each view belongs to
sample i), the two-view loss of views a and b is InfoNCE in both directions, every row of one view
an anchor that must find its own sample among the N rows of the other view:

.. math:: \ell_{a \to b}(i) = -\log \frac{\exp(s(z^{(a)}_i, z^{(b)}_i)/\tau)}
          {\sum_{k=1}^{N} \exp(s(z^{(a)}_i, z^{(b)}_k)/\tau)}, \qquad
          L(a, b) = \operatorname{mean}_i \ell_{a \to b}(i) + \operatorname{mean}_i \ell_{b \to a}(i)

with cosine similarity :math:`s`. CMC sums :math:`L(a, b)` over the linked pairs:

* ``pairing="core"``: view 1 is the core, linked to each other view, :math:`\sum_{b > 1} L(1, b)`
  (M - 1 pairs);
* ``pairing="full"``: the full graph, :math:`\sum_{a < b} L(a, b)` (M (M - 1) / 2 pairs).

With two views both are :math:`L(1, 2)`. Shapes: a sequence of M tensors ``[N, D]`` or one tensor
``[N, M, D]`` (the course's ``[N, V, D]`` batches).

The plain form is what runs: one ``[N, N]`` matrix of logits per pair, cross-entropy along its rows
and along its columns. Under several processes (``gather_distributed=True``) every process's rows
are columns too, as in :func:`clbook.losses.nt_xent_loss`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clbook.distributed import gather_rows, global_mean, world_info
from clbook.losses._checks import _check_embeddings, _check_positive, _check_same_shape, _result, _to_float32

__all__ = ["multiview_info_nce", "view_pairs", "PAIRINGS"]

#: The pairings of CMC: the core view against each other view, or every pair of views.
PAIRINGS = ("core", "full")


def view_pairs(n_views: int, pairing: str = "core") -> list[tuple[int, int]]:
    """The pairs ``(a, b)``, ``a < b``, 0-based, that ``pairing`` links among ``n_views`` views.

    >>> view_pairs(4, "core")
    [(0, 1), (0, 2), (0, 3)]
    >>> view_pairs(3, "full")
    [(0, 1), (0, 2), (1, 2)]
    """
    if isinstance(n_views, bool) or not isinstance(n_views, int) or n_views < 2:
        raise ValueError(f"n_views must be an integer >= 2 (a contrast needs two views), got {n_views!r}")
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    if pairing == "core":
        return [(0, b) for b in range(1, n_views)]
    return [(a, b) for a in range(n_views) for b in range(a + 1, n_views)]


def multiview_info_nce(
    views: Sequence[Tensor] | Tensor,
    pairing: str = "core",
    temperature: float = 0.07,
    *,
    gather_distributed: bool = False,
) -> Tensor:
    r"""CMC's loss: two-way InfoNCE summed over the pairs of views that ``pairing`` links.

    .. math:: L_\text{core} = \sum_{b=2}^{M} L(1, b), \qquad L_\text{full} = \sum_{a < b} L(a, b),
              \qquad L(a, b) = \operatorname{mean}_i \ell_{a \to b}(i) + \operatorname{mean}_i \ell_{b \to a}(i)

    where :math:`\ell_{a \to b}(i)` is cross-entropy of anchor :math:`z^{(a)}_i` over the N rows of
    view b, its own sample's row the target (module docstring). The negatives of an anchor are
    the other samples *in the other view*; rows of its own view never appear in its denominator.

    Parameters
    ----------
    views : sequence of M >= 2 Tensors, each [N, D], or a Tensor [N, M, D]
        Embeddings of M views of the same N >= 2 samples (row i of every view is sample i). Need
        not be normalized; they are compared by cosine similarity. View 1 is the core.
    pairing : {"core", "full"}, default "core"
        Which pairs are contrasted (:func:`view_pairs`).
    temperature : float, default 0.07
        Softmax temperature, positive (CMC's value); a 0-d tensor that requires grad keeps its gradient.
    gather_distributed : bool, default False
        Under ``torch.distributed`` (several processes), every process's rows are negatives too:
        the loss is that of one process on the concatenated batches (equal N on every rank).
        Ignored when ``torch.distributed`` is not initialized or runs one process.

    Returns
    -------
    Tensor, shape []
        The sum over the linked pairs (M - 1 of them for "core", M (M - 1) / 2 for "full") of the
        two directions' means. For random features each direction sits near ``ln N``. Half
        precision is computed in float32 and cast back.
    """
    if isinstance(views, Tensor):
        _check_embeddings("views", views, rank=3)
        views = list(views.unbind(dim=1))
    elif isinstance(views, (list, tuple)):
        views = list(views)
        for k, v in enumerate(views):
            _check_embeddings(f"views[{k}]", v)
        _check_same_shape(tuple(f"views[{k}]" for k in range(len(views))), tuple(views))
    else:
        raise ValueError(f"views must be a list of [N, D] tensors or one [N, M, D] tensor, got {type(views).__name__}")
    pairs = view_pairs(len(views), pairing)  # checks M >= 2 and the pairing
    n = views[0].shape[0]
    if n < 2:
        raise ValueError("multiview_info_nce needs N >= 2 samples: with one, an anchor has no negative")
    temperature = _check_positive("temperature", temperature)
    views, dtype = _to_float32(*views)
    world = world_info(gather_distributed)
    z = [F.normalize(v, dim=1) for v in views]
    if world is None:
        target = torch.arange(n, device=z[0].device)
        total = z[0].new_zeros(())
        for a, b in pairs:
            logits = z[a] @ z[b].T / temperature  # [N, N], the positive of row i in column i
            total = total + F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
        return _result(total, dtype, "multiview_info_nce")
    rank, size = world
    # This rank's anchors against every rank's rows of the other view; the positive of local row i is
    # global row rank * N + i. The shares of all ranks sum to the loss on the whole batch.
    cols = [gather_rows(v, world) for v in z]
    target = torch.arange(n, device=z[0].device) + rank * n
    share = z[0].new_zeros(())
    for a, b in pairs:
        for anchor, other in ((a, b), (b, a)):
            logits = z[anchor] @ cols[other].T / temperature  # [N, size * N]
            share = share + F.cross_entropy(logits, target, reduction="sum") / (n * size)
    return _result(global_mean(share, world), dtype, "multiview_info_nce")
