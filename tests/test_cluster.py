"""Tests for clbook.cluster: agreement with scikit-learn, EM monotonicity, stability, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from clbook.cluster import gmm_e_step, gmm_em, gmm_m_step, kmeans, kmeans_plusplus, nearest_center


def blobs(seed: int, n: int = 400, d: int = 3, k: int = 4, std: float = 1.5) -> np.ndarray:
    X, _ = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=std, random_state=seed)
    return X


def documented_start(X: np.ndarray, means: np.ndarray, reg_covar: float):
    """The starting weights and covariances gmm_em documents, rebuilt here independently.

    Each point goes to its nearest starting mean; weights are the shares of points, covariances
    the scatter of each group about its starting mean, plus reg_covar on the diagonal.
    """
    d2 = ((X[:, None, :] - means[None]) ** 2).sum(-1)
    labels = d2.argmin(1)
    k, d = means.shape
    weights = np.bincount(labels, minlength=k) / len(X)
    covs = []
    for j in range(k):
        diff = X[labels == j] - means[j]
        covs.append(diff.T @ diff / len(diff) + reg_covar * np.eye(d))
    return weights, np.stack(covs)


def sklearn_gmm(X, means, max_iter, tol, reg_covar=1e-6) -> GaussianMixture:
    """scikit-learn's GaussianMixture started from exactly gmm_em's starting point."""
    weights, covs = documented_start(X, means, reg_covar)
    gm = GaussianMixture(
        n_components=len(means),
        covariance_type="full",
        weights_init=weights,
        means_init=means,
        precisions_init=np.linalg.inv(covs),
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 runs exactly max_iter steps
        return gm.fit(X)


# ----------------------------------------------------------------------------- k-means


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_matches_sklearn_from_same_centres(seed):
    X = blobs(seed)
    init = kmeans_plusplus(X, 4, random_state=seed)
    ours = kmeans(X, 4, init=init)
    ref = KMeans(n_clusters=4, init=init, n_init=1, algorithm="lloyd").fit(X)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-10)
    np.testing.assert_allclose(ours.centers, ref.cluster_centers_, atol=1e-10)
    np.testing.assert_array_equal(ours.labels, ref.labels_)


def test_kmeans_inertia_is_consistent_and_non_increasing():
    X = blobs(3, k=6, std=2.5)
    res = kmeans(X, 6, random_state=0)
    labels, sq = nearest_center(X, res.centers)
    np.testing.assert_array_equal(res.labels, labels)
    assert res.inertia == pytest.approx(sq.sum())
    assert np.all(np.diff(res.inertia_history) <= 1e-9 * res.inertia_history[0])
    assert res.inertia <= res.inertia_history[-1] + 1e-9
    assert res.converged


def test_kmeans_plusplus_is_seeded_and_picks_data_points():
    X = blobs(0)
    a, b = kmeans_plusplus(X, 4, random_state=7), kmeans_plusplus(X, 4, random_state=7)
    np.testing.assert_array_equal(a, b)
    assert all((X == c).all(axis=1).any() for c in a)
    np.testing.assert_array_equal(kmeans(X, 4, random_state=3).centers, kmeans(X, 4, random_state=3).centers)


def test_kmeans_plusplus_handles_duplicated_points():
    X = np.ones((5, 2))
    assert kmeans_plusplus(X, 3, random_state=0).shape == (3, 2)
    res = kmeans(X, 3, random_state=0)
    assert np.isfinite(res.centers).all() and res.inertia == 0.0


def test_kmeans_reseeds_an_empty_cluster():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    # The third centre is nobody's nearest and would otherwise divide by zero.
    res = kmeans(X, 3, init=[[0.0, 0.0], [10.0, 0.0], [100.0, 100.0]])
    assert np.isfinite(res.centers).all()
    assert len(np.unique(res.labels)) == 3
    # scikit-learn also moves an empty centre onto the worst-fitted point: same result.
    X = blobs(0, n=200, d=2, k=3)
    init = np.vstack([X[:2], [[100.0, 100.0]]])
    ours = kmeans(X, 3, init=init)
    ref = KMeans(n_clusters=3, init=init, n_init=1, algorithm="lloyd").fit(X)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-10)
    np.testing.assert_allclose(ours.centers, ref.cluster_centers_, atol=1e-10)


def test_kmeans_accepts_torch_tensors():
    X = blobs(0)
    res = kmeans(torch.from_numpy(X).float(), 4, random_state=0)
    assert res.centers.dtype == np.float64 and res.labels.shape == (len(X),)


# ----------------------------------------------------------------------------- Gaussian mixture


@pytest.mark.parametrize("seed", [0, 1])
def test_gmm_matches_sklearn_step_for_step(seed):
    # Same start, same number of iterations, no early stop: the parameters must coincide.
    X = blobs(seed, std=2.0)
    init = kmeans_plusplus(X, 4, random_state=seed)
    ours = gmm_em(X, 4, init_means=init, max_iter=12, tol=0.0)
    ref = sklearn_gmm(X, init, max_iter=12, tol=0.0)
    assert ours.n_iter == ref.n_iter_ == 12
    np.testing.assert_allclose(ours.weights, ref.weights_, atol=1e-9)
    np.testing.assert_allclose(ours.means, ref.means_, atol=1e-8)
    np.testing.assert_allclose(ours.covariances, ref.covariances_, atol=1e-8)
    # score() is scikit-learn's mean log-likelihood of its final parameters.
    assert ours.log_likelihood_history[-1] == pytest.approx(ref.score(X), abs=1e-9)
    np.testing.assert_allclose(ours.responsibilities, ref.predict_proba(X), atol=1e-8)


def test_gmm_converged_log_likelihood_matches_sklearn():
    X = blobs(4, d=2, k=3, std=1.0)
    init = kmeans_plusplus(X, 3, random_state=0)
    ours = gmm_em(X, 3, init_means=init, max_iter=500, tol=1e-8)
    ref = sklearn_gmm(X, init, max_iter=500, tol=1e-8)
    assert ours.converged and ref.converged_
    assert ours.log_likelihood_history[-1] == pytest.approx(ref.score(X), abs=1e-6)
    order = np.lexsort(ours.means.T), np.lexsort(ref.means_.T)
    np.testing.assert_allclose(ours.means[order[0]], ref.means_[order[1]], atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_gmm_log_likelihood_never_decreases(seed):
    # Overlapping blobs give EM many small steps to take. With reg_covar = 0 the M-step is the
    # exact maximiser of Q, so monotonicity is a theorem and only rounding may break it.
    X = blobs(seed, n=300, d=2, k=5, std=3.0)
    res = gmm_em(X, 5, max_iter=200, tol=0.0, reg_covar=0.0, random_state=seed)
    assert np.all(np.diff(res.log_likelihood_history) >= -1e-10)
    res = gmm_em(X, 5, max_iter=200, tol=0.0, random_state=seed)
    assert np.all(np.diff(res.log_likelihood_history) >= -1e-6)


def test_gmm_result_is_a_distribution():
    X = blobs(0)
    res = gmm_em(X, 4, random_state=0)
    assert res.weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(res.responsibilities.sum(axis=1), 1.0)
    np.testing.assert_allclose(res.covariances, np.transpose(res.covariances, (0, 2, 1)))
    assert np.all(np.linalg.eigvalsh(res.covariances) > 0)
    assert res.labels.shape == (len(X),)


def test_far_away_points_get_finite_responsibilities():
    # A point 1e4 standard deviations from every component has density exp(-5e7): zero in
    # float64 for every component, so the naive ratio would be 0/0.
    weights = np.array([0.5, 0.5])
    means = np.array([[0.0, 0.0], [3.0, 0.0]])
    covs = np.stack([np.eye(2), np.eye(2)])
    X = np.array([[1.0, 0.0], [1e4, 0.0], [-1e4, 5.0]])
    resp, ll = gmm_e_step(X, weights, means, covs)
    assert np.isfinite(resp).all() and np.isfinite(ll)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0)
    assert resp[1, 1] == pytest.approx(1.0) and resp[2, 0] == pytest.approx(1.0)
    # A whole EM fit with an outlier stays finite too.
    Xb = np.vstack([blobs(0, d=2), [[1e5, -1e5]]])
    res = gmm_em(Xb, 4, random_state=0)
    assert np.isfinite(res.responsibilities).all()
    assert np.isfinite(res.log_likelihood_history).all()


def test_m_step_with_hard_responsibilities_gives_cluster_means():
    # k-means' update is the M-step for one-hot responsibilities.
    X = blobs(0)
    labels = kmeans(X, 4, random_state=0).labels
    _, means, _ = gmm_m_step(X, np.eye(4)[labels])
    expected = np.stack([X[labels == j].mean(0) for j in range(4)])
    np.testing.assert_allclose(means, expected, atol=1e-12)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fit", [kmeans, gmm_em])
def test_bad_input_raises(fit):
    X = blobs(0, n=20)
    with pytest.raises(ValueError, match="more than the 20 points"):
        fit(X, 21)
    with pytest.raises(ValueError, match="at least 1"):
        fit(X, 0)
    with pytest.raises(ValueError, match="integer"):
        fit(X, 2.5)
    with pytest.raises(ValueError, match="rank 2"):
        fit(X[:, 0], 2)
    with pytest.raises(ValueError, match="rank 2"):
        fit(X[None], 2)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit(bad, 2)
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit(bad, 2)
    with pytest.raises(ValueError, match="empty"):
        fit(np.empty((0, 3)), 1)
    with pytest.raises(ValueError, match="max_iter"):
        fit(X, 2, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        fit(X, 2, tol=-1.0)


def test_bad_starting_centres_raise():
    X = blobs(0, n=20)
    with pytest.raises(ValueError, match=r"init must have shape \[k, d\] = \[2, 3\]"):
        kmeans(X, 2, init=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="init_means must have shape"):
        gmm_em(X, 2, init_means=np.zeros(3))
    with pytest.raises(ValueError, match="init_means contains NaN"):
        gmm_em(X, 2, init_means=np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="reg_covar"):
        gmm_em(X, 2, reg_covar=-1.0)


def test_collapsed_component_without_regularisation_raises():
    # Two identical points and reg_covar=0: the covariance is singular. Say so, don't NaN.
    X = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 6.0], [6.0, 5.0]])
    with pytest.raises(ValueError, match="increase reg_covar"):
        gmm_em(X, 2, init_means=[[0.0, 0.0], [5.0, 5.0]], reg_covar=0.0)
