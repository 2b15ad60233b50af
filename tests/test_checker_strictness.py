"""Every exercise checker rejects near misses: answers that are almost, but not quite, right.

The registered mistakes of each checker are gross (a factor 2, a sign, a sum for a mean), so they
say nothing about its tolerance: a checker loosened a hundredfold still rejects them. The answers
here are off by a little, the way a real answer goes wrong: an epsilon in a denominator, a
numerical derivative, a distance scaled by 1.001, a guard added to a square root. Each is rejected
by its checker as it is but passes the same checker with tolerances 10 to 100 times wider
(measured when they were written), so a checker loosened ~100x makes this test fail.

Answers whose output is an integer (targets, labels, a chosen k) get a near miss that differs in
one entry or on ties only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clbook.evaluation import knn_accuracy
from clbook.exercises import EXERCISES
from clbook.losses import info_nce_loss, nt_xent_loss, swav_loss


def nudged(value, rel):
    """``value`` with every floating-point number scaled by ``1 + rel`` (integers left alone)."""
    if isinstance(value, (tuple, list)):
        return type(value)(nudged(v, rel) for v in value)
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value * (1 + rel)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value * (1 + rel)
    if isinstance(value, float):
        return value * (1 + rel)
    return value


# ----------------------------------------------------------------------------- 01: margin losses


def drlim_sqrt_eps(x1, x2, y, margin=1.0):
    """01.1 with the distance guarded as sqrt(d^2 + 1e-5) (y = 1 similar)."""
    d = ((x1 - x2).pow(2).sum(1) + 1e-5).sqrt()
    y = y.to(x1.dtype)
    return (y * 0.5 * d**2 + (1 - y) * 0.5 * torch.clamp(margin - d, min=0) ** 2).mean()


def drlim_force_forward_difference(distance, y, margin=1.0):
    """01.2 as a forward difference of the energy with step 1e-4."""
    def energy(d):
        return torch.where(y == 0, 0.5 * d**2, 0.5 * torch.clamp(margin - d, min=0) ** 2)

    h = 1e-4
    return -(energy(distance + h) - energy(distance)) / h


def triplet_ap_scaled(a, p, n, margin=1.0):
    """01.3 with the anchor-positive distance 0.1% too long."""
    d_ap = ((a - p).pow(2).sum(1) + 1e-30).sqrt() * 1.001
    d_an = ((a - n).pow(2).sum(1) + 1e-30).sqrt()
    return F.relu(margin + d_ap - d_an).mean()


# ----------------------------------------------------------------------------- 02: NT-Xent


def nt_xent_eps_denominator(z1, z2, tau):
    """02.1 with 1e-5 added to every denominator (stable otherwise)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    m = len(z)
    logits = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
    log_denominator = torch.logaddexp(torch.logsumexp(logits, 1), torch.tensor(math.log(1e-5)))
    return (log_denominator - logits[torch.arange(m), torch.arange(m).roll(m // 2)]).mean().to(z1.dtype)


def dropped_diagonal_last_row_off(n):
    """02.2 right except the last row's target."""
    positive = torch.arange(2 * n).roll(n)
    targets = positive - (positive > torch.arange(2 * n)).long()
    targets[-1] += 1
    return targets


def anchor_gradient_eps_softmax(sims, tau):
    """02.3 with a softmax whose denominator has 1e-5 added."""
    logits = sims / tau
    e = torch.exp(logits - logits.max())
    p = e / (e.sum() + 1e-5)
    onehot = torch.zeros_like(p)
    onehot[0] = 1
    return (p - onehot) / tau


# ----------------------------------------------------------------------------- 03: SupCon


def supcon_tau_off(key):
    # Through the checker's own reference: the checker makes supcon_loss itself unavailable to an answer.
    def answer(z, labels, tau):
        return EXERCISES[key].reference(z, labels, tau * 1.001)

    return answer


def supcon_pair_tau_off(z, labels, tau):
    eye = torch.eye(len(labels), dtype=torch.bool)
    logits = (z @ z.T / (tau * 1.001)).masked_fill(eye, float("-inf"))
    log_f = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_f[(labels[:, None] == labels[None, :]) & ~eye].mean()


# ----------------------------------------------------------------------------- 04: Iris


def standardize_batchnorm_eps(train, test):
    """04.1 with a guard in the style of batch norm: sqrt(var + 5e-5) instead of the std."""
    mean, var = train.mean(0), train.var(0)
    std = torch.where(var > 1e-16, (var + 5e-5).sqrt(), torch.ones_like(var))
    return (train - mean) / std, (test - mean) / std


def choose_k_last_of_the_best(train_feats, train_y, val_feats, val_y, ks):
    """04.2 that breaks ties towards the last k listed."""
    scores = [knn_accuracy(train_feats, train_y, val_feats, val_y, k=k) for k in ks]
    best = max(scores)
    return [k for k, s in zip(ks, scores) if s == best][-1]


# ----------------------------------------------------------------------------- 05: MNIST


def knn_ties_to_largest(train_feats, train_y, query_feats, k):
    """05.1 whose vote ties go to the largest label."""
    sim = F.normalize(query_feats, dim=1) @ F.normalize(train_feats, dim=1).T
    votes = F.one_hot(train_y[sim.topk(k, dim=1).indices], int(train_y.max()) + 1).sum(1)
    return votes.shape[1] - 1 - votes.flip(1).argmax(1)


def probe_step_with_weight_decay(W, b, feats, y, lr):
    """05.2 with an L2 penalty of 1e-4 slipped into the step."""
    p = torch.softmax(feats @ W.T + b, dim=1)  # by hand: the checker runs 05.2 without autograd
    p[torch.arange(len(y)), y] -= 1
    g = p / len(y)
    return W - lr * (g.T @ feats + 1e-4 * W), b - lr * (g.sum(0) + 1e-4 * b)


# ----------------------------------------------------------------------------- 06: EM


def _responsibilities(X, weights, means, covariances):
    """The E-step in log space, written out."""
    d = X.shape[1]
    log_joint = np.stack([np.log(w) - 0.5 * (d * math.log(2 * math.pi) + np.linalg.slogdet(c)[1]
                                             + np.einsum("nd,de,ne->n", X - m, np.linalg.inv(c), X - m))
                          for w, m, c in zip(weights, means, covariances)], axis=1)
    log_joint -= log_joint.max(axis=1, keepdims=True)
    resp = np.exp(log_joint)
    return resp / resp.sum(axis=1, keepdims=True)


def em_step_soft_counts_guarded(X, weights, means, covariances, reg_covar=1e-6):
    """06.1 with a guard 1e-4 added to the soft counts N_j."""
    resp = _responsibilities(X, weights, means, covariances)  # gmm_e_step is unavailable to a 06.1 answer
    nk = resp.sum(0) + 1e-4
    mu = resp.T @ X / nk[:, None]
    cov = np.stack([(resp[:, j, None] * (X - mu[j])).T @ (X - mu[j]) / nk[j] + reg_covar * np.eye(X.shape[1])
                    for j in range(len(nk))])
    return resp.sum(0) / len(X), mu, cov


def bic_off(X, fit):
    """06.2 off by a relative 3e-7 (a rounded log-likelihood)."""
    n, d = np.shape(X)
    k = len(fit.weights)
    n_params = (k - 1) + k * d + k * d * (d + 1) // 2
    return -2 * n * fit.log_likelihood_history[-1] * (1 + 3e-7) + n_params * math.log(n)


def partition_weighted_tau_off(z, labels, tau, lam):
    """06.3 built right from supcon_loss, at a temperature 0.1% off."""
    reference = EXERCISES["06.3"].reference
    return reference(z, labels, tau * 1.001, lam)


# ----------------------------------------------------------------------------- 07: MoCo


def info_nce_eps_denominator(query, key, queue, tau):
    """InfoNCE with 1e-5 added to every denominator: not a near miss for 07.1 (see below)."""
    q, k, n = (F.normalize(x, dim=1) for x in (query, key, queue.detach()))
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ n.T], dim=1) / tau
    log_denominator = torch.logaddexp(torch.logsumexp(logits, 1), torch.tensor(math.log(1e-5)))
    return (log_denominator - logits[:, 0]).mean()


def info_nce_tau_off(query, key, queue, tau):
    """07.1 right, at a temperature 0.1% off.

    (1e-5 added to the denominators, the near miss of 02.1, changes InfoNCE by about 1e-6 relative:
    every denominator holds the positive and at least one negative, so none is small, and the
    change is below what float32 losses resolve. NT-Xent's checker sees it only on its N = 1
    case, whose loss is exactly 0.)
    """
    q, k, n = (F.normalize(x, dim=1) for x in (query, key, queue.detach()))
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ n.T], dim=1) / (tau * 1.001)
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


