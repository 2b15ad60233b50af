"""The frozen-feature protocol, checked where it can go wrong without an error.

* ``evaluate_frozen`` looks at the held-out features only for its two final scores: its choices
  do not move when the test labels are scrambled, and no fit or selection ever sees a test row;
* the linear probe standardizes: on badly scaled features it matches scikit-learn's logistic
  regression on standardized features, and it does not care about the features' units;
* kNN's vote ties go to the smallest label, as documented, against a brute-force reference.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import clbook.evaluation as evaluation
from clbook.evaluation import LinearProbe, evaluate_frozen, fit_linear_probe, knn_predict


def blobs(n, d=6, classes=4, spread=1.0, seed=0, points_seed=None):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * spread
    if points_seed is not None:
        g = torch.Generator().manual_seed(points_seed)
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


# ----------------------------------------------------------------------------- evaluate_frozen


def test_evaluate_frozen_choices_do_not_depend_on_the_test_set():
    X, y = blobs(300, seed=1)
    Xt, yt = blobs(200, seed=1, points_seed=2)
    options = dict(weight_decays=(0.0, 1e-3, 1e-1, 1.0), ks=(1, 3, 9, 27))
    out = evaluate_frozen(X, y, Xt, yt, **options)
    g = torch.Generator().manual_seed(3)
    scrambled = evaluate_frozen(X, y, torch.randn(Xt.shape, generator=g), yt[torch.randperm(len(yt), generator=g)],
                                **options)
    for key in ("weight_decay", "k", "val_linear_acc", "val_knn_acc"):
        assert out[key] == scrambled[key], key
    for a, b in zip(out["probe"].linear.parameters(), scrambled["probe"].linear.parameters()):
        assert torch.equal(a, b)
    assert out["linear_acc"] > 0.5 and scrambled["linear_acc"] < out["linear_acc"]


def test_evaluate_frozen_uses_the_test_rows_only_for_the_final_scores(monkeypatch):
    X, y = blobs(240, seed=4)
    Xt, yt = blobs(120, seed=4, points_seed=5)
    test_rows = {tuple(row.tolist()) for row in Xt}
    calls = []  # (what, sees a test row), in order

    def has_test_rows(feats):
        return any(tuple(row.tolist()) in test_rows for row in feats)

    real_fit, real_knn, real_predict = evaluation.fit_linear_probe, evaluation.knn_predict, LinearProbe.predict

    def fit(train_feats, train_y, val_feats=None, val_y=None, **kwargs):
        calls.append(("fit", has_test_rows(train_feats) or (val_feats is not None and has_test_rows(val_feats))))
        return real_fit(train_feats, train_y, val_feats, val_y, **kwargs)

    def knn(train_feats, train_y, query_feats, *args, **kwargs):
        calls.append(("knn reference", has_test_rows(train_feats)))
        calls.append(("knn query", has_test_rows(query_feats)))
        return real_knn(train_feats, train_y, query_feats, *args, **kwargs)

    def predict(self, feats):
        calls.append(("probe query", has_test_rows(feats)))
        return real_predict(self, feats)

    monkeypatch.setattr(evaluation, "fit_linear_probe", fit)
    monkeypatch.setattr(evaluation, "knn_predict", knn)
    monkeypatch.setattr(LinearProbe, "predict", predict)
    evaluate_frozen(X, y, Xt, yt, weight_decays=(0.0, 1e-2), ks=(1, 5))
    fits = [i for i, (what, _) in enumerate(calls) if what == "fit"]
    assert len(fits) == 3  # one per weight decay, then the refit on all training features
    seen = [(i, what) for i, (what, test) in enumerate(calls) if test]
    # Test rows: once as the probe's queries and once as kNN's, after the last fit; never fitted on.
    assert sorted(what for _, what in seen) == ["knn query", "probe query"], calls
    assert all(i > fits[-1] for i, _ in seen), calls


# ----------------------------------------------------------------------------- the probe's standardization


def badly_scaled(n, seed):
    """Two classes told apart by one dimension scaled by 1e-3, beside four noise dimensions scaled by 1e3."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    informative = (2.0 * y - 1) + 0.6 * torch.randn(n, generator=g)
    noise = torch.randn(n, 4, generator=g)
    return torch.cat([1e-3 * informative[:, None], 1e3 * noise], dim=1), y


