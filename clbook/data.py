"""Datasets for the experiments: Iris and MNIST as in-memory tensors, plus digit augmentation, and
for notebook 12 the views of a digit (:func:`digit_views`) and captions in words (:func:`make_captions`).

Conventions
-----------
* Everything is returned as whole tensors, because the datasets are small: MNIST images as
  float32 ``[N, 1, 28, 28]`` in [0, 1], labels as int64 ``[N]``. Training loops slice batches
  out of them instead of running a per-sample Python ``Dataset``.
* A :class:`Split` holds a training part and a held-out part. Anything tuned during training
  (epochs, probe hyper-parameters) is tuned on a validation part carved out of ``X_train`` with
  :func:`train_val_split`; the held-out part is for the final number only.
* Data lives in ``<repo>/data`` (override with the ``root`` argument or the ``CLBOOK_DATA``
  environment variable), so notebooks find it whatever their working directory. The data
  directory must exist: :func:`load_mnist` creates folders (torchvision's ``MNIST/raw``) only
  inside an existing one, so a mistyped ``root`` is an error that leaves no folder behind.
* :class:`DigitAugment` takes float images in [0, 1]; a ``uint8`` batch is divided by 255 into
  float32 first, as torchvision's ``ToTensor`` does (the same rule as the image encoders).

MNIST: :func:`load_mnist` first asks ``torchvision.datasets.MNIST`` for the official 60,000 /
10,000 split, downloading it when needed. Without network it falls back to the official *test*
split that ships with the repository in ``data/mnist_t10k/``, divided into 8,000 training and
2,000 held-out digits (stratified, fixed seed). Either way it prints which data it uses and
records it in ``Split.source``. The digits are always read from the ``.gz`` archives, each
checked against its published MD5 first; for the official split, the extracted copies that
torchvision keeps beside them (and reads itself) must match their verified archive byte for byte.
Messages name folders relative to the repository (``data/mnist_t10k``) or to the data directory,
never as one machine's absolute paths.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clbook.checks import check_bool, check_images, check_int, check_interval, check_labels, check_real

__all__ = [
    "Split",
    "data_dir",
    "load_iris",
    "load_mnist",
    "load_shipped_mnist",
    "train_val_split",
    "md5sum",
    "DigitAugment",
    "MultiCrop",
    "SIMCLR_AUGMENT",
    "LIGHT_AUGMENT",
    "SpeechSequences",
    "make_speech_sequences",
    "digit_views",
    "digit_style",
    "make_captions",
    "tokenize_text",
]

# Published checksums (the same ones torchvision verifies after its download).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
SHIPPED_DIR = "mnist_t10k"
SOURCE_OFFICIAL = "mnist-official"
SOURCE_SHIPPED = "mnist-t10k-shipped"


@dataclass
class Split:
    """A training part and a held-out part of one dataset.

    Attributes
    ----------
    X_train, y_train : Tensor, shapes [N, ...] and [N]
    X_test, y_test : Tensor, shapes [M, ...] and [M]
        Held-out part: evaluate on it once, at the end.
    source : str
        Which data this is, e.g. ``"iris"``, ``"mnist-official"`` or ``"mnist-t10k-shipped"``.
    classes : list of str
        Class names, indexed by label.
    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    source: str
    classes: list[str]

    def __repr__(self) -> str:
        return (
            f"Split(source={self.source!r}, train={tuple(self.X_train.shape)}, "
            f"test={tuple(self.X_test.shape)}, classes={len(self.classes)})"
        )


