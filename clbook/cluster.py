"""k-means and Gaussian-mixture EM (notebook 06); Sinkhorn-Knopp (notebook 09) is in :mod:`clbook.sinkhorn`.

Conventions
-----------
* Data ``X`` is an array of shape ``[n, d]``: n points in d dimensions (a NumPy array, a list of
  lists, or a CPU torch tensor). Everything is computed in float64.
* Both algorithms alternate two steps. k-means: assign each point to its nearest centre, then
  move each centre to the mean of its points. EM: compute each point's responsibilities (the
  posterior over components), then re-estimate weights, means and covariances from them.
* The E-step works with log densities and normalises with log-sum-exp, so a point far from
  every component still gets responsibilities that sum to one instead of ``0 / 0 = NaN``.
* Bad input (wrong rank, NaN or inf, ``k < 1``, more clusters than points, values so large that
  squared distances would overflow float64) raises ``ValueError`` naming the argument. Numbers
  may be Python or NumPy numbers or 0-d tensors (checked by :mod:`clbook.checks`). No argument
  is modified. ``reg_covar`` is absolute, so :func:`gmm_em` warns when it dominates the data's
  variance (data on a tiny scale).

The step functions (:func:`nearest_center`, :func:`gmm_e_step`, :func:`gmm_m_step`) are public so
that the notebook can run the alternation one step at a time and draw it.

"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from clbook.checks import as_number, check_array, check_int, check_real

__all__ = [
    "KMeansResult",
    "GMMResult",
    "nearest_center",
    "kmeans_plusplus",
    "kmeans",
    "gmm_e_step",
    "gmm_m_step",
    "gmm_em",
]

# Added to every component's mass before dividing by it (scikit-learn does the same), so an
# empty component yields a finite, if useless, estimate instead of a division by zero.
_MASS_EPS = 10 * np.finfo(np.float64).eps


# ----------------------------------------------------------------------------- results


@dataclass
class KMeansResult:
    """Result of :func:`kmeans`.

    Attributes
    ----------
    centers : ndarray, shape [k, d]
        Final centres.
    labels : ndarray of int, shape [n]
        Index of each point's nearest final centre.
    inertia : float
        Sum over points of the squared distance to the nearest final centre.
    n_iter : int
        Number of assign-and-update iterations run.
    converged : bool
        Whether the stopping rule fired before ``max_iter``.
    inertia_history : list of float
        Inertia of the assignment made at the start of each iteration (non-increasing).
    """

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool
    inertia_history: list[float] = field(default_factory=list)


@dataclass
class GMMResult:
    """Result of :func:`gmm_em`.

    Attributes
    ----------
    weights : ndarray, shape [k]
        Mixing proportions, summing to one.
    means : ndarray, shape [k, d]
        Component means.
    covariances : ndarray, shape [k, d, d]
        Full covariance matrices (``reg_covar`` already added to the diagonal).
    responsibilities : ndarray, shape [n, k]
        Posterior probability of each component for each point under the returned parameters;
        rows sum to one.
    log_likelihood_history : list of float
        Mean log-likelihood per sample, ``mean_i log p(x_i)``, of the parameters after each
        iteration (one entry per iteration; the last entry belongs to the returned parameters).
    n_iter : int
        Number of EM iterations run.
    converged : bool
        Whether the mean log-likelihood gained less than ``tol`` in an iteration.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    responsibilities: np.ndarray
    log_likelihood_history: list[float]
    n_iter: int
    converged: bool

    @property
    def labels(self) -> np.ndarray:
        """Most responsible component of each point, shape [n]."""
        return self.responsibilities.argmax(axis=1)


# ----------------------------------------------------------------------------- input checks


def _check_k(k, n: int) -> int:
    k = check_int("k", as_number(k))
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > n:
        raise ValueError(f"k = {k} clusters is more than the {n} points in X")
    return k


def _check_iter_tol(max_iter, tol) -> tuple[int, float]:
    return check_int("max_iter", as_number(max_iter), 1), check_real("tol", as_number(tol), 0.0, strict=False)


def _check_reg_covar(reg_covar) -> float:
    return check_real("reg_covar", as_number(reg_covar), 0.0, strict=False)