def test_probe_on_badly_scaled_features_matches_standardized_logistic_regression():
    X, y = badly_scaled(600, seed=0)
    Xt, yt = badly_scaled(600, seed=1)
    probe = fit_linear_probe(X, y, weight_decay=0.0, steps=200)
    scaler = StandardScaler().fit(X.double().numpy())
    ref = LogisticRegression(C=1e4, max_iter=5000).fit(scaler.transform(X.double().numpy()), y.numpy())
    ref_pred = ref.predict(scaler.transform(Xt.double().numpy()))
    ref_acc = float((ref_pred == yt.numpy()).mean())
    assert ref_acc > 0.9  # the informative dimension separates the classes well
    assert probe.accuracy(Xt, yt) == pytest.approx(ref_acc, abs=0.02)
    assert (probe.predict(Xt).numpy() == ref_pred).mean() > 0.97


def test_probe_does_not_care_about_the_features_units():
    X, y = badly_scaled(400, seed=2)
    Xt, _ = badly_scaled(400, seed=3)
    units = torch.tensor([1e3, 1e-3, 1e-3, 1e-3, 1e-3])  # back to unit scale, plus a shift
    plain = fit_linear_probe(X * units + 5.0, y, weight_decay=0.0)
    scaled = fit_linear_probe(X, y, weight_decay=0.0)
    agree = (plain.predict(Xt * units + 5.0) == scaled.predict(Xt)).float().mean().item()
    assert agree > 0.99
    np.testing.assert_allclose(plain.history["loss"], scaled.history["loss"], rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- kNN ties


def brute_force_knn(train, labels, query, k):
    """Cosine similarity in float64, the k largest, majority vote, ties to the smallest label."""
    t = train.double() / train.double().norm(dim=1, keepdim=True)
    preds, ties = [], 0
    for q in query.double():
        sim = (t @ (q / q.norm())).tolist()
        order = sorted(range(len(sim)), key=lambda j: -sim[j])
        assert sim[order[k - 1]] - sim[order[k]] > 1e-4  # the k nearest are well defined
        counts = Counter(int(labels[j]) for j in order[:k])
        top = max(counts.values())
        winners = [c for c, v in counts.items() if v == top]
        ties += len(winners) > 1
        preds.append(min(winners))
    return torch.tensor(preds), ties


@pytest.mark.parametrize("k", [2, 4, 6])
def test_knn_vote_ties_go_to_the_smallest_label(k):
    # Training points on a circle every 10 degrees, queries between them: no two similarities tie.
    angles = torch.deg2rad(torch.arange(0.0, 360.0, 10.0))
    train = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.linspace(0.5, 2.0, len(angles))[:, None]
    labels = torch.randint(0, 4, (len(angles),), generator=torch.Generator().manual_seed(k))
    q_angles = torch.deg2rad(torch.arange(1.3, 360.0, 7.1))
    query = torch.stack([q_angles.cos(), q_angles.sin()], dim=1)
    expected, ties = brute_force_knn(train, labels, query, k)
    assert ties >= 5  # the rule is exercised, not just the plain majority
    assert torch.equal(knn_predict(train, labels, query, k=k), expected)
    # The rule is about labels, not about the order of the training rows.
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    assert torch.equal(knn_predict(train[perm], labels[perm], query, k=k), expected)


def test_knn_tie_by_hand():
    # Nearest to [1, 0.05]: labels 2, 0, 2, 0 (in that order); 2 votes each, so label 0 wins.
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [-1.0, 0.0]])
    labels = torch.tensor([2, 0, 2, 0, 1])
    assert knn_predict(train, labels, torch.tensor([[1.0, 0.05]]), k=4).tolist() == [0]
    assert knn_predict(train, labels, torch.tensor([[1.0, 0.05]]), k=3).tolist() == [2]  # 2 votes to 1