def enqueue_eps_normalize(queue, ptr, keys):
    """07.2 normalizing the keys as x / (|x| + 1e-4)."""
    out = queue.clone()
    keys = (keys / (keys.norm(dim=1, keepdim=True) + 1e-4))[-len(queue):]
    rows = (ptr + torch.arange(len(keys))) % len(queue)
    out[rows] = keys
    return out, int((ptr + len(keys)) % len(queue))


def ema_off(target, online, m):
    """07.3 off by a relative 1e-5 (every new weight, as if the update were rounded to 5 digits)."""
    return [nudged(m * t + (1 - m) * o, 1e-5) for t, o in zip(target, online)]


# ----------------------------------------------------------------------------- 08: collapse


def alignment_uniformity_off(z1, z2, t=2.0):
    """08.1 with both numbers off by a relative 1e-5."""
    return nudged(EXERCISES["08.1"].reference(z1, z2, t), 1e-5)  # alignment() itself is unavailable to an answer


def simsiam_eps_cosine(p1, p2, z1, z2):
    """08.2 with the cosine computed as p . z / (|p| |z| + 1e-3)."""
    def d(p, z):
        z = z.detach()
        return -((p * z).sum(1) / (p.norm(dim=1) * z.norm(dim=1) + 1e-3)).mean()

    return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def effective_rank_log_eps(z):
    """08.3 with log(p + 1e-5) instead of 0 log 0 = 0."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum()
    return torch.exp(-(p * torch.log(p + 1e-5)).sum()).item()


# ----------------------------------------------------------------------------- 09: SwAV


def sinkhorn_eps_off(scores, epsilon, n_iter):
    """09.1 right, at an entropy weight 0.01% off."""
    return EXERCISES["09.1"].reference(scores, epsilon * 1.0001, n_iter)  # sinkhorn_knopp is unavailable to an answer


def swav_rounded(scores1, scores2, q1, q2, tau):
    """09.2 off by a relative 1e-4, value and gradient (the 1/2 of the mean written as 0.50005)."""
    def ce(s, q):
        return -(q.detach() * F.log_softmax(s / tau, dim=1)).sum(1).mean()

    return 0.50005 * (ce(scores1, q2) + ce(scores2, q1))


# ----------------------------------------------------------------------------- 10-12: the reference, a little off


def reference_off(key: str, rel: float):
    """The checker's own reference with its output scaled by ``1 + rel``: ten times the checker's
    rtol, a hundredth of what a checker loosened 100x would let through."""
    def answer(*args):
        return nudged(EXERCISES[key].reference(*args), rel)

    answer.__name__ = f"reference_off_{key.replace('.', '_')}"
    return answer


NEAR_MISSES = {
    "01.1": drlim_sqrt_eps,
    "01.2": drlim_force_forward_difference,
    "01.3": triplet_ap_scaled,
    "02.1": nt_xent_eps_denominator,
    "02.2": dropped_diagonal_last_row_off,
    "02.3": anchor_gradient_eps_softmax,
    "03.1": supcon_tau_off("03.1"),
    "03.2": supcon_tau_off("03.2"),
    "03.3": supcon_pair_tau_off,
    "04.1": standardize_batchnorm_eps,
    "04.2": choose_k_last_of_the_best,
    "05.1": knn_ties_to_largest,
    "05.2": probe_step_with_weight_decay,
    "06.1": em_step_soft_counts_guarded,
    "06.2": bic_off,
    "06.3": partition_weighted_tau_off,
    "07.1": info_nce_tau_off,
    "07.2": enqueue_eps_normalize,
    "07.3": ema_off,
    "08.1": alignment_uniformity_off,
    "08.2": simsiam_eps_cosine,
    "08.3": effective_rank_log_eps,
    "09.1": sinkhorn_eps_off,
    "09.2": swav_rounded,
    **{key: reference_off(key, 1e-5) for key in ("10.1", "10.2", "10.3")},  # rtol 1e-6
    **{key: reference_off(key, 1e-4) for key in ("11.1", "11.2", "11.3", "12.1", "12.2", "12.3", "13.2")},  # rtol 1e-5
    "13.1": reference_off("13.1", 1e-5),  # rtol 1e-6
}


def test_every_checker_has_a_near_miss():
    assert sorted(NEAR_MISSES) == sorted(EXERCISES)


@pytest.mark.parametrize("key", sorted(NEAR_MISSES))
def test_near_miss_is_rejected(key):
    verdict = EXERCISES[key].run(NEAR_MISSES[key])
    assert verdict.status == "fail", f"{key} accepts a near miss: {verdict.message}"
    assert "raised" not in verdict.message and "expected" in verdict.message, verdict.message  # a wrong value


def test_the_issues_near_misses_are_rejected():
    """The three of the issue that a 100x looser tolerance let through."""
    for key in ("01.1", "01.3", "02.1"):
        assert not EXERCISES[key].run(NEAR_MISSES[key]).passed
    # and the answers are near: the plain losses they imitate agree to about 1e-3 on ordinary input
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert nt_xent_eps_denominator(z1, z2, 0.5).item() == pytest.approx(nt_xent_loss(z1, z2, 0.5).item(), rel=1e-3)
    a, p, n = (torch.randn(8, 3, generator=g) for _ in range(3))
    assert triplet_ap_scaled(a, p, n).item() == pytest.approx(
        F.relu(1 + (a - p).norm(dim=1) - (a - n).norm(dim=1)).mean().item(), rel=2e-3)
    assert info_nce_eps_denominator(z1, z2, z1[:3], 0.2).item() == pytest.approx(
        info_nce_loss(z1, z2, z1[:3], 0.2).item(), rel=1e-3)
    s = torch.tanh(torch.randn(6, 3, generator=g))
    q = torch.softmax(torch.randn(6, 3, generator=g), 1)
    assert swav_rounded(s, s, q, q, 0.1).item() == pytest.approx(swav_loss(s, s, q, q, 0.1).item(), rel=1e-3)
