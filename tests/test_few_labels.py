"""Few-label evaluation and raw pixels as a baseline (clbook.evaluation, clbook.encoders)."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from clbook.encoders import PixelFeatures
from clbook.evaluation import evaluate_few_labels, labelled_subset, plot_label_efficiency


def blobs(n_per_class: int, n_classes: int = 4, dim: int = 8, spread: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(n_classes, dim, generator=g)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_labelled_subset_draws_exactly_n_per_class_without_replacement():
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)
    idx = labelled_subset(y, 3, torch.Generator().manual_seed(0))
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3]
    assert len(set(idx.tolist())) == len(idx)  # no index twice
    again = labelled_subset(y, 3, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)  # the draw depends on the generator only
    with pytest.raises(ValueError, match="exceeds the 5 examples of class 1"):
        labelled_subset(y, 6, torch.Generator())


def test_few_labels_knn_matches_scikit_learn_on_the_same_draw():
    X, y = blobs(40, spread=1.5)
    Xt, yt = blobs(30, spread=1.5, seed=1)
    out = evaluate_few_labels(X, y, Xt, yt, labels_per_class=(1, 10), draws=3, seed=2, device="cpu")
    for n in (1, 10):
        accs = []
        for d in range(3):  # the documented draws: generator seeded 1000 * seed + d
            idx = labelled_subset(y, n, torch.Generator().manual_seed(1000 * 2 + d))
            f = torch.nn.functional.normalize(X[idx], dim=1).numpy()
            knn = KNeighborsClassifier(n_neighbors=min(10, n)).fit(f, y[idx].numpy())
            accs.append((knn.predict(torch.nn.functional.normalize(Xt, dim=1).numpy()) == yt.numpy()).mean())
        assert out[n]["knn"] == pytest.approx(np.mean(accs), abs=1.5 / len(yt))  # at most a tie apart
        assert out[n]["knn_std"] == pytest.approx(np.std(out[n]["knn_all"]))
        assert len(out[n]["linear_all"]) == 3


def test_few_labels_skip_sizes_beyond_the_smallest_class_and_improve_with_labels():
    X, y = blobs(50, spread=2.0)
    Xt, yt = blobs(50, spread=2.0, seed=1)
    out = evaluate_few_labels(X, y, Xt, yt, labels_per_class=(1, 10, 100), draws=4, device="cpu")
    assert sorted(out) == [1, 10]  # 100 per class does not exist here
    assert out[10]["linear"] > out[1]["linear"]  # more labels, better probe on overlapping blobs
    assert out[10]["linear"] > 0.5 and all(0 <= a <= 1 for a in out[1]["linear_all"])


def test_few_labels_leave_the_callers_tensors_alone_and_check_inputs():
    X, y = blobs(12)
    X0, y0 = X.clone(), y.clone()
    evaluate_few_labels(X, y, X, y, labels_per_class=(2,), draws=2, device="cpu")
    assert torch.equal(X, X0) and torch.equal(y, y0)
    with pytest.raises(ValueError, match="draws"):
        evaluate_few_labels(X, y, X, y, draws=0)
    with pytest.raises(ValueError):
        evaluate_few_labels(X, y, X[:, :3], y)


def test_pixel_features_are_the_pixels_and_standardize_on_request():
    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 256, (20, 1, 28, 28), generator=g, dtype=torch.uint8)
    X[:, :, 0, 0] = 7  # a pixel that never changes keeps std 1
    raw = PixelFeatures(X)(X)
    assert torch.allclose(raw, X.flatten(1).float() / 255)
    std = PixelFeatures(X, standardize=True)(X)
    changing = std[:, 1:]
    assert torch.allclose(changing.mean(0), torch.zeros(783), atol=1e-5)
    assert torch.allclose(changing.std(0), torch.ones(783), atol=1e-4)
    assert torch.allclose(std[:, 0], torch.zeros(20), atol=1e-6)
    with pytest.raises(ValueError):
        PixelFeatures(X)(torch.zeros(3, 784))


def test_plot_label_efficiency_draws_one_line_per_encoder():
    import matplotlib

    matplotlib.use("Agg")
    few = {n: {"linear": 0.5 + n / 400, "linear_std": 0.01, "knn": 0.5, "knn_std": 0.0} for n in (1, 10, 100)}
    ax = plot_label_efficiency({"SimCLR": few, "random CNN": few}, {"SimCLR": 0.97, "random CNN": 0.93},
                               reference="random")
    assert len(ax.get_lines()) >= 2 and [t.get_text() for t in ax.get_xticklabels()] == ["1", "10", "100", "all"]
    with pytest.raises(ValueError, match="metric"):
        plot_label_efficiency({"x": few}, metric="auc")