# gmm_em warns when reg_covar exceeds this fraction of the data's smallest per-dimension variance.
REG_COVAR_WARN_FRACTION = 0.1


def _warn_if_reg_covar_dominates(X: np.ndarray, reg_covar: float) -> None:
    """A ``UserWarning`` when the absolute ``reg_covar`` is large against the data's own spread."""
    var = X.var(axis=0)
    var = var[var > 0]  # a constant dimension is exactly what reg_covar is for
    if var.size and reg_covar > REG_COVAR_WARN_FRACTION * var.min():
        warnings.warn(
            f"reg_covar = {reg_covar:.3g} is more than {REG_COVAR_WARN_FRACTION:.0%} of the smallest "
            f"per-dimension variance of X ({var.min():.3g}): the regularisation, not the data, shapes the "
            "covariances. reg_covar is absolute; rescale X or lower reg_covar.",
            UserWarning, stacklevel=3,
        )


def _as_centers(init, k: int, d: int, name: str) -> np.ndarray:
    C = check_array(init, name) if np.ndim(init) == 2 else None
    if C is None or C.shape != (k, d):
        shape = list(np.shape(init))
        raise ValueError(f"{name} must have shape [k, d] = [{k}, {d}], got {shape}")
    return C.copy()


# ----------------------------------------------------------------------------- k-means


def nearest_center(X, centers) -> tuple[np.ndarray, np.ndarray]:
    """Assign each point to its nearest centre (the k-means "recolouring" step).

    Parameters
    ----------
    X : array-like, shape [n, d]
    centers : array-like, shape [k, d]

    Returns
    -------
    labels : ndarray of int, shape [n]
        Index of the nearest centre; exact ties go to the lowest index.
    sq_dist : ndarray, shape [n]
        Squared Euclidean distance to that centre.
    """
    X = check_array(X)
    C = check_array(centers, "centers")
    if C.shape[1] != X.shape[1]:
        raise ValueError(f"centers have {C.shape[1]} features but X has {X.shape[1]}")
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2 is one matrix product instead of an [n, k, d] array,
    # but it cancels catastrophically when points sit far from the origin; centring both on
    # the data mean first keeps the terms small. The distance to the chosen centre is then
    # recomputed exactly, so the inertia carries no cancellation error.
    m = X.mean(axis=0)
    Xc, Cc = X - m, C - m
    d2 = (Xc**2).sum(axis=1)[:, None] - 2 * Xc @ Cc.T + (Cc**2).sum(axis=1)[None, :]
    labels = d2.argmin(axis=1)
    return labels, ((X - C[labels]) ** 2).sum(axis=1)


