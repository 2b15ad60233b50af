"""Checkers of notebook 10 (what keeps BYOL and SimSiam from collapsing).

The notebook is ``notebooks/10_batchnorm_debate.ipynb``; its checked exercises:

* 10.1: :data:`check_weight_standardization`, a weight-standardized weight matrix.
* 10.2: :data:`check_group_norm`, group normalization of a batch of feature vectors.
* 10.3: :data:`check_predictor_gradient`, the gradient of the linear toy's loss for the predictor.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import torch

from clbook.exercises.core import Case, Mistake, exercise

__all__ = ["check_weight_standardization", "check_group_norm", "check_predictor_gradient"]


def _ws_reference(w, eps=1e-5):
    w = w.double()
    mean = w.mean(dim=1, keepdim=True)
    var = w.var(dim=1, unbiased=False, keepdim=True)
    return (w - mean) / torch.sqrt(var + eps)


def _ws_cases() -> list[Case]:
    g = torch.Generator().manual_seed(21)
    w = torch.randn(5, 7, generator=g)
    return [
        Case("a 5 x 7 weight (5 output units, 7 inputs)", (w,)),
        Case("the same weight scaled by 40 and shifted by 3 (same answer, up to eps)", (40 * w + 3,)),
        Case("a square 6 x 6 weight, eps = 0.1", (torch.randn(6, 6, generator=g),), {"eps": 0.1},
             hint="eps goes inside the square root, added to the variance: (w - mean) / sqrt(var + eps)"),
        Case("a weight with one constant row (variance 0: finite, all zeros)",
             (torch.cat([torch.full((1, 4), 2.0), torch.randn(3, 4, generator=g)]),),
             hint="with eps inside the square root a constant row becomes 0, never 0/0"),
    ]


#: 10.1: weight standardization (Qiao et al., 2019), each output unit's row over its inputs.
check_weight_standardization = exercise(
    "10.1", "weight standardization", "10 §3 (the rebuttal: no batch statistics)",
    reference=_ws_reference,
    cases=_ws_cases,
    mistakes=[
        Mistake(lambda w, eps=1e-5: _ws_reference(w.T, eps).T,
                "standardize each *row* (one output unit, over its inputs: dim=1), not each column"),
        Mistake(lambda w, eps=1e-5: (w.double() - w.double().mean(1, keepdim=True))
                / torch.sqrt(w.double().var(1, keepdim=True) + eps),
                "use the biased variance (divide by the number of inputs: unbiased=False), as batch norm does"),
        Mistake(lambda w, eps=1e-5: (w.double() - w.double().mean(1, keepdim=True))
                / (w.double().std(1, unbiased=False, keepdim=True) + eps),
                "eps goes inside the square root: sqrt(var + eps), not std + eps"),
    ],
    rtol=1e-6, atol=1e-9,
)


def _gn_reference(h, groups, eps=1e-5):
    n, c = h.shape
    x = h.double().reshape(n, groups, c // groups)
    mean = x.mean(dim=2, keepdim=True)
    var = x.var(dim=2, unbiased=False, keepdim=True)
    return ((x - mean) / torch.sqrt(var + eps)).reshape(n, c)


def _gn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(22)
    h = torch.randn(6, 8, generator=g) * torch.linspace(0.5, 4, 8) + 2
    return [
        Case("6 samples, 8 features, 2 groups", (h, 2)),
        Case("6 samples, 8 features, 1 group (layer norm)", (h, 1)),
        Case("one sample alone, 8 features, 4 groups (no batch needed)", (h[:1], 4),
             hint="group norm's statistics are per sample: it must work on a batch of one"),
        Case("12 features in 3 groups, eps = 0.5", (torch.randn(4, 12, generator=g), 3), {"eps": 0.5}),
    ]


def _gn_over_batch(h, groups, eps=1e-5):
    n, c = h.shape
    x = h.double().reshape(n, groups, c // groups)
    mean = x.mean(dim=(0, 2), keepdim=True)
    var = x.var(dim=(0, 2), unbiased=False, keepdim=True)
    return ((x - mean) / torch.sqrt(var + eps)).reshape(n, c)


def _gn_interleaved(h, groups, eps=1e-5):
    n, c = h.shape
    x = h.double().reshape(n, c // groups, groups)  # group k = features k, k + G, ...: wrong grouping
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    return ((x - mean) / torch.sqrt(var + eps)).reshape(n, c)


#: 10.2: group normalization (Wu and He, 2018) of feature vectors, without learned scale and shift.
check_group_norm = exercise(
    "10.2", "group normalization", "10 §3 (the rebuttal) and 'Norms, written out'",
    reference=_gn_reference,
    cases=_gn_cases,
    mistakes=[
        Mistake(_gn_over_batch, "group norm's mean and variance are per sample: average over the features of a "
                                "group only, never over the batch (that would bring batch statistics back)"),
        Mistake(_gn_interleaved, "a group is a block of consecutive features: reshape to [N, G, C // G]"),
        Mistake(lambda h, groups, eps=1e-5: _gn_reference(h, 1, eps),
                "standardize each group separately, not all the features of a sample at once (that is layer norm)"),
    ],
    rtol=1e-6, atol=1e-9,
)


def _toy_loss(W, Wp, Wa, X, sigma2, eta):
    """The linear toy's expected loss, 1/2 E||Wp W x1 - Wa x2||^2 + eta/2 (|W|^2 + |Wp|^2), x_v = x + e_v."""
    Xp = X + sigma2 * torch.eye(X.shape[0], dtype=X.dtype)
    A = Wp @ W
    return (0.5 * torch.trace(A @ Xp @ A.T) - torch.trace(A @ X @ Wa.T) + 0.5 * torch.trace(Wa @ Xp @ Wa.T)
            + 0.5 * eta * (W.pow(2).sum() + Wp.pow(2).sum()))


