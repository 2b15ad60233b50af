"""SwAV: swav_loss against independent references, Prototypes, and the "swav" training method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clbook.sinkhorn import sinkhorn_knopp
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


# ----------------------------------------------------------------------------- the "swav" method


def blobs(n=192, d=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, d, generator=g)
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


def noise(x, g):
    return x + 0.2 * torch.randn(x.shape, generator=g)


def small_setup():
    from clbook.encoders import ProjectionHead, make_encoder

    torch.manual_seed(0)
    return make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8)


def test_swav_is_registered_and_checks_options():
    from clbook.methods import METHODS, SwAV, make_method

    assert METHODS["swav"] is SwAV
    m = make_method("swav", temperature=0.2, n_prototypes=6)
    assert isinstance(m, SwAV) and m.temperature == 0.2 and m.n_prototypes == 6
    with pytest.raises(ValueError, match="no option"):
        make_method("swav", queue=3)
    for bad in (dict(n_prototypes=1), dict(epsilon=0.0), dict(temperature=-1.0), dict(sinkhorn_iterations=-1),
                dict(freeze_epochs=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SwAV(**bad)


def test_swav_codes_are_the_sinkhorn_assignment_of_the_scores():
    from clbook.methods import SwAV

    encoder, head = small_setup()
    m = SwAV(n_prototypes=4, epsilon=0.1, sinkhorn_iterations=5)
    m.setup(encoder, head)
    assert m.prototypes.weight.shape == (4, 8)  # dim read from the head's last layer
    X, _ = blobs(n=32)
    scores = m.scores(head(encoder(X)))
    torch.testing.assert_close(scores, F.normalize(head(encoder(X)), dim=1) @ m.prototypes.weight.T)
    codes = m.codes(scores)
    assert not codes.requires_grad
    torch.testing.assert_close(codes, sinkhorn_knopp(scores.detach(), 0.1, 5))


def test_pretrain_swav_freezes_then_trains_prototypes_on_the_sphere():
    from clbook.methods import SwAV
    from clbook.training import pretrain

    class Recording(SwAV):
        def setup(self, encoder, head):
            super().setup(encoder, head)
            self.initial = self.prototypes.weight.detach().clone()

    X, y = blobs()
    encoder, head = small_setup()
    m = Recording(n_prototypes=4, freeze_epochs=1)
    seen = []

    def watch(_encoder, epoch):
        seen.append(m.prototypes.weight.detach().clone())
        return {}

    h = pretrain(encoder, head, X, method=m, augment=noise, epochs=3, batch_size=64, lr=1e-2, progress=False,
                 on_epoch_end=watch)
    assert all(np.isfinite(h.loss)) and len(h.loss) == 3
    torch.testing.assert_close(seen[0], m.initial)  # frozen through epoch 1
    assert not torch.allclose(seen[1], seen[0])  # trained from epoch 2 on
    for w in seen:
        torch.testing.assert_close(w.norm(dim=1), torch.ones(4))
    assert set(h.metrics) == {"prototypes_used", "code_entropy"}
    assert all(1 <= v <= 4 for v in h.metrics["prototypes_used"])
    assert all(0 <= v <= math.log(4) + 1e-6 for v in h.metrics["code_entropy"])


def test_pretrain_swav_by_name_learns_the_blobs():
    from sklearn.metrics import adjusted_rand_score

    from clbook.methods import SwAV
    from clbook.training import pretrain

    X, y = blobs(n=256)
    encoder, head = small_setup()
    m = SwAV(n_prototypes=4)
    before = adjusted_rand_score(y, (F.normalize(head(encoder(X)), dim=1) @ Prototypes(8, 4).weight.T).argmax(1))
    pretrain(encoder, head, X, method=m, augment=noise, epochs=8, batch_size=64, lr=1e-2, progress=False)
    training = encoder.training, head.training
    labels = m.assign(encoder, head, X)
    assert (encoder.training, head.training) == training  # modes restored
    assert labels.shape == (256,) and labels.dtype == torch.int64
    assert adjusted_rand_score(y, labels) > max(0.8, before + 0.3)
    # The by-name route builds the same method from options.
    encoder2, head2 = small_setup()
    h = pretrain(encoder2, head2, X, method="swav", method_options={"n_prototypes": 4}, augment=noise, epochs=1,
                 batch_size=64, progress=False)
    assert "prototypes_used" in h.metrics


def test_assign_before_setup_is_a_clear_error():
    from clbook.methods import SwAV

    encoder, head = small_setup()
    with pytest.raises(RuntimeError, match="setup"):
        SwAV().assign(encoder, head, torch.randn(4, 8))


# ----------------------------------------------------------------------------- multi-crop


def _ce(scores, code, temperature):
    """Cross-entropy of a soft code against softmax(scores / t), float64, one loop over rows."""
    total = 0.0
    for s, q in zip(scores.detach().double(), code.double()):
        total -= float((q * torch.log_softmax(s / temperature, dim=0)).sum())
    return total / len(scores)


def test_swav_multicrop_loss_matches_a_loop_over_view_pairs():
    from clbook.losses import swav_loss, swav_multicrop_loss

    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(6, 5, generator=g) for _ in range(5)]
    codes = [torch.softmax(torch.randn(6, 5, generator=g), dim=1) for _ in range(2)]
    # Paper: each global view's code, predicted by each of the 4 other views, averaged.
    expected = sum(_ce(scores[v], codes[gv], 0.2) for gv in range(2) for v in range(5) if v != gv) / (2 * 4)
    assert swav_multicrop_loss(scores, codes, 0.2).item() == pytest.approx(expected, rel=1e-5)
    # Two views, two codes: the two-view loss.
    torch.testing.assert_close(swav_multicrop_loss(scores[:2], codes, 0.2),
                               swav_loss(scores[0], scores[1], codes[0], codes[1], 0.2))
    # Gradient reaches the scores, never the codes.
    s = [t.clone().requires_grad_() for t in scores]
    q = [t.clone().requires_grad_() for t in codes]
    swav_multicrop_loss(s, q).backward()
    assert all(t.grad is not None for t in s) and all(t.grad is None for t in q)
    with pytest.raises(ValueError, match="at least 2 views"):
        swav_multicrop_loss(scores[:1], codes[:1])
    with pytest.raises(ValueError, match="codes"):
        swav_multicrop_loss(scores[:2], codes + codes)
    with pytest.raises(ValueError, match="shapes must match"):
        swav_multicrop_loss([scores[0], scores[1][:3]], codes[:1])
    with pytest.raises(ValueError, match="non-negative"):
        swav_multicrop_loss(scores, [-codes[0]])


def test_swav_multicrop_method_loss_against_plain_loop():
    """SwAV(n_local=3) on 2 global 28x28 and 3 local 14x14 crops: codes from the globals only,
    every other view predicts each; the encoder sees the local crops at their own size."""
    from clbook.data import MultiCrop
    from clbook.encoders import ConvEncoder, ProjectionHead
    from clbook.methods import SwAV
    from clbook.sinkhorn import sinkhorn_knopp

    torch.manual_seed(0)
    encoder, head = ConvEncoder(out_dim=16, any_size=True), ProjectionHead(16, 16, 8)
    m = SwAV(n_prototypes=4, temperature=0.1, n_local=3)
    assert m.n_views == 5
    m.setup(encoder, head)
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    views = MultiCrop(n_local=3).views(x, 5, torch.Generator().manual_seed(2))
    loss = m.loss(encoder, head, views, None, torch.arange(12))
    # The reference: every view through the networks on its own (the head has no BatchNorm, so
    # batching the views together changes nothing), codes of the two global views, then the loop.
    scores = [F.normalize(head(encoder(v)), dim=1) @ m.prototypes.weight.T for v in views]
    codes = [sinkhorn_knopp(s.detach(), m.epsilon, m.sinkhorn_iterations) for s in scores[:2]]
    expected = sum(_ce(scores[v], codes[gv], 0.1) for gv in range(2) for v in range(5) if v != gv) / 8
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="takes 5 views, got 2"):
        m.loss(encoder, head, views[:2], None, torch.arange(12))
    with pytest.raises(ValueError, match="n_local"):
        SwAV(n_local=-1)


def test_swav_two_views_unchanged_and_multicrop_pretrains():
    """n_local=0 is the two-view method; with a MultiCrop, pretrain runs and keeps the prototypes on the sphere."""
    from clbook.data import MultiCrop
    from clbook.encoders import ConvEncoder, ProjectionHead
    from clbook.losses import swav_loss
    from clbook.methods import SwAV
    from clbook.training import pretrain

    torch.manual_seed(0)
    encoder, head = ConvEncoder(out_dim=16, any_size=True), ProjectionHead(16, 16, 8, batchnorm=True)
    m = SwAV(n_prototypes=4)
    m.setup(encoder, head)
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    views = [x, x.flip(3)]
    scores = m.scores(head(encoder(torch.cat(views))))
    expected = swav_loss(scores[:8], scores[8:], m.codes(scores[:8]), m.codes(scores[8:]), m.temperature)
    torch.testing.assert_close(m.loss(encoder, head, views, None, torch.arange(8)), expected)

    X = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    m = SwAV(n_prototypes=4, n_local=2)
    h = pretrain(encoder, head, X, method=m, augment=MultiCrop(n_local=2, local_size=12), epochs=2,
                 batch_size=32, progress=False, device="cpu")
    assert all(np.isfinite(h.loss)) and h.steps == 4
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="augment makes 6 views"):
        pretrain(encoder, head, X, method=SwAV(n_prototypes=4, n_local=2), augment=MultiCrop(), epochs=1,
                 batch_size=32, progress=False, device="cpu")