def kmeans_plusplus(X, k: int, random_state: int | np.random.Generator | None = None) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007).

    The first centre is a uniformly random point; each next centre is a point drawn with
    probability proportional to its squared distance to the nearest centre chosen so far.
    (scikit-learn's default is the "greedy" variant, which tries several candidates per step,
    so the two pick different centres from the same seed.)

    Parameters
    ----------
    X : array-like, shape [n, d]
    k : int
        Number of centres, ``1 <= k <= n``.
    random_state : int, numpy Generator or None
        Seed for reproducible seeding.

    Returns
    -------
    ndarray, shape [k, d]
        Centres, each a copy of one row of ``X``.
    """
    X = check_array(X)
    k = _check_k(k, len(X))
    rng = np.random.default_rng(random_state)
    idx = [int(rng.integers(len(X)))]
    d2 = ((X - X[idx[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        # All points already coincide with a centre (duplicated data): any choice is as good.
        p = d2 / total if total > 0 else None
        idx.append(int(rng.choice(len(X), p=p)))
        d2 = np.minimum(d2, ((X - X[idx[-1]]) ** 2).sum(axis=1))
    return X[idx].copy()


def kmeans(
    X,
    k: int,
    init=None,
    max_iter: int = 300,
    tol: float = 1e-4,
    random_state: int | np.random.Generator | None = None,
) -> KMeansResult:
    r"""Lloyd's k-means: alternate nearest-centre assignment and centre-of-mass updates.

    Minimises the inertia :math:`\sum_i \lVert x_i - c_{z_i} \rVert^2`. Each step can only
    lower it, so the algorithm stops at a local minimum that depends on the starting centres.

    Parameters
    ----------
    X : array-like, shape [n, d]
    k : int
        Number of clusters, ``1 <= k <= n``.
    init : array-like of shape [k, d], or None
        Starting centres. None seeds them with :func:`kmeans_plusplus` using ``random_state``.
    max_iter : int, default 300
        Maximum number of assign-and-update iterations.
    tol : float, default 1e-4
        Stop when the squared centre movement summed over centres is at most
        ``tol * mean(var(X, axis=0))`` (scikit-learn's rule), or when no label changes.
    random_state : int, numpy Generator or None
        Seed for k-means++ (unused when ``init`` is given).

    Returns
    -------
    KMeansResult
        ``centers``, ``labels`` (nearest final centre), ``inertia`` (of those labels) and
        the iteration log.

    Notes
    -----
    A centre that loses all its points is moved onto the point farthest from its own centre
    (as scikit-learn does), which splits the worst-fitted cluster; such details matter only in
    degenerate cases.
    """
    X = check_array(X)
    n, d = X.shape
    k = _check_k(k, n)
    max_iter, tol = _check_iter_tol(max_iter, tol)
    rng = np.random.default_rng(random_state)
    C = kmeans_plusplus(X, k, rng) if init is None else _as_centers(init, k, d, "init")
    # Scale the tolerance to the data so that the same tol means the same thing in any unit.
    threshold = tol * X.var(axis=0).mean()

    labels = None
    history: list[float] = []
    converged = False
    for n_iter in range(1, max_iter + 1):
        new_labels, sq_dist = nearest_center(X, C)
        history.append(float(sq_dist.sum()))
        counts = np.bincount(new_labels, minlength=k)
        C_new = np.zeros_like(C)
        np.add.at(C_new, new_labels, X)
        for j in np.flatnonzero(counts == 0):
            # Hand the worst-fitted point to the empty centre, taking it out of its old cluster.
            far = int(sq_dist.argmax())
            old = new_labels[far]
            if counts[old] > 1:
                C_new[old] -= X[far]
                counts[old] -= 1
            C_new[j], counts[j], sq_dist[far], new_labels[far] = X[far], 1, 0.0, j
        C_new /= counts[:, None]
        shift = float(((C_new - C) ** 2).sum())
        C = C_new
        # Unchanged labels mean the update just reproduced the same centres: a fixed point.
        if (labels is not None and np.array_equal(new_labels, labels)) or shift <= threshold:
            converged = True
            break
        labels = new_labels

    labels, sq_dist = nearest_center(X, C)
    return KMeansResult(
        centers=C,
        labels=labels,
        inertia=float(sq_dist.sum()),
        n_iter=n_iter,
        converged=converged,
        inertia_history=history,
    )


# ----------------------------------------------------------------------------- Gaussian mixture


def _log_gaussian(X: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """``[n, k]`` matrix of ``log N(x_i | mean_j, cov_j)`` via Cholesky factors."""
    n, d = X.shape
    out = np.empty((n, len(means)))
    for j, (mu, cov) in enumerate(zip(means, covariances)):
        try:
            L = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError(
                f"covariance of component {j} is not positive definite; "
                "the component has collapsed onto too few points - increase reg_covar"
            ) from None
        # With cov = L L^T: (x-mu)^T cov^-1 (x-mu) = |L^-1 (x-mu)|^2 and log det = 2 sum log diag L.
        z = np.linalg.solve(L, (X - mu).T)
        out[:, j] = -0.5 * (d * math.log(2 * math.pi) + (z**2).sum(axis=0)) - np.log(np.diag(L)).sum()
    return out


def _logsumexp_rows(A: np.ndarray) -> np.ndarray:
    # Subtract each row's maximum so the largest term is exp(0) = 1: nothing overflows, and
    # at least one term survives, so the log never sees 0.
    m = A.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(A - m).sum(axis=1, keepdims=True)))[:, 0]


def gmm_e_step(X, weights, means, covariances) -> tuple[np.ndarray, float]:
    r"""E-step: responsibilities :math:`r_{ij} = p(z_i = j \mid x_i)` and the mean log-likelihood.

    .. math:: \log r_{ij} = \log \pi_j + \log \mathcal N(x_i \mid \mu_j, \Sigma_j)
              - \log \sum_l \pi_l \, \mathcal N(x_i \mid \mu_l, \Sigma_l)

    computed entirely in log space.

    Parameters
    ----------
    X : array-like, shape [n, d]
    weights : array-like, shape [k]
        Mixing proportions (positive, summing to one).
    means : array-like, shape [k, d]
    covariances : array-like, shape [k, d, d]
        Symmetric positive-definite matrices.

    Returns
    -------
    responsibilities : ndarray, shape [n, k]
        Rows sum to one.
    mean_log_likelihood : float
        :math:`\frac1n \sum_i \log \sum_j \pi_j \mathcal N(x_i \mid \mu_j, \Sigma_j)`.
    """
    X = check_array(X)
    params = {}
    for name, value in (("weights", weights), ("means", means), ("covariances", covariances)):
        try:
            params[name] = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a numeric array: {err}") from None
    weights, means, covariances = params["weights"], params["means"], params["covariances"]
    k, d = len(weights) if weights.ndim else 0, X.shape[1]
    if k == 0 or weights.shape != (k,) or means.shape != (k, d) or covariances.shape != (k, d, d):
        raise ValueError(
            f"expected weights [k], means [k, {d}], covariances [k, {d}, {d}] with k >= 1; got "
            f"{list(weights.shape)}, {list(means.shape)}, {list(covariances.shape)}"
        )
    for name, value in params.items():
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
        raise ValueError("weights must be non-negative and sum to one")
    # Cholesky reads only the lower triangle: an asymmetric matrix would be silently replaced.
    # Asymmetry is measured against the matrix's own scale, sqrt(S_aa S_bb): an M-step's products
    # r x_a x_b and r x_b x_a round differently, which for a nearly-zero off-diagonal entry is a
    # large relative difference but a negligible one against the variances.
    diag = np.abs(np.einsum("kaa->ka", covariances))  # [k, d]
    scale = np.sqrt(diag[:, :, None] * diag[:, None, :])  # [k, d, d]
    if (np.abs(covariances - covariances.transpose(0, 2, 1)) > 1e-8 * scale).any():
        raise ValueError("covariances must be symmetric matrices")
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # a zero weight is a legal -inf log prior
        log_joint = np.log(weights) + _log_gaussian(X, means, covariances)
        log_px = _logsumexp_rows(log_joint)
    if not np.isfinite(log_px).all():
        i = int(np.flatnonzero(~np.isfinite(log_px))[0])
        raise ValueError(f"the density of point {i} under every component is beyond float64's range (overflow "
                         "or underflow of its log-density): means or covariances far out of scale with X")
    return np.exp(log_joint - log_px[:, None]), float(log_px.mean())


def gmm_m_step(X, responsibilities, reg_covar: float = 1e-6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""M-step: the parameters that maximise the Q-function for the given responsibilities.

    With :math:`N_j = \sum_i r_{ij}`: :math:`\pi_j = N_j / n`,
    :math:`\mu_j = \frac{1}{N_j}\sum_i r_{ij} x_i`,
    :math:`\Sigma_j = \frac{1}{N_j}\sum_i r_{ij} (x_i - \mu_j)(x_i - \mu_j)^\top + \lambda I`
    where :math:`\lambda` is ``reg_covar``.

    Parameters
    ----------
    X : array-like, shape [n, d]
    responsibilities : array-like, shape [n, k]
        Non-negative; rows sum to one (hard one-hot rows are allowed).
    reg_covar : float, default 1e-6
        Added to every covariance's diagonal so that a component sitting on a few points (or on
        data lying in a subspace) keeps an invertible covariance.

    Returns
    -------
    weights : ndarray, shape [k]
    means : ndarray, shape [k, d]
    covariances : ndarray, shape [k, d, d]
    """
    X = check_array(X)
    R = np.asarray(responsibilities, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != X.shape[0]:
        raise ValueError(f"responsibilities must have shape [{X.shape[0]}, k], got {list(R.shape)}")
    if not np.isfinite(R).all() or (R < 0).any():
        raise ValueError("responsibilities must be finite and non-negative")
    reg_covar = _check_reg_covar(reg_covar)
    nk = R.sum(axis=0) + _MASS_EPS
    means = (R.T @ X) / nk[:, None]
    d = X.shape[1]
    covariances = np.empty((R.shape[1], d, d))
    for j in range(R.shape[1]):
        diff = X - means[j]
        covariances[j] = (R[:, j, None] * diff).T @ diff / nk[j] + reg_covar * np.eye(d)
    return nk / nk.sum(), means, covariances


def gmm_em(
    X,
    k: int,
    init_means=None,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    random_state: int | np.random.Generator | None = None,
) -> GMMResult:
    r"""Fit a Gaussian mixture with full covariances by expectation-maximisation.

    Each iteration is an M-step (:func:`gmm_m_step`) followed by an E-step (:func:`gmm_e_step`),
    and raises the mean log-likelihood :math:`\frac1n \sum_i \log p(x_i)` or leaves it unchanged.

    Parameters
    ----------
    X : array-like, shape [n, d]
    k : int
        Number of components, ``1 <= k <= n``.
    init_means : array-like of shape [k, d], or None
        Starting means. None takes the centres of :func:`kmeans` run with ``random_state``.
    max_iter : int, default 100
        Maximum number of EM iterations.
    tol : float, default 1e-3
        Stop when an iteration changes the mean log-likelihood by less than ``tol`` (the same
        rule and default as scikit-learn's ``GaussianMixture``).
    reg_covar : float, default 1e-6
        Added to the diagonal of every covariance (see :func:`gmm_m_step`). It is absolute, in the
        units of X squared: a ``UserWarning`` says so when it exceeds 10% of the smallest non-zero
        per-dimension variance of X (then it, not the data, shapes the covariances).
    random_state : int, numpy Generator or None
        Seed for the k-means initialisation.

    Returns
    -------
    GMMResult
        ``weights``, ``means``, ``covariances``, ``responsibilities`` and
        ``log_likelihood_history``.

    Notes
    -----
    Starting point: every point is given to its nearest starting mean; each component's weight
    is its share of the points and its covariance is the scatter of its points about the
    starting mean (plus ``reg_covar``). The means are the starting means themselves, so the same
    start can be handed to scikit-learn as ``weights_init``, ``means_init`` and ``precisions_init``.

    With ``reg_covar > 0`` the M-step maximises a slightly smoothed objective, so the exact
    log-likelihood may dip by an amount of order ``reg_covar`` near convergence.
    """
    X = check_array(X)
    n, d = X.shape
    k = _check_k(k, n)
    max_iter, tol = _check_iter_tol(max_iter, tol)
    reg_covar = _check_reg_covar(reg_covar)
    _warn_if_reg_covar_dominates(X, reg_covar)
    if init_means is None:
        means = kmeans(X, k, random_state=random_state).centers
    else:
        means = _as_centers(init_means, k, d, "init_means")

    labels, _ = nearest_center(X, means)
    hard = np.eye(k)[labels]
    weights, _, _ = gmm_m_step(X, hard, reg_covar)
    nk = hard.sum(axis=0) + _MASS_EPS
    covariances = np.stack(
        [((X - means[j]).T * hard[:, j]) @ (X - means[j]) / nk[j] + reg_covar * np.eye(d) for j in range(k)]
    )
    resp, ll = gmm_e_step(X, weights, means, covariances)

    history: list[float] = []
    converged = False
    for _ in range(max_iter):
        weights, means, covariances = gmm_m_step(X, resp, reg_covar)
        resp, new_ll = gmm_e_step(X, weights, means, covariances)
        history.append(new_ll)
        gain, ll = new_ll - ll, new_ll
        if abs(gain) < tol:
            converged = True
            break

    return GMMResult(
        weights=weights,
        means=means,
        covariances=covariances,
        responsibilities=resp,
        log_likelihood_history=history,
        n_iter=len(history),
        converged=converged,
    )
