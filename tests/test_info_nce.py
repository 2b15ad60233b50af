"""clbook.losses.info_nce_loss against a float64 loop, lightly's memory-bank NTXentLoss, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clbook.losses import InfoNCELoss, info_nce_loss

SEEDS = range(10)


def loop_info_nce(q, k, neg, t, normalize=True):
    """Plain Python over queries, float64: -log(exp(pos) / (exp(pos) + sum exp(neg)))."""

    def unit(v):
        if not normalize:
            return v
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    q, k = [unit(v) for v in q.tolist()], [unit(v) for v in k.tolist()]
    total = 0.0
    for i, qi in enumerate(q):
        pos = dot(qi, k[i]) / t
        if neg is None:  # in-batch: the other keys
            others = [dot(qi, k[j]) / t for j in range(len(k)) if j != i]
        else:
            others = [dot(qi, unit(n)) / t for n in neg.tolist()]
        top = max([pos] + others)
        denom = math.exp(pos - top) + sum(math.exp(o - top) for o in others)
        total += -(pos - top - math.log(denom))
    return total / len(q)


@pytest.mark.parametrize("seed", SEEDS)
def test_matches_float64_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n, d, k = 2 + seed % 5, 3 + seed % 4, 1 + 3 * seed
    t = (0.05, 0.07, 0.2, 1.0)[seed % 4]
    q, key, neg = (torch.randn(m, d, generator=g, dtype=torch.float64) for m in (n, n, k))
    for normalize in (True, False):
        scale = 1.0 if normalize else 0.3  # keep raw inner products / t moderate for the loop's exp
        got = info_nce_loss(q * scale, key * scale, neg * scale, t, normalize).item()
        assert got == pytest.approx(loop_info_nce(q * scale, key * scale, neg * scale, t, normalize), rel=1e-10)
        got = info_nce_loss(q * scale, key * scale, None, t, normalize).item()
        assert got == pytest.approx(loop_info_nce(q * scale, key * scale, None, t, normalize), rel=1e-10)


def test_logit_layout_positive_in_column_zero():
    g = torch.Generator().manual_seed(0)
    q, key, neg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    qn, kn, nn_ = (F.normalize(x, dim=1) for x in (q, key, neg))
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ nn_.T], dim=1) / 0.1
    expected = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(info_nce_loss(q, key, neg, 0.1), expected)


@pytest.mark.parametrize("seed", range(4))
def test_matches_lightly_ntxent_with_memory_bank(seed, peer):
    """lightly's bank holds earlier keys; its loss on (out0, out1) is InfoNCE with that bank as negatives."""
    LightlyNTXent = peer("lightly.loss", "lightly").NTXentLoss

    torch.manual_seed(seed)  # lightly fills its bank with random unit vectors from the global generator
    bank_size, dim, batch, t = 24, 8, 6, (0.1, 0.2, 0.5, 0.07)[seed]
    lightly_loss = LightlyNTXent(temperature=t, memory_bank_size=(bank_size, dim))
    g = torch.Generator().manual_seed(100 + seed)
    for step in range(6):  # more than one lap: the bank wraps around
        out0 = torch.randn(batch, dim, generator=g, dtype=torch.float64).requires_grad_()
        out1 = torch.randn(batch, dim, generator=g, dtype=torch.float64)
        bank = lightly_loss.memory_bank.bank.clone().double()  # [K, D], the rows before this call
        ours = info_nce_loss(out0, out1, negatives=bank, temperature=t)
        theirs = lightly_loss(out0.float(), out1.float())  # lightly's bank is float32
        torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)
        # lightly enqueued the normalized out1 at the position it had reached: those are earlier keys.
        ptr = (step * batch) % bank_size
        torch.testing.assert_close(lightly_loss.memory_bank.bank[ptr : ptr + batch], F.normalize(out1.float(), dim=1))
        # The gradient with respect to out0 agrees too.
        ours.backward()
        ref0 = out0.detach().float().requires_grad_()
        lightly_fixed = _lightly_with_bank(LightlyNTXent, bank.float(), t)
        lightly_fixed(ref0, out1.float()).backward()
        torch.testing.assert_close(out0.grad.float(), ref0.grad, rtol=1e-4, atol=1e-6)


def _lightly_with_bank(LightlyNTXent, bank, t):
    loss = LightlyNTXent(temperature=t, memory_bank_size=tuple(bank.shape))
    loss.memory_bank.bank.copy_(bank)
    return loss


def test_no_gradient_to_negatives_and_key_only_when_asked():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(4, 3, generator=g, requires_grad=True)
    key = torch.randn(4, 3, generator=g)
    neg = torch.randn(9, 3, generator=g, requires_grad=True)
    info_nce_loss(q, key, neg, 0.2).backward()
    assert q.grad is not None and neg.grad is None
    key.requires_grad_()
    info_nce_loss(q, key, neg, 0.2).backward()
    assert key.grad is not None and key.grad.abs().sum() > 0 and neg.grad is None
    with torch.no_grad():
        k_const = key * 1.0
    out = info_nce_loss(q, k_const, neg, 0.2)
    assert out.requires_grad  # through q only


