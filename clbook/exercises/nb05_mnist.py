"""Checkers of notebook 05 (MNIST: baselines on frozen features).

The notebook is ``notebooks/05_mnist.ipynb``; its checked exercises:

* 05.1: :data:`check_knn_predict`, kNN by cosine similarity, majority vote.
* 05.2: :data:`check_probe_step`, one gradient step of a linear probe.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbook.evaluation import knn_predict
from clbook.exercises.core import Case, Mistake, exercise

__all__ = ["check_knn_predict", "check_probe_step"]


def _knn_reference(train_feats, train_y, query_feats, k):
    return knn_predict(train_feats, train_y, query_feats, k=k)


def _knn_l2(train_feats, train_y, query_feats, k):
    idx = torch.cdist(query_feats, train_feats).topk(k, largest=False).indices
    return F.one_hot(train_y[idx], int(train_y.max()) + 1).sum(1).argmax(1)


def _knn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 6, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    q = torch.randn(10, 6, generator=g)
    scaled = x * torch.linspace(0.1, 10, 40)[:, None]  # lengths differ, directions do not
    # A tie: two neighbours of class 2 and two of class 0; the vote goes to the smaller label.
    tx = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [-1.0, 0.0]])
    ty = torch.tensor([2, 0, 2, 0, 1])
    return [
        Case("40 training points in 6-D, 4 classes, 10 queries, k = 5", (x, y, q, 5)),
        Case("k = 1", (x, y, q, 1)),
        Case("the same training points with lengths from 0.1 to 10, k = 5", (scaled, y, q, 5),
             hint="the neighbours are the most *similar directions*: cosine similarity, not Euclidean distance"),
        Case("a 2-2 tie among the 4 nearest neighbours", (tx, ty, torch.tensor([[1.0, 0.05]]), 4),
             hint="a tie goes to the smallest label (argmax returns the first maximum)"),
    ]


#: 05.1: kNN classification by cosine similarity and majority vote.
check_knn_predict = exercise(
    "05.1", "kNN by cosine similarity, majority vote", "05 'Baselines first' (kNN on frozen features)",
    reference=_knn_reference,
    cases=_knn_cases,
    forbidden=("clbook.evaluation.knn_predict",),
    mistakes=[
        Mistake(_knn_l2, "the neighbours are found by cosine similarity, not Euclidean distance"),
        Mistake(lambda x, y, q, k: F.one_hot(y[(F.normalize(q, dim=1) @ F.normalize(x, dim=1).T).topk(k, largest=False).indices],
                                             int(y.max()) + 1).sum(1).argmax(1),
                "the nearest neighbours have the *largest* cosine similarity (topk with largest=True)"),
    ],
    rtol=0.0, atol=0.0,
)


def _probe_step_reference(W, b, feats, y, lr):
    W, b = W.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(feats @ W.T + b, y)
    gW, gb = torch.autograd.grad(loss, (W, b))
    return (W - lr * gW).detach(), (b - lr * gb).detach()


def _probe_step_cases() -> list[Case]:
    g = torch.Generator().manual_seed(8)
    feats, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    W, b = 0.1 * torch.randn(3, 5, generator=g), torch.zeros(3)
    big = torch.randn(4, 5, generator=g) * 40  # logits in the hundreds
    return [
        Case("zero-bias head, 16 features in 5-D, 3 classes, lr = 0.1", (W, b, feats, y, 0.1)),
        Case("a non-zero bias, lr = 1", (W, torch.tensor([0.5, -0.2, 0.1]), feats, y, 1.0)),
        Case("4 long feature vectors (logits in the hundreds), lr = 0.01", (W, b, big, y[:4], 0.01),
             hint="exp overflows: compute the softmax stably (torch.softmax or F.cross_entropy)"),
    ]


def _probe_step_sum(W, b, feats, y, lr):
    return _probe_step_reference(W, b, feats, y, lr * len(y))


#: 05.2: one full-batch gradient step of a linear probe (softmax regression) on frozen features.
check_probe_step = exercise(
    "05.2", "one linear-probe step", "05 'Baselines first' (the linear probe) and 02 §7.2 (softmax gradient)",
    reference=_probe_step_reference,
    cases=_probe_step_cases,
    no_autograd=True,
    mistakes=[
        Mistake(lambda W, b, x, y, lr: _probe_step_reference(W, b, x, y, -lr),
                "a gradient step goes *down* the gradient: subtract lr times it"),
        Mistake(_probe_step_sum, "the loss is the mean cross-entropy over the batch, so its gradient is divided by N"),
        Mistake(lambda W, b, x, y, lr: (_probe_step_reference(W, b, x, y, lr)[0], b),
                "the bias is trained too"),
    ],
    rtol=1e-5, atol=1e-6,
)