# ----------------------------------------------------------------------------- paths and checks


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """Directory holding the datasets.

    Order of precedence: the ``root`` argument, the ``CLBOOK_DATA`` environment variable, then
    ``data/`` at the repository root (found relative to this file, not the working directory).
    """
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("CLBOOK_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parent.parent / "data"


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


_REPO = Path(__file__).resolve().parent.parent


def _shown(path: Path, root: Path | None = None) -> str:
    """``path`` as printed in messages: relative to the repository (``data/mnist_t10k``) or to the
    data directory (``mnist_t10k in the data directory``), an absolute path only as a last resort."""
    for base, template in ((_REPO, "{}"), (root, "{} in the data directory")):
        if base is not None:
            try:
                return template.format(path.resolve().relative_to(base.resolve()).as_posix())
            except ValueError:
                pass
    return str(path)


def _cause(err: BaseException, root: Path) -> str:
    """The whole message of ``err`` on one line, with the data directory's absolute path replaced.

    torchvision's download error spans several lines ("Error downloading ...:", then one "Tried
    <mirror>, got: <reason>" per mirror); its first line alone says nothing about the reason.
    """
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or repr(err)
    name = _shown(root)  # "data" for the repository's own data directory
    if name == str(root):
        name = "<data directory>"
    for absolute in sorted({str(root), str(root.resolve())}, key=len, reverse=True):
        text = text.replace(absolute, name)
    return re.sub(r"\s+", " ", text)


def _verified(path: Path, shipped: bool) -> Path:
    """Return ``path`` if it exists and matches its published MD5, else raise a clear error.

    ``shipped``: the file is one of the repository's own (``data/mnist_t10k``), which nothing
    downloads again; otherwise it is in torchvision's download folder.
    """
    expected = MNIST_MD5[path.name]
    if shipped:
        where = f"data/{SHIPPED_DIR}/{path.name}"
        remedy = (f"The repository ships it as {where}: restore it with `git checkout -- {where}` (torchvision "
                  "never downloads into this folder, so deleting it loses the offline copy), or point "
                  "CLBOOK_DATA (or root=) at a directory that has an intact copy.")
    else:
        remedy = ("Delete it: with network, torchvision downloads it again on the next load_mnist(); "
                  "without, load_mnist() falls back to the shipped test split.")
    if not path.is_file():
        raise FileNotFoundError(f"MNIST file {path} is missing. {remedy}")
    actual = md5sum(path)
    if actual != expected:
        raise ValueError(f"MNIST file {path} is corrupt: MD5 {actual}, expected {expected}. {remedy}")
    return path


def _gunzip(path: Path) -> bytes:
    with gzip.open(path, "rb") as f:
        return f.read()


def _read_idx(path: Path, raw: bytes | None = None) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format), or its content ``raw``, into a uint8 array."""
    if raw is None:
        raw = _gunzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor]:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # [N, 1, 28, 28]
    return x, torch.from_numpy(labels.astype(np.int64))


def train_val_split(
    X: Tensor, y: Tensor, val_size: float | int = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stratified split of training data into a fitting part and a validation part.

    Parameters
    ----------
    X : Tensor, shape [N, ...]
    y : Tensor, shape [N], integer labels in [0, clbook.checks.MAX_CLASSES)
    val_size : float in (0, 1) or int in [1, N - 1]
        Fraction or number of samples for validation.
    seed : int
        The split is a deterministic function of the seed.

    Returns
    -------
    X_fit, y_fit, X_val, y_val : Tensor
    """
    from sklearn.model_selection import train_test_split

    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]} labels")
    check_labels("y", y, X.shape[0])
    if isinstance(val_size, float) or (isinstance(val_size, Tensor) and val_size.is_floating_point()) \
            or isinstance(val_size, np.floating):
        check_real("val_size", val_size, 0.0, maximum=1.0)
    else:
        check_int("val_size", val_size, 1, max(1, len(y) - 1))
    idx_fit, idx_val = train_test_split(
        np.arange(len(y)), test_size=val_size, random_state=seed, stratify=y.cpu().numpy()
    )
    idx_fit, idx_val = torch.from_numpy(np.sort(idx_fit)), torch.from_numpy(np.sort(idx_val))
    return X[idx_fit], y[idx_fit], X[idx_val], y[idx_val]


# ----------------------------------------------------------------------------- Iris


def load_iris(test_size: float = 0.3, seed: int = 0) -> Split:
    """Iris (scikit-learn's bundled copy), stratified train/test split, standardized.

    Features are standardized with the mean and standard deviation of the training part only,
    so nothing about the test part leaks into training. ``X_*`` are float32 ``[n, 4]``.
    """
    from sklearn.datasets import load_iris as _sk_load_iris
    from sklearn.model_selection import train_test_split

    iris = _sk_load_iris()
    X_tr, X_te, y_tr, y_te = train_test_split(
        iris.data, iris.target, test_size=test_size, random_state=seed, stratify=iris.target
    )
    mean, std = X_tr.mean(axis=0), X_tr.std(axis=0)
    X_tr, X_te = (X_tr - mean) / std, (X_te - mean) / std
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return Split(as_x(X_tr), as_y(y_tr), as_x(X_te), as_y(y_te), "iris", list(iris.target_names))


# ----------------------------------------------------------------------------- MNIST

_DIGITS = [str(d) for d in range(10)]


def _read_official(raw_folder: Path, name: str) -> np.ndarray:
    """One official MNIST file, from its MD5-verified archive ``name`` in ``raw_folder``.

    torchvision keeps an extracted copy beside each archive and reads that copy, not the archive,
    so a copy that differs from its verified archive (edited, truncated) is an error too.
    """
    archive = _verified(raw_folder / name, shipped=False)
    content = _gunzip(archive)
    extracted = raw_folder / name.removesuffix(".gz")
    if extracted.exists() and (extracted.stat().st_size != len(content) or extracted.read_bytes() != content):
        raise ValueError(
            f"MNIST file {extracted} differs from its verified archive {archive.name}: it was edited or damaged. "
            "Delete it; torchvision extracts it again from the archive (no download needed)."
        )
    return _read_idx(archive, content)


def _official_mnist(root: Path, timeout: float) -> Split:
    """The official MNIST split via torchvision, downloading it into ``root/MNIST`` if needed.

    torchvision only downloads; the digits are read here from the verified archives (see
    :func:`_read_official`), since torchvision checks nothing it did not just download itself.
    """
    from torchvision.datasets import MNIST

    # urllib has no default timeout; without one a half-open network could hang a notebook.
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        train = MNIST(root=str(root), train=True, download=True)  # downloads all four files if needed
    finally:
        socket.setdefaulttimeout(old_timeout)
    raw_folder = Path(train.raw_folder)
    parts = []
    for part in ("train", "t10k"):
        images = _read_official(raw_folder, f"{part}-images-idx3-ubyte.gz")
        labels = _read_official(raw_folder, f"{part}-labels-idx1-ubyte.gz")
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise ValueError(f"unexpected shapes {images.shape}, {labels.shape} of {part} in {raw_folder}")
        parts += _to_tensors(images, labels)
    return Split(*parts, SOURCE_OFFICIAL, _DIGITS)


