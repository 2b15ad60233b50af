"""d loss / d tau for a learnable temperature, against two independent references.

Every softmax loss takes a 0-d tensor that requires grad as its temperature (a learnable
temperature, as CLIP learns its logit scale) and keeps its gradient. Checked in float64 against

* autograd through a plain re-implementation: explicit Python loops over anchors and their
  candidates, written from the formulas in the losses' docstrings; and
* central finite differences of clbook's own loss, which involve no autograd at all.

Both the plain and the tiled paths (``block_size``) are covered.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clbook.losses import NTXentLoss, info_nce_loss, nt_xent_loss, supcon_loss, swav_loss


def unit(v):
    return v / v.norm()


def loop_nt_xent(z1, z2, tau):
    z = [unit(r) for r in torch.cat([z1, z2])]
    m, n = len(z), len(z1)
    total = 0
    for i in range(m):
        logits = [torch.dot(z[i], z[j]) / tau for j in range(m) if j != i]
        total = total - torch.dot(z[i], z[(i + n) % m]) / tau + torch.logsumexp(torch.stack(logits), 0)
    return total / m


def loop_supcon(features, labels, tau, variant):
    """L_out or L_in over every view of every sample; anchors without positives left out."""
    n, v, _ = features.shape
    rows = [(unit(features[i, a]), int(labels[i])) for i in range(n) for a in range(v)]
    terms = []
    for i, (zi, ci) in enumerate(rows):
        others = [j for j in range(len(rows)) if j != i]
        positives = [j for j in others if rows[j][1] == ci]
        if not positives:
            continue
        log_denominator = torch.logsumexp(torch.stack([torch.dot(zi, rows[j][0]) / tau for j in others]), 0)
        log_fractions = torch.stack([torch.dot(zi, rows[p][0]) / tau - log_denominator for p in positives])
        if variant == "out":
            terms.append(-log_fractions.mean())
        else:
            terms.append(-(torch.logsumexp(log_fractions, 0) - math.log(len(positives))))
    return torch.stack(terms).mean()


def loop_info_nce(q, k, negatives, tau):
    """With negatives: every query against its key and the shared negatives; without: the other keys."""
    q, k = [unit(r) for r in q], [unit(r) for r in k]
    total = 0
    for i in range(len(q)):
        if negatives is None:
            candidates = k
        else:
            candidates = [k[i], *(unit(r) for r in negatives)]
        logits = torch.stack([torch.dot(q[i], c) / tau for c in candidates])
        total = total - torch.dot(q[i], k[i]) / tau + torch.logsumexp(logits, 0)
    return total / len(q)


def loop_swav(s1, s2, q1, q2, tau):
    def cross_entropy(s, q):
        return sum(-(q[i] * torch.log_softmax(s[i] / tau, 0)).sum() for i in range(len(s))) / len(s)

    return 0.5 * (cross_entropy(s1, q2) + cross_entropy(s2, q1))


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return {
        "z1": randn(5, 4), "z2": randn(5, 4), "features": randn(6, 2, 4), "labels": torch.tensor([0, 1, 0, 2, 1, 3]),
        "q": randn(5, 4), "k": randn(5, 4), "negatives": randn(7, 4),
        "s1": torch.tanh(randn(6, 3)), "s2": torch.tanh(randn(6, 3)),
        "c1": torch.softmax(randn(6, 3), 1), "c2": torch.softmax(randn(6, 3), 1),
    }


# name -> (clbook's loss of (data, tau), the plain loop of (data, tau))
LOSSES = {
    "nt_xent": (lambda d, t: nt_xent_loss(d["z1"], d["z2"], t), lambda d, t: loop_nt_xent(d["z1"], d["z2"], t)),
    "nt_xent tiled": (lambda d, t: nt_xent_loss(d["z1"], d["z2"], t, block_size=3),
                      lambda d, t: loop_nt_xent(d["z1"], d["z2"], t)),
    "supcon out": (lambda d, t: supcon_loss(d["features"], d["labels"], temperature=t),
                   lambda d, t: loop_supcon(d["features"], d["labels"], t, "out")),
    "supcon out tiled": (lambda d, t: supcon_loss(d["features"], d["labels"], temperature=t, block_size=5),
                         lambda d, t: loop_supcon(d["features"], d["labels"], t, "out")),
    "supcon in": (lambda d, t: supcon_loss(d["features"], d["labels"], temperature=t, variant="in"),
                  lambda d, t: loop_supcon(d["features"], d["labels"], t, "in")),
    "info_nce queue": (lambda d, t: info_nce_loss(d["q"], d["k"], d["negatives"], t),
                       lambda d, t: loop_info_nce(d["q"], d["k"], d["negatives"], t)),
    "info_nce queue tiled": (lambda d, t: info_nce_loss(d["q"], d["k"], d["negatives"], t, block_size=2),
                             lambda d, t: loop_info_nce(d["q"], d["k"], d["negatives"], t)),
    "info_nce in-batch": (lambda d, t: info_nce_loss(d["q"], d["k"], None, t),
                          lambda d, t: loop_info_nce(d["q"], d["k"], None, t)),
    "info_nce in-batch tiled": (lambda d, t: info_nce_loss(d["q"], d["k"], None, t, block_size=2),
                                lambda d, t: loop_info_nce(d["q"], d["k"], None, t)),
    "swav": (lambda d, t: swav_loss(d["s1"], d["s2"], d["c1"], d["c2"], t),
             lambda d, t: loop_swav(d["s1"], d["s2"], d["c1"], d["c2"], t)),
}


def grad_tau(fn, d, tau):
    t = torch.tensor(tau, dtype=torch.float64, requires_grad=True)
    loss = fn(d, t)
    (g,) = torch.autograd.grad(loss, t)
    return loss.item(), g.item()


@pytest.mark.parametrize("tau", [0.07, 0.3, 1.0])
@pytest.mark.parametrize("name", list(LOSSES))
def test_temperature_gradient_matches_a_plain_loop_and_finite_differences(name, tau):
    ours, loop = LOSSES[name]
    d = data()
    value, grad = grad_tau(ours, d, tau)
    ref_value, ref_grad = grad_tau(loop, d, tau)
    assert value == pytest.approx(ref_value, rel=1e-10)
    assert grad == pytest.approx(ref_grad, rel=1e-9, abs=1e-12)
    h = 1e-5 * tau
    with torch.no_grad():
        fd = (ours(d, tau + h).item() - ours(d, tau - h).item()) / (2 * h)
    assert grad == pytest.approx(fd, rel=1e-6, abs=1e-9)
    assert grad != 0.0


def test_a_learnable_temperature_is_a_parameter_of_the_module_and_trains():
    d = data(1)
    tau = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    loss_fn = NTXentLoss(tau)
    assert [p is tau for p in loss_fn.parameters()] == [True]  # an optimizer given the module's parameters trains it
    loss_fn(d["z1"], d["z2"]).backward()
    _, expected = grad_tau(lambda dd, t: loop_nt_xent(dd["z1"], dd["z2"], t), d, 0.5)
    assert tau.grad.item() == pytest.approx(expected, rel=1e-9)
