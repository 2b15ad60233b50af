"""The course's experiments as functions, shared by notebooks 04-06 and ``python -m clbook``.

One call trains or builds an encoder, one call evaluates it; :func:`reproduce` runs the whole
results table. The notebooks call the same functions, so their numbers and the command line's
cannot drift apart.

Typical use::

    split = load_mnist()                                    # official or shipped data
    encoder, history = train_mnist_encoder("cnn", "supcon", split, seed=0)
    twin = random_encoder("cnn", seed=0)                    # same architecture, untrained
    feats = extract_features(encoder, split.X_test)         # [2000, 128]
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn

from clbook.data import LIGHT_AUGMENT, SIMCLR_AUGMENT, Split, load_iris, load_mnist, train_val_split
from clbook.encoders import ProjectionHead, make_encoder
from clbook.methods import SwAV, make_method
from clbook.training import History, evaluate_frozen, extract_features, pretrain, set_seed, single_thread

__all__ = [
    "Result",
    "IRIS_CONFIG",
    "MNIST_CONFIGS",
    "MNIST_SEEDS",
    "MNIST_ROWS",
    "random_encoder",
    "train_iris_encoder",
    "train_mnist_encoder",
    "train_mnist_swav",
    "evaluate_encoder",
    "combine_seeds",
    "run_iris",
    "run_mnist",
    "reproduce",
    "format_table",
]

# Pre-training settings. The epoch counts are upper bounds: pretrain() keeps the epoch with the
# best validation kNN accuracy, on a validation part carved from the training digits. SimCLR's
# temperature was picked among 0.2, 0.3 and 0.5 the same way (best validation kNN, seed 0).
IRIS_CONFIG = dict(epochs=150, batch_size=256, lr=1e-3, temperature=0.1)
MNIST_CONFIGS = {
    ("cnn", "supcon"): dict(epochs=15, batch_size=256, lr=1e-3, temperature=0.1, augment=LIGHT_AUGMENT),
    ("cnn", "simclr"): dict(epochs=15, batch_size=512, lr=1e-3, temperature=0.2, augment=SIMCLR_AUGMENT),
    ("fc", "supcon"): dict(epochs=15, batch_size=256, lr=1e-3, temperature=0.1, augment=LIGHT_AUGMENT),
    # SwAV: K = 10 prototypes, 3 Sinkhorn iterations, a head with BatchNorm (without it, and with
    # SimCLR's stronger augmentation, the codes stayed near uniform for several epochs on seed 0).
    ("cnn", "swav"): dict(epochs=12, batch_size=256, lr=1e-3, temperature=0.1, augment=LIGHT_AUGMENT,
                          head=dict(batch_norm=True),
                          method_options=dict(n_prototypes=10, epsilon=0.05, sinkhorn_iterations=3, freeze_epochs=1)),
}
# Seeds per MNIST row. SimCLR's CNN beats its random twin by only a few points, so that
# comparison is repeated over three seeds; the SupCon gaps are several times larger.
MNIST_SEEDS = {("cnn", "simclr"): (0, 1, 2), ("cnn", "random"): (0, 1, 2)}
# The rows of `python -m clbook reproduce` after Iris, in order, and their epochs with --quick.
MNIST_ROWS = [("cnn", "supcon"), ("cnn", "simclr"), ("cnn", "random"), ("fc", "supcon"), ("fc", "random"),
              ("cnn", "swav")]
QUICK_EPOCHS = {("cnn", "supcon"): 2, ("cnn", "simclr"): 3, ("fc", "supcon"): 3, ("cnn", "swav"): 2}
MNIST_VAL_SIZE = 1000  # digits of the training part set aside to choose the epoch
MNIST_MONITOR_REF = 3000  # training digits used as kNN reference while monitoring


@dataclass
class Result:
    """One row of the results table (the JSON written by ``python -m clbook reproduce``).

    ``linear_acc`` and ``knn_acc`` are fractions in [0, 1] on the held-out split; for rows over
    several seeds they are means; ``linear_std``, ``knn_std``, ``n_seeds`` and the per-seed
    lists ``linear_all``, ``knn_all`` (not part of the JSON) say how much they vary.
    """

    dataset: str
    encoder: str
    method: str
    linear_acc: float
    knn_acc: float
    seconds: float
    data: str
    linear_std: float = 0.0
    knn_std: float = 0.0
    n_seeds: int = 1
    linear_all: list[float] = field(default_factory=list)
    knn_all: list[float] = field(default_factory=list)

    def row(self) -> dict:
        """The JSON row: dataset, encoder, method, linear_acc, knn_acc, seconds, data."""
        d = asdict(self)
        return {k: d[k] for k in ("dataset", "encoder", "method", "linear_acc", "knn_acc", "seconds", "data")}


def random_encoder(kind: str, seed: int = 0) -> nn.Module:
    """An untrained encoder in eval mode: the "random twin" of a trained one with the same seed."""
    return make_encoder(kind, seed=seed).eval()


def _check_method(method: str) -> None:
    known = sorted({m for _, m in MNIST_CONFIGS} | {"random"})
    if method not in known:
        raise ValueError(f"unknown method {method!r}; use one of {known}")


def train_iris_encoder(split: Split, seed: int = 0, progress: bool = False, **overrides) -> tuple[nn.Module, History]:
    """SupCon-pretrain the Iris MLP on ``split.X_train`` (epoch chosen on a validation part)."""
    cfg = {**IRIS_CONFIG, **overrides}
    set_seed(seed)
    X_fit, y_fit, X_val, y_val = train_val_split(split.X_train, split.y_train, 0.2, seed)
    encoder = make_encoder("mlp", seed=seed)
    head = ProjectionHead(encoder.out_dim, 32, 16)
    with single_thread():  # a 4-64-64-16 MLP on 84 rows: threads only add overhead
        history = pretrain(encoder, head, X_fit, y_fit, method="supcon", val=(X_fit, y_fit, X_val, y_val),
                           knn_k=5, seed=seed, progress=progress, **cfg)
    return encoder, history


def train_mnist_encoder(
    kind: str = "cnn",
    method: str = "supcon",
    split: Split | None = None,
    seed: int = 0,
    progress: bool = True,
    **overrides,
) -> tuple[nn.Module, History]:
    """Pre-train a CNN or FC encoder on MNIST's training part and return it (eval mode).

    Parameters
    ----------
    kind : {"cnn", "fc"}
    method : {"supcon", "simclr"}
        SupCon uses labels and light augmentation; SimCLR uses no labels and strong augmentation.
    split : Split, optional
        Loaded with :func:`clbook.data.load_mnist` if omitted.
    seed : int
        Seeds weights, batch order and augmentations.
    progress : bool
        tqdm progress bar.
    **overrides
        Replace entries of ``MNIST_CONFIGS[(kind, method)]`` (e.g. ``epochs=2`` for a quick run).
        A ``head`` entry holds keyword arguments of the :class:`ProjectionHead` (e.g.
        ``head=dict(batch_norm=True)`` for SwAV); the rest go to :func:`pretrain`.

    Returns
    -------
    encoder : nn.Module
        Weights of the epoch with the best validation kNN accuracy; validation digits
        (``MNIST_VAL_SIZE`` of them) come from the training part, never from the held-out part.
    history : History
    """
    if (kind, method) not in MNIST_CONFIGS:
        raise ValueError(f"no MNIST config for encoder {kind!r} with method {method!r}; "
                         f"choose from {sorted(MNIST_CONFIGS)}")
    split = split if split is not None else load_mnist()
    cfg = {**MNIST_CONFIGS[(kind, method)], **overrides}
    set_seed(seed)
    X_fit, y_fit, X_val, y_val = train_val_split(split.X_train, split.y_train, MNIST_VAL_SIZE, seed)
    encoder = make_encoder(kind, seed=seed)
    head = ProjectionHead(encoder.out_dim, 128, 64, **cfg.pop("head", {}))
    # SimCLR never sees y_fit in its loss; the labels are used only to monitor validation kNN.
    # Monitoring against a subset of the training digits costs less and ranks epochs the same.
    ref = slice(0, MNIST_MONITOR_REF)
    history = pretrain(encoder, head, X_fit, y_fit, method=method,
                       val=(X_fit[ref], y_fit[ref], X_val, y_val), seed=seed, progress=progress, **cfg)
    return encoder, history


def train_mnist_swav(
    kind: str = "cnn",
    split: Split | None = None,
    seed: int = 0,
    progress: bool = True,
    **overrides,
) -> tuple[nn.Module, History, nn.Module, SwAV]:
    """SwAV-pretrain an MNIST encoder like :func:`train_mnist_encoder`, keeping head and prototypes.

    Same data, seeds and settings (``MNIST_CONFIGS[(kind, "swav")]``, with ``overrides``) as
    ``train_mnist_encoder(kind, "swav", ...)``, hence the same encoder; it also returns what that
    function throws away, so that held-out digits can be assigned to prototypes
    (``method.assign(encoder, head, X)``). ``overrides["method_options"]`` updates the configured
    options rather than replacing them.

    Returns
    -------
    encoder : nn.Module
        Weights of the epoch with the best validation kNN accuracy, eval mode.
    history : History
    head : nn.Module
        The projection head of the same epoch as the encoder, eval mode.
    method : SwAV
        Holds the prototypes, also of that epoch.
    """
    if (kind, "swav") not in MNIST_CONFIGS:
        raise ValueError(f"no SwAV config for encoder {kind!r}; choose from {sorted(MNIST_CONFIGS)}")
    split = split if split is not None else load_mnist()
    cfg = {**MNIST_CONFIGS[(kind, "swav")], **overrides}
    options = {**MNIST_CONFIGS[(kind, "swav")].get("method_options", {}), **cfg.pop("method_options", {})}
    method = make_method("swav", cfg["temperature"], **options)
    set_seed(seed)
    X_fit, y_fit, X_val, y_val = train_val_split(split.X_train, split.y_train, MNIST_VAL_SIZE, seed)
    encoder = make_encoder(kind, seed=seed)
    head = ProjectionHead(encoder.out_dim, 128, 64, **cfg.pop("head", {}))
    ref = slice(0, MNIST_MONITOR_REF)
    # pretrain keeps the encoder of the best validation epoch; keep the head and the prototypes
    # of every epoch too (both are small), so that all three can be returned from the same one.
    snapshots = {}

    def snapshot(_encoder: nn.Module, epoch: int) -> dict:
        snapshots[epoch] = copy.deepcopy((head.state_dict(), method.state_dict()))
        return {}

    history = pretrain(encoder, head, X_fit, y_fit, method=method, val=(X_fit[ref], y_fit[ref], X_val, y_val),
                       seed=seed, progress=progress, on_epoch_end=snapshot, **cfg)
    head_state, method_state = snapshots[history.best_epoch]
    head.load_state_dict(head_state)
    method.load_state_dict(method_state)
    return encoder, history, head.eval(), method


def evaluate_encoder(encoder: nn.Module, split: Split, seed: int = 0) -> dict:
    """Linear probe and kNN of a frozen encoder on ``split`` (see :func:`evaluate_frozen`)."""
    return evaluate_frozen(extract_features(encoder, split.X_train), split.y_train,
                           extract_features(encoder, split.X_test), split.y_test, seed=seed)


def combine_seeds(runs: list[Result]) -> Result:
    """One row from single-seed runs of the same experiment.

    Accuracies become means over the runs with their standard deviations (``np.std``, the spread
    of these runs), ``seconds`` the total, and ``linear_all`` / ``knn_all`` keep every run.
    """
    if not runs:
        raise ValueError("no runs to combine")
    first = runs[0]
    if any((r.dataset, r.encoder, r.method, r.data) != (first.dataset, first.encoder, first.method, first.data)
           for r in runs):
        raise ValueError("runs of different experiments cannot be combined")
    lin = [x for r in runs for x in (r.linear_all or [r.linear_acc])]
    knn = [x for r in runs for x in (r.knn_all or [r.knn_acc])]
    return Result(first.dataset, first.encoder, first.method, float(np.mean(lin)), float(np.mean(knn)),
                  float(sum(r.seconds for r in runs)), first.data, float(np.std(lin)), float(np.std(knn)), len(lin),
                  lin, knn)


def run_iris(method: str = "supcon", seeds=(0, 1, 2, 3, 4), progress: bool = False) -> Result:
    """Iris MLP, SupCon-pretrained or random, probed on a fresh split for every seed.

    Each seed changes the train/test split, the initial weights and the batch order, so the
    standard deviation covers all three sources of variation.
    """
    _check_method(method)
    if method == "simclr":
        raise ValueError("the Iris experiment compares 'supcon' and 'random' only")
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        split = load_iris(seed=seed)
        if method == "supcon":
            encoder, _ = train_iris_encoder(split, seed=seed, progress=progress)
        else:
            encoder = random_encoder("mlp", seed=seed)
        scores = evaluate_encoder(encoder, split, seed=seed)
        runs.append(Result("iris", "mlp", method, scores["linear_acc"], scores["knn_acc"],
                           time.perf_counter() - start, "iris-sklearn"))
    return combine_seeds(runs)


def run_mnist(
    kind: str, method: str, split: Split, seed: int = 0, progress: bool = True, **overrides
) -> tuple[Result, nn.Module, History | None]:
    """Train (or build, for ``method="random"``) one MNIST encoder and evaluate it.

    Returns
    -------
    result : Result
    encoder : nn.Module
    history : History or None
        None for a random encoder.
    """
    _check_method(method)
    start = time.perf_counter()
    if method == "random":
        encoder, history = random_encoder(kind, seed=seed), None
    else:
        encoder, history = train_mnist_encoder(kind, method, split, seed=seed, progress=progress, **overrides)
    scores = evaluate_encoder(encoder, split, seed=seed)
    result = Result("mnist", kind, method, scores["linear_acc"], scores["knn_acc"],
                    time.perf_counter() - start, split.source,
                    linear_all=[scores["linear_acc"]], knn_all=[scores["knn_acc"]])
    return result, encoder, history


def reproduce(quick: bool = False, progress: bool = False, split: Split | None = None) -> list[Result]:
    """Run every experiment of the results table.

    Parameters
    ----------
    quick : bool
        Few epochs and one seed per row (a smoke test that finishes in about a minute); numbers
        are then below the course's targets.
    progress : bool
        tqdm progress bars during pre-training.
    split : Split, optional
        MNIST data; loaded with :func:`clbook.data.load_mnist` if omitted.
    """
    iris_seeds = (0, 1, 2) if quick else (0, 1, 2, 3, 4)
    results = [run_iris("supcon", iris_seeds, progress=progress), run_iris("random", iris_seeds)]
    split = split if split is not None else load_mnist()
    for kind, method in MNIST_ROWS:
        overrides = {"epochs": QUICK_EPOCHS[(kind, method)]} if quick and method != "random" else {}
        seeds = (0,) if quick else MNIST_SEEDS.get((kind, method), (0,))
        runs = [run_mnist(kind, method, split, seed=seed, progress=progress, **overrides)[0] for seed in seeds]
        results.append(combine_seeds(runs))
    return results


def format_table(results: list[Result]) -> str:
    """Results as a fixed-width text table (accuracies in percent, mean +- std over seeds)."""

    def pct(mean: float, std: float, n: int) -> str:
        return f"{100 * mean:5.1f} +- {100 * std:3.1f}" if n > 1 else f"{100 * mean:5.1f}"

    lines = [f"{'dataset':8} {'encoder':7} {'method':7} {'linear %':>12} {'kNN %':>12} {'seeds':>5} {'seconds':>8}  data",
             "-" * 84]
    for r in results:
        lines.append(f"{r.dataset:8} {r.encoder:7} {r.method:7} {pct(r.linear_acc, r.linear_std, r.n_seeds):>12} "
                     f"{pct(r.knn_acc, r.knn_std, r.n_seeds):>12} {r.n_seeds:>5} {r.seconds:8.1f}  {r.data}")
    return "\n".join(lines)
