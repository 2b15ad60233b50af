"""Reliability (issue 13): arguments are never changed, half precision stays finite, every loaded
file is verified, and bad input of every kind gets a clear error naming the argument.

Each numbered section is one item of the issue; the sweep of the public API follows them.
References are float64 computations of the same loss (the values half precision must reach).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import clbook.losses as L
from clbook.losses import (
    MarginContrastiveLoss,
    NTXentLoss,
    SupConLoss,
    TripletMarginLoss,
    margin_contrastive_loss,
    nt_xent_loss,
    supcon_loss,
    triplet_margin_loss,
)

HALF = [torch.float16, torch.bfloat16]


# ----------------------------------------------------------------------------- 1. arguments unchanged


@pytest.mark.parametrize("variant", ["in", "out"])
@pytest.mark.parametrize("views", [1, 2])
def test_supcon_mask_is_not_changed_and_calls_repeat(variant, views):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, views, 4, generator=g).squeeze(1)
    mask = torch.rand(6, 6, generator=g) > 0.5
    mask.fill_diagonal_(True)
    before = mask.clone()
    first = supcon_loss(features, mask=mask, variant=variant)
    assert torch.equal(mask, before)
    second = supcon_loss(features, mask=mask, variant=variant)
    assert first.item() == second.item()


def _every_loss_call(dtype=torch.float32):
    """Calls of every loss with every kind of argument, on fresh tensors (name -> (call, args))."""
    g = torch.Generator().manual_seed(1)
    x = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return {
        "margin": (margin_contrastive_loss, (x(6, 3), x(6, 3), torch.tensor([0, 1, 0, 1, 1, 0]))),
        "margin bool y": (margin_contrastive_loss, (x(6, 3), x(6, 3), torch.tensor([0, 1, 0, 1, 1, 0]).bool())),
        "triplet": (triplet_margin_loss, (x(6, 3), x(6, 3), x(6, 3))),
        "nt_xent": (nt_xent_loss, (x(6, 3), x(6, 3))),
        "supcon labels": (supcon_loss, (x(6, 2, 3), labels)),
        "supcon float labels": (supcon_loss, (x(6, 2, 3), labels.float())),
        "supcon float mask": (supcon_loss, (x(6, 3), None, (labels[:, None] == labels[None, :]).to(dtype))),
        "supcon bool mask in": (lambda f, lab, m: supcon_loss(f, lab, m, variant="in"),
                                (x(6, 3), None, labels[:, None] == labels[None, :])),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_loss_changes_any_argument(dtype):
    for name, (fn, args) in _every_loss_call(dtype).items():
        copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        fn(*args)
        for a, c in zip(args, copies):
            if isinstance(a, torch.Tensor):
                assert a.dtype == c.dtype and torch.equal(a, c), name


# ----------------------------------------------------------------------------- 3. half precision accumulates in float32


def _supcon_f64(features, labels, t):
    return supcon_loss(features.double(), labels, temperature=t)


@pytest.mark.parametrize("n, t", [(512, 0.01), (4096, 0.1)])
def test_supcon_out_in_float16_is_finite_and_close_to_float64(n, t):
    d = 8 if n == 512 else 16  # few dimensions: high similarities, the worst case for overflow
    g = torch.Generator().manual_seed(3)
    features = torch.randn(n, 2, d, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    half = features.half().requires_grad_()
    loss = supcon_loss(half, labels, temperature=t)
    assert loss.dtype == torch.float16
    assert torch.isfinite(loss)
    ref = _supcon_f64(half.detach(), labels, t).item()
    assert loss.item() == pytest.approx(ref, rel=2e-3)
    loss.backward()
    assert half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()


@pytest.mark.parametrize("dtype", HALF)
def test_every_loss_returns_the_input_dtype_and_matches_float64(dtype):
    for name, (fn, args) in _every_loss_call(dtype).items():
        out = fn(*args)
        ref = fn(*[a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args])
        assert out.dtype == dtype, name
        tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
        assert out.double().item() == pytest.approx(ref.item(), rel=tol, abs=tol), name


def test_modules_return_the_input_dtype():
    x = torch.randn(4, 3).half()
    y = torch.tensor([0, 1, 0, 1])
    assert MarginContrastiveLoss()(x, x.flip(0), y).dtype == torch.float16
    assert TripletMarginLoss()(x, x.flip(0), -x).dtype == torch.float16
    assert NTXentLoss()(x, x.flip(0)).dtype == torch.float16
    assert SupConLoss()(x.view(2, 2, 3), torch.tensor([0, 1])).dtype == torch.float16


# ----------------------------------------------------------------------------- 4. float16 NaNs where the value is finite


def test_margin_loss_float16_dissimilar_pair_far_beyond_margin():
    x1 = torch.tensor([[300.0, 0.0], [0.0, 0.0]], dtype=torch.float16)
    x2 = torch.tensor([[-300.0, 0.0], [0.5, 0.0]], dtype=torch.float16)
    y = torch.tensor([1, 0])  # the first pair is dissimilar and 600 apart: d^2 overflows float16
    loss = margin_contrastive_loss(x1, x2, y)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.5 * 0.25 / 2, rel=1e-3)


def test_triplet_loss_float16_large_distances():
    a = torch.tensor([[0.0, 0.0]], dtype=torch.float16)
    p = torch.tensor([[300.0, 0.0]], dtype=torch.float16)
    n = torch.tensor([[0.0, 400.0]], dtype=torch.float16)
    loss = triplet_margin_loss(a, p, n, margin=150.0)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(50.0, rel=1e-3)


@pytest.mark.parametrize("dtype", HALF)
def test_all_zero_row_in_half_precision(dtype):
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    z1[1] = 0.0
    ref = nt_xent_loss(z1.double(), z2.double()).item()
    got = nt_xent_loss(z1.to(dtype), z2.to(dtype))
    assert torch.isfinite(got) and got.item() == pytest.approx(ref, rel=2e-2)
    features = torch.stack([z1, z2], dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    for variant in ("out", "in"):
        ref = supcon_loss(features.double(), labels, variant=variant).item()
        got = supcon_loss(features.to(dtype), labels, variant=variant)
        assert torch.isfinite(got) and got.item() == pytest.approx(ref, rel=2e-2)


# ----------------------------------------------------------------------------- losses: sweep


def test_float32_overflow_in_distances_is_exact_or_an_error():
    # Distances beyond sqrt(float32 max) ~ 1.8e19: the square overflows, the distance does not.
    a = torch.tensor([[0.0, 0.0]])
    p = torch.tensor([[3e19, 0.0]])
    n = torch.tensor([[0.0, 4e19]])
    assert triplet_margin_loss(a, p, n).item() == 0.0  # d_ap - d_an = -1e19
    assert triplet_margin_loss(a, p, n, margin=2e19).item() == pytest.approx(1e19, rel=1e-5)
    # A dissimilar pair far beyond the margin contributes 0, however far.
    y = torch.tensor([1])
    assert margin_contrastive_loss(a, p, y).item() == 0.0
    # A similar pair 3e19 apart has energy 4.5e38 > float32 max: an error, not inf or NaN.
    with pytest.raises(ValueError, match="overflow"):
        margin_contrastive_loss(a, p, torch.tensor([0]))


@pytest.mark.parametrize("scale", [1e25, 1e30])
def test_normalized_losses_are_scale_invariant_at_extreme_magnitudes(scale):
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2])
    ref = nt_xent_loss(z1, z2, 0.2).item()
    assert nt_xent_loss(z1 * scale, z2 * scale, 0.2).item() == pytest.approx(ref, rel=1e-5)
    f = torch.stack([z1, z2], dim=1)
    for variant in ("out", "in"):
        ref = supcon_loss(f, labels, variant=variant).item()
        assert supcon_loss(f * scale, labels, variant=variant).item() == pytest.approx(ref, rel=1e-5)


def test_unnormalized_overflow_is_an_error_not_nan():
    f = torch.full((4, 2, 3), 1e19)
    f[::2] *= -1
    with pytest.raises(ValueError, match="overflow"):
        supcon_loss(f, normalize=False)


def test_float16_loss_too_large_for_float16_is_an_error():
    x1 = torch.zeros(1, 2, dtype=torch.float16)
    x2 = torch.tensor([[400.0, 0.0]], dtype=torch.float16)  # energy 80,000 > float16 max 65,504
    with pytest.raises(ValueError, match="float16"):
        margin_contrastive_loss(x1, x2, torch.tensor([0]))


NUMBERS = {
    "numpy float64": np.float64(0.5),
    "numpy float32": np.float32(0.5),
    "numpy int": np.int64(1),
    "0-d tensor": torch.tensor(0.5),
    "0-d float64 tensor": torch.tensor(0.5, dtype=torch.float64),
    "int": 1,
}


@pytest.mark.parametrize("kind", list(NUMBERS))
def test_number_types_accepted_for_temperature_and_margin(kind):
    value = NUMBERS[kind]
    as_float = float(value)
    g = torch.Generator().manual_seed(6)
    x1, x2, x3 = (torch.randn(4, 3, generator=g) for _ in range(3))
    y = torch.tensor([0, 1, 0, 1])
    labels = torch.tensor([0, 0, 1, 1])
    assert nt_xent_loss(x1, x2, value).item() == nt_xent_loss(x1, x2, as_float).item()
    assert supcon_loss(x1, labels, temperature=value).item() == supcon_loss(x1, labels, temperature=as_float).item()
    assert margin_contrastive_loss(x1, x2, y, value).item() == margin_contrastive_loss(x1, x2, y, as_float).item()
    assert triplet_margin_loss(x1, x2, x3, value).item() == triplet_margin_loss(x1, x2, x3, as_float).item()
    assert SupConLoss(value)(x1, labels).item() == supcon_loss(x1, labels, temperature=as_float).item()
    assert NTXentLoss(value)(x1, x2).item() == nt_xent_loss(x1, x2, as_float).item()
    assert MarginContrastiveLoss(value)(x1, x2, y).item() == margin_contrastive_loss(x1, x2, y, as_float).item()
    assert TripletMarginLoss(value)(x1, x2, x3).item() == triplet_margin_loss(x1, x2, x3, as_float).item()


def test_learnable_temperature_tensor_keeps_its_gradient():
    t = torch.tensor(0.5, requires_grad=True)
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    nt_xent_loss(z1, z2, t).backward()
    assert t.grad is not None and torch.isfinite(t.grad) and t.grad != 0


LOSS_BAD = {
    "bool temperature": (lambda: nt_xent_loss(torch.randn(2, 3), torch.randn(2, 3), True), "temperature"),
    "vector temperature": (lambda: supcon_loss(torch.randn(2, 3), temperature=torch.ones(2)), "temperature"),
    "nan temperature tensor": (lambda: supcon_loss(torch.randn(2, 3), temperature=torch.tensor(float("nan"))),
                               "temperature"),
    "string margin": (lambda: triplet_margin_loss(*(torch.randn(2, 2) for _ in range(3)), margin="1"), "margin"),
    "zero-width features": (lambda: nt_xent_loss(torch.randn(2, 0), torch.randn(2, 0)), "z1"),
    "zero views": (lambda: supcon_loss(torch.randn(2, 0, 3)), "features"),
    "inf in positive": (lambda: triplet_margin_loss(torch.randn(2, 2), torch.tensor([[0.0, float("inf")]] * 2),
                                                    torch.randn(2, 2)), "positive"),
    "nan in y": (lambda: margin_contrastive_loss(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0.0, float("nan")])),
                 "y"),
    "inf in labels": (lambda: supcon_loss(torch.randn(2, 3), torch.tensor([0.0, float("inf")])), "labels"),
    "nan in mask": (lambda: supcon_loss(torch.randn(2, 3), mask=torch.tensor([[1.0, float("nan")], [0.0, 1.0]])),
                    "mask"),
}


@pytest.mark.parametrize("case", list(LOSS_BAD))
def test_loss_bad_input_names_the_argument(case):
    call, word = LOSS_BAD[case]
    with pytest.raises(ValueError, match=word):
        call()


def test_losses_docstring_promises_no_silent_nan():
    assert "nothing here returns a silent NaN" in L.__doc__
    assert "float32" in L.__doc__  # the half-precision rule is documented where new losses will see it


# ----------------------------------------------------------------------------- 5. pretrain refuses what cannot train

from clbook.encoders import ProjectionHead, make_encoder  # noqa: E402
from clbook.training import (  # noqa: E402
    evaluate_frozen,
    fit_linear_probe,
    knn_accuracy,
    knn_predict,
    pretrain,
)


def _small_pretrain_args(n=20):
    g = torch.Generator().manual_seed(0)
    return make_encoder("mlp", seed=0), ProjectionHead(16, 16, 8), torch.randn(n, 4, generator=g), torch.arange(n) % 2


PRETRAIN_BAD = {
    "one sample": (dict(n=1), {}, "X"),
    "empty X": (dict(n=0), {}, "X"),
    "batch of one": ({}, dict(batch_size=1), "batch_size"),
    "zero batch": ({}, dict(batch_size=0), "batch_size"),
    "negative batch": ({}, dict(batch_size=-4), "batch_size"),
    "float batch": ({}, dict(batch_size=8.5), "batch_size"),
    "zero epochs": ({}, dict(epochs=0), "epochs"),
    "negative epochs": ({}, dict(epochs=-1), "epochs"),
    "zero lr": ({}, dict(lr=0.0), "lr"),
    "nan lr": ({}, dict(lr=float("nan")), "lr"),
    "negative weight decay": ({}, dict(weight_decay=-1e-4), "weight_decay"),
    "zero temperature": ({}, dict(temperature=0.0), "temperature"),
    "zero knn_k": ({}, dict(knn_k=0), "knn_k"),
}


@pytest.mark.parametrize("case", list(PRETRAIN_BAD))
def test_pretrain_rejects_what_cannot_train(case):
    size, options, word = PRETRAIN_BAD[case]
    encoder, head, X, y = _small_pretrain_args(**size)
    before = [p.clone() for p in encoder.parameters()]
    with pytest.raises(ValueError, match=word):
        pretrain(encoder, head, X, y, epochs=options.pop("epochs", 1), progress=False, **options)
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.parameters()))


def test_pretrain_rejects_non_finite_inputs_and_bad_labels():
    encoder, head, X, y = _small_pretrain_args()
    X[3, 1] = float("nan")
    with pytest.raises(ValueError, match="X"):
        pretrain(encoder, head, X, y, epochs=1, progress=False)
    encoder, head, X, y = _small_pretrain_args()
    with pytest.raises(ValueError, match="y"):
        pretrain(encoder, head, X, y.float().masked_fill(y == 0, float("nan")), epochs=1, progress=False)


def test_pretrain_accepts_numpy_numbers():
    encoder, head, X, y = _small_pretrain_args()
    h = pretrain(encoder, head, X, y, epochs=np.int64(1), batch_size=np.int64(10), lr=np.float32(1e-3),
                 temperature=np.float32(0.1), progress=False)
    assert len(h.loss) == 1 and h.loss[0] > 0


# ----------------------------------------------------------------------------- 6. kNN and probe refuse non-finite features


def test_knn_rejects_a_nan_reference_row():
    g = torch.Generator().manual_seed(0)
    ref, y = torch.randn(20, 3, generator=g), torch.arange(20) % 4
    ref[7] = float("nan")
    with pytest.raises(ValueError, match="train_feats.*NaN"):
        knn_predict(ref, y, torch.randn(5, 3, generator=g), k=3)
    with pytest.raises(ValueError, match="query_feats.*NaN"):
        knn_predict(torch.randn(20, 3), y, torch.full((2, 3), float("inf")), k=3)


def test_linear_probe_rejects_non_finite_features():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 3, generator=g), torch.arange(30) % 3
    X[0, 0] = float("nan")
    with pytest.raises(ValueError, match="train_feats.*NaN"):
        fit_linear_probe(X, y)
    with pytest.raises(ValueError, match="val_feats"):
        fit_linear_probe(X.nan_to_num(), y, X, y)


TRAINING_BAD = {
    "knn query width": (lambda X, y: knn_predict(X, y, torch.randn(4, 5)), "query_feats"),
    "knn empty train": (lambda X, y: knn_predict(X[:0], y[:0], X, k=1), "train_feats"),
    "knn float labels": (lambda X, y: knn_predict(X, y.float() + 0.5, X, k=1), "train_y"),
    "knn negative labels": (lambda X, y: knn_predict(X, y - 1, X, k=1), "train_y"),
    "knn bool k": (lambda X, y: knn_predict(X, y, X, k=True), "k"),
    "knn float k": (lambda X, y: knn_predict(X, y, X, k=2.5), "k"),
    "probe float labels": (lambda X, y: fit_linear_probe(X, y.float()), "train_y"),
    "probe empty": (lambda X, y: fit_linear_probe(X[:0], y[:0]), "train_feats"),
    "probe steps": (lambda X, y: fit_linear_probe(X, y, steps=0), "steps"),
    "probe lr": (lambda X, y: fit_linear_probe(X, y, lr=-1.0), "lr"),
    "probe weight decay": (lambda X, y: fit_linear_probe(X, y, weight_decay=float("inf")), "weight_decay"),
    "predict width": (lambda X, y: fit_linear_probe(X, y, steps=1).predict(torch.randn(3, 7)), "feats"),
    "predict nan": (lambda X, y: fit_linear_probe(X, y, steps=1).predict(torch.full((3, 3), float("nan"))), "feats"),
    "evaluate nan": (lambda X, y: evaluate_frozen(X, y, X.masked_fill(X > 1, float("nan")), y), "test_feats"),
    "accuracy labels": (lambda X, y: knn_accuracy(X, y, X, y[:-1]), "test_y"),
}


@pytest.mark.parametrize("case", list(TRAINING_BAD))
def test_training_bad_input_names_the_argument(case):
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 3, generator=g), torch.arange(30) % 3
    call, word = TRAINING_BAD[case]
    with pytest.raises(ValueError, match=word):
        call(X, y)


def test_knn_and_probe_accept_numpy_numbers_and_leave_arguments_unchanged():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 3, generator=g), torch.arange(30) % 3
    X0, y0 = X.clone(), y.clone()
    assert torch.equal(knn_predict(X, y, X, k=np.int64(3)), knn_predict(X, y, X, k=3))
    probe = fit_linear_probe(X, y, weight_decay=np.float32(1e-4), steps=np.int64(5), lr=np.float64(0.1))
    assert len(probe.history["loss"]) == 5
    assert torch.equal(X, X0) and torch.equal(y, y0)


# ----------------------------------------------------------------------------- 7. t-SNE plot colours


def _colours(ax):
    return [tuple(np.round(c.get_facecolor()[0], 4)) for c in ax.collections]


def test_plot_embedding_float_labels_get_one_colour_per_class():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbook.viz import plot_embedding

    points = np.random.default_rng(0).normal(size=(100, 2))
    labels = np.arange(100) % 10
    ax_int = plot_embedding(points, labels)
    ax_float = plot_embedding(points, labels.astype(float))
    assert len(set(_colours(ax_float))) == 10
    assert _colours(ax_float) == _colours(ax_int)  # float labels 0.0 .. 9.0 are the digits 0 .. 9
    assert [t.get_label() for t in ax_float.collections] == [str(d) for d in range(10)]
    # Class names index by the integer value of a float label.
    names = [f"digit {d}" for d in range(10)]
    ax = plot_embedding(points, torch.tensor(labels, dtype=torch.float32), class_names=names)
    assert [t.get_label() for t in ax.collections] == names
    # More than ten classes: still one colour per class.
    ax = plot_embedding(np.random.default_rng(1).normal(size=(150, 2)), np.arange(150) % 15)
    assert len(set(_colours(ax))) == 15
    plt.close("all")


def test_plot_embedding_and_tsne_reject_bad_values():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbook.viz import plot_embedding, tsne_embed

    pts = np.zeros((4, 2))
    pts[1, 0] = np.nan
    with pytest.raises(ValueError, match="points"):
        plot_embedding(pts, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="labels"):
        plot_embedding(np.zeros((4, 2)), [0.0, np.nan, 1.0, 1.0])
    with pytest.raises(ValueError, match="class_names"):
        plot_embedding(np.zeros((4, 2)), [0, 1, 2, 3], class_names=["a", "b"])
    with pytest.raises(ValueError, match="features"):
        tsne_embed(np.full((10, 3), np.inf))
    plt.close("all")


# ----------------------------------------------------------------------------- 8. reproduce --json


def test_reproduce_checks_the_json_path_before_running(tmp_path, monkeypatch):
    import clbook.experiments as experiments
    from clbook.__main__ import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("the experiments ran although the JSON path is unusable")

    monkeypatch.setattr(experiments, "reproduce", must_not_run)
    monkeypatch.setattr("clbook.data.load_mnist", must_not_run)
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--json", str(tmp_path / "no" / "such" / "dir" / "rows.json")])
    assert exit_info.value.code == 2
    existing = tmp_path / "rows.json"
    existing.write_text("[]\n")
    with pytest.raises(SystemExit):
        main(["reproduce", "--json", str(existing)])
    assert existing.read_text() == "[]\n"  # untouched
    with pytest.raises(SystemExit):
        main(["reproduce", "--json", str(tmp_path)])  # a directory


def test_reproduce_writes_strict_json_and_overwrites_only_when_asked(tmp_path, monkeypatch, capsys):
    import clbook.experiments as experiments
    from clbook.__main__ import main
    from clbook.experiments import Result

    rows = [Result("iris", "mlp", "supcon", 0.9, float("nan"), 1.0, "iris-sklearn")]
    monkeypatch.setattr(experiments, "reproduce", lambda **kw: rows)
    monkeypatch.setattr("clbook.data.load_mnist", lambda **kw: None)
    out = tmp_path / "rows.json"
    out.write_text("old\n")
    assert main(["reproduce", "--json", str(out), "--overwrite"]) == 0
    text = out.read_text()
    assert "NaN" not in text
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert parsed[0]["knn_acc"] is None and parsed[0]["linear_acc"] == 0.9


# ----------------------------------------------------------------------------- 2, 9, 10. MNIST files and messages

import gzip  # noqa: E402
import shutil  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import clbook.data as data  # noqa: E402
from clbook.data import load_mnist, load_shipped_mnist  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def official_copy(tmp_path, monkeypatch):
    """A small stand-in for torchvision's download folder: archives and their extracted copies.

    The test files are the real shipped ones; the training files are 30 random digits whose
    archives' MD5s replace the published ones. Real torchvision reads the folder (the extracted
    copies exist, so it downloads nothing). The shipped split is copied beside it.
    """
    shipped = REPO / "data" / data.SHIPPED_DIR
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    contents = {"train-images-idx3-ubyte": _idx_bytes(rng.integers(0, 256, (30, 28, 28))),
                "train-labels-idx1-ubyte": _idx_bytes(np.arange(30) % 10)}
    for stem, content in contents.items():
        with gzip.open(raw / f"{stem}.gz", "wb") as f:
            f.write(content)
        monkeypatch.setitem(data.MNIST_MD5, f"{stem}.gz", data.md5sum(raw / f"{stem}.gz"))
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(shipped / f"{stem}.gz", raw / f"{stem}.gz")
        with gzip.open(raw / f"{stem}.gz", "rb") as f:
            contents[stem] = f.read()
    for stem, content in contents.items():
        (raw / stem).write_bytes(content)
    shutil.copytree(shipped, tmp_path / data.SHIPPED_DIR)
    return tmp_path, contents


def test_official_split_is_read_from_verified_files(official_copy, capsys):
    root, contents = official_copy
    split = load_mnist(root=root)
    assert split.source == "mnist-official"
    images = np.frombuffer(contents["train-images-idx3-ubyte"], dtype=np.uint8, offset=16).reshape(30, 1, 28, 28)
    assert torch.equal(split.X_train, torch.tensor(images / 255.0, dtype=torch.float32))
    assert split.y_train.tolist() == [i % 10 for i in range(30)]
    assert split.X_test.shape == (10000, 1, 28, 28)
    shipped = load_shipped_mnist(root=root)
    assert sorted(split.y_test.tolist()) == sorted(shipped.y_train.tolist() + shipped.y_test.tolist())
    printed = capsys.readouterr().out
    assert "MNIST in the data directory" in printed and str(root) not in printed


def test_official_edited_extracted_file_is_an_error(official_copy):
    root, _ = official_copy
    extracted = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    raw = bytearray(extracted.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10  # one label changed; the archive beside it is intact
    extracted.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte differs from its verified archive"):
        load_mnist(root=root, verbose=False)


def test_official_extracted_files_without_archives_are_not_used(official_copy):
    root, _ = official_copy
    for archive in (root / "MNIST" / "raw").glob("*.gz"):
        archive.unlink()
    with pytest.warns(UserWarning, match="missing.*shipped"):
        split = load_mnist(root=root, verbose=False)
    assert split.source == "mnist-t10k-shipped"


def test_official_corrupt_archive_says_it_is_downloaded_again(official_copy):
    root, _ = official_copy
    archive = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-1] + b"x")
    with pytest.raises(ValueError, match="corrupt.*torchvision downloads it again"):
        load_mnist(root=root, verbose=False)


def test_corrupt_shipped_file_message_tells_the_truth(official_copy):
    root, _ = official_copy
    path = root / data.SHIPPED_DIR / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt") as info:
        load_shipped_mnist(root=root)
    message = str(info.value)
    assert "git checkout -- data/mnist_t10k/t10k-labels-idx1-ubyte.gz" in message
    assert "never downloads into this folder" in message
    assert "so that torchvision downloads it again" not in message


TORCHVISION_OFFLINE = ("Error downloading train-images-idx3-ubyte.gz:\n"
                       "Tried https://ossci-datasets.s3.amazonaws.com/mnist/, got:\n"
                       "<urlopen error [Errno -3] Temporary failure in name resolution>\n"
                       "Tried https://storage.googleapis.com/cvdf-datasets/mnist/, got:\n"
                       "<urlopen error [Errno -3] Temporary failure in name resolution>\n")


def _offline(monkeypatch, message=TORCHVISION_OFFLINE):
    from torchvision.datasets import MNIST

    def no_network(self):
        raise RuntimeError(message)

    monkeypatch.setattr(MNIST, "download", no_network)


def test_fallback_warning_shows_the_cause_and_no_absolute_path(monkeypatch):
    monkeypatch.delenv("CLBOOK_DATA", raising=False)
    _offline(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = load_mnist(verbose=False)  # the repository's data directory, as in the notebooks
    assert split.source == "mnist-t10k-shipped"
    (warning,) = [w for w in caught if "Official MNIST" in str(w.message)]
    text = str(warning.message)
    assert "Temporary failure in name resolution" in text and "\n" not in text
    assert "in data/mnist_t10k instead" in text
    assert str(REPO) not in text and "/work/" not in text


def test_fallback_warning_outside_the_repository_names_the_data_directory(official_copy, monkeypatch):
    root, _ = official_copy
    shutil.rmtree(root / "MNIST")
    _offline(monkeypatch, f"[Errno 13] Permission denied: '{root / 'MNIST' / 'raw'}'")
    with pytest.warns(UserWarning) as record:
        load_mnist(root=root, verbose=False)
    text = str(record[0].message)
    assert "Permission denied: '<data directory>/MNIST/raw'" in text
    assert "mnist_t10k in the data directory" in text and str(root) not in text


# ----------------------------------------------------------------------------- cluster and memory: sweep

from clbook import cluster  # noqa: E402
from clbook.memory import momentum_update  # noqa: E402


def _gmm_params():
    X = np.random.default_rng(0).normal(size=(12, 2))
    return X, np.array([0.5, 0.5]), np.array([[0.0, 0.0], [1.0, 1.0]]), np.stack([np.eye(2), 2 * np.eye(2)])


E_STEP_BAD = {
    "nan weight": (lambda w, m, c: (np.array([np.nan, 1.0]), m, c), "weights"),
    "nan mean": (lambda w, m, c: (w, np.where(np.eye(2, dtype=bool), np.nan, m), c), "means"),
    "inf mean": (lambda w, m, c: (w, m + np.array([[np.inf, 0.0], [0.0, 0.0]]), c), "means"),
    "nan covariance": (lambda w, m, c: (w, m, c * np.array([1.0, np.nan])[:, None, None]), "covariances"),
    "asymmetric covariance": (lambda w, m, c: (w, m, c + np.array([[0.0, 0.5], [0.0, 0.0]])), "symmetric"),
}


@pytest.mark.parametrize("case", list(E_STEP_BAD))
def test_gmm_e_step_rejects_bad_parameters_by_name(case):
    X, w, m, c = _gmm_params()
    change, word = E_STEP_BAD[case]
    with pytest.raises(ValueError, match=word):
        cluster.gmm_e_step(X, *change(w, m, c))


def test_cluster_overflow_at_huge_magnitudes_is_an_error_not_nan():
    X = np.random.default_rng(1).normal(size=(20, 2)) * 1e160  # squared distances overflow float64
    with pytest.raises(ValueError, match="overflow"):
        cluster.kmeans(X, 2, random_state=0)
    with pytest.raises(ValueError, match="overflow"):
        cluster.nearest_center(X, X[:2])
    with pytest.raises(ValueError, match="overflow"):
        cluster.gmm_e_step(X, [1.0], X[:1], np.eye(2)[None])
    # Parameters out of scale with finite X: the log-density overflows; an error, not NaN responsibilities.
    small = np.random.default_rng(1).normal(size=(5, 2))
    with pytest.raises(ValueError, match="overflow"):
        cluster.gmm_e_step(small, [1.0], [[1e200, 0.0]], np.eye(2)[None])
    # Far from overflow, a scale change changes nothing.
    Y = X / 1e160 * 1e100
    assert cluster.kmeans(Y, 2, random_state=0).labels.tolist() == cluster.kmeans(Y / 1e100, 2, random_state=0).labels.tolist()


def test_cluster_accepts_numpy_numbers_and_0d_tensors_and_leaves_arguments_unchanged():
    X = np.random.default_rng(2).normal(size=(30, 2))
    X0 = X.copy()
    ref = cluster.gmm_em(X, 2, tol=1e-3, reg_covar=1e-6, random_state=0)
    for k, tol, reg in [(np.int64(2), np.float32(1e-3), np.float32(1e-6)), (torch.tensor(2), torch.tensor(1e-3), 1e-6)]:
        res = cluster.gmm_em(X, k, tol=tol, reg_covar=reg, random_state=0)
        assert res.labels.tolist() == ref.labels.tolist()
        assert cluster.kmeans(X, k, tol=tol, max_iter=np.int64(50), random_state=0).inertia == pytest.approx(
            cluster.kmeans(X, 2, tol=1e-3, max_iter=50, random_state=0).inertia)
    assert np.array_equal(X, X0)
    init = X[:2].copy()
    cluster.kmeans(X, 2, init=init)
    assert np.array_equal(init, X[:2])
    R = np.eye(2)[np.arange(30) % 2]
    R0 = R.copy()
    cluster.gmm_m_step(X, R)
    assert np.array_equal(R, R0)


def test_momentum_accepts_numpy_numbers_and_0d_tensors():
    from torch import nn

    for m in (np.float32(0.5), torch.tensor(0.5), np.float64(0.5)):
        target, online = nn.Linear(2, 2), nn.Linear(2, 2)
        expected = [0.5 * t.detach() + 0.5 * o.detach() for t, o in zip(target.parameters(), online.parameters())]
        momentum_update(target, online, m)
        for p, e in zip(target.parameters(), expected):
            torch.testing.assert_close(p.detach(), e)
    for bad in (True, np.nan, torch.ones(2), "0.5"):
        with pytest.raises(ValueError, match="momentum"):
            momentum_update(nn.Linear(2, 2), nn.Linear(2, 2), bad)


SMALL_BAD = {
    "supcon normalize": (lambda: supcon_loss(torch.randn(4, 3), normalize="no"), "normalize"),
    "extract batch size": (lambda: __import__("clbook.training", fromlist=["x"]).extract_features(
        make_encoder("mlp"), torch.randn(4, 4), batch_size=0), "batch_size"),
    "load_mnist timeout": (lambda: load_mnist(timeout=-1.0), "timeout"),
}


@pytest.mark.parametrize("case", list(SMALL_BAD))
def test_more_bad_arguments_are_named(case):
    call, word = SMALL_BAD[case]
    with pytest.raises(ValueError, match=word):
        call()


def test_show_matrix_rejects_empty_and_non_numeric_matrices():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbook.viz import show_matrix

    for bad in (np.zeros((0, 0)), [[1.0, "a"]]):
        with pytest.raises(ValueError, match="matrix"):
            show_matrix(bad)
    plt.close("all")


def test_fallback_warning_names_no_file_of_the_caller(official_copy, monkeypatch):
    """Shown in a notebook, a warning's location is the cell's temporary file: it must not be used."""
    root, _ = official_copy
    shutil.rmtree(root / "MNIST")
    _offline(monkeypatch, "no network")
    with pytest.warns(UserWarning) as record:
        load_mnist(root=root, verbose=False)
    assert record[0].filename == "clbook.data.load_mnist"
    shown = warnings.formatwarning(record[0].message, record[0].category, record[0].filename, record[0].lineno)
    assert __file__ not in shown and "/tmp/" not in shown
