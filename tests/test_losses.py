"""clbook.losses against independent references, gradients, properties and bad input.

References are written differently on purpose: explicit Python loops over anchors in float64,
``F.cross_entropy`` over an explicitly cut (2N-1)-column matrix, the SupContrast algorithm in
``clbook.reference``, and pytorch-metric-learning where it defines the same quantity.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import clbook.losses.nt_xent
import clbook.losses.supcon
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
from clbook.reference import supcontrast_loss

SEEDS = range(12)
TEMPERATURES = (0.05, 0.1, 0.5, 1.0)


def random_case(seed: int, max_n: int = 12, max_d: int = 9) -> tuple[torch.Generator, int, int, float]:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, max_n + 1, (1,), generator=g))
    d = int(torch.randint(2, max_d + 1, (1,), generator=g))
    t = TEMPERATURES[seed % len(TEMPERATURES)]
    return g, n, d, t


# ----------------------------------------------------------------------------- loop references


def loop_margin(x1, x2, y, m):
    total = 0.0
    for a, b, label in zip(x1.tolist(), x2.tolist(), y.tolist()):
        d = math.sqrt(sum((p - q) ** 2 for p, q in zip(a, b)))
        total += 0.5 * d * d if label == 0 else 0.5 * max(0.0, m - d) ** 2
    return total / len(y)


def loop_triplet(a, p, n, m):
    total = 0.0
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist()):
        d_ap = math.dist(ai, pi)
        d_an = math.dist(ai, ni)
        total += max(0.0, m + d_ap - d_an)
    return total / len(a)


def loop_supcon(z: torch.Tensor, positive: list[list[bool]], t: float, variant: str) -> float:
    """Per-anchor loop over rows of z ([M, D], already in the similarity space) in float64."""
    z = z.double().tolist()
    m = len(z)
    dot = lambda i, j: sum(p * q for p, q in zip(z[i], z[j])) / t  # noqa: E731
    losses = []
    for i in range(m):
        pos = [j for j in range(m) if j != i and positive[i][j]]
        if not pos:
            continue
        logits = [dot(i, a) for a in range(m) if a != i]
        top = max(logits)
        log_den = top + math.log(sum(math.exp(s - top) for s in logits))
        if variant == "out":
            losses.append(-sum(dot(i, j) - log_den for j in pos) / len(pos))
        else:
            probs = sum(math.exp(dot(i, j) - log_den) for j in pos) / len(pos)
            losses.append(-math.log(probs))
    return sum(losses) / len(losses) if losses else 0.0


def view_major(features: torch.Tensor) -> torch.Tensor:
    """[N, V, D] -> [V*N, D], rows ordered view 0 of every sample, then view 1, ..."""
    return torch.cat(torch.unbind(features, dim=1), dim=0)


# ----------------------------------------------------------------------------- margin losses


@pytest.mark.parametrize("seed", SEEDS)
def test_margin_loss_matches_formula_loop(seed):
    g, n, d, _ = random_case(seed)
    x1, x2 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    margin = [0.5, 1.0, 2.0, 4.0][seed % 4]
    assert margin_contrastive_loss(x1, x2, y, margin).item() == pytest.approx(loop_margin(x1, x2, y, margin), rel=1e-9)


def test_margin_loss_label_convention():
    # y = 0 is similar: the pair is pulled together, so only the distance counts.
    x1, x2 = torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])
    assert margin_contrastive_loss(x1, x2, torch.tensor([0])).item() == pytest.approx(12.5)
    # y = 1 is dissimilar: already 5 apart with margin 1, so nothing to push.
    assert margin_contrastive_loss(x1, x2, torch.tensor([1])).item() == 0.0
    assert margin_contrastive_loss(x1, x2, torch.tensor([1]), margin=6.0).item() == pytest.approx(0.5)


def test_margin_loss_gradient_finite_at_zero_distance():
    x1 = torch.randn(5, 3, requires_grad=True)
    x2 = x1.detach().clone()
    for y in (torch.zeros(5), torch.ones(5)):
        x1.grad = None
        margin_contrastive_loss(x1, x2, y).backward()
        assert torch.isfinite(x1.grad).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_triplet_loss_matches_loop_and_torch(seed):
    g, n, d, _ = random_case(seed)
    a, p, ng = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    margin = [0.5, 1.0, 2.0][seed % 3]
    ours = triplet_margin_loss(a, p, ng, margin)
    assert ours.item() == pytest.approx(loop_triplet(a, p, ng, margin), rel=1e-9, abs=1e-12)
    # torch's version with eps=0 is the same formula (its default eps=1e-6 shifts distances).
    torch_value = F.triplet_margin_loss(a, p, ng, margin=margin, p=2, eps=0.0)
    assert ours.item() == pytest.approx(torch_value.item(), rel=1e-9, abs=1e-12)


def test_triplet_gradient_finite_when_points_coincide():
    a = torch.randn(4, 3, requires_grad=True)
    triplet_margin_loss(a, a.detach().clone(), a.detach().clone()).backward()
    assert torch.isfinite(a.grad).all()


# ----------------------------------------------------------------------------- NT-Xent


def cross_entropy_nt_xent(z1, z2, t):
    """NT-Xent as cross-entropy over 2N-1 classes: the diagonal column is cut out, not masked."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    sim = z @ z.T / t
    off_diagonal = ~torch.eye(n2, dtype=torch.bool)
    logits = sim[off_diagonal].view(n2, n2 - 1)
    positive = torch.arange(n2).roll(n2 // 2)
    # Cutting column i out of row i moves every later column one place left.
    targets = positive - (positive > torch.arange(n2)).long()
    return F.cross_entropy(logits, targets)


@pytest.mark.parametrize("seed", SEEDS)
def test_nt_xent_matches_loop_and_cross_entropy(seed):
    g, n, d, t = random_case(seed)
    z1, z2 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    ours = nt_xent_loss(z1, z2, t).item()
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    positive = [[j == (i + n) % (2 * n) for j in range(2 * n)] for i in range(2 * n)]
    assert ours == pytest.approx(loop_supcon(z, positive, t, "out"), rel=1e-9)
    assert ours == pytest.approx(cross_entropy_nt_xent(z1, z2, t).item(), rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_nt_xent_matches_pytorch_metric_learning(seed, peer):
    pml = peer("pytorch_metric_learning.losses", "pytorch-metric-learning")
    g, n, d, t = random_case(seed)
    n = max(n, 2)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    labels = torch.cat([torch.arange(n), torch.arange(n)])
    theirs = pml.NTXentLoss(temperature=t)(torch.cat([z1, z2]), labels)
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_supcon_without_labels_on_two_views_is_nt_xent(n):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(n, 6, generator=g, dtype=torch.float64)
    for t in TEMPERATURES:
        assert supcon_loss(torch.stack([z1, z2], dim=1), temperature=t).item() == pytest.approx(
            nt_xent_loss(z1, z2, t).item(), rel=1e-10
        )


@pytest.mark.parametrize("n", [4, 32, 128])
def test_nt_xent_random_features_sit_at_chance_level(n):
    # Nearly orthogonal random directions: every softmax is close to uniform over 2N-1 columns.
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(n, 4096, generator=g), torch.randn(n, 4096, generator=g)
    assert nt_xent_loss(z1, z2, temperature=0.5).item() == pytest.approx(math.log(2 * n - 1), abs=0.02)


def test_nt_xent_partial_batch_of_one():
    z1, z2 = torch.randn(1, 4, requires_grad=True), torch.randn(1, 4)
    loss = nt_xent_loss(z1, z2)
    loss.backward()
    # With one sample the positive is the only other column: probability 1, loss 0.
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(z1.grad).all()


# ----------------------------------------------------------------------------- SupCon


def label_mask(labels: torch.Tensor, views: int) -> list[list[bool]]:
    full = labels.repeat(views)
    return (full[:, None] == full[None, :]).tolist()


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("seed", SEEDS)
def test_supcon_with_labels_matches_loop(seed, variant):
    g, n, d, t = random_case(seed)
    v = 1 + seed % 3
    features = torch.randn(n, v, d, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=g)
    normalize = seed % 2 == 0
    z = view_major(features)
    z = F.normalize(z, dim=1) if normalize else z
    expected = loop_supcon(z, label_mask(labels, v), t, variant)
    got = supcon_loss(features if v > 1 else features[:, 0], labels, temperature=t, normalize=normalize, variant=variant)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("seed", SEEDS)
def test_supcon_with_mask_matches_loop(seed, variant):
    g, n, d, t = random_case(seed)
    v = 1 + seed % 2
    features = torch.randn(n, v, d, generator=g, dtype=torch.float64)
    # An arbitrary, even asymmetric, sample-level mask (diagonal set or not).
    mask = torch.rand(n, n, generator=g) < 0.4
    z = F.normalize(view_major(features), dim=1)
    positive = mask.repeat(v, v).tolist()
    expected = loop_supcon(z, positive, t, variant)
    assert supcon_loss(features, mask=mask, temperature=t, variant=variant).item() == pytest.approx(
        expected, rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_supcon_matches_supcontrast_reference(seed):
    g, n, d, t = random_case(seed)
    n = max(n, 2)
    features = F.normalize(torch.randn(n, 2, d, generator=g, dtype=torch.float64), dim=2)
    labels = torch.randint(0, 4, (n,), generator=g)
    for kwargs in ({"labels": labels}, {}):
        theirs = supcontrast_loss(features.float(), temperature=t, base_temperature=t, **kwargs)
        ours = supcon_loss(features.float(), temperature=t, **kwargs)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_supcon_matches_pytorch_metric_learning(seed, peer):
    pml = peer("pytorch_metric_learning.losses", "pytorch-metric-learning")
    g, n, d, t = random_case(seed, max_n=16)
    # Every anchor needs a positive (pml averages only over anchors with a non-zero loss) and
    # a negative (pml returns 0 for a batch with no negative pair at all).
    classes = max(2, n // 3)
    labels = torch.cat([torch.arange(classes), torch.arange(classes), torch.randint(0, classes, (n,), generator=g)])
    features = torch.randn(labels.shape[0], d, generator=g)
    theirs = pml.SupConLoss(temperature=t)(features, labels)
    assert supcon_loss(features, labels, temperature=t).item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-5)


def test_supcon_anchor_without_positive_is_left_out():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2])  # the last sample is alone in its class
    full = supcon_loss(features, labels, temperature=0.5)
    # The lone sample still sits in everyone's denominator, so it cannot simply be dropped from
    # the batch; the check is against the loop, which skips anchors without positives.
    expected = loop_supcon(F.normalize(features, dim=1), label_mask(labels, 1), 0.5, "out")
    assert full.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_no_positive_anywhere_gives_zero_that_backpropagates(variant):
    features = torch.randn(4, 3, requires_grad=True)
    loss = supcon_loss(features, torch.arange(4), variant=variant)
    loss.backward()
    assert loss.item() == 0.0 and not math.copysign(1.0, loss.item()) < 0
    assert torch.equal(features.grad, torch.zeros_like(features))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_supcon_tiny_final_batches(n):
    features = torch.randn(n, 2, 5, requires_grad=True)
    for labels in (None, torch.zeros(n)):
        features.grad = None
        loss = supcon_loss(features, labels)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(features.grad).all()


def toy_batch_step_by_step() -> float:
    """The 4-sample batch of the course (notebook 03), one small step at a time."""
    torch.manual_seed(102)
    z = torch.randn(4, 8)
    labels = torch.tensor([1, 2, 1, 1])
    similarity = z @ z.T  # temperature 1, raw inner products
    self_mask = torch.eye(4, dtype=torch.bool)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    exp_sim = torch.exp(similarity).masked_fill(self_mask, 0.0)
    denominators = exp_sim.sum(dim=1)
    fractions = exp_sim / denominators[:, None]
    per_anchor = []
    for i in range(4):
        if positive[i].any():  # anchor 1 (label 2) has no positive and is skipped
            per_anchor.append(-torch.log(fractions[i][positive[i]]).mean())
    return torch.stack(per_anchor).mean().item()


def test_toy_batch_reproduced_step_by_step():
    torch.manual_seed(102)
    z = torch.randn(4, 8)
    labels = torch.tensor([1, 2, 1, 1])
    expected = toy_batch_step_by_step()
    assert supcon_loss(z, labels, temperature=1.0, normalize=False).item() == pytest.approx(expected, rel=1e-6)
    mask = labels[:, None] == labels[None, :]
    assert supcon_loss(z, mask=mask, temperature=1.0, normalize=False).item() == pytest.approx(expected, rel=1e-6)


def test_l_in_is_at_most_l_out():
    # Jensen: -log(mean p) <= mean(-log p), per anchor, hence for the batch.
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        features = torch.randn(10, 2, 6, generator=g)
        labels = torch.randint(0, 3, (10,), generator=g)
        l_out = supcon_loss(features, labels, temperature=0.2, variant="out")
        l_in = supcon_loss(features, labels, temperature=0.2, variant="in")
        assert l_in.item() <= l_out.item() + 1e-6


# ----------------------------------------------------------------------------- properties


def all_softmax_losses(features: torch.Tensor, labels: torch.Tensor, t: float, normalize: bool = True):
    """[N, 2, D] features -> every softmax loss value, as a dict name -> float."""
    out = {
        "supcon_out": supcon_loss(features, labels, temperature=t, normalize=normalize),
        "supcon_in": supcon_loss(features, labels, temperature=t, normalize=normalize, variant="in"),
        "supcon_selfsup": supcon_loss(features, temperature=t, normalize=normalize),
    }
    if normalize:
        out["nt_xent"] = nt_xent_loss(features[:, 0], features[:, 1], t)
    return {k: v.item() for k, v in out.items()}


@pytest.mark.parametrize("seed", range(5))
def test_invariant_to_batch_permutation(seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(9, 2, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (9,), generator=g)
    perm = torch.randperm(9, generator=g)
    before = all_softmax_losses(features, labels, 0.3)
    after = all_softmax_losses(features[perm], labels[perm], 0.3)
    for name in before:
        assert after[name] == pytest.approx(before[name], rel=1e-10), name
    x1, x2, y = features[:, 0], features[:, 1], (labels > 0).long()
    assert margin_contrastive_loss(x1[perm], x2[perm], y[perm]).item() == pytest.approx(
        margin_contrastive_loss(x1, x2, y).item(), rel=1e-10
    )


def test_invariant_to_a_constant_added_to_all_logits():
    # An extra coordinate sqrt(c * t) on every raw feature adds c to every logit z_i.z_j / t.
    g = torch.Generator().manual_seed(11)
    features = torch.randn(8, 2, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (8,), generator=g)
    t, c = 0.5, 7.0
    extra = torch.full((8, 2, 1), math.sqrt(c * t), dtype=torch.float64)
    before = all_softmax_losses(features, labels, t, normalize=False)
    after = all_softmax_losses(torch.cat([features, extra], dim=2), labels, t, normalize=False)
    for name in before:
        assert after[name] == pytest.approx(before[name], rel=1e-9), name


@pytest.mark.parametrize("loss_name", ["nt_xent", "supcon_in"])
def test_invariant_to_a_constant_added_to_one_row_of_logits(monkeypatch, loss_name):
    # Row shifts are not reachable through features, so shift the logits the loss builds.
    # (supcon's L_out takes its positive term from embedding sums, not from these logits; the
    # all-rows test above covers it.)
    g = torch.Generator().manual_seed(12)
    features = torch.randn(6, 2, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    compute = {
        "nt_xent": lambda: nt_xent_loss(features[:, 0], features[:, 1], 0.2),
        "supcon_in": lambda: supcon_loss(features, labels, temperature=0.2, variant="in"),
    }[loss_name]
    before = compute().item()
    # The name the loss's own module reads at call time (each file imports _masked_logits from _checks).
    module = {"nt_xent": clbook.losses.nt_xent, "supcon_in": clbook.losses.supcon}[loss_name]
    original, calls = module._masked_logits, []
    shift = torch.linspace(-50.0, 80.0, 12, dtype=torch.float64)[:, None]
    monkeypatch.setattr(module, "_masked_logits", lambda rows: calls.append(1) or original(rows) + shift)
    assert compute().item() == pytest.approx(before, rel=1e-9)
    assert calls  # the shifted logits were used: the invariance was tested, not skipped


@pytest.mark.parametrize("t", [0.01, 0.05])
def test_stable_at_small_temperature(t):
    features = torch.randn(32, 2, 16, requires_grad=True)
    labels = torch.randint(0, 4, (32,))
    losses = [
        nt_xent_loss(features[:, 0], features[:, 1], t),
        supcon_loss(features, labels, temperature=t),
        supcon_loss(features, labels, temperature=t, variant="in"),
        supcon_loss(features, temperature=t),
    ]
    for loss in losses:
        features.grad = None
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(features.grad).all()


def test_stable_for_large_unnormalized_inputs():
    # Logits around 1e7: exp overflows in any dtype, log-sum-exp does not.
    features = (1e3 * torch.randn(16, 2, 8)).requires_grad_()
    labels = torch.randint(0, 3, (16,))
    for variant in ("out", "in"):
        features.grad = None
        loss = supcon_loss(features, labels, temperature=0.1, normalize=False, variant=variant)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
    x = (1e3 * torch.randn(16, 8)).requires_grad_()
    margin_contrastive_loss(x, 1e3 * torch.randn(16, 8), torch.randint(0, 2, (16,))).backward()
    assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- gradients


def test_gradcheck_every_loss():
    g = torch.Generator().manual_seed(7)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    x1, x2 = leaf(5, 3), leaf(5, 3)
    y = torch.tensor([0, 1, 0, 1, 1])
    assert torch.autograd.gradcheck(lambda a, b: margin_contrastive_loss(a, b, y, margin=3.0), (x1, x2))
    a, p, n = leaf(5, 3), leaf(5, 3), leaf(5, 3)
    assert torch.autograd.gradcheck(lambda a, p, n: triplet_margin_loss(a, p, n, margin=3.0), (a, p, n))
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_loss(a, b, 0.3), (x1, x2))
    features = leaf(6, 2, 4)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    mask = torch.rand(6, 6, generator=g) < 0.5
    for kwargs in (
        {"labels": labels},
        {"labels": labels, "variant": "in"},
        {"mask": mask},
        {"mask": mask, "variant": "in"},
        {},
        {"labels": labels, "normalize": False},
    ):
        assert torch.autograd.gradcheck(lambda f: supcon_loss(f, temperature=0.4, **kwargs), (features,)), kwargs


def dense_supcon_out(features: torch.Tensor, positive: torch.Tensor, t: float, normalize: bool) -> torch.Tensor:
    """L_out through autograd over a dense [M, M] positive mask (rows view-major): a gradient reference."""
    z = view_major(features)
    z = F.normalize(z, dim=1) if normalize else z
    eye = torch.eye(len(z), dtype=torch.bool)
    logits = (z @ z.T / t).masked_fill(eye, float("-inf"))
    log_prob = F.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
    positive = positive & ~eye
    count = positive.sum(dim=1)
    per_anchor = -(log_prob * positive).sum(dim=1) / count.clamp_min(1)
    return per_anchor[count > 0].mean()


@pytest.mark.parametrize("one_product_max_rows", [0, 10**9], ids=["two products", "one product"])
@pytest.mark.parametrize("seed", range(8))
def test_supcon_gradient_matches_autograd_reference(monkeypatch, seed, one_product_max_rows):
    # supcon_loss writes L_out's backward out by hand (two code paths by size); autograd through
    # a dense masked log-softmax is the reference.
    monkeypatch.setattr(clbook.losses.supcon, "_ONE_PRODUCT_MAX_ROWS", one_product_max_rows)
    g, n, d, t = random_case(seed)
    v = 1 + seed % 3
    features = torch.randn(n, v, d, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (n,), generator=g)
    mask = torch.rand(n, n, generator=g) < 0.4  # asymmetric: Q^T z differs from Q z
    normalize = seed % 2 == 0
    for kwargs, positive in (
        ({"labels": labels}, torch.tensor(label_mask(labels, v))),
        ({"mask": mask}, mask.repeat(v, v)),
        ({}, torch.eye(n, dtype=torch.bool).repeat(v, v)),
    ):
        expected = dense_supcon_out(features, positive, t, normalize)
        if not expected.requires_grad or not torch.isfinite(expected):
            continue  # no anchor has a positive: covered by its own test
        (want,) = torch.autograd.grad(expected, features)
        got = supcon_loss(features if v > 1 else features[:, 0], temperature=t, normalize=normalize, **kwargs)
        assert got.grad_fn.symmetric == (one_product_max_rows > 0)  # the patched size switch chose the path
        (have,) = torch.autograd.grad(got, features)
        assert got.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12), kwargs
        torch.testing.assert_close(have, want, rtol=1e-9, atol=1e-12, msg=str(kwargs))


def test_supcon_gradient_at_a_size_past_the_one_product_limit():
    # The default size switch, exercised for real: more rows than _ONE_PRODUCT_MAX_ROWS.
    g = torch.Generator().manual_seed(21)
    n = clbook.losses.supcon._ONE_PRODUCT_MAX_ROWS // 2 + 5
    features = torch.randn(n, 2, 16, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 10, (n,), generator=g)
    (want,) = torch.autograd.grad(dense_supcon_out(features, torch.tensor(label_mask(labels, 2)), 0.1, True), features)
    (have,) = torch.autograd.grad(supcon_loss(features, labels, temperature=0.1), features)
    torch.testing.assert_close(have, want, rtol=1e-9, atol=1e-12)


def test_supcon_backward_twice_with_retain_graph_and_no_double_backward():
    features = torch.randn(6, 2, 4, dtype=torch.float64, requires_grad=True)
    loss = supcon_loss(features, torch.tensor([0, 1, 0, 1, 2, 2]), temperature=0.3)
    (first,) = torch.autograd.grad(loss, features, retain_graph=True)
    (second,) = torch.autograd.grad(loss, features)
    assert torch.equal(first, second)  # backward leaves what it saved untouched
    loss = supcon_loss(features, torch.tensor([0, 1, 0, 1, 2, 2]), temperature=0.3)
    # A hand-written first derivative would enter a second one as a constant: refuse, do not mislead.
    with pytest.raises(RuntimeError, match="no second derivatives"):
        torch.autograd.grad(loss, features, create_graph=True)


# ----------------------------------------------------------------------------- modules


def test_modules_match_functions():
    g = torch.Generator().manual_seed(8)
    x1, x2, x3 = (torch.randn(6, 4, generator=g) for _ in range(3))
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert MarginContrastiveLoss(2.0)(x1, x2, y) == margin_contrastive_loss(x1, x2, y, 2.0)
    assert TripletMarginLoss(0.5)(x1, x2, x3) == triplet_margin_loss(x1, x2, x3, 0.5)
    assert NTXentLoss(0.2)(x1, x2) == nt_xent_loss(x1, x2, 0.2)
    assert SupConLoss(0.2, variant="in")(x1, labels) == supcon_loss(x1, labels, temperature=0.2, variant="in")


# ----------------------------------------------------------------------------- bad input


BAD_INPUTS = {
    "margin rank": (lambda: margin_contrastive_loss(torch.randn(4), torch.randn(4), torch.zeros(4)), "shape"),
    "margin shapes": (lambda: margin_contrastive_loss(torch.randn(4, 2), torch.randn(4, 3), torch.zeros(4)), "match"),
    "margin y length": (lambda: margin_contrastive_loss(torch.randn(4, 2), torch.randn(4, 2), torch.zeros(3)), "y"),
    "margin y values": (lambda: margin_contrastive_loss(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0, 2])), "y"),
    "margin value": (lambda: margin_contrastive_loss(torch.randn(2, 2), torch.randn(2, 2), torch.zeros(2), 0.0), "margin"),
    "triplet shapes": (lambda: triplet_margin_loss(torch.randn(4, 2), torch.randn(4, 2), torch.randn(3, 2)), "match"),
    "triplet margin": (lambda: triplet_margin_loss(*(torch.randn(2, 2) for _ in range(3)), margin=-1.0), "margin"),
    "nt_xent mismatch": (lambda: nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3)), "match"),
    "nt_xent rank": (lambda: nt_xent_loss(torch.randn(4, 2, 3), torch.randn(4, 2, 3)), "shape"),
    "nt_xent temperature": (lambda: nt_xent_loss(torch.randn(4, 3), torch.randn(4, 3), 0.0), "temperature"),
    "nt_xent nan": (lambda: nt_xent_loss(torch.full((2, 3), float("nan")), torch.randn(2, 3)), "NaN"),
    "nt_xent integer": (lambda: nt_xent_loss(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)), "floating"),
    "supcon rank": (lambda: supcon_loss(torch.randn(4)), "shape"),
    "supcon rank 4": (lambda: supcon_loss(torch.randn(4, 2, 2, 2)), "shape"),
    "supcon labels length": (lambda: supcon_loss(torch.randn(4, 3), torch.zeros(5)), "labels"),
    "supcon labels and mask": (lambda: supcon_loss(torch.randn(4, 3), torch.zeros(4), torch.ones(4, 4)), "not both"),
    "supcon mask shape": (lambda: supcon_loss(torch.randn(4, 3), mask=torch.ones(4, 3)), "mask"),
    "supcon mask values": (lambda: supcon_loss(torch.randn(2, 3), mask=torch.full((2, 2), 0.5)), "mask"),
    "supcon temperature": (lambda: supcon_loss(torch.randn(4, 3), temperature=-0.1), "temperature"),
    "supcon variant": (lambda: supcon_loss(torch.randn(4, 3), variant="mid"), "variant"),
    "supcon empty": (lambda: supcon_loss(torch.randn(0, 3)), "empty"),
    "module temperature": (lambda: SupConLoss(temperature=0), "temperature"),
    "module margin": (lambda: MarginContrastiveLoss(margin=-2), "margin"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error(case):
    call, word = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=word):
        call()
