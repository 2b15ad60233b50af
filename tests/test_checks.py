"""clbook.checks and the bad-input cases it closes, seeds and devices, and the device argument of
clbook.evaluation (on the CPU: every way of naming the CPU computes the same numbers)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from clbook import checks, cluster, sinkhorn
from clbook.checks import (
    MAX_CLASSES,
    check_features,
    check_images,
    check_int,
    check_interval,
    check_labels,
    check_probability,
    check_real,
)
from clbook.data import DigitAugment, load_mnist, train_val_split
from clbook.encoders import ConvEncoder, FCEncoder, NotesCNN, Prototypes, make_encoder
from clbook.evaluation import evaluate_frozen, extract_features, fit_linear_probe, knn_accuracy, knn_predict
from clbook.memory import FeatureQueue, MemoryBank, momentum_update
from clbook.runtime import resolve_device, set_seed

# ----------------------------------------------------------------------------- the checks themselves


def test_check_int_messages_name_the_argument_and_value():
    assert check_int("k", np.int64(3), 1) == 3 and check_int("k", torch.tensor(3), 1) == 3
    for bad in (0, -2, 2.5, True, "3", torch.tensor(1.0)):
        with pytest.raises(ValueError, match=r"^k must be a positive integer, got"):
            check_int("k", bad, 1)
    with pytest.raises(ValueError, match=r"n_iter must be a non-negative integer, got -1"):
        check_int("n_iter", -1, 0)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 9\], got 10"):
        check_int("seed", 10, 0, 9)


def test_check_real_and_probability():
    assert check_real("lr", np.float32(0.5)) == 0.5 and check_real("tol", 0, strict=False) == 0.0
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            check_real("lr", bad)
    assert check_probability("p", torch.tensor(0.25)) == 0.25
    with pytest.raises(ValueError, match=r"m must be a number in \[0, 1\), got 1.0"):
        check_probability("m", 1.0, high_open=True)


def test_check_interval():
    assert check_interval("scale", (np.float32(0.5), 1), 0.0, 1.0) == (0.5, 1.0)
    for bad in ((0.8, 0.4), (0.0, 1.0), (0.5, 1.5), (0.5, float("nan")), (1.0,), 0.5, ("a", "b"), (True, 1.0)):
        with pytest.raises(ValueError, match=r"scale must be a pair \(low, high\)"):
            check_interval("scale", bad, 0.0, 1.0)


def test_check_features_min_rows_and_floating():
    check_features("z", torch.zeros(2, 3), min_rows=2, floating=True)
    with pytest.raises(ValueError, match="z needs at least 2 rows"):
        check_features("z", torch.zeros(1, 3), min_rows=2)
    with pytest.raises(ValueError, match="z must be a floating-point tensor"):
        check_features("z", torch.zeros(2, 3, dtype=torch.long), floating=True)
    check_features("z", torch.zeros(2, 3, dtype=torch.long))  # integers allowed unless floating=True


def test_check_labels_caps_the_number_of_classes():
    check_labels("y", torch.tensor([0, MAX_CLASSES - 1]))
    with pytest.raises(ValueError, match=f"y holds the label {10**12}; class labels must be below {MAX_CLASSES}"):
        check_labels("y", torch.tensor([0, 10**12]))


# ----------------------------------------------------------------------------- uint8 images


def _digits(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def test_check_images_converts_uint8_like_to_tensor_and_refuses_other_integers():
    x = _digits()
    x0 = x.clone()
    out = check_images("x", x)
    assert out.dtype == torch.float32 and torch.equal(out, x.float() / 255)
    assert torch.equal(x, x0) and x.dtype == torch.uint8  # the caller's tensor is untouched
    f = torch.rand(2, 3)
    assert check_images("x", f) is f
    for dtype in (torch.int64, torch.bool, torch.int32):
        with pytest.raises(ValueError, match=r"x must hold float images in \[0, 1\] or uint8"):
            check_images("x", torch.zeros(2, 3, dtype=dtype))
    # torchvision's ToTensor divides by 255 too (torchvision is one of clbook's dependencies).
    import torchvision.transforms as tv

    img = x[0, 0].numpy()  # [28, 28] uint8
    assert torch.equal(tv.ToTensor()(img), check_images("x", x[0]))


@pytest.mark.parametrize("kind", ["cnn", "fc", "notes-cnn"])
def test_image_encoders_take_uint8_as_float_over_255(kind):
    encoder = make_encoder(kind, seed=0).eval()
    assert isinstance(encoder, (ConvEncoder, FCEncoder, NotesCNN))
    x = _digits()
    x0 = x.clone()
    with torch.no_grad():
        assert torch.equal(encoder(x), encoder(x.float() / 255))
    assert torch.equal(x, x0)
    with pytest.raises(ValueError, match="must hold float images"):
        encoder(x.long())


def test_digit_augment_takes_uint8_as_float_over_255():
    x = _digits(6)
    x0 = x.clone()
    out = DigitAugment()(x, torch.Generator().manual_seed(3))
    ref = DigitAugment()(x.float() / 255, torch.Generator().manual_seed(3))
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert torch.equal(x, x0)
    with pytest.raises(ValueError, match="x must hold float images"):
        DigitAugment()(x.to(torch.int16))


# ----------------------------------------------------------------------------- DigitAugment's ranges

AUGMENT_BAD = {
    "scale reversed": (dict(scale=(0.9, 0.5)), "scale"),
    "scale zero": (dict(scale=(0.0, 1.0)), "scale"),
    "scale above one": (dict(scale=(0.5, 1.5)), "scale"),
    "scale nan": (dict(scale=(float("nan"), 1.0)), "scale"),
    "scale not a pair": (dict(scale=0.5), "scale"),
    "ratio reversed": (dict(ratio=(4 / 3, 3 / 4)), "ratio"),
    "ratio zero": (dict(ratio=(0.0, 1.0)), "ratio"),
    "ratio inf": (dict(ratio=(1.0, float("inf"))), "ratio"),
    "negative degrees": (dict(degrees=-10.0), "degrees"),
    "nan degrees": (dict(degrees=float("nan")), "degrees"),
    "degrees beyond 180": (dict(degrees=400.0), "degrees"),
    "negative translate": (dict(translate=-0.1), "translate"),
    "translate beyond 1": (dict(translate=2.0), "translate"),
    "bool translate": (dict(translate=True), "translate"),
}


@pytest.mark.parametrize("case", list(AUGMENT_BAD))
def test_digit_augment_checks_its_ranges(case):
    kwargs, word = AUGMENT_BAD[case]
    with pytest.raises(ValueError, match=f"^{word} must be"):
        DigitAugment(**kwargs)


def test_digit_augment_accepts_the_course_settings():
    DigitAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0, translate=0.0)
    DigitAugment(scale=(0.4, 1.0), degrees=20.0, translate=0.1)
    assert repr(DigitAugment(scale=(0.8, 1.0), degrees=10.0, translate=0.05)) == (
        "DigitAugment(scale=(0.8, 1.0), ratio=(0.75, 1.3333333333333333), degrees=10.0, translate=0.05)")


# ----------------------------------------------------------------------------- labels too large for a one-hot


def test_huge_labels_are_a_value_error_everywhere():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g)
    y = torch.arange(40) % 4
    y_big = y.clone()
    y_big[0] = 10**12
    for call in (
        lambda: knn_predict(X, y_big, X, k=3),
        lambda: knn_accuracy(X, y, X, y_big, k=3),
        lambda: fit_linear_probe(X, y_big, steps=1),
        lambda: evaluate_frozen(X, y_big, X, y),
        lambda: train_val_split(X, y_big),
    ):
        with pytest.raises(ValueError, match=f"label {10**12}.*below {MAX_CLASSES}"):
            call()


def test_train_val_split_checks_labels_and_size():
    X, y = torch.randn(20, 2), torch.arange(20) % 2
    with pytest.raises(ValueError, match="y must hold integer class labels"):
        train_val_split(X, y.float())
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(X, y, val_size=0)
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(X, y, val_size=-0.5)
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(X, y, val_size=20)
    assert len(train_val_split(X, y, val_size=np.int64(4))[3]) == 4


def test_plot_embedding_huge_integer_label_is_one_more_class():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbook.viz import plot_embedding

    ax = plot_embedding(np.zeros((3, 2)), np.array([0, 1, 10**12]))
    assert [c.get_label() for c in ax.collections] == ["0", "1", str(10**12)]
    with pytest.raises(ValueError, match="class_names"):
        plot_embedding(np.zeros((3, 2)), np.array([0, 1, 10**12]), class_names=["a", "b"])
    plt.close("all")


# ----------------------------------------------------------------------------- seeds


@pytest.mark.parametrize("seed, shown", [(-1, "-1"), (1.5, "1.5"), (True, "True"), (2**32, str(2**32))])
def test_set_seed_names_a_bad_seed(seed, shown):
    with pytest.raises(ValueError, match=rf"^seed must be an integer in \[0, 4294967295\], got {shown}$"):
        set_seed(seed)


def test_set_seed_accepts_numpy_and_repeats():
    set_seed(np.int64(5))
    a = torch.rand(3)
    set_seed(5)
    assert torch.equal(a, torch.rand(3))


# ----------------------------------------------------------------------------- plots


def test_plot_tsne_pair_of_nothing_says_so():
    from clbook.viz import plot_tsne_pair

    with pytest.raises(ValueError, match="features is empty: no feature sets to plot"):
        plot_tsne_pair({}, np.zeros(5))
    with pytest.raises(ValueError, match="ncols must be a positive integer, got 0"):
        plot_tsne_pair({"a": np.random.default_rng(0).normal(size=(10, 3))}, np.zeros(10), ncols=0)


def test_plot_collapse_and_tsne_check_their_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbook.viz import plot_collapse, tsne_embed

    with pytest.raises(ValueError, match="n_classes must be a positive integer, got 0"):
        plot_collapse({}, n_classes=0)
    with pytest.raises(ValueError, match="perplexity"):
        tsne_embed(np.zeros((10, 3)), perplexity=-1.0)
    plt.close("all")


# ----------------------------------------------------------------------------- load_mnist on a mistyped root


def test_load_mnist_on_a_missing_root_creates_nothing(tmp_path, monkeypatch):
    from urllib.error import URLError

    from torchvision.datasets import mnist

    def no_network(*args, **kwargs):
        raise URLError("no network")

    # torchvision's MNIST.download creates root/MNIST/raw, then fails here (as it would offline).
    monkeypatch.setattr(mnist, "download_and_extract_archive", no_network)
    for download in (True, False):
        with pytest.raises(FileNotFoundError, match="typo.*does not exist"):
            load_mnist(root=tmp_path / "typo", download=download, verbose=False)
        assert list(tmp_path.iterdir()) == []  # not typo/, not typo/MNIST/raw
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(root=tmp_path / "typo" / "deeper", verbose=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- gmm_em: reg_covar against the scale of X


def test_gmm_em_warns_when_reg_covar_dominates_the_data():
    X = np.random.default_rng(0).normal(size=(60, 2)) * 1e-4  # variance 1e-8, reg_covar 1e-6
    with pytest.warns(UserWarning, match=r"reg_covar = 1e-06 is more than 10% of the smallest per-dimension"):
        cluster.gmm_em(X, 2, random_state=0)
    # Unit-scale data (notebook 06's blobs and 16-d PCA features are far above 1e-5): no warning,
    # and a constant dimension (variance 0, what reg_covar is for) is not counted.
    Y = np.random.default_rng(0).normal(size=(60, 2))
    Y_const = np.column_stack([Y, np.ones(60)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cluster.gmm_em(Y, 2, random_state=0)
        cluster.gmm_em(Y_const, 2, random_state=0)
    with pytest.warns(UserWarning, match="reg_covar"):
        cluster.gmm_em(Y, 2, reg_covar=0.5, random_state=0)


def test_gmm_em_with_a_constant_dimension_is_not_refused_as_asymmetric():
    # The M-step's products r x_a x_b and r x_b x_a round differently; against a nearly-zero
    # off-diagonal entry that used to read as "covariances must be symmetric matrices".
    Y = np.column_stack([np.random.default_rng(0).normal(size=(60, 2)), np.ones(60)])
    fit = cluster.gmm_em(Y, 2, random_state=0)
    assert np.isfinite(fit.log_likelihood_history).all()
    with pytest.raises(ValueError, match="symmetric"):
        cluster.gmm_e_step(Y, [1.0], Y[:1], (np.eye(3) + np.triu(np.full((3, 3), 1e-6), 1))[None])


# ----------------------------------------------------------------------------- replaced checks keep naming the argument

REPLACED = {
    "queue size": (lambda: FeatureQueue(0, 3), "size must be a positive integer, got 0"),
    "queue bool dim": (lambda: FeatureQueue(4, True), "dim must be a positive integer, got True"),
    "bank momentum": (lambda: MemoryBank(4, 2, momentum=1.0), r"momentum must be a number in \[0, 1\), got 1.0"),
    "bank negatives k": (lambda: MemoryBank(4, 2).negatives(0), "k must be a positive integer, got 0"),
    "ema momentum": (lambda: momentum_update(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), 1.5),
                     r"momentum m must be a number in \[0, 1\], got 1.5"),
    "prototypes": (lambda: Prototypes(4.0, 3), "dim must be a positive integer, got 4.0"),
    "conv out_dim": (lambda: ConvEncoder(out_dim=0), "out_dim must be a positive integer, got 0"),
    "conv channels": (lambda: ConvEncoder(channels=(16, 0)), r"channels\[1\] must be a positive integer, got 0"),
    "fc hidden": (lambda: FCEncoder(hidden=2.5), "hidden must be a positive integer, got 2.5"),
    "mlp in_dim": (lambda: make_encoder("mlp", in_dim=-1), "in_dim must be a positive integer, got -1"),
    "kmeans max_iter": (lambda: cluster.kmeans(np.zeros((4, 2)), 2, max_iter=0), "max_iter must be a positive integer"),
    "gmm tol": (lambda: cluster.gmm_em(np.eye(4), 2, tol=float("nan")), "tol must be a finite number >= 0"),
    "sinkhorn n_iter": (lambda: sinkhorn.sinkhorn_knopp(torch.zeros(2, 2), n_iter=-1),
                        "n_iter must be a non-negative integer, got -1"),
}


@pytest.mark.parametrize("case", list(REPLACED))
def test_replaced_checks_name_argument_and_value(case):
    call, message = REPLACED[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_only_losses_keeps_its_own_check_positive():
    import pathlib

    package = pathlib.Path(checks.__file__).parent
    owners = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if "def _check_positive" in p.read_text()]
    # losses (a module, or a package once split) accepts learnable tensor temperatures: its own check.
    assert all(o.startswith("losses") for o in owners), owners


# ----------------------------------------------------------------------------- devices


def test_resolve_device():
    if not torch.cuda.is_available() and not (torch.backends.mps.is_available()):
        assert resolve_device("auto") == torch.device("cpu") == resolve_device(None)
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match=r"^device must be 'auto', 'cpu'.*got 'gpu'$") as info:
        resolve_device("gpu")
    assert "\n" not in str(info.value)


CPU_NAMES = ["cpu", torch.device("cpu")] + (["auto"] if not torch.cuda.is_available()
                                            and not torch.backends.mps.is_available() else [])


def _feats(seed=0, n=60, d=5, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.arange(n) % classes


def test_extract_features_same_on_every_name_of_the_cpu_and_leaves_the_encoder_alone():
    encoder = make_encoder("fc", seed=0)  # BatchNorm: train and eval mode give different features
    X = torch.rand(10, 1, 28, 28)
    ref = extract_features(encoder, X, batch_size=4)
    assert encoder.training  # mode restored
    for device in CPU_NAMES:
        out = extract_features(encoder, X, batch_size=4, device=device)
        assert torch.equal(out, ref)
        assert encoder.training and next(encoder.parameters()).device == torch.device("cpu")
    encoder.eval()
    extract_features(encoder, X, device="cpu")
    assert not encoder.training
    with pytest.raises(ValueError, match="device must be") as info:
        extract_features(encoder, X, device="tpu")
    assert "\n" not in str(info.value) and not encoder.training


def test_knn_and_probe_same_on_every_name_of_the_cpu():
    X, y = _feats()
    Q, yq = _feats(1)
    pred = knn_predict(X, y, Q, k=5)
    acc = knn_accuracy(X, y, Q, yq, k=5)
    probe = fit_linear_probe(X, y, Q, yq, steps=20)
    result = evaluate_frozen(X, y, Q, yq, weight_decays=(0.0, 1e-2), ks=(1, 5))
    for device in CPU_NAMES:
        assert torch.equal(knn_predict(X, y, Q, k=5, device=device), pred)
        assert knn_accuracy(X, y, Q, yq, k=5, device=device) == acc
        other = fit_linear_probe(X, y, Q, yq, steps=20, device=device)
        assert torch.equal(other.linear.weight, probe.linear.weight) and other.history == probe.history
        again = evaluate_frozen(X, y, Q, yq, weight_decays=(0.0, 1e-2), ks=(1, 5), device=device)
        assert {k: v for k, v in again.items() if k != "probe"} == {k: v for k, v in result.items() if k != "probe"}


@pytest.mark.parametrize("call", [
    lambda X, y, dev: knn_predict(X, y, X, k=3, device=dev),
    lambda X, y, dev: knn_accuracy(X, y, X, y, k=3, device=dev),
    lambda X, y, dev: fit_linear_probe(X, y, steps=1, device=dev),
    lambda X, y, dev: evaluate_frozen(X, y, X, y, device=dev),
])
def test_unknown_device_is_a_one_line_value_error(call):
    X, y = _feats()
    with pytest.raises(ValueError, match="device must be 'auto'") as info:
        call(X, y, "gpu0")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- kNN ties


def test_knn_tie_goes_to_the_smallest_label():
    # k = 2: the nearest neighbour has class 3, the second class 1: one vote each, class 1 wins.
    train = torch.tensor([[1.0, 0.05], [1.0, 0.2], [-1.0, 0.0]])
    labels = torch.tensor([3, 1, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, query, k=2).tolist() == [1]
    # Labels swapped: still the smaller one, now the nearest.
    assert knn_predict(train, torch.tensor([1, 3, 0]), query, k=2).tolist() == [1]
    # A clear majority is not a tie: k = 3 with two votes for class 3.
    assert knn_predict(torch.tensor([[1.0, 0.05], [1.0, 0.2], [1.0, 0.3]]), torch.tensor([3, 1, 3]), query,
                       k=3).tolist() == [3]
