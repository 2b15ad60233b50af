"""Training utilities against independent references (scikit-learn) and an end-to-end check."""

import numpy as np
import pytest
import torch
from torch import nn
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from clbook.data import load_shipped_mnist
from clbook.encoders import FCEncoder, ProjectionHead, make_encoder
from clbook.training import (
    evaluate_frozen,
    extract_features,
    fit_linear_probe,
    knn_accuracy,
    knn_predict,
    pretrain,
)


def blobs(n=600, d=8, classes=3, spread=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * spread
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, d, generator=g), y


def test_knn_matches_sklearn_cosine():
    X, y = blobs(seed=1)
    Xq, _ = blobs(n=200, seed=2)
    for k in (1, 5, 11):
        ours = knn_predict(X, y, Xq, k=k).numpy()
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(X.numpy(), y.numpy())
        # Votes can tie between two classes; sklearn then also picks the smaller label.
        assert (ours == ref.predict(Xq.numpy())).mean() >= 0.99


def test_knn_checks_input():
    X, y = blobs(n=30)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(X, y, X, k=31)
    with pytest.raises(ValueError, match="labels"):
        knn_accuracy(X, y, X, y[:-1])


def test_linear_probe_close_to_sklearn_logistic_regression():
    X, y = blobs(n=900, d=10, classes=4, spread=0.8, seed=3)
    X_test, y_test = blobs(n=900, d=10, classes=4, spread=0.8, seed=3)  # same centres
    X_test = X_test + 0.3 * torch.randn_like(X_test)
    probe = fit_linear_probe(X, y, X_test, y_test, weight_decay=0.0)
    mean, std = X.mean(0), X.std(0)
    ref = LogisticRegression(C=1e4, max_iter=2000).fit(((X - mean) / std).numpy(), y.numpy())
    ref_acc = ref.score(((X_test - mean) / std).numpy(), y_test.numpy())
    assert abs(probe.accuracy(X_test, y_test) - ref_acc) < 0.02
    h = probe.history
    assert len(h["loss"]) == len(h["train_acc"]) == len(h["val_acc"]) == 100
    assert h["loss"][-1] < h["loss"][0]


def test_probe_handles_constant_feature_without_nan():
    X, y = blobs(n=90)
    X[:, 0] = 3.0  # zero variance: must not divide by zero
    probe = fit_linear_probe(X, y)
    assert np.isfinite(probe.history["loss"]).all() and probe.accuracy(X, y) > 0.5


def test_evaluate_frozen_reports_choices():
    X, y = blobs(n=400, seed=4)
    Xt, yt = blobs(n=200, seed=4)
    out = evaluate_frozen(X, y, Xt, yt, weight_decays=(0.0, 1e-2), ks=(1, 5))
    assert out["weight_decay"] in (0.0, 1e-2) and out["k"] in (1, 5)
    assert 0.0 <= out["linear_acc"] <= 1.0 and 0.0 <= out["knn_acc"] <= 1.0


def test_extract_features_restores_mode_and_has_no_grad():
    enc = FCEncoder().train()
    f = extract_features(enc, torch.rand(10, 1, 28, 28), batch_size=4)
    assert f.shape == (10, 128) and not f.requires_grad and enc.training