def load_shipped_mnist(
    root: str | os.PathLike | None = None, n_test: int = 2000, seed: int = 0
) -> Split:
    """The official MNIST *test* split shipped in ``data/mnist_t10k``, split in two.

    The 10,000 digits are divided, stratified by class and with a fixed seed, into
    ``10000 - n_test`` training digits and ``n_test`` held-out digits.

    Raises
    ------
    FileNotFoundError
        If a file is missing.
    ValueError
        If a file does not match its published MD5 or is malformed.
    """
    folder = data_dir(root) / SHIPPED_DIR
    images = _read_idx(_verified(folder / "t10k-images-idx3-ubyte.gz", shipped=True))
    labels = _read_idx(_verified(folder / "t10k-labels-idx1-ubyte.gz", shipped=True))
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise ValueError(f"unexpected shapes {images.shape}, {labels.shape} in {folder}")
    X, y = _to_tensors(images, labels)
    X_tr, y_tr, X_te, y_te = train_val_split(X, y, val_size=n_test, seed=seed)
    return Split(X_tr, y_tr, X_te, y_te, SOURCE_SHIPPED, _DIGITS)


def load_mnist(
    root: str | os.PathLike | None = None,
    download: bool = True,
    timeout: float = 10.0,
    n_test: int = 2000,
    seed: int = 0,
    verbose: bool = True,
) -> Split:
    """MNIST as tensors: the official split if torchvision can get it, else the shipped split.

    Parameters
    ----------
    root : path, optional
        Data directory (default: :func:`data_dir`). It must exist (``FileNotFoundError``
        otherwise, and nothing is created); torchvision downloads into ``root/MNIST``, creating
        that folder if needed; the fallback reads ``root/mnist_t10k``.
    download : bool, default True
        Try the official split through torchvision (which downloads it if absent). ``False``
        goes straight to the shipped split.
    timeout : float, default 10
        Socket timeout in seconds for the download attempt.
    n_test, seed
        Size of the held-out part and seed of the division, for the shipped split only.
    verbose : bool, default True
        Print which data is used.

    Returns
    -------
    Split
        ``source`` is ``"mnist-official"`` (60,000 train / 10,000 test) or
        ``"mnist-t10k-shipped"`` (8,000 train / 2,000 held out by default).
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.floating, np.integer)) \
            or not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    root = data_dir(root)
    if not root.is_dir():
        # torchvision would create root/MNIST/raw (and so root) before failing: a mistyped path
        # would leave folders behind. Inside an existing data directory, creating them is fine.
        raise FileNotFoundError(
            f"data directory {_shown(root)} does not exist (or is not a folder): check root= or CLBOOK_DATA. "
            "load_mnist creates folders only inside an existing data directory."
        )
    if download:
        try:
            split = _official_mnist(root, timeout)
        except (RuntimeError, OSError) as err:  # URLError is an OSError
            # warn_explicit with a module name as the location: a plain warn() would show the
            # caller's file, and in a notebook that is a temporary path of the machine that ran it.
            warnings.warn_explicit(
                f"Official MNIST unavailable ({_cause(err, root)}); using the test split shipped in "
                f"{_shown(root / SHIPPED_DIR, root)} instead.",
                UserWarning, filename="clbook.data.load_mnist", lineno=0,
            )
        else:
            if verbose:
                print(f"MNIST: official split from {_shown(root / 'MNIST', root)} ({split.source}), "
                      f"{len(split.y_train)} train / {len(split.y_test)} test digits")
            return split
    split = load_shipped_mnist(root, n_test=n_test, seed=seed)
    if verbose:
        print(f"MNIST: shipped official test split ({split.source}), divided into "
              f"{len(split.y_train)} train / {len(split.y_test)} held-out digits")
    return split


# ----------------------------------------------------------------------------- augmentation


@dataclass
class DigitAugment:
    """Random per-sample affine augmentation of a batch of images.

    Each image gets its own random resized crop (area fraction in ``scale``, aspect ratio in
    ``ratio``), rotation (uniform in +-``degrees``) and translation (uniform in +-``translate``
    of the image size), applied in one ``affine_grid`` / ``grid_sample`` call. There are no flips:
    a mirrored 2 is not a 2. Pixels pulled from outside the image are zero (background).

    Why not torchvision transforms on the batch tensor: v2 transforms draw *one* set of
    parameters per call, so every image of the batch would get the same crop, and the two views
    of a positive pair would differ in exactly the same way as every other pair.

    Parameters
    ----------
    scale : (float, float)
        Range of the crop's area as a fraction of the image, ``0 < low <= high <= 1``.
    ratio : (float, float)
        Range of the crop's aspect ratio (sampled log-uniformly), ``0 < low <= high``.
    degrees : float
        Maximum absolute rotation in degrees, in [0, 180].
    translate : float
        Maximum absolute shift as a fraction of the image size, in [0, 1].

    Out-of-range settings raise ``ValueError`` naming the parameter, when the augmentation is
    built. Images are float in [0, 1]; a ``uint8`` batch is divided by 255 into float32 first
    (torchvision's ``ToTensor`` rule), so the result is float32 either way.
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 15.0
    translate: float = 0.1

    def __post_init__(self) -> None:
        check_interval("scale", self.scale, 0.0, 1.0)
        check_interval("ratio", self.ratio, 0.0)
        check_real("degrees", self.degrees, 0.0, strict=False, maximum=180.0)
        check_real("translate", self.translate, 0.0, strict=False, maximum=1.0)

    def matrices(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Random affine matrices ``[n, 2, 3]`` mapping output to input coordinates in [-1, 1]."""
        u = torch.rand(n, 5, generator=generator)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * u[:, 1]
        aspect = torch.exp(log_r)
        # Crop width and height as fractions of the image; clamp so the crop fits.
        w = torch.sqrt(area * aspect).clamp(max=1.0)
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        # Crop centre anywhere the crop stays inside the image, then an extra small shift.
        cx = (1 - w) * (2 * u[:, 2] - 1) + self.translate * 2 * (2 * torch.rand(n, generator=generator) - 1)
        cy = (1 - h) * (2 * u[:, 3] - 1) + self.translate * 2 * (2 * torch.rand(n, generator=generator) - 1)
        angle = math.radians(self.degrees) * (2 * u[:, 4] - 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # input = R(angle) @ diag(w, h) @ output + centre
        theta = torch.stack(
            [torch.stack([cos * w, -sin * h, cx], dim=1), torch.stack([sin * w, cos * h, cy], dim=1)],
            dim=1,
        )
        return theta

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, size: int | None = None) -> Tensor:
        """Augment a batch ``x`` of shape [N, C, H, W].

        Returns a new float tensor ``[N, C, H, W]``, or ``[N, C, size, size]`` if ``size`` is given:
        the same random crops, rendered at that many pixels a side (multi-crop's small views).
        """
        x = _batch_of_images(x)
        return self.render(x, self.matrices(x.shape[0], generator), size)

    def render(self, x: Tensor, theta: Tensor, size: int | None = None) -> Tensor:
        """Warp ``x`` [N, C, H, W] by affine matrices ``theta`` [N, 2, 3] (from :meth:`matrices`).

        The output is ``[N, C, H, W]``, or ``[N, C, size, size]``: the output square [-1, 1]^2 maps
        onto the crop ``theta`` describes in the input, whatever the number of pixels it is sampled
        with. Bilinear sampling, zeros outside the image.
        """
        x = _batch_of_images(x)
        if not isinstance(theta, Tensor) or tuple(theta.shape) != (x.shape[0], 2, 3):
            raise ValueError(f"theta must have shape [{x.shape[0]}, 2, 3], got {tuple(getattr(theta, 'shape', ()))}")
        side = None if size is None else check_int("size", size, 1)
        shape = list(x.shape) if side is None else [*x.shape[:2], side, side]
        grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), shape, align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def two_views(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Two independently augmented views of every image in ``x``."""
        return self(x, generator), self(x, generator)

    def views(self, x: Tensor, n_views: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """``n_views`` independently augmented views of ``x`` [N, C, H, W], each ``[N, C, H, W]``.

        The training loop's call (:func:`clbook.training.train_step`); the same draws, in the
        same order, as ``n_views`` calls of the augmentation.
        """
        n_views = check_int("n_views", n_views, 1)
        return [self(x, generator) for _ in range(n_views)]


def _batch_of_images(x: Tensor) -> Tensor:
    """``x`` checked to be a batch of images [N, C, H, W] in [0, 1] (uint8 becomes float32 / 255)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(getattr(x, 'shape', ()))}")
    return check_images("x", x)


@dataclass
class MultiCrop:
    """Multi-crop augmentation (SwAV, Caron et al., 2020; also DINO): a few large views and several small ones.

    Every image gets ``n_global`` global views, random crops covering much of the image
    (``global_augment``), rendered at the input's size, and ``n_local`` local views, small crops
    (``local_augment``, a few tenths of the image's area) rendered at only ``local_size`` pixels a
    side. Matching a small crop to a large one asks a representation to recognise a digit from a
    part of it; rendering the small crops at a low resolution is what makes them cheap: a 14x14
    view costs a convolutional encoder about a quarter of a 28x28 one. A local crop of 10-40 % of a
    28x28 digit spans about 9 to 18 of its pixels a side, so 14 pixels keep roughly its own
    resolution (bilinear sampling needs no anti-aliasing there).

    Parameters
    ----------
    global_augment : DigitAugment, default scale (0.4, 1.0), 20 degrees, 0.1 translation
        The crops of the global views (the settings of :data:`SIMCLR_AUGMENT`).
    local_augment : DigitAugment, default scale (0.1, 0.4), 20 degrees, 0.1 translation
        The crops of the local views.
    n_global : int, default 2
        At least 1.
    n_local : int, default 4
        At least 0.
    local_size : int, default 14
        Side of the local views in pixels.

    Attributes
    ----------
    n_views : int
        ``n_global + n_local``, the views a method must ask for (``method.n_views``).
    """

    global_augment: DigitAugment = field(
        default_factory=lambda: DigitAugment(scale=(0.4, 1.0), degrees=20.0, translate=0.1))
    local_augment: DigitAugment = field(
        default_factory=lambda: DigitAugment(scale=(0.1, 0.4), degrees=20.0, translate=0.1))
    n_global: int = 2
    n_local: int = 4
    local_size: int = 14

    def __post_init__(self) -> None:
        for name in ("global_augment", "local_augment"):
            if not isinstance(getattr(self, name), DigitAugment):
                raise ValueError(f"{name} must be a DigitAugment, got {type(getattr(self, name)).__name__}")
        self.n_global = check_int("n_global", self.n_global, 1)
        self.n_local = check_int("n_local", self.n_local, 0)
        self.local_size = check_int("local_size", self.local_size, 1)

    @property
    def n_views(self) -> int:
        return self.n_global + self.n_local

    def views(self, x: Tensor, n_views: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """The multi-crop views of a batch ``x`` [B, C, H, W].

        Returns a list of ``n_global`` global views ``[B, C, H, W]`` followed by ``n_local`` local
        views ``[B, C, local_size, local_size]``, all float, drawn in that order from ``generator``.
        ``n_views`` must equal ``n_global + n_local`` (the method's ``n_views``).
        """
        if n_views != self.n_views:
            raise ValueError(f"this MultiCrop makes {self.n_global} + {self.n_local} = {self.n_views} views, "
                             f"but {n_views} were asked for (the method's n_views)")
        x = _batch_of_images(x)
        out = [self.global_augment(x, generator) for _ in range(self.n_global)]
        out += [self.local_augment(x, generator, size=self.local_size) for _ in range(self.n_local)]
        return out


# Strong enough that SimCLR cannot solve its task by matching pixels.
SIMCLR_AUGMENT = DigitAugment(scale=(0.4, 1.0), degrees=20.0, translate=0.1)
# Mild: with labels SupCon needs no hard pretext task, only some invariance.
LIGHT_AUGMENT = DigitAugment(scale=(0.8, 1.0), degrees=10.0, translate=0.05)


# ----------------------------------------------------------------------------- speech-like sequences (CPC)


@dataclass(frozen=True)
class SpeechSequences:
    """Sequences from :func:`make_speech_sequences`, with the factors that generated them.

    Unpacks as ``x, speaker, phoneme = make_speech_sequences(...)``.

    Attributes
    ----------
    x : Tensor, shape [N, 1, T], float32
        The signals, one channel.
    speaker : Tensor, shape [N], int64
        Who says each sequence, in ``[0, n_speakers)``.
    phoneme : Tensor, shape [N, T], int64
        The phoneme at every time step, in ``[0, n_phonemes)``.
    period : Tensor, shape [n_speakers], float64
        Each speaker's pitch period (samples between glottal pulses, on average).
    scale : Tensor, shape [n_speakers], float64
        Each speaker's vocal-tract factor: the phonemes' formant frequencies are multiplied by it.
    radius : Tensor, shape [n_speakers], float64
        Pole radius of each speaker's resonators (closer to 1: sharper formants, longer ringing).
    formants : Tensor, shape [n_phonemes, 2], float64
        Each phoneme's two formant frequencies, in cycles per sample.
    """

    x: Tensor
    speaker: Tensor
    phoneme: Tensor
    period: Tensor
    scale: Tensor
    radius: Tensor
    formants: Tensor

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.x, self.speaker, self.phoneme))


# Ranges of the generating factors (cycles per sample for frequencies, samples for periods).
_PITCH_PERIOD = (8.0, 16.0)
_TRACT_SCALE = (0.9, 1.1)
_POLE_RADIUS = (0.90, 0.96)
_FORMANT_1 = (0.04, 0.15)
_FORMANT_2 = (0.18, 0.40)


def make_speech_sequences(n_speakers: int = 8, n_sequences: int = 1024, length: int = 1024, seed: int = 0, *,
                          n_phonemes: int = 8, segment: tuple[int, int] = (96, 288), noise: float = 0.3,
                          jitter: float = 0.1) -> SpeechSequences:
    """Speech-like sequences with known factors: speakers saying phonemes, for CPC (notebook 11).

    A source-filter model, the textbook model of voiced speech, at CPU scale. Each speaker is a
    small dynamical system: a train of glottal pulses (one every ``period`` samples, each gap
    jittered by a factor ``1 + jitter * N(0, 1)``) drives two resonators, second-order recursions
    ``y_t = 2 r cos(2 pi f) y_{t-1} - r^2 y_{t-2} + pulse_t`` whose frequencies f are the current
    phoneme's two formants times the speaker's vocal-tract ``scale``, with the speaker's pole
    ``radius`` r. The resonators' state carries over when the phoneme changes. A sequence says
    phonemes one after the other, each held for a duration drawn uniformly from ``segment`` (two
    consecutive phonemes differ); its signal is the sum of the two resonators, standardized to
    zero mean and unit variance, plus white noise of standard deviation ``noise``.

    So the speaker (pitch, formant scale, sharpness) is constant over a sequence: slow. The
    phoneme changes every few dozen to few hundred steps. The noise changes at every step and
    carries nothing: only what is shared across time is worth predicting.

    Factors are drawn from ``seed``: pitch periods uniform in [8, 16] samples, tract scales in
    [0.9, 1.1], radii in [0.90, 0.96]; formants spread over [0.04, 0.15] and [0.18, 0.40]
    cycles per sample (each phoneme in its own slice of each range, in a random pairing, so no
    two phonemes share a formant). Speakers are balanced: sequence i is said by a speaker of a
    random permutation of ``i mod n_speakers``.

    Parameters
    ----------
    n_speakers : int, default 8
    n_sequences : int, default 1024
    length : int, default 1024
        T, samples per sequence.
    seed : int, default 0
        Same seed, same factors and same sequences (NumPy's ``default_rng``).
    n_phonemes : int, default 8
        At least 2.
    segment : (int, int), default (96, 288)
        Shortest and longest duration of a phoneme, in samples.
    noise : float, default 0.3
        Standard deviation of the additive white noise (the clean signal has unit variance).
    jitter : float in [0, 0.5], default 0.1
        Relative standard deviation of the gaps between pulses (gaps are kept at least 1 sample).

    Returns
    -------
    SpeechSequences
        ``x`` [N, 1, T] float32, ``speaker`` [N] and ``phoneme`` [N, T] int64, and the factors.
    """
    n_speakers = check_int("n_speakers", n_speakers, 1)
    n_sequences = check_int("n_sequences", n_sequences, 1)
    length = check_int("length", length, 1)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    n_phonemes = check_int("n_phonemes", n_phonemes, 2)
    if not isinstance(segment, (tuple, list)) or len(segment) != 2:
        raise ValueError(f"segment must be a pair (shortest, longest) of positive integers, got {segment!r}")
    shortest, longest = check_int("segment[0]", segment[0], 1), check_int("segment[1]", segment[1], 1)
    if shortest > longest:
        raise ValueError(f"segment must be (shortest, longest) with shortest <= longest, got {tuple(segment)}")
    noise = check_real("noise", noise, 0.0, strict=False)
    jitter = check_real("jitter", jitter, 0.0, strict=False, maximum=0.5)

    rng = np.random.default_rng(seed)
    period = rng.uniform(*_PITCH_PERIOD, n_speakers)
    scale = rng.uniform(*_TRACT_SCALE, n_speakers)
    radius = rng.uniform(*_POLE_RADIUS, n_speakers)
    slots = [(rng.permutation(n_phonemes) + rng.uniform(size=n_phonemes)) / n_phonemes for _ in range(2)]
    formants = np.stack([lo + (hi - lo) * u for (lo, hi), u in zip((_FORMANT_1, _FORMANT_2), slots)], axis=1)
    n, T = n_sequences, length
    speaker = rng.permutation(np.arange(n) % n_speakers)

    # Phonemes: segments of random durations, each different from the one before.
    phoneme = np.empty((n, T), dtype=np.int64)
    for i in range(n):
        t, previous = 0, -1
        while t < T:
            duration = int(rng.integers(shortest, longest + 1))
            p = int(rng.integers(n_phonemes - (previous >= 0)))
            p += previous >= 0 and p >= previous  # skip the previous phoneme
            phoneme[i, t : t + duration] = previous = p
            t += duration

    # Glottal pulses: jittered gaps around the speaker's period, a random phase at the start.
    per = period[speaker]  # [N]
    n_pulses = int(T / (_PITCH_PERIOD[0] * 0.5)) + 2  # gaps are at least half the shortest period
    gaps = np.maximum(per[:, None] * (1 + jitter * rng.standard_normal((n, n_pulses))), 1.0)
    times = np.rint(np.cumsum(gaps, axis=1) - rng.uniform(size=n)[:, None] * per[:, None]).astype(np.int64)
    pulses = np.zeros((n, T))
    rows = np.repeat(np.arange(n), n_pulses)
    inside = (times.ravel() >= 0) & (times.ravel() < T)
    pulses[rows[inside], times.ravel()[inside]] = 1.0

    # The two resonators, with time-varying coefficients (the formants of the phoneme said at t).
    r = radius[speaker][:, None]  # [N, 1]
    omega = 2 * np.pi * formants[phoneme] * scale[speaker][:, None, None]  # [N, T, 2]
    a1, a2 = 2 * r[..., None] * np.cos(omega), -(r**2)[..., None]  # [N, T, 2], [N, 1, 1]
    y1, y2 = np.zeros((n, 2)), np.zeros((n, 2))  # y_{t-1}, y_{t-2} of both resonators
    clean = np.empty((n, T))
    for t in range(T):
        y = a1[:, t] * y1 + a2[:, 0] * y2 + pulses[:, t, None]
        y1, y2 = y, y1
        clean[:, t] = y.sum(axis=1)
    std = clean.std(axis=1, keepdims=True)
    clean = (clean - clean.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    x = clean + noise * rng.standard_normal((n, T))
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return SpeechSequences(
        x=torch.from_numpy(x.astype(np.float32)).unsqueeze(1),
        speaker=as_tensor(speaker.astype(np.int64)),
        phoneme=as_tensor(phoneme),
        period=as_tensor(period),
        scale=as_tensor(scale),
        radius=as_tensor(radius),
        formants=as_tensor(formants),
    )


# ----------------------------------------------------------------------------- views of a digit (CMC, notebook 12)

#: The parts :func:`digit_views` cuts a digit into, in order.
VIEW_PARTS = {
    "halves": ("left", "right"),
    "quadrants": ("top-left", "top-right", "bottom-left", "bottom-right"),
}


def digit_views(x: Tensor, parts: str = "quadrants", flat: bool = False) -> list[Tensor]:
    """Disjoint crops of every digit: the views of Contrastive Multiview Coding in notebook 12.

    Parameters
    ----------
    x : Tensor, shape [N, C, H, W]
        Images (float in [0, 1], or ``uint8``, divided by 255); H and W even.
    parts : {"halves", "quadrants"}
        ``"halves"``: the left and the right half, each ``[N, C, H, W/2]``. ``"quadrants"``: the
        top-left, top-right, bottom-left and bottom-right quarter, each ``[N, C, H/2, W/2]``
        (:data:`VIEW_PARTS` names them in this order).
    flat : bool, default False
        Return each view flattened, ``[N, C * h * w]`` (for a fully connected encoder).

    Returns
    -------
    list of Tensor
        New tensors (copies: changing one leaves ``x`` alone). No pixel belongs to two views, so
        what two views share is what the whole digit implies for both: its identity, and the
        writer's style (slant, stroke width, position).
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(getattr(x, 'shape', ()))}")
    x = check_images("x", x)
    if parts not in VIEW_PARTS:
        raise ValueError(f"parts must be one of {sorted(VIEW_PARTS)}, got {parts!r}")
    h, w = x.shape[2], x.shape[3]
    if h % 2 or w % 2:
        raise ValueError(f"digit_views needs an even height and width, got {h} x {w}")
    flat = check_bool("flat", flat)
    if parts == "halves":
        views = [x[..., : w // 2], x[..., w // 2 :]]
    else:
        top, bottom = x[:, :, : h // 2], x[:, :, h // 2 :]
        views = [top[..., : w // 2], top[..., w // 2 :], bottom[..., : w // 2], bottom[..., w // 2 :]]
    copies = [v.clone(memory_format=torch.contiguous_format) for v in views]  # never a view into x
    return [v.flatten(1) for v in copies] if flat else copies


# ----------------------------------------------------------------------------- captions of digits (CLIP, notebook 12)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Style, measured on the image (thresholds chosen on the shipped training digits so that each
# phrase describes roughly a third of them, about evenly across classes).
_SLANT_LEFT, _SLANT_RIGHT = -0.05, 0.25  # shear -mu11 / mu02 of the ink; > 0: the top leans right
_THIN, _THICK = 1.75, 2.3  # stroke width in pixels, 2 * area / perimeter of the pixels above 0.5

_SLANT_PHRASES = {
    "left": ("slanted to the left", "leaning left", "tilted to the left", "leaning backwards"),
    "upright": ("upright", "standing straight", "written straight up", "not slanted"),
    "right": ("slanted to the right", "leaning right", "tilted to the right", "in italics"),
}
_WIDTH_WORDS = {"thin": ("thin", "light", "fine", "skinny"), "regular": ("",),
                "thick": ("thick", "bold", "heavy", "fat")}
_NOUNS = ("digit", "number", "numeral", "figure")
# {name}: the digit's name; {slant}: a slant phrase; {width}: a stroke word (maybe empty); {noun}.
CAPTION_TEMPLATES = (
    "a handwritten {name}, {slant}",
    "a {width} {name} written by hand",
    "{name}, {width} strokes, {slant}",
    "someone wrote a {name}",
    "this is a {name}",
    "the {noun} {name}, {slant}",
    "a {width} handwritten {name} {slant}",
    "scribbled {noun}: {name}",
    "{slant}, a {width} {name}",
    "my {name} is {slant}",
)
_FILLERS = ("probably", "i think", "quickly", "messy", "in ink", "on paper", "again", "here")
_WORD = re.compile(r"[a-z0-9]+")
#: The words of the captions and prompts of :func:`make_captions` (plus the numerals): the text encoder's vocabulary.
CAPTION_VOCAB = tuple(sorted(
    {w for t in CAPTION_TEMPLATES for w in _WORD.findall(re.sub(r"\{\w+\}", " ", t))}
    | {w for group in (*_SLANT_PHRASES.values(), *_WIDTH_WORDS.values(), ("regular",), _NOUNS, _FILLERS, DIGIT_WORDS)
       for phrase in group for w in _WORD.findall(phrase)}
    | {str(d) for d in range(10)}))
#: Ids of :func:`tokenize_text`: 0 padding, 1 a word outside :data:`CAPTION_VOCAB`, then the vocabulary.
TEXT_VOCAB_SIZE = len(CAPTION_VOCAB) + 2

def digit_style(x: Tensor) -> tuple[list[str], list[str]]:
    """Slant (``"left"``, ``"upright"``, ``"right"``) and stroke (``"thin"``, ``"regular"``, ``"thick"``) of digits.

    Slant is the shear of the ink, ``-mu11 / mu02`` (second-order central moments, rows growing
    downwards): positive when the top of the digit lies to the right of its bottom. Stroke width is
    ``2 * area / perimeter`` of the pixels above 0.5 (a stroke of length l and width w has area
    l w and perimeter about 2 l).

    Parameters
    ----------
    x : Tensor, shape [N, 1, H, W]

    Returns
    -------
    (list of str, list of str), each of length N
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape [N, 1, H, W], got {tuple(getattr(x, 'shape', ()))}")
    img = check_images("x", x)[:, 0].float()
    _, h, w = img.shape
    rows = torch.arange(h, dtype=img.dtype).view(1, h, 1)
    cols = torch.arange(w, dtype=img.dtype).view(1, 1, w)
    mass = img.sum((1, 2)).clamp_min(1e-6)  # a blank image: no slant, no stroke
    dy = rows - ((img * rows).sum((1, 2)) / mass).view(-1, 1, 1)
    dx = cols - ((img * cols).sum((1, 2)) / mass).view(-1, 1, 1)
    shear = -(img * dx * dy).sum((1, 2)) / (img * dy * dy).sum((1, 2)).clamp_min(1e-6)
    on = (img > 0.5).float()
    perimeter = (on[:, 1:] != on[:, :-1]).sum((1, 2)) + (on[:, :, 1:] != on[:, :, :-1]).sum((1, 2))
    width = 2 * on.sum((1, 2)) / perimeter.clamp_min(1)
    slant = ["left" if s < _SLANT_LEFT else "right" if s > _SLANT_RIGHT else "upright" for s in shear.tolist()]
    stroke = ["thin" if v < _THIN else "thick" if v > _THICK else "regular" for v in width.tolist()]
    return slant, stroke


def _typo(text: str, rng: np.random.Generator) -> str:
    """One random typing error: a character dropped, doubled, swapped with the next, or replaced."""
    if len(text) < 3:
        return text
    i = int(rng.integers(0, len(text) - 1))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return text[:i] + text[i + 1:]
    if kind == 1:
        return text[:i] + text[i] + text[i:]
    if kind == 2:
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    return text[:i] + "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(0, 26))] + text[i + 1:]


def make_captions(
    x: Tensor,
    y: Tensor,
    seed: int = 0,
    *,
    per_image: int = 1,
    templates: tuple[str, ...] = CAPTION_TEMPLATES,
    numeral: float = 0.3,
    typo: float = 0.15,
    filler: float = 0.2,
    wrong_digit: float = 0.05,
) -> list[list[str]]:
    """Captions in words for digits, as a noisy web crawl might pair them with the images (notebook 12).

    Each caption fills a template drawn at random with the digit's name (its word, ``"seven"``, or
    with probability ``numeral`` its numeral, ``"7"``), a phrase for its measured slant and a word
    for its stroke width (:func:`digit_style`), each drawn from several synonyms. Then noise: with
    probability ``filler`` a filler word is inserted, with probability ``typo`` a typing error
    (:func:`_typo`), and with probability ``wrong_digit`` the caption names another digit,
    drawn uniformly. Some templates name neither slant nor stroke, so two images of one digit
    often get the same caption, and one image gets many different ones.

    Parameters
    ----------
    x : Tensor, shape [N, 1, H, W]
        The digits, for their style.
    y : Tensor, shape [N]
        Their labels in 0..9.
    seed : int
        The captions are a deterministic function of ``(x, y, seed)`` and the options.
    per_image : int, default 1
        Captions per image.
    templates : tuple of str
        With fields ``{name}``, ``{slant}``, ``{width}`` and ``{noun}`` (each optional).
    numeral, typo, filler, wrong_digit : float in [0, 1]
        Probabilities of the variations above.

    Returns
    -------
    list of N lists of ``per_image`` str, lower-case.
    """
    from clbook.checks import check_probability

    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != getattr(x, "shape", (None,))[0]:
        raise ValueError("y must be a tensor of labels [N], one per image of x")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ValueError(f"labels must be digits 0..9, got values in [{int(y.min())}, {int(y.max())}]")
    per_image = check_int("per_image", per_image, 1)
    numeral, typo, filler, wrong_digit = (check_probability(name, value) for name, value in
                                          (("numeral", numeral), ("typo", typo), ("filler", filler),
                                           ("wrong_digit", wrong_digit)))
    if not templates or not all(isinstance(t, str) for t in templates):
        raise ValueError("templates must be a non-empty tuple of strings")
    seed = check_int("seed", seed, 0, 2**32 - 1)
    slants, strokes = digit_style(x)
    rng = np.random.default_rng(seed)

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    out = []
    for label, slant, stroke in zip(y.tolist(), slants, strokes):
        captions = []
        for _ in range(per_image):
            digit = label
            if rng.random() < wrong_digit:
                digit = int((label + rng.integers(1, 10)) % 10)  # another digit, uniformly
            name = str(digit) if rng.random() < numeral else DIGIT_WORDS[digit]
            template = templates[int(rng.integers(len(templates)))]
            width = pick(_WIDTH_WORDS[stroke]) or ("regular" if "{width} strokes" in template else "")
            text = template.format(name=name, slant=pick(_SLANT_PHRASES[slant]), width=width, noun=pick(_NOUNS))
            words = text.split()  # also drops the double spaces of an empty {width}
            if rng.random() < filler:
                words.insert(int(rng.integers(0, len(words) + 1)), pick(_FILLERS))
            text = " ".join(words)
            if rng.random() < typo:
                text = _typo(text, rng)
            captions.append(text)
        out.append(captions)
    return out


def tokenize_text(texts: list[str], length: int = 16, vocab: tuple[str, ...] = CAPTION_VOCAB) -> Tensor:
    """Texts as word ids ``[M, length]`` (int64) for :class:`clbook.encoders.BagOfWordsEncoder`.

    Words are the runs of letters and digits of the lower-cased text (punctuation separates them).
    Word ``vocab[k]`` gets id ``k + 2``, any other word (a typo, say) 1, and the rest of the row 0
    (padding). Texts of more than ``length`` words are cut; a text without a word is refused.
    """
    length = check_int("length", length, 1)
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    index = {w: k + 2 for k, w in enumerate(vocab)}
    out = torch.zeros(len(texts), length, dtype=torch.int64)
    for row, text in enumerate(texts):
        ids = [index.get(w, 1) for w in _WORD.findall(text.lower())][:length]
        if not ids:
            raise ValueError(f"texts[{row}] has no word: {text!r}")
        out[row, : len(ids)] = torch.tensor(ids)
    return out
