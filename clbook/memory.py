"""Negatives and targets that outlive a batch: momentum (EMA) updates of a network's weights.

``momentum_update`` is shared by MoCo (a momentum key encoder) and BYOL (a momentum target).
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

__all__ = ["momentum_update"]


@torch.no_grad()
def momentum_update(target: nn.Module, online: nn.Module, m: float) -> None:
    r"""Exponential moving average of weights, in place: :math:`\theta_t \leftarrow m\,\theta_t + (1 - m)\,\theta_o`.

    Parameters
    ----------
    target : nn.Module
        The slow copy (MoCo's key encoder, BYOL's target network); updated in place.
    online : nn.Module
        The network trained by gradient descent; only read.
    m : float in [0, 1]
        Momentum. ``m = 0`` copies ``online`` into ``target``; ``m = 1`` leaves ``target`` as it is.

    Buffers (e.g. BatchNorm's running statistics) are copied, not averaged. Raises ``ValueError``
    if the two modules do not have the same parameter and buffer names and shapes.
    """
    if isinstance(m, torch.Tensor) and m.dim() == 0 and m.dtype != torch.bool and not m.is_complex():
        m = float(m)  # a 0-d tensor, e.g. a scheduled momentum
    if isinstance(m, bool) or not (isinstance(m, numbers.Real) and 0.0 <= float(m) <= 1.0):  # NaN fails too
        raise ValueError(f"momentum m must be a number in [0, 1], got {m!r}")
    m = float(m)
    t_params, o_params = dict(target.named_parameters()), dict(online.named_parameters())
    t_bufs, o_bufs = dict(target.named_buffers()), dict(online.named_buffers())
    for kind, t, o in (("parameter", t_params, o_params), ("buffer", t_bufs, o_bufs)):
        if t.keys() != o.keys():
            missing, extra = sorted(o.keys() - t.keys()), sorted(t.keys() - o.keys())
            raise ValueError(f"target and online differ in {kind} names: only in online {missing}, "
                             f"only in target {extra}")
        for name in t:
            if t[name].shape != o[name].shape:
                raise ValueError(f"{kind} {name!r} has shape {list(t[name].shape)} in target but "
                                 f"{list(o[name].shape)} in online")
    for name, p in t_params.items():
        p.mul_(m).add_(o_params[name].detach(), alpha=1.0 - m)
    for name, b in t_bufs.items():
        b.copy_(o_bufs[name])
