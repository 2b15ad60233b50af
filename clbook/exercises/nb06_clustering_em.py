"""Checkers of notebook 06 (clustering with EM).

The notebook is ``notebooks/06_clustering_em.ipynb``; its checked exercises:

* 06.1: :data:`check_em_step`, one EM iteration (E-step, then M-step).
* 06.2: :data:`check_gmm_bic`, the BIC of a fitted mixture.
* 06.3: :data:`check_partition_weighted_loss`, SupCon with a weighted log-partition term.

Importing this module registers each checker under its key in
:data:`~clbook.exercises.core.EXERCISES`; :mod:`clbook.exercises.core` says how a checker works.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from clbook.cluster import GMMResult, gmm_e_step, gmm_em, gmm_m_step
from clbook.exercises.core import Case, Mistake, exercise
from clbook.losses import supcon_loss

__all__ = ["check_em_step", "check_gmm_bic", "check_partition_weighted_loss"]


def _em_step_reference(X, weights, means, covariances, reg_covar=1e-6):
    resp, _ = gmm_e_step(X, weights, means, covariances)
    return gmm_m_step(X, resp, reg_covar)


def _em_cases() -> list[Case]:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal([0, 0], 1.0, (20, 2)), rng.normal([4, 1], 0.7, (15, 2))])
    w, mu = np.array([0.5, 0.5]), np.array([[0.5, 0.5], [3.0, 0.0]])
    cov = np.stack([np.eye(2), np.eye(2)])
    far = np.vstack([X, [[60.0, 0.0]]])
    X3 = rng.normal(size=(30, 3))
    mu3 = X3[:3].copy()
    cov3 = np.stack([np.eye(3) * s for s in (0.5, 1.0, 2.0)])
    return [
        Case("35 points, 2 components, identity covariances", (X, w, mu, cov)),
        Case("the same with unequal weights and reg_covar = 0.1", (X, np.array([0.8, 0.2]), mu, cov), {"reg_covar": 0.1}),
        Case("3-D data, 3 components of different sizes", (X3, np.full(3, 1 / 3), mu3, cov3)),
        Case("a point 60 units from both components", (far, w, mu, cov),
             hint="the density of the far point underflows to 0 and 0 / 0 = nan: compute the responsibilities "
                  "in log space; reread 06 §2 (why the E-step works in log space)"),
    ]


def _em_means_over_n(X, weights, means, covariances, reg_covar=1e-6):
    resp, _ = gmm_e_step(X, weights, means, covariances)
    w, _, cov = gmm_m_step(X, resp, reg_covar)
    return w, resp.T @ X / len(X), cov


def _em_old_means(X, weights, means, covariances, reg_covar=1e-6):
    resp, _ = gmm_e_step(X, weights, means, covariances)
    w, mu, _ = gmm_m_step(X, resp, reg_covar)
    nk = resp.sum(0)
    cov = np.stack([(resp[:, j, None] * (X - means[j])).T @ (X - means[j]) / nk[j] + reg_covar * np.eye(X.shape[1])
                    for j in range(len(nk))])
    return w, mu, cov


#: 06.1: one EM iteration: the E-step's responsibilities, then the M-step's parameters.
check_em_step = exercise(
    "06.1", "one EM step", "06 §2 (EM from the Q-function: E-step, then M-step)",
    reference=_em_step_reference,
    cases=_em_cases,
    forbidden=("clbook.cluster.gmm_e_step", "clbook.cluster.gmm_m_step", "clbook.cluster.gmm_em"),
    mistakes=[
        Mistake(_em_means_over_n,
                "a component's mean is divided by its soft count, not by n: reread 06 §2 (M-step, means)"),
        Mistake(_em_old_means,
                "the covariance is the scatter about the new means: reread 06 §2 (M-step, covariances)"),
        Mistake(lambda X, w, mu, cov, reg_covar=1e-6: _em_step_reference(X, w, mu, cov, 0.0),
                "add reg_covar to the diagonal of every covariance, as gmm_m_step does: reread 06 §2"),
    ],
    rtol=1e-6, atol=1e-9,
)


def _gmm_bic_reference(X, fit: GMMResult) -> float:
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    k = len(fit.weights)
    n_params = (k - 1) + k * d + k * d * (d + 1) // 2
    return -2 * n * fit.log_likelihood_history[-1] + n_params * math.log(n)


def _bic_cases() -> list[Case]:
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal([0, 0], 1.0, (40, 2)), rng.normal([5, 0], 1.0, (40, 2))])
    Y = rng.normal(size=(50, 3))
    return [Case(f"{len(data)} points in {data.shape[1]}-D, a fit with k = {k}", (data, gmm_em(data, k, random_state=0)))
            for data, k in ((X, 1), (X, 2), (X, 4), (Y, 2))]


def _bic_mean_loglik(X, fit):
    n = len(X)
    return _gmm_bic_reference(X, fit) + 2 * (n - 1) * fit.log_likelihood_history[-1]


def _bic_params_full(X, fit):
    n, d = np.shape(X)
    k = len(fit.weights)
    return -2 * n * fit.log_likelihood_history[-1] + (k + k * d + k * d * d) * math.log(n)


#: 06.2: the Bayesian information criterion of a fitted mixture, to choose k.
check_gmm_bic = exercise(
    "06.2", "BIC of a Gaussian mixture", "06 §1-2 (the log-likelihood) and the exercise's definition",
    reference=_gmm_bic_reference,
    cases=_bic_cases,
    mistakes=[
        Mistake(_bic_mean_loglik,
                "log_likelihood_history holds the mean per point; the BIC needs the total: reread the "
                "exercise's definition"),
        Mistake(_bic_params_full,
                "count only the free parameters: the weights are tied by their sum, and a covariance matrix "
                "is symmetric; reread the exercise's definition of p"),
    ],
    rtol=1e-8, atol=1e-6,
)


def _positives_only(z, labels, tau):
    z = F.normalize(z, dim=1)
    pos = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    d2 = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
    return ((d2 * pos).sum(1) / pos.sum(1)).mean() / (2 * tau)


def _partition_weighted_reference(z, labels, tau, lam):
    # SupCon = alignment + (log-partition - 1 / tau) (06 §5); weight the second part by lam.
    align = _positives_only(z, labels, tau)
    return align + lam * (supcon_loss(z, labels=labels, temperature=tau) - align)


def _partition_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 2, generator=g)
    labels = torch.tensor([0, 1, 2] * 4)
    z8 = torch.randn(8, 5, generator=g)
    l8 = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    return [
        Case("lam = 0: positives only, tau = 0.5", (z, labels, 0.5, 0.0)),
        Case("lam = 1: SupCon itself, tau = 0.5", (z, labels, 0.5, 1.0),
             hint="with lam = 1 the loss must equal clbook.losses.supcon_loss: reread 06 §5 (the split)"),
        Case("lam = 0.3, tau = 0.5", (z, labels, 0.5, 0.3)),
        Case("5-D embeddings, lam = 0.7, tau = 0.1", (z8, l8, 0.1, 0.7)),
    ]


#: 06.3: SupCon with its log-partition term weighted by ``lam`` (0: positives only, 1: SupCon).
check_partition_weighted_loss = exercise(
    "06.3", "SupCon with a weighted log-partition term",
    "06 §5 (the contrastive view: the split into alignment and log-partition, on unit vectors)",
    reference=_partition_weighted_reference,
    cases=_partition_cases,
    mistakes=[
        Mistake(lambda z, labels, tau, lam: _positives_only(z, labels, tau)
                + lam * (supcon_loss(z, labels=labels, temperature=tau) - _positives_only(z, labels, tau) + 1 / tau),
                "the constant -1/tau belongs to the split: with it, lam = 1 gives SupCon exactly; reread 06 §5"),
    ],
)