def test_gradcheck():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    key = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(6, 5, generator=g, dtype=torch.float64)
    for normalize in (True, False):
        assert torch.autograd.gradcheck(lambda a, b: info_nce_loss(a, b, neg, 0.3, normalize), (q, key))
        assert torch.autograd.gradcheck(lambda a, b: info_nce_loss(a, b, None, 0.3, normalize), (q, key))


@pytest.mark.parametrize("t", [0.01, 0.005])
def test_finite_at_small_temperature_and_in_float16(t):
    g = torch.Generator().manual_seed(3)
    q, key, neg = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(64, 16, generator=g)
    ref = info_nce_loss(q.double(), key.double(), neg.double(), t)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        qq = q.to(dtype, copy=True).requires_grad_()
        out = info_nce_loss(qq, key.to(dtype), neg.to(dtype), t)
        assert out.dtype == dtype and torch.isfinite(out)
        out.backward()
        assert qq.grad.dtype == dtype and torch.isfinite(qq.grad).all()
        # Only the rounding of the inputs to dtype separates the result from float64's.
        exact = info_nce_loss(q.to(dtype).double(), key.to(dtype).double(), neg.to(dtype).double(), t)
        assert out.double().item() == pytest.approx(exact.item(), rel=1e-2, abs=1e-2)
    assert math.isfinite(ref.item())
    # Large unnormalized inputs without normalization stay finite in log space.
    assert torch.isfinite(info_nce_loss(q * 1e3, key * 1e3, neg * 1e3, t, normalize=False))


def test_random_features_sit_near_log_k_plus_one():
    g = torch.Generator().manual_seed(4)
    q, key, neg = torch.randn(256, 64, generator=g), torch.randn(256, 64, generator=g), torch.randn(255, 64, generator=g)
    # At temperature 1 random unit vectors have near-zero similarities: the softmax is almost uniform.
    assert info_nce_loss(q, key, neg, 1.0).item() == pytest.approx(math.log(256), abs=0.02)
    assert info_nce_loss(q, key, None, 1.0).item() == pytest.approx(math.log(256), abs=0.02)


def test_perfect_alignment_drives_loss_to_zero():
    basis = torch.eye(8)
    key, neg = basis[:4], basis[4:]
    # Each query equals its key and is orthogonal to every negative: at t = 0.01 the positive wins
    # by 100 nats, so the loss is about exp(-100) and must not be rounded into a NaN or a negative.
    out = info_nce_loss(key, key, neg, 0.01)
    assert 0.0 <= out.item() < 1e-6
    assert 0.0 <= info_nce_loss(key, key, None, 0.01).item() < 1e-6


def test_module_matches_function():
    g = torch.Generator().manual_seed(5)
    q, key, neg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    assert InfoNCELoss(0.2)(q, key, neg) == info_nce_loss(q, key, neg, 0.2)
    assert InfoNCELoss(0.2, normalize=False)(q, key) == info_nce_loss(q, key, None, 0.2, normalize=False)


def test_does_not_modify_inputs():
    g = torch.Generator().manual_seed(6)
    q, key, neg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    copies = [x.clone() for x in (q, key, neg)]
    info_nce_loss(q, key, neg, 0.1)
    for x, c in zip((q, key, neg), copies):
        assert torch.equal(x, c)


BAD = {
    "query rank": (lambda: info_nce_loss(torch.randn(4), torch.randn(4)), "query"),
    "key shape": (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(5, 3)), "match"),
    "negatives D": (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(7, 2)), "same D"),
    "negatives rank": (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(3)), "negatives"),
    "negatives empty": (lambda: info_nce_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(0, 3)), "empty"),
    "integer": (lambda: info_nce_loss(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3)), "floating"),
    "nan query": (lambda: info_nce_loss(torch.full((2, 3), float("nan")), torch.randn(2, 3)), "NaN"),
    "inf negatives": (lambda: info_nce_loss(torch.randn(2, 3), torch.randn(2, 3), torch.full((2, 3), float("inf"))),
                      "negatives"),
    "temperature": (lambda: info_nce_loss(torch.randn(2, 3), torch.randn(2, 3), temperature=0.0), "temperature"),
    "in-batch of one": (lambda: info_nce_loss(torch.randn(1, 3), torch.randn(1, 3)), "N >= 2"),
    "module temperature": (lambda: InfoNCELoss(temperature=-1.0), "temperature"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_value_error(case):
    call, word = BAD[case]
    with pytest.raises(ValueError, match=word):
        call()
