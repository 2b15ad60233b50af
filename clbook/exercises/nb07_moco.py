"""Checkers of notebook 07 (memory bank and MoCo).

The notebook is ``notebooks/07_memory_bank_moco.ipynb``; its checked exercises:

* 07.1: :data:`check_info_nce_queue`, InfoNCE with a queue, no gradient into it.
* 07.2: :data:`check_enqueue`, the queue's FIFO enqueue, with wrap-around.
* 07.3: :data:`check_ema_update`, the momentum (EMA) update.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbook.exercises.core import Case, Mistake, _grad_wrt, exercise
from clbook.losses import info_nce_loss
from clbook.memory import FeatureQueue, momentum_update

__all__ = ["check_info_nce_queue", "check_enqueue", "check_ema_update"]


def _info_nce_reference(query, key, queue, tau):
    return info_nce_loss(query, key, queue, temperature=tau)


def _info_nce_cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)
    q = torch.randn(4, 8, generator=g)
    k = q + 0.5 * torch.randn(4, 8, generator=g)
    queue = F.normalize(torch.randn(16, 8, generator=g), dim=1)
    stability = "reread 02 §5 (log-sum-exp) and 07 §3: at tau = 0.01 the logits reach 100"
    return [
        Case("4 queries, a queue of 16 negatives in 8-D, tau = 0.07", (q, k, queue, 0.07)),
        Case("queries and keys 50x longer, tau = 0.2", (50 * q, 50 * k, queue, 0.2),
             hint="the similarities are cosines: L2-normalize query, key and queue first (07 §3)"),
        Case("a queue of one negative, tau = 0.5", (q, k, queue[:1], 0.5)),
        Case("tau = 0.01", (q, k, queue, 0.01), hint=stability),
        Case("the gradient that reaches the queue (must be zero)", (q, k, queue, 0.1), probe=_grad_wrt(2),
             hint="the queue holds constants from earlier batches: no gradient may flow into it (detach it); "
                  "reread 07 §3"),
        Case("the gradient with respect to the queries", (q, k, queue, 0.1), probe=_grad_wrt(0)),
    ]


def _info_nce_positive_left_out(query, key, queue, tau):
    q, k, n = (F.normalize(x, dim=1) for x in (query, key, queue))
    return (torch.logsumexp(q @ n.T / tau, dim=1) - (q * k).sum(1) / tau).mean()


def _info_nce_with_batch(query, key, queue, tau):
    return info_nce_loss(query, key, torch.cat([key.detach(), queue]), temperature=tau)


#: 07.1: InfoNCE with a queue of negatives shared by all queries, no gradient into the queue.
check_info_nce_queue = exercise(
    "07.1", "InfoNCE with a queue of negatives", "07 §3 (MoCo: a queue and a momentum encoder)",
    reference=_info_nce_reference,
    cases=_info_nce_cases,
    forbidden=("clbook.losses.info_nce_loss", "clbook.losses.InfoNCELoss"),
    mistakes=[
        Mistake(_info_nce_positive_left_out,
                "the positive belongs in its own denominator: reread 07 §1"),
        Mistake(lambda q, k, n, tau: _info_nce_reference(q, k, n, 1.0),
                "the temperature is missing: reread 07 §3"),
        Mistake(_info_nce_with_batch,
                "the negatives are the queue's rows only (the other keys of the batch are not among them here)"),
    ],
)


def _enqueue_reference(queue, ptr, keys):
    fifo = FeatureQueue(queue.shape[0], queue.shape[1], dtype=queue.dtype)
    fifo.queue.copy_(queue)
    fifo.ptr.fill_(int(ptr))
    fifo.count.fill_(queue.shape[0])  # the storage is full: every row is a stored key
    fifo.enqueue(keys)
    return fifo.queue.clone(), int(fifo.ptr)


def _enqueue_no_wrap(queue, ptr, keys):
    out = queue.clone()
    keys = F.normalize(keys, dim=1)[-len(queue):]
    room = min(len(keys), len(queue) - ptr)
    out[ptr:ptr + room] = keys[:room]
    return out, (ptr + room) % len(queue)


def _enqueue_unnormalized(queue, ptr, keys):
    out, new_ptr = _enqueue_reference(queue, ptr, keys)
    rows = (ptr + torch.arange(min(len(keys), len(queue)))) % len(queue)
    out[rows] = keys[-len(queue):]
    return out, new_ptr


def _enqueue_cases() -> list[Case]:
    g = torch.Generator().manual_seed(10)
    queue = F.normalize(torch.randn(8, 3, generator=g), dim=1)
    keys = torch.randn(11, 3, generator=g) * 3
    return [
        Case("a queue of 8, pointer 0, 3 keys", (queue, 0, keys[:3])),
        Case("pointer 6, 4 keys: two at the end, two wrapped to the start", (queue, 6, keys[:4]),
             hint="rows that do not fit before the end wrap around to row 0: reread 07 §3 (the queue)"),
        Case("pointer 5, 3 keys: exactly up to the end", (queue, 5, keys[:3]),
             hint="the pointer after the last row is row 0 again (modulo the size)"),
        Case("a batch as large as the queue, pointer 3", (queue, 3, keys[:8])),
        Case("a batch of 11, larger than the queue of 8, pointer 2", (queue, 2, keys),
             hint="a batch larger than the queue keeps only its newest (last) rows"),
    ]


#: 07.2: the FIFO enqueue of MoCo's queue, with wrap-around.
check_enqueue = exercise(
    "07.2", "the queue's FIFO enqueue", "07 §3 (MoCo: a queue and a momentum encoder)",
    reference=_enqueue_reference,
    cases=_enqueue_cases,
    forbidden=("clbook.memory.FeatureQueue",),
    mistakes=[
        Mistake(_enqueue_no_wrap,
                "the keys that do not fit before the end of the storage were dropped: wrap them around to row 0"),
        Mistake(_enqueue_unnormalized, "the queue stores L2-normalized keys"),
    ],
    rtol=1e-6, atol=1e-6,
)


def _ema_reference(target, online, m):
    t = torch.nn.ParameterList([torch.nn.Parameter(x.detach().clone()) for x in target])
    o = torch.nn.ParameterList([torch.nn.Parameter(x.detach().clone()) for x in online])
    with torch.no_grad():
        momentum_update(t, o, m)
    return [p.detach() for p in t]


def _ema_cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    target = [torch.randn(3, 4, generator=g), torch.randn(4, generator=g)]
    online = [torch.randn(3, 4, generator=g), torch.randn(4, generator=g)]
    return [
        Case("a weight [3, 4] and a bias [4], m = 0.99", (target, online, 0.99)),
        Case("m = 0.9", (target, online, 0.9)),
        Case("m = 0: the target becomes a copy of the online network", (target, online, 0.0)),
        Case("m = 1: the target does not move", (target, online, 1.0)),
    ]


#: 07.3: the momentum (EMA) update of the key encoder's weights.
check_ema_update = exercise(
    "07.3", "the momentum update", "07 §3 (the momentum encoder)",
    reference=_ema_reference,
    cases=_ema_cases,
    forbidden=("clbook.memory.momentum_update",),
    mistakes=[
        Mistake(lambda t, o, m: [m * b + (1 - m) * a for a, b in zip(t, o)],
                "m weighs the *target's* own old weights (m = 0.99 moves it slowly): reread 07 §3 (the momentum "
                "encoder)"),
    ],
    rtol=1e-6, atol=1e-7,
)
