"""SwAV: swav_loss against independent references, Prototypes, and the "swav" training method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clbook.cluster import sinkhorn_knopp
from clbook.encoders import Prototypes
from clbook.losses import swav_loss


def scores_and_codes(b: int = 16, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s1, s2 = (torch.rand(b, k, generator=g) * 2 - 1 for _ in range(2))
    q1, q2 = (torch.softmax(3 * torch.randn(b, k, generator=g), dim=1) for _ in range(2))
    return s1, s2, q1, q2


# ----------------------------------------------------------------------------- swav_loss


def test_swav_loss_matches_float64_loops():
    s1, s2, q1, q2 = scores_and_codes()
    t = 0.1

    def ce(scores, code):  # -sum_k q_k log softmax(s / t)_k, one sample at a time
        total = 0.0
        for s_row, q_row in zip(scores.double().tolist(), code.double().tolist()):
            logits = [v / t for v in s_row]
            m = max(logits)
            lse = m + math.log(sum(math.exp(v - m) for v in logits))
            total += -sum(q * (v - lse) for q, v in zip(q_row, logits))
        return total / len(scores)

    expected = 0.5 * (ce(s1, q2) + ce(s2, q1))  # swapped: view 1 predicts view 2's code
    assert swav_loss(s1, s2, q1, q2, temperature=t).item() == pytest.approx(expected, rel=1e-5)
    # The same with torch's soft-target cross-entropy, an independent implementation.
    ref = 0.5 * (F.cross_entropy(s1 / t, q2) + F.cross_entropy(s2 / t, q1))
    torch.testing.assert_close(swav_loss(s1, s2, q1, q2, temperature=t), ref)
    # The prediction really is swapped: pairing each view with its own code gives another number.
    unswapped = 0.5 * (F.cross_entropy(s1 / t, q1) + F.cross_entropy(s2 / t, q2))
    assert not torch.isclose(swav_loss(s1, s2, q1, q2, temperature=t), unswapped)


def test_swav_loss_of_uninformative_scores_is_log_k():
    _, _, q1, q2 = scores_and_codes(k=7)
    flat = torch.zeros(16, 7)
    assert swav_loss(flat, flat, q1, q2).item() == pytest.approx(math.log(7), rel=1e-6)


def test_codes_get_no_gradient_scores_do():
    s1, s2, q1, q2 = scores_and_codes()
    s1.requires_grad_()
    s2.requires_grad_()
    q1.requires_grad_()
    q2.requires_grad_()
    swav_loss(s1, s2, q1, q2).backward()
    assert q1.grad is None and q2.grad is None
    assert torch.isfinite(s1.grad).all() and s1.grad.abs().sum() > 0
    # Gradient of view 1's scores: (softmax(s1 / t) - q2) / (t * B), halved for the mean of two views.
    torch.testing.assert_close(s1.grad, (torch.softmax(s1.detach() / 0.1, 1) - q2.detach()) / (0.1 * 16) / 2)


def test_swav_loss_half_precision_and_small_temperature():
    s1, s2, q1, q2 = scores_and_codes()
    out = swav_loss(s1.half(), s2.half(), q1.half(), q2.half(), temperature=0.01)
    assert out.dtype == torch.float16 and torch.isfinite(out)
    ref = swav_loss(s1.half().float(), s2.half().float(), q1.half().float(), q2.half().float(), temperature=0.01)
    assert out.item() == pytest.approx(ref.item(), rel=2e-3)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "scores2": a["scores2"][:-1]}, "shapes must match"),
        (lambda a: {**a, "q1": a["q1"][:, :-1]}, "shapes must match"),
        (lambda a: {**a, "scores1": a["scores1"][0]}, r"\[N, D\]"),
        (lambda a: {**a, "q2": -a["q2"]}, "non-negative"),
        (lambda a: {**a, "q1": a["q1"].masked_fill(a["q1"] > 0.5, float("nan"))}, "NaN"),
        (lambda a: {**a, "temperature": 0.0}, "temperature"),
        (lambda a: {**a, "scores1": a["scores1"].long()}, "floating-point"),
    ],
)
def test_swav_loss_bad_input(change, match):
    s1, s2, q1, q2 = scores_and_codes()
    args = dict(scores1=s1, scores2=s2, q1=q1, q2=q2, temperature=0.1)
    with pytest.raises(ValueError, match=match):
        swav_loss(**change(args))


# ----------------------------------------------------------------------------- Prototypes


def test_prototypes_are_unit_rows_without_bias():
    torch.manual_seed(0)
    protos = Prototypes(8, 5)
    assert [name for name, _ in protos.named_parameters()] == ["weight"]
    assert protos.weight.shape == (5, 8)
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(5))
    z = F.normalize(torch.randn(10, 8), dim=1)
    scores = protos(z)
    torch.testing.assert_close(scores, z @ protos.weight.T)
    assert scores.abs().max() <= 1 + 1e-6  # cosine similarities


def test_prototypes_normalize_in_place_after_a_step():
    torch.manual_seed(0)
    protos = Prototypes(4, 3)
    opt = torch.optim.SGD(protos.parameters(), lr=1.0)
    protos(torch.randn(6, 4)).pow(2).sum().backward()
    opt.step()
    assert not torch.allclose(protos.weight.norm(dim=1), torch.ones(3))
    direction = F.normalize(protos.weight.detach(), dim=1)
    protos.normalize_()
    torch.testing.assert_close(protos.weight.detach(), direction)
    assert protos.weight.grad_fn is None and protos.weight.requires_grad


@pytest.mark.parametrize("dim, k", [(0, 3), (4, 0), (4.0, 3), (True, 3)])
def test_prototypes_bad_sizes(dim, k):
    with pytest.raises(ValueError, match="positive integer"):
        Prototypes(dim, k)


def test_prototypes_bad_input_shape():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        Prototypes(4, 3)(torch.randn(5, 6))