def _grad_reference(W, Wp, Wa, X, sigma2, eta):
    Wp = Wp.double().clone().requires_grad_()
    loss = _toy_loss(W.double(), Wp, Wa.double(), X.double(), sigma2, eta)
    (grad,) = torch.autograd.grad(loss, Wp)
    return grad


def _grad_cases() -> list[Case]:
    g = torch.Generator().manual_seed(23)
    d = 4
    B = torch.randn(d, d, generator=g, dtype=torch.float64)
    X = B @ B.T / d
    W, Wp, Wa = (torch.randn(d, d, generator=g, dtype=torch.float64) for _ in range(3))
    return [
        Case("4 x 4 matrices, sigma^2 = 0.5, eta = 0", (W, Wp, Wa, X, 0.5, 0.0)),
        Case("the same with weight decay eta = 0.1", (W, Wp, Wa, X, 0.5, 0.1),
             hint="weight decay adds eta * Wp to the gradient"),
        Case("no augmentation noise (sigma^2 = 0), target = online (Wa = W)", (W, Wp, W.clone(), X, 0.0, 0.01)),
        Case("a 3 x 5 encoder (5 inputs, 3 outputs), a 3 x 3 predictor",
             (torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64),
              torch.randn(3, 5, generator=g, dtype=torch.float64), torch.eye(5, dtype=torch.float64), 0.2, 0.0)),
    ]


def _grad_no_noise(W, Wp, Wa, X, sigma2, eta):
    return _grad_reference(W, Wp, Wa, X, 0.0, eta)


def _grad_wrong_side(W, Wp, Wa, X, sigma2, eta):
    Xp = X + sigma2 * torch.eye(X.shape[0], dtype=X.dtype)
    return W @ Xp @ W.T @ Wp - Wa @ X @ W.T + eta * Wp


#: 10.3: the predictor's gradient in the linear toy of Tian, Chen and Ganguli (2021).
check_predictor_gradient = exercise(
    "10.3", "the predictor's gradient in the linear toy", "10 §4 (the toy that can be solved by hand)",
    reference=_grad_reference,
    cases=_grad_cases,
    mistakes=[
        Mistake(_grad_no_noise, "the online view carries its own noise: its second moment is X + sigma^2 I, "
                                "the cross moment of the two views is X"),
        Mistake(_grad_wrong_side, "d/dWp tr(Wp M Wp^T) / 2 = Wp M: the predictor multiplies from the left, "
                                  "so the gradient is (Wp W (X + sigma^2 I) - Wa X) W^T + eta Wp"),
    ],
    rtol=1e-6, atol=1e-9,
)
