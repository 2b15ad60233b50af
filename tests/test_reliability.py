"""Reliability (issue 13): arguments are never changed, half precision stays finite, every loaded
file is verified, and bad input of every kind gets a clear error naming the argument.

Each numbered section is one item of the issue; the sweep of the public API follows them.
References are float64 computations of the same loss (the values half precision must reach).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import clbook.losses as L
from clbook.losses import (
    MarginContrastiveLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
    margin_contrastive_loss,
    nt_xent_loss,
    supcon_loss,
    triplet_margin_loss,
)

HALF = [torch.float16, torch.bfloat16]


# ----------------------------------------------------------------------------- 1. arguments unchanged


@pytest.mark.parametrize("variant", ["in", "out"])
@pytest.mark.parametrize("views", [1, 2])
def test_supcon_mask_is_not_changed_and_calls_repeat(variant, views):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, views, 4, generator=g).squeeze(1)
    mask = torch.rand(6, 6, generator=g) > 0.5
    mask.fill_diagonal_(True)
    before = mask.clone()
    first = supcon_loss(features, mask=mask, variant=variant)
    assert torch.equal(mask, before)
    second = supcon_loss(features, mask=mask, variant=variant)
    assert first.item() == second.item()


def _every_loss_call(dtype=torch.float32):
    """Calls of every loss with every kind of argument, on fresh tensors (name -> (call, args))."""
    g = torch.Generator().manual_seed(1)
    x = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return {
        "margin": (margin_contrastive_loss, (x(6, 3), x(6, 3), torch.tensor([0, 1, 0, 1, 1, 0]))),
        "margin bool y": (margin_contrastive_loss, (x(6, 3), x(6, 3), torch.tensor([0, 1, 0, 1, 1, 0]).bool())),
        "triplet": (triplet_margin_loss, (x(6, 3), x(6, 3), x(6, 3))),
        "nt_xent": (nt_xent_loss, (x(6, 3), x(6, 3))),
        "supcon labels": (supcon_loss, (x(6, 2, 3), labels)),
        "supcon float labels": (supcon_loss, (x(6, 2, 3), labels.float())),
        "supcon float mask": (supcon_loss, (x(6, 3), None, (labels[:, None] == labels[None, :]).to(dtype))),
        "supcon bool mask in": (lambda f, lab, m: supcon_loss(f, lab, m, variant="in"),
                                (x(6, 3), None, labels[:, None] == labels[None, :])),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_loss_changes_any_argument(dtype):
    for name, (fn, args) in _every_loss_call(dtype).items():
        copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        fn(*args)
        for a, c in zip(args, copies):
            if isinstance(a, torch.Tensor):
                assert a.dtype == c.dtype and torch.equal(a, c), name


# ----------------------------------------------------------------------------- 3. half precision accumulates in float32


def _supcon_f64(features, labels, t):
    return supcon_loss(features.double(), labels, temperature=t)


@pytest.mark.parametrize("n, t", [(512, 0.01), (4096, 0.1)])
def test_supcon_out_in_float16_is_finite_and_close_to_float64(n, t):
    d = 8 if n == 512 else 16  # few dimensions: high similarities, the worst case for overflow
    g = torch.Generator().manual_seed(3)
    features = torch.randn(n, 2, d, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    half = features.half().requires_grad_()
    loss = supcon_loss(half, labels, temperature=t)
    assert loss.dtype == torch.float16
    assert torch.isfinite(loss)
    ref = _supcon_f64(half.detach(), labels, t).item()
    assert loss.item() == pytest.approx(ref, rel=2e-3)
    loss.backward()
    assert half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()


@pytest.mark.parametrize("dtype", HALF)
def test_every_loss_returns_the_input_dtype_and_matches_float64(dtype):
    for name, (fn, args) in _every_loss_call(dtype).items():
        out = fn(*args)
        ref = fn(*[a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args])
        assert out.dtype == dtype, name
        tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
        assert out.double().item() == pytest.approx(ref.item(), rel=tol, abs=tol), name


def test_modules_return_the_input_dtype():
    x = torch.randn(4, 3).half()
    y = torch.tensor([0, 1, 0, 1])
    assert MarginContrastiveLoss()(x, x.flip(0), y).dtype == torch.float16
    assert TripletMarginLoss()(x, x.flip(0), -x).dtype == torch.float16
    assert NTXentLoss()(x, x.flip(0)).dtype == torch.float16
    assert SupConLoss()(x.view(2, 2, 3), torch.tensor([0, 1])).dtype == torch.float16


# ----------------------------------------------------------------------------- 4. float16 NaNs where the value is finite


def test_margin_loss_float16_dissimilar_pair_far_beyond_margin():
    x1 = torch.tensor([[300.0, 0.0], [0.0, 0.0]], dtype=torch.float16)
    x2 = torch.tensor([[-300.0, 0.0], [0.5, 0.0]], dtype=torch.float16)
    y = torch.tensor([1, 0])  # the first pair is dissimilar and 600 apart: d^2 overflows float16
    loss = margin_contrastive_loss(x1, x2, y)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.5 * 0.25 / 2, rel=1e-3)


def test_triplet_loss_float16_large_distances():
    a = torch.tensor([[0.0, 0.0]], dtype=torch.float16)
    p = torch.tensor([[300.0, 0.0]], dtype=torch.float16)
    n = torch.tensor([[0.0, 400.0]], dtype=torch.float16)
    loss = triplet_margin_loss(a, p, n, margin=150.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(50.0, rel=1e-3)


@pytest.mark.parametrize("dtype", HALF)
def test_all_zero_row_in_half_precision(dtype):
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    z1[1] = 0.0
    ref = nt_xent_loss(z1.double(), z2.double()).item()
    got = nt_xent_loss(z1.to(dtype), z2.to(dtype))
    assert torch.isfinite(got) and got.item() == pytest.approx(ref, rel=2e-2)
    features = torch.stack([z1, z2], dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    for variant in ("out", "in"):
        ref = supcon_loss(features.double(), labels, variant=variant).item()
        got = supcon_loss(features.to(dtype), labels, variant=variant)
        assert torch.isfinite(got) and got.item() == pytest.approx(ref, rel=2e-2)


# ----------------------------------------------------------------------------- losses: sweep


def test_float32_overflow_in_distances_is_exact_or_an_error():
    # Distances beyond sqrt(float32 max) ~ 1.8e19: the square overflows, the distance does not.
    a = torch.tensor([[0.0, 0.0]])
    p = torch.tensor([[3e19, 0.0]])
    n = torch.tensor([[0.0, 4e19]])
    assert triplet_margin_loss(a, p, n).item() == 0.0  # d_ap - d_an = -1e19
    assert triplet_margin_loss(a, p, n, margin=2e19).item() == pytest.approx(1e19, rel=1e-5)
    # A dissimilar pair far beyond the margin contributes 0, however far.
    y = torch.tensor([1])
    assert margin_contrastive_loss(a, p, y).item() == 0.0
    # A similar pair 3e19 apart has energy 4.5e38 > float32 max: an error, not inf or NaN.
    with pytest.raises(ValueError, match="overflow"):
        margin_contrastive_loss(a, p, torch.tensor([0]))


@pytest.mark.parametrize("scale", [1e25, 1e30])
def test_normalized_losses_are_scale_invariant_at_extreme_magnitudes(scale):
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2])
    ref = nt_xent_loss(z1, z2, 0.2).item()
    assert nt_xent_loss(z1 * scale, z2 * scale, 0.2).item() == pytest.approx(ref, rel=1e-5)
    f = torch.stack([z1, z2], dim=1)
    for variant in ("out", "in"):
        ref = supcon_loss(f, labels, variant=variant).item()
        assert supcon_loss(f * scale, labels, variant=variant).item() == pytest.approx(ref, rel=1e-5)


def test_unnormalized_overflow_is_an_error_not_nan():
    f = torch.full((4, 2, 3), 1e19)
    f[::2] *= -1
    with pytest.raises(ValueError, match="overflow"):
        supcon_loss(f, normalize=False)


def test_float16_loss_too_large_for_float16_is_an_error():
    x1 = torch.zeros(1, 2, dtype=torch.float16)
    x2 = torch.tensor([[400.0, 0.0]], dtype=torch.float16)  # energy 80,000 > float16 max 65,504
    with pytest.raises(ValueError, match="float16"):
        margin_contrastive_loss(x1, x2, torch.tensor([0]))


NUMBERS = {
    "numpy float64": np.float64(0.5),
    "numpy float32": np.float32(0.5),
    "numpy int": np.int64(1),
    "0-d tensor": torch.tensor(0.5),
    "0-d float64 tensor": torch.tensor(0.5, dtype=torch.float64),
    "int": 1,
}


@pytest.mark.parametrize("kind", list(NUMBERS))
def test_number_types_accepted_for_temperature_and_margin(kind):
    value = NUMBERS[kind]
    as_float = float(value)
    g = torch.Generator().manual_seed(6)
    x1, x2, x3 = (torch.randn(4, 3, generator=g) for _ in range(3))
    y = torch.tensor([0, 1, 0, 1])
    labels = torch.tensor([0, 0, 1, 1])
    assert nt_xent_loss(x1, x2, value).item() == nt_xent_loss(x1, x2, as_float).item()
    assert supcon_loss(x1, labels, temperature=value).item() == supcon_loss(x1, labels, temperature=as_float).item()
    assert margin_contrastive_loss(x1, x2, y, value).item() == margin_contrastive_loss(x1, x2, y, as_float).item()
    assert triplet_margin_loss(x1, x2, x3, value).item() == triplet_margin_loss(x1, x2, x3, as_float).item()
    assert SupConLoss(value)(x1, labels).item() == supcon_loss(x1, labels, temperature=as_float).item()
    assert NTXentLoss(value)(x1, x2).item() == nt_xent_loss(x1, x2, as_float).item()
    assert MarginContrastiveLoss(value)(x1, x2, y).item() == margin_contrastive_loss(x1, x2, y, as_float).item()
    assert TripletMarginLoss(value)(x1, x2, x3).item() == triplet_margin_loss(x1, x2, x3, as_float).item()


def test_learnable_temperature_tensor_keeps_its_gradient():
    t = torch.tensor(0.5, requires_grad=True)
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    nt_xent_loss(z1, z2, t).backward()
    assert t.grad is not None and torch.isfinite(t.grad) and t.grad != 0


LOSS_BAD = {
    "bool temperature": (lambda: nt_xent_loss(torch.randn(2, 3), torch.randn(2, 3), True), "temperature"),
    "vector temperature": (lambda: supcon_loss(torch.randn(2, 3), temperature=torch.ones(2)), "temperature"),
    "nan temperature tensor": (lambda: supcon_loss(torch.randn(2, 3), temperature=torch.tensor(float("nan"))),
                               "temperature"),
    "string margin": (lambda: triplet_margin_loss(*(torch.randn(2, 2) for _ in range(3)), margin="1"), "margin"),
    "zero-width features": (lambda: nt_xent_loss(torch.randn(2, 0), torch.randn(2, 0)), "z1"),
    "zero views": (lambda: supcon_loss(torch.randn(2, 0, 3)), "features"),
    "inf in positive": (lambda: triplet_margin_loss(torch.randn(2, 2), torch.tensor([[0.0, float("inf")]] * 2),
                                                    torch.randn(2, 2)), "positive"),
    "nan in y": (lambda: margin_contrastive_loss(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0.0, float("nan")])),
                 "y"),
    "inf in labels": (lambda: supcon_loss(torch.randn(2, 3), torch.tensor([0.0, float("inf")])), "labels"),
    "nan in mask": (lambda: supcon_loss(torch.randn(2, 3), mask=torch.tensor([[1.0, float("nan")], [0.0, 1.0]])),
                    "mask"),
}


@pytest.mark.parametrize("case", list(LOSS_BAD))
def test_loss_bad_input_names_the_argument(case):
    call, word = LOSS_BAD[case]
    with pytest.raises(ValueError, match=word):
        call()


def test_losses_docstring_promises_no_silent_nan():
    assert "nothing here returns a silent NaN" in L.__doc__
    assert "float32" in L.__doc__  # the half-precision rule is documented where new losses will see it
