"""Representation diagnostics against direct formulas and closed-form cases."""

import math

import numpy as np
import pytest
import torch

from clbook.metrics import alignment, effective_rank, feature_metrics, feature_std, uniformity


def circle(n: int, phase: float = 0.0) -> torch.Tensor:
    """n points evenly spread on the unit circle, [n, 2]."""
    a = phase + 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    return torch.stack([a.cos(), a.sin()], dim=1)


def simplex(n: int) -> torch.Tensor:
    """A regular simplex of n unit vectors in R^n (standard basis minus its centroid), [n, n]."""
    e = torch.eye(n, dtype=torch.float64)
    return torch.nn.functional.normalize(e - e.mean(dim=0), dim=1)


def random_rows(n=50, d=7, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- direct formulas


def test_against_direct_numpy_formulas():
    z, z2 = random_rows(seed=1).double().numpy(), random_rows(seed=2).double().numpy()
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    u2 = z2 / np.linalg.norm(z2, axis=1, keepdims=True)
    for alpha in (1, 2, 3.5):
        ref = np.mean(np.linalg.norm(u - u2, axis=1) ** alpha)
        assert alignment(torch.from_numpy(z), torch.from_numpy(z2), alpha) == pytest.approx(ref, rel=1e-9)
    for t in (0.5, 2, 10):
        pairs = [np.exp(-t * np.sum((u[i] - u[j]) ** 2)) for i in range(len(u)) for j in range(i + 1, len(u))]
        assert uniformity(torch.from_numpy(z), t) == pytest.approx(np.log(np.mean(pairs)), rel=1e-9)
    assert feature_std(torch.from_numpy(z)) == pytest.approx(np.mean(np.std(u, axis=0)), rel=1e-9)
    s = np.linalg.svd(z, compute_uv=False)
    p = s / s.sum()
    assert effective_rank(torch.from_numpy(z)) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-9)


def test_float32_input_and_row_scale_invariance():
    z = random_rows(seed=3)
    scaled = z * torch.rand(len(z), 1, generator=torch.Generator().manual_seed(4)).add(0.1) * 5
    assert uniformity(scaled) == pytest.approx(uniformity(z), rel=1e-6)
    assert feature_std(scaled) == pytest.approx(feature_std(z), rel=1e-6)
    assert alignment(z, scaled) == pytest.approx(0.0, abs=1e-12)
    assert isinstance(uniformity(z), float)


# ----------------------------------------------------------------------------- closed forms


def test_collapsed_set():
    z = torch.tensor([[0.3, -1.2, 2.0, 0.5]]).repeat(100, 1)
    assert uniformity(z) == 0.0  # exactly: the worst possible, and finite
    assert feature_std(z) == 0.0
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-9)
    assert alignment(z, z) == 0.0 and alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-20)
    # Collapse up to positive scale is still collapse on the sphere (up to float32 rounding of the input).
    scaled = z * torch.linspace(0.5, 2.0, 100)[:, None]
    assert uniformity(scaled) == pytest.approx(0.0, abs=1e-12) and feature_std(scaled) < 1e-7


@pytest.mark.parametrize("n", [3, 4, 8, 12])
def test_points_evenly_on_a_circle(n):
    z = circle(n)
    # Centred with covariance I / 2: std 1 / sqrt(2) in each of the 2 dimensions.
    assert feature_std(z) == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    # Z^T Z = (n / 2) I: two equal singular values.
    assert effective_rank(z) == pytest.approx(2.0, rel=1e-12)
    # Pair (i, j) at squared distance 2 - 2 cos(2 pi (i - j) / n).
    t = 2.0
    sq = [2 - 2 * math.cos(2 * math.pi * (j - i) / n) for i in range(n) for j in range(i + 1, n)]
    assert uniformity(z, t) == pytest.approx(math.log(sum(math.exp(-t * s) for s in sq) / len(sq)), rel=1e-12)
    # Each point against its neighbour at angle theta = 2 pi / n: distance 2 sin(theta / 2).
    theta = 2 * math.pi / n
    assert alignment(z, circle(n, theta), alpha=2) == pytest.approx(2 - 2 * math.cos(theta), rel=1e-12)
    assert alignment(z, circle(n, theta), alpha=1) == pytest.approx(2 * math.sin(theta / 2), rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_regular_simplex(n):
    z = simplex(n)
    # Every pair at cosine -1 / (n - 1), so at squared distance 2n / (n - 1).
    assert uniformity(z, t=2) == pytest.approx(-2 * 2 * n / (n - 1), rel=1e-12)
    assert uniformity(z, t=0.5) == pytest.approx(-0.5 * 2 * n / (n - 1), rel=1e-12)
    # n points spanning n - 1 dimensions, all n - 1 singular values equal.
    assert effective_rank(z) == pytest.approx(n - 1, rel=1e-9)
    # Centred, covariance proportional to the projector onto the simplex's hyperplane:
    # per-dimension variance (1 / n) (1 - 1 / n) / (1 - 1 / n) = 1 / n in each of n coordinates.
    assert feature_std(z) == pytest.approx(1 / math.sqrt(n), rel=1e-12)
    # Antipodal views: the largest alignment, 4 ** (alpha / 2).
    assert alignment(z, -z, alpha=2) == pytest.approx(4.0)


def test_std_bound_and_spread_random_features():
    z = random_rows(n=4000, d=16, seed=5)
    # Isotropic Gaussian rows: close to (and never above) 1 / sqrt(d).
    assert 0.95 / 4 < feature_std(z) <= 1 / 4
    assert effective_rank(z) > 15  # nearly all 16 directions used


def test_identity_has_full_effective_rank():
    assert effective_rank(torch.eye(6)) == pytest.approx(6.0)
    # Zero singular values count zero (no NaN from 0 log 0).
    assert effective_rank(torch.eye(6)[:, :3].repeat(2, 1)) == pytest.approx(3.0)


# ----------------------------------------------------------------------------- input checks


def test_input_checks():
    z = random_rows()
    with pytest.raises(ValueError, match="shape"):
        uniformity(z[0])
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(z[:1])
    with pytest.raises(ValueError, match="same shape"):
        alignment(z, z[:-1])
    with pytest.raises(ValueError, match="alpha"):
        alignment(z, z, alpha=0)
    with pytest.raises(ValueError, match="t must be"):
        uniformity(z, t=-1)
    with pytest.raises(ValueError, match="floating-point"):
        feature_std(torch.ones(3, 2, dtype=torch.long))
    bad = z.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        effective_rank(bad)
    with pytest.raises(ValueError, match="all zeros"):
        effective_rank(torch.zeros(4, 3))


def test_feature_metrics_dict():
    z, z2 = random_rows(seed=6), random_rows(seed=7)
    out = feature_metrics(z, z2)
    assert out == {"std": feature_std(z), "uniformity": uniformity(z), "effective_rank": effective_rank(z),
                   "alignment": alignment(z, z2)}
    assert set(feature_metrics(z)) == {"std", "uniformity", "effective_rank"}
