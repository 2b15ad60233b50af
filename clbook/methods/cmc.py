"""Contrastive Multiview Coding (Tian, Krishnan and Isola, 2019): one encoder per view, InfoNCE between views."""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from clbook.checks import check_choice, check_int, check_real
from clbook.losses import multiview_info_nce
from clbook.losses.multiview import PAIRINGS
from clbook.methods.base import Method

__all__ = ["CMC", "split_last_dim"]


def split_last_dim(x: Tensor, n_views: int) -> list[Tensor]:
    """``n_views`` copies of ``x``, copy k keeping only the k-th of ``n_views`` equal parts of the last dimension.

    The default views of :class:`CMC`: every view has the input's shape (so every view's encoder can
    be a copy of one architecture), and no entry of ``x`` is in two views. For ``[N, 1, 28, 28]``
    digits and two views: the left half and the right half, the rest set to 0.
    """
    edges = torch.linspace(0, x.shape[-1], n_views + 1).round().long().tolist()
    views = []
    for k in range(n_views):
        view = torch.zeros_like(x)
        view[..., edges[k]:edges[k + 1]] = x[..., edges[k]:edges[k + 1]]
        views.append(view)
    return views


class _Views(nn.Module):
    """Inputs ``[N, ...]`` -> features ``[N, sum of D_k]``: each view's encoder on its view, concatenated."""

    def __init__(self, split: Callable[[Tensor], list[Tensor]], encoders: list[nn.Module]) -> None:
        super().__init__()
        self.split, self.encoders = split, nn.ModuleList(encoders)

    def forward(self, x: Tensor) -> Tensor:
        views = self.split(x)
        return torch.cat([enc(v) for enc, v in zip(self.encoders, views)], dim=1)


class CMC(Method):
    """CMC: M views of each sample, each through its own encoder and head, InfoNCE between linked views.

    The loop passes the batch (augmented or not: ``n_views = 1``); :attr:`split` cuts it into the M
    views. View 1 goes through the loop's ``encoder`` and ``head``; :meth:`setup` builds one more
    encoder and head per other view, copies of those with fresh weights (drawn from torch's global
    generator, so seed it first). The loss is :func:`clbook.losses.multiview_info_nce` of the M
    projections with CMC's ``pairing``: ``"core"`` contrasts view 1 with each other view,
    ``"full"`` every pair.

    Parameters
    ----------
    temperature : float, default 0.07
        CMC's value.
    pairing : {"core", "full"}, default "core"
    num_views : int, default 2
        M, at least 2.
    split : callable, optional
        ``split(x) -> list of M tensors``, e.g. ``lambda x: clbook.data.digit_views(x, "quadrants")``
        (with encoders that take its crops). Default :func:`split_last_dim`: M masked copies of the
        input, each keeping one M-th of the last dimension (for digits and M = 2, the left and
        right halves); every view then has the input's shape.

    Attributes
    ----------
    encoders, heads : nn.ModuleList
        The networks of views 2..M (after :meth:`setup`).

    Notes
    -----
    Without ``split``, pretrain's validation (kNN on ``encoder(X_val)``) shows view 1's encoder
    whole inputs it never saw during training; with crops it cannot run at all. Evaluate with
    :meth:`representation` instead.
    """

    n_views = 1
    needs_augment = False

    def __init__(self, temperature: float = 0.07, pairing: str = "core", num_views: int = 2,
                 split: Callable[[Tensor], list[Tensor]] | None = None) -> None:
        super().__init__()
        self.temperature = check_real("temperature", temperature)
        self.pairing = check_choice("pairing", pairing, PAIRINGS)
        self.num_views = check_int("num_views", num_views, 2)
        if split is not None and not callable(split):
            raise ValueError(f"split must be a function x -> list of views, got {type(split).__name__}")
        self.split = split
        self.encoders = nn.ModuleList()
        self.heads = nn.ModuleList()

    def views_of(self, x: Tensor) -> list[Tensor]:
        """The M views of a batch ``x``."""
        views = self.split(x) if self.split is not None else split_last_dim(x, self.num_views)
        if len(views) != self.num_views:
            raise ValueError(f"split gave {len(views)} views, but the method was built with num_views={self.num_views}")
        return list(views)

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        self.encoders = nn.ModuleList(_fresh_copy(encoder) for _ in range(self.num_views - 1))
        self.heads = nn.ModuleList(_fresh_copy(head) for _ in range(self.num_views - 1))

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if len(self.encoders) != self.num_views - 1:
            raise RuntimeError("CMC.setup(encoder, head) must run before the loss (pretrain calls it)")
        parts = self.views_of(views[0])
        encoders, heads = [encoder, *self.encoders], [head, *self.heads]
        z = [h(e(v)) for e, h, v in zip(encoders, heads, parts)]
        return multiview_info_nce(z, self.pairing, self.temperature, gather_distributed=self.gather)

    def representation(self, encoder: nn.Module, views: str | list[int] = "all") -> nn.Module:
        """A module mapping whole inputs to features: the chosen views' encoders on their views, concatenated.

        ``views="core"`` is view 1's encoder alone, ``"all"`` every view's, or a list of 0-based
        view indices. Its parameters are the trained encoders themselves (not copies).
        """
        if len(self.encoders) != self.num_views - 1:
            raise RuntimeError("CMC.setup(encoder, head) must run first (pretrain calls it)")
        if isinstance(views, str):
            if views not in ("core", "all"):
                raise ValueError(f"views must be 'core', 'all' or a list of view indices, got {views!r}")
            chosen = [0] if views == "core" else list(range(self.num_views))
        else:
            chosen = list(views)
        if not chosen or any(not isinstance(k, int) or not 0 <= k < self.num_views for k in chosen):
            raise ValueError(f"view indices must lie in [0, {self.num_views}), got {views!r}")
        encoders = [encoder, *self.encoders]
        return _Views(lambda x: [self.views_of(x)[k] for k in chosen], [encoders[k] for k in chosen])


def _fresh_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (same architecture, same memory layout) with freshly drawn weights."""
    twin = copy.deepcopy(module)
    for m in twin.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return twin