def test_pretrain_input_checks():
    enc, head = make_encoder("mlp"), ProjectionHead(16, 16, 8)
    X, y = torch.randn(20, 4), torch.arange(20) % 2
    with pytest.raises(ValueError, match="needs labels"):
        pretrain(enc, head, X, method="supcon", progress=False)
    with pytest.raises(ValueError, match="needs an augment"):
        pretrain(enc, head, X, y, method="simclr", progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        pretrain(enc, head, X, y, method="no-such-method", progress=False)


def test_supcon_pretraining_beats_random_twin_on_digits():
    """End to end on a small subset: 1,500 digits, a few epochs of SupCon on the FC encoder."""
    split = load_shipped_mnist()
    X, y = split.X_train[:1500], split.y_train[:1500]
    X_test, y_test = split.X_test[:500], split.y_test[:500]
    random_twin = make_encoder("fc", seed=0).eval()
    trained = make_encoder("fc", seed=0)
    hist = pretrain(trained, ProjectionHead(), X[:1200], y[:1200], epochs=6, batch_size=300,
                    val=(X[:1200], y[:1200], X[1200:], y[1200:]), progress=False)
    assert len(hist.loss) == 6 and hist.loss[-1] < hist.loss[0]
    assert hist.best_epoch == int(np.argmax(hist.val_acc)) + 1  # the kept weights are the best epoch's
    acc = {name: knn_accuracy(extract_features(e, X), y, extract_features(e, X_test), y_test, k=5)
           for name, e in [("trained", trained), ("random", random_twin)]}
    assert acc["trained"] > acc["random"] + 0.02, acc


def test_pretrain_runs_a_method_object_through_the_loop():
    """A Method with state of its own: every hook is called in order and its figures are logged."""
    from clbook.methods import Method

    class Recorder(Method):
        name = "recorder"
        n_views = 2

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))  # trained with the encoder
            self.calls = []

        def setup(self, encoder, head):
            self.calls.append("setup")

        def start_epoch(self, epoch, epochs):
            self.calls.append(f"epoch{epoch}")

        def loss(self, encoder, head, views, y, index):
            assert len(views) == 2 and views[0].shape == views[1].shape and index.shape == (len(views[0]),)
            z1, z2 = head(encoder(views[0])), head(encoder(views[1]))
            return self.scale * (z1 - z2).pow(2).mean() + (self.scale - 2).pow(2)

        def before_step(self, step, total_steps):
            assert self.scale.grad is not None

        def after_step(self, encoder, head, step, total_steps):
            self.calls.append(step)

        def end_epoch(self, encoder, head):
            return {"scale": self.scale.item()}

    X, y = blobs(n=64, d=8)
    rec = Recorder()
    noise = lambda x, g: x + 0.1 * torch.randn(x.shape, generator=g)  # noqa: E731
    h = pretrain(make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8), X, method=rec, augment=noise,
                 epochs=2, batch_size=32, lr=0.05, progress=False,
                 on_epoch_end=lambda enc, epoch: {"epoch_seen": epoch})
    assert rec.calls == ["setup", "epoch1", 0, 1, "epoch2", 2, 3]
    assert h.metrics["epoch_seen"] == [1.0, 2.0] and len(h.metrics["scale"]) == 2
    assert h.metrics["scale"][-1] != 1.0  # the method's own parameter was optimised


def test_pretrain_method_by_name_checks_options():
    from clbook.methods import METHODS, Method

    class Plain(Method):
        name = "plain"

        def __init__(self, temperature: float = 1.0, width: int = 1):
            super().__init__()
            self.temperature, self.width = temperature, width

        def loss(self, encoder, head, views, y, index):
            return head(encoder(views[0])).pow(2).mean() / self.temperature

    METHODS["plain"] = Plain
    try:
        X, y = blobs(n=32, d=8)
        args = (make_encoder("mlp", in_dim=8, seed=0), ProjectionHead(16, 16, 8), X)
        noise = lambda x, g: x  # noqa: E731
        with pytest.raises(ValueError, match="no option"):
            pretrain(*args, method="plain", method_options={"depth": 3}, augment=noise, epochs=1, progress=False)
        with pytest.raises(ValueError, match="needs an augment"):
            pretrain(*args, method="plain", epochs=1, progress=False)
        h = pretrain(*args, method="plain", method_options={"width": 2}, augment=noise, epochs=1, batch_size=16,
                     progress=False)
        assert len(h.loss) == 1
    finally:
        del METHODS["plain"]


def test_progress_is_one_line_outside_a_terminal(capsys):
    from clbook.runtime import progress_bar

    bar = progress_bar(range(3), "demo")
    for i in bar:
        bar.set_postfix({"loss": f"{i:.1f}"})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("demo: 3/3 [") and err.rstrip().endswith("loss 2.0")
    bar = progress_bar(range(3), "quiet", enabled=False)
    assert list(bar) == [0, 1, 2]
    bar.set_postfix({"loss": "1"})
    assert capsys.readouterr().err == ""


def test_progress_in_a_notebook_is_saved_as_its_final_line():
    """A kernel shows one display that updates replace: the saved cell keeps one clean line."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import time\nfrom clbook.runtime import progress_bar\nbar = progress_bar(range(4), 'demo')\n"
        "for i in bar:\n    time.sleep(0.4)\n    bar.set_postfix({'step': i})\n")]
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    outputs = nb.cells[0].outputs
    assert len(outputs) == 1 and outputs[0].output_type == "display_data"
    text = outputs[0].data["text/plain"]
    assert text.startswith("demo: 4/4 [") and text.endswith("step 3") and "\r" not in text
