"""Data loading: shipped MNIST split, download-failure fallback, checksums, Iris, augmentation."""

import shutil
import warnings
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

import clbook.data as data
from clbook.data import DigitAugment, load_iris, load_mnist, load_shipped_mnist, train_val_split

REPO_DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def shipped():
    return load_shipped_mnist()


@pytest.fixture
def data_copy(tmp_path):
    """A private copy of the shipped files, so tests never write into the repository's data/."""
    shutil.copytree(REPO_DATA / data.SHIPPED_DIR, tmp_path / data.SHIPPED_DIR)
    return tmp_path


def test_shipped_files_match_published_md5():
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert data.md5sum(REPO_DATA / data.SHIPPED_DIR / name) == data.MNIST_MD5[name]


def test_shipped_split_shapes_range_and_source(shipped):
    assert shipped.source == "mnist-t10k-shipped"
    assert shipped.X_train.shape == (8000, 1, 28, 28) and shipped.y_train.shape == (8000,)
    assert shipped.X_test.shape == (2000, 1, 28, 28) and shipped.y_test.shape == (2000,)
    assert shipped.X_train.dtype == torch.float32 and shipped.y_train.dtype == torch.int64
    assert 0.0 <= shipped.X_train.min() and shipped.X_train.max() <= 1.0
    assert shipped.X_train.max() == 1.0  # pixels were scaled by 255, not left as bytes


def test_shipped_split_is_stratified_and_deterministic(shipped):
    all_y = torch.cat([shipped.y_train, shipped.y_test])
    assert torch.bincount(all_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    frac_test = torch.bincount(shipped.y_test, minlength=10) / torch.bincount(all_y)
    assert torch.allclose(frac_test, torch.full((10,), 0.2), atol=0.01)
    again = load_shipped_mnist()
    assert torch.equal(again.X_test, shipped.X_test) and torch.equal(again.y_train, shipped.y_train)
    # Train and held-out parts are disjoint: no held-out image also appears in training.
    train_rows = {row.numpy().tobytes() for row in shipped.X_train.flatten(1)}
    assert sum(row.numpy().tobytes() in train_rows for row in shipped.X_test.flatten(1)) <= 5  # MNIST has a few exact duplicates


def test_download_failure_falls_back_to_shipped(data_copy, monkeypatch):
    from torchvision.datasets import MNIST

    def no_network(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirror, got: no network")

    monkeypatch.setattr(MNIST, "download", no_network)
    with pytest.warns(UserWarning, match="Official MNIST unavailable.*shipped"):
        split = load_mnist(root=data_copy, verbose=False)
    assert split.source == "mnist-t10k-shipped" and len(split.y_train) == 8000


def test_url_error_also_falls_back(data_copy, monkeypatch):
    def offline(root, timeout):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(data, "_official_mnist", offline)
    with pytest.warns(UserWarning, match="Name or service not known"):
        split = load_mnist(root=data_copy, verbose=False)
    assert split.source == "mnist-t10k-shipped"


# The official path (real torchvision on small stand-in files) is tested in test_reliability.py.


def test_download_false_says_which_data(data_copy, capsys):
    split = load_mnist(root=data_copy, download=False)
    assert split.source == "mnist-t10k-shipped"
    assert "shipped" in capsys.readouterr().out


def test_missing_file_raises_clear_error(data_copy):
    (data_copy / data.SHIPPED_DIR / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz.*missing"):
        load_shipped_mnist(root=data_copy)


def test_corrupt_file_raises_clear_error(data_copy):
    path = data_copy / data.SHIPPED_DIR / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 0xFF  # a single flipped byte
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        load_shipped_mnist(root=data_copy)


def test_data_dir_independent_of_cwd_and_overridable(tmp_path, monkeypatch):
    monkeypatch.delenv("CLBOOK_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data.data_dir() == REPO_DATA
    monkeypatch.setenv("CLBOOK_DATA", str(tmp_path))
    assert data.data_dir() == tmp_path.resolve()
    assert data.data_dir(REPO_DATA) == REPO_DATA  # the argument wins over the variable


def test_env_var_is_used_by_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBOOK_DATA", str(tmp_path))  # empty directory: nothing to load
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_shipped_mnist()


def test_train_val_split_stratified_and_disjoint():
    X = torch.arange(100).float().unsqueeze(1)
    y = torch.arange(100) % 4
    X_fit, y_fit, X_val, y_val = train_val_split(X, y, val_size=0.2, seed=3)
    assert len(X_val) == 20 and torch.bincount(y_val).tolist() == [5, 5, 5, 5]
    assert set(X_fit.flatten().tolist()).isdisjoint(X_val.flatten().tolist())
    assert torch.equal(y_fit, X_fit.flatten().long() % 4)  # rows and labels stay paired
    with pytest.raises(ValueError, match="samples"):
        train_val_split(X, y[:-1])


def test_iris_standardized_on_train_only():
    from sklearn.datasets import load_iris as sk_iris

    split = load_iris(seed=0)
    assert split.X_train.shape == (105, 4) and split.X_test.shape == (45, 4)
    assert torch.bincount(split.y_test).tolist() == [15, 15, 15]
    assert torch.allclose(split.X_train.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(split.X_train.std(0, unbiased=False), torch.ones(4), atol=1e-4)
    # The scaling is one affine map fitted on train: applied to sklearn's rows it gives ours.
    raw = sk_iris().data
    X = np.concatenate([split.X_train.numpy(), split.X_test.numpy()])
    std = raw.std(0) / X.std(0)  # per-feature scale of the map, from all 150 rows
    mean = raw.mean(0) - X.mean(0) * std
    recovered = np.sort(X * std + mean, axis=0)
    assert np.allclose(recovered, np.sort(raw, axis=0), atol=1e-4)
    assert not torch.allclose(split.X_test.mean(0), torch.zeros(4), atol=1e-3)  # test not re-standardized


def test_augment_per_sample_and_shape():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0  # the same bar in every image
    out = DigitAugment()(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # Each image gets its own transformation: no two outputs are identical.
    flat = out.flatten(1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_augment_identity_and_no_flips():
    x = torch.rand(4, 1, 28, 28)
    identity = DigitAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0, translate=0.0)
    assert torch.allclose(identity(x), x, atol=1e-5)
    theta = DigitAugment(scale=(0.3, 1.0), degrees=30.0).matrices(1000, torch.Generator().manual_seed(1))
    assert (torch.linalg.det(theta[:, :, :2]) > 0).all()  # a mirror image would have det < 0


def test_augment_reproducible_and_checks_shape():
    x = torch.rand(5, 1, 28, 28)
    a = DigitAugment()(x, torch.Generator().manual_seed(7))
    b = DigitAugment()(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        DigitAugment()(x[0])
