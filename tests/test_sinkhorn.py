"""clbook.sinkhorn.sinkhorn_knopp: marginals, a plain float64 transcription, POT, stability, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from clbook.sinkhorn import sinkhorn_knopp


def cosine_scores(b: int, k: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    """[b, k] cosine similarities of random unit vectors against random unit prototypes."""
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    return z @ c.T


def plain_sinkhorn(scores: np.ndarray, epsilon: float, n_iter: int) -> np.ndarray:
    """The algorithm as SwAV's paper describes it, in float64 without logs, prototypes first.

    Q = exp(S / eps)^T of shape [K, B], scaled to total mass 1; each iteration makes every
    prototype (row here) carry 1 / K and every sample (column here) 1 / B; finally Q * B,
    transposed back to [B, K].
    """
    Q = np.exp(np.asarray(scores, dtype=np.float64) / epsilon).T
    K, B = Q.shape
    Q /= Q.sum()
    for _ in range(n_iter):
        Q /= Q.sum(axis=1, keepdims=True) * K
        Q /= Q.sum(axis=0, keepdims=True) * B
    return (Q * B).T


def test_marginals_after_enough_iterations():
    S = cosine_scores(96, 8)
    Q = sinkhorn_knopp(S, epsilon=0.05, n_iter=300)
    assert Q.shape == (96, 8) and (Q >= 0).all()
    torch.testing.assert_close(Q.sum(dim=1), torch.ones(96), atol=1e-5, rtol=0)
    torch.testing.assert_close(Q.sum(dim=0), torch.full((8,), 96 / 8), atol=1e-3, rtol=0)


def test_column_error_never_grows_and_rows_stay_exact():
    # The L1 violation of the column marginals cannot grow from one iteration to the next (a
    # row rescaling never moves the column sums further from their targets in L1).
    S = cosine_scores(64, 5, seed=1).double()
    errors = []
    for n_iter in range(1, 101):
        Q = sinkhorn_knopp(S, epsilon=0.05, n_iter=n_iter)
        assert torch.allclose(Q.sum(dim=1), torch.ones(64, dtype=torch.float64), atol=1e-12)
        errors.append((Q.sum(dim=0) - 64 / 5).abs().sum().item())
    assert errors[-1] < 1e-8 * errors[0], errors
    assert all(b <= a * (1 + 1e-9) for a, b in zip(errors, errors[1:])), errors


def test_zero_iterations_is_the_row_softmax():
    S = cosine_scores(10, 4)
    torch.testing.assert_close(sinkhorn_knopp(S, epsilon=0.1, n_iter=0), torch.softmax(S / 0.1, dim=1))


@pytest.mark.parametrize("n_iter", [1, 3, 20])
@pytest.mark.parametrize("epsilon", [0.05, 0.5])
def test_agrees_with_plain_float64_implementation(epsilon, n_iter):
    S = cosine_scores(40, 7, seed=2)
    expected = plain_sinkhorn(S.double().numpy(), epsilon, n_iter)
    got32 = sinkhorn_knopp(S, epsilon=epsilon, n_iter=n_iter)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), expected, atol=2e-5, rtol=1e-4)
    # NumPy input is computed in float64 and returned as NumPy.
    got64 = sinkhorn_knopp(S.double().numpy(), epsilon=epsilon, n_iter=n_iter)
    assert isinstance(got64, np.ndarray) and got64.dtype == np.float64
    np.testing.assert_allclose(got64, expected, atol=1e-12, rtol=1e-10)


def test_small_epsilon_stays_finite_in_float32():
    # Scores near +-1: exp(1 / 0.01) = e^100 overflows float32 (max about e^88.7).
    S = cosine_scores(32, 6, seed=3)
    S[0, 0] = 1.0
    assert torch.isinf(torch.exp(S / 0.01)).any()  # the naive route really overflows here
    Q = sinkhorn_knopp(S, epsilon=0.01, n_iter=3)
    assert torch.isfinite(Q).all()
    np.testing.assert_allclose(Q.numpy(), plain_sinkhorn(S.double().numpy(), 0.01, 3), atol=1e-4)


def test_half_precision_input_is_computed_in_float32():
    S = cosine_scores(32, 6, seed=4)
    Q = sinkhorn_knopp(S.half(), epsilon=0.05, n_iter=3)
    assert Q.dtype == torch.float16 and torch.isfinite(Q).all()
    np.testing.assert_allclose(Q.float().numpy(), sinkhorn_knopp(S.half().float(), 0.05, 3).numpy(), atol=2e-3)


def test_agrees_with_pot_at_convergence(peer):
    ot = peer("ot", "pot")
    S = cosine_scores(50, 6, seed=5).double().numpy()
    B, K = S.shape
    epsilon = 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # POT warns if it has not converged: fail loudly instead
        plan = ot.sinkhorn(np.full(B, 1 / B), np.full(K, 1 / K), -S, epsilon, numItermax=100_000, stopThr=1e-13)
    # POT's plan has total mass 1, with rows 1 / B and columns 1 / K; Q is B times that.
    np.testing.assert_allclose(sinkhorn_knopp(S, epsilon=epsilon, n_iter=2000), B * plan, atol=1e-8)


def test_prevents_the_collapse_that_softmax_allows():
    # Every sample scores prototype 0 highest: a softmax gives everything to prototype 0.
    g = torch.Generator().manual_seed(6)
    S = 0.1 * torch.rand(60, 3, generator=g)
    S[:, 0] += 0.5
    soft = sinkhorn_knopp(S, epsilon=0.05, n_iter=0)
    assert (soft.argmax(dim=1) == 0).all()
    Q = sinkhorn_knopp(S, epsilon=0.05, n_iter=100)
    torch.testing.assert_close(Q.sum(dim=0), torch.full((3,), 20.0), atol=1e-3, rtol=0)
    assert torch.bincount(Q.argmax(dim=1), minlength=3).min() > 10


def test_gradient_flows_and_input_is_untouched():
    S = cosine_scores(12, 3).requires_grad_()
    before = S.detach().clone()
    (sinkhorn_knopp(S)[:, 0] * torch.arange(12.0)).sum().backward()
    assert S.grad is not None and torch.isfinite(S.grad).all()
    assert torch.equal(S.detach(), before)


@pytest.mark.parametrize(
    "scores, kwargs, match",
    [
        (torch.zeros(4), {}, "shape"),
        (torch.zeros(2, 3, 4), {}, "shape"),
        (torch.zeros(0, 3), {}, "shape"),
        (torch.zeros(4, 3, dtype=torch.long), {}, "floating-point"),
        (torch.tensor([[0.0, float("nan")]]), {}, "NaN"),
        (np.zeros(5), {}, "shape"),
        (torch.zeros(4, 3), {"epsilon": 0.0}, "epsilon"),
        (torch.zeros(4, 3), {"epsilon": -0.1}, "epsilon"),
        (torch.zeros(4, 3), {"epsilon": float("inf")}, "epsilon"),
        (torch.zeros(4, 3), {"n_iter": -1}, "n_iter"),
        (torch.zeros(4, 3), {"n_iter": 2.5}, "n_iter"),
    ],
)
def test_bad_input_raises(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn_knopp(scores, **kwargs)
