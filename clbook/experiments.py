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
import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from clbook.data import LIGHT_AUGMENT, SIMCLR_AUGMENT, Split, load_iris, load_mnist, train_val_split
from clbook.encoders import ProjectionHead, make_encoder
from clbook.losses import nt_xent_loss, supcon_loss
from clbook.methods import SwAV, make_method
from clbook.metrics import alignment, feature_metrics, uniformity
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
    "collapse_monitor",
    "ALIGNMENT_AUGMENT",
    "combine_seeds",
    "run_iris",
    "run_mnist",
    "reproduce",
    "format_table",
    "notes_pretrain",
    "notes_pretrain_many",
    "HeadTrace",
    "notes_linear_head",
]

# Pre-training settings. The epoch counts are upper bounds: pretrain() keeps the epoch with the
# best validation kNN accuracy, on a validation part carved from the training digits. SimCLR's
# temperature was picked among 0.2, 0.3 and 0.5 the same way (best validation kNN, seed 0).
IRIS_CONFIG = dict(epochs=150, batch_size=256, lr=1e-3, temperature=0.1)
MNIST_CONFIGS = {
    ("cnn", "supcon"): dict(epochs=15, batch_size=256, lr=1e-3, temperature=0.1, augment=LIGHT_AUGMENT),
    ("cnn", "simclr"): dict(epochs=15, batch_size=512, lr=1e-3, temperature=0.2, augment=SIMCLR_AUGMENT),
    ("fc", "supcon"): dict(epochs=15, batch_size=256, lr=1e-3, temperature=0.1, augment=LIGHT_AUGMENT),
    # Learning without negatives (notebook 08): strong augmentation, no labels, no negatives. The
    # projection head gets a BatchNorm after its hidden layer (BYOL's projector; SimSiam's has it
    # too): without it, 15 epochs of SimSiam drove the validation kNN from 0.89 down to 0.73.
    ("cnn", "simsiam"): dict(epochs=10, batch_size=256, lr=1e-3, augment=SIMCLR_AUGMENT,
                             head={"batchnorm": True}, method_options={"pred_hidden": 32}),
    ("cnn", "byol"): dict(epochs=12, batch_size=256, lr=1e-3, augment=SIMCLR_AUGMENT,
                          head={"batchnorm": True}, method_options={"pred_hidden": 32, "momentum": 0.99}),
    # SwAV: K = 10 prototypes, 3 Sinkhorn iterations, a head with BatchNorm (without it, and with
    # SimCLR's stronger augmentation, the codes stayed near uniform for several epochs on seed 0).
    ("cnn", "swav"): dict(epochs=12, batch_size=256, lr=1e-3, temperature=0.1, augment=LIGHT_AUGMENT,
                          head=dict(batchnorm=True),
                          method_options=dict(n_prototypes=10, epsilon=0.05, sinkhorn_iterations=3, freeze_epochs=1)),
}
# Negatives beyond the batch (notebook 07). MoCo: a queue of 4,096 keys and key networks with
# momentum 0.99; its temperature was picked among 0.1 and 0.2 by the best validation kNN (seed 0).
# The memory bank is used by notebook 07 only, not by `reproduce`: at the course's budgets it did
# not beat the untrained encoder (see MemoryBankMethod's notes).
MNIST_CONFIGS.update({
    ("cnn", "moco"): dict(epochs=12, batch_size=256, lr=1e-3, temperature=0.2, augment=SIMCLR_AUGMENT,
                          method_options=dict(queue_size=4096, momentum=0.99)),
    ("cnn", "memory_bank"): dict(epochs=12, batch_size=256, lr=1e-3, temperature=0.2, augment=SIMCLR_AUGMENT,
                                 method_options=dict(num_negatives=4096, bank_momentum=0.5)),
})
# Seeds per MNIST row. SimCLR's CNN beats its random twin by only a few points, so that
# comparison is repeated over three seeds; the SupCon gaps are several times larger.
MNIST_SEEDS = {("cnn", "simclr"): (0, 1, 2), ("cnn", "random"): (0, 1, 2), ("cnn", "moco"): (0, 1, 2)}
# The rows of `python -m clbook reproduce` after Iris, in order, and their epochs with --quick.
MNIST_ROWS = [("cnn", "supcon"), ("cnn", "simclr"), ("cnn", "random"), ("fc", "supcon"), ("fc", "random"),
              ("cnn", "moco"), ("cnn", "simsiam"), ("cnn", "byol"), ("cnn", "swav")]
QUICK_EPOCHS = {("cnn", "supcon"): 2, ("cnn", "simclr"): 3, ("fc", "supcon"): 3, ("cnn", "moco"): 3,
                ("cnn", "simsiam"): 2, ("cnn", "byol"): 2, ("cnn", "swav"): 2}
# Methods whose pre-training logs the collapse diagnostics of collapse_monitor every epoch.
MONITORED_METHODS = ("simsiam", "byol")
# Positive pairs for the alignment column: two draws of the strong augmentation of each held-out
# digit, from a fixed generator, the same for every row (so the column compares encoders, not
# augmentations).
ALIGNMENT_AUGMENT = SIMCLR_AUGMENT
ALIGNMENT_SEED = 0
MNIST_VAL_SIZE = 1000  # digits of the training part set aside to choose the epoch
MNIST_MONITOR_REF = 3000  # training digits used as kNN reference while monitoring


@dataclass
class Result:
    """One row of the results table (the JSON written by ``python -m clbook reproduce``).

    ``linear_acc`` and ``knn_acc`` are fractions in [0, 1] on the held-out split; for rows over
    several seeds they are means; ``linear_std``, ``knn_std``, ``n_seeds`` and the per-seed
    lists ``linear_all``, ``knn_all`` (not part of the JSON) say how much they vary.
    ``alignment`` and ``uniformity`` (:mod:`clbook.metrics`, means over seeds) describe the
    held-out features; see :func:`evaluate_encoder`. ``alignment`` is None without an
    augmentation (Iris).
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
    alignment: float | None = None
    uniformity: float | None = None

    def row(self) -> dict:
        """The JSON row: dataset, encoder, method, linear_acc, knn_acc, alignment, uniformity, seconds, data."""
        d = asdict(self)
        return {k: d[k] for k in ("dataset", "encoder", "method", "linear_acc", "knn_acc", "alignment",
                                  "uniformity", "seconds", "data")}


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
    monitor: bool | None = None,
    **overrides,
) -> tuple[nn.Module, History]:
    """Pre-train a CNN or FC encoder on MNIST's training part and return it (eval mode).

    Parameters
    ----------
    kind : {"cnn", "fc"}
    method : {"supcon", "simclr", "moco", "memory_bank", "simsiam", "byol"}
        SupCon uses labels and light augmentation; the others use no labels and strong
        augmentation (see ``MNIST_CONFIGS``); SimSiam and BYOL use no negatives either.
    split : Split, optional
        Loaded with :func:`clbook.data.load_mnist` if omitted.
    seed : int
        Seeds weights, batch order and augmentations.
    progress : bool
        tqdm progress bar.
    monitor : bool, optional
        Log the collapse diagnostics of :func:`collapse_monitor` on the validation digits after
        every epoch, in ``history.metrics``. Default: only for the methods in ``MONITORED_METHODS``.
    **overrides
        Replace entries of ``MNIST_CONFIGS[(kind, method)]`` (e.g. ``epochs=2`` for a quick run,
        ``method_options={"stop_gradient": False}`` for an ablation, ``head={"batchnorm": True}``
        for the projection head's options).

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
    # SimCLR (and MoCo, the memory bank, SimSiam, BYOL) never sees y_fit in its loss; the labels are
    # used only to monitor validation kNN.
    # Monitoring against a subset of the training digits costs less and ranks epochs the same.
    ref = slice(0, MNIST_MONITOR_REF)
    if monitor is None:
        monitor = method in MONITORED_METHODS
    history = pretrain(encoder, head, X_fit, y_fit, method=method,
                       val=(X_fit[ref], y_fit[ref], X_val, y_val), seed=seed, progress=progress,
                       on_epoch_end=collapse_monitor(X_val, seed=seed) if monitor else None, **cfg)
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


def collapse_monitor(X: Tensor, augment=ALIGNMENT_AUGMENT, seed: int = 0, temperature: float = 0.2):
    """An ``on_epoch_end`` callback for :func:`clbook.training.pretrain` logging collapse diagnostics.

    After every epoch it computes, on the encoder's features of ``X`` (e.g. validation digits):
    ``std``, ``uniformity``, ``effective_rank`` (:func:`clbook.metrics.feature_metrics`),
    ``alignment`` between the features of two augmented views of ``X``, and ``nt_xent``, the
    NT-Xent loss of those two views as one batch of N pairs (chance level ``ln(2N - 1)``, which is
    also its value at collapse). The views are drawn once, here, from ``seed``: every epoch sees
    the same pairs, so the curves show the encoder changing, not the draw.

    Parameters
    ----------
    X : Tensor, shape [N, ...]
        Inputs to describe, N >= 2.
    augment : callable, default :data:`ALIGNMENT_AUGMENT`
    seed : int
    temperature : float, default 0.2
        NT-Xent's temperature (SimCLR's on MNIST).

    Returns
    -------
    callable
        ``(encoder, epoch) -> dict of str -> float``.
    """
    gen = torch.Generator().manual_seed(seed)
    v1, v2 = augment(X, gen), augment(X, gen)

    def on_epoch_end(encoder: nn.Module, epoch: int) -> dict[str, float]:
        f1, f2 = extract_features(encoder, v1), extract_features(encoder, v2)
        return feature_metrics(extract_features(encoder, X)) | {
            "alignment": alignment(f1, f2), "nt_xent": nt_xent_loss(f1, f2, temperature).item()}

    return on_epoch_end


def evaluate_encoder(encoder: nn.Module, split: Split, seed: int = 0, augment=None) -> dict:
    """Linear probe and kNN of a frozen encoder on ``split`` (see :func:`evaluate_frozen`).

    Adds ``"uniformity"`` of the held-out features (:func:`clbook.metrics.uniformity`) and, if an
    ``augment`` is given, ``"alignment"`` of the features of two augmented views of every
    held-out digit (drawn from the fixed ``ALIGNMENT_SEED``, the same for every encoder);
    otherwise ``"alignment"`` is None.
    """
    test_feats = extract_features(encoder, split.X_test)
    scores = evaluate_frozen(extract_features(encoder, split.X_train), split.y_train,
                             test_feats, split.y_test, seed=seed)
    scores["uniformity"] = uniformity(test_feats)
    scores["alignment"] = None
    if augment is not None:
        gen = torch.Generator().manual_seed(ALIGNMENT_SEED)
        v1, v2 = augment(split.X_test, gen), augment(split.X_test, gen)
        scores["alignment"] = alignment(extract_features(encoder, v1), extract_features(encoder, v2))
    return scores


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

    def mean_of(attr: str) -> float | None:  # weighted by each run's seeds, None if any run lacks it
        values = [(getattr(r, attr), max(len(r.linear_all), 1)) for r in runs]
        if any(v is None for v, _ in values):
            return None
        return float(sum(v * w for v, w in values) / sum(w for _, w in values))

    return Result(first.dataset, first.encoder, first.method, float(np.mean(lin)), float(np.mean(knn)),
                  float(sum(r.seconds for r in runs)), first.data, float(np.std(lin)), float(np.std(knn)), len(lin),
                  lin, knn, mean_of("alignment"), mean_of("uniformity"))


def run_iris(method: str = "supcon", seeds=(0, 1, 2, 3, 4), progress: bool = False) -> Result:
    """Iris MLP, SupCon-pretrained or random, probed on a fresh split for every seed.

    Each seed changes the train/test split, the initial weights and the batch order, so the
    standard deviation covers all three sources of variation.
    """
    _check_method(method)
    if method not in ("supcon", "random"):
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
                           time.perf_counter() - start, "iris-sklearn", uniformity=scores["uniformity"]))
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
    scores = evaluate_encoder(encoder, split, seed=seed, augment=ALIGNMENT_AUGMENT)
    result = Result("mnist", kind, method, scores["linear_acc"], scores["knn_acc"],
                    time.perf_counter() - start, split.source,
                    linear_all=[scores["linear_acc"]], knn_all=[scores["knn_acc"]],
                    alignment=scores["alignment"], uniformity=scores["uniformity"])
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
    """Results as a fixed-width text table.

    Accuracies in percent (mean +- std over seeds); ``align`` and ``unif`` are the alignment and
    uniformity of the held-out features (lower is better for both; ``-`` when not measured).
    """

    def pct(mean: float, std: float, n: int) -> str:
        return f"{100 * mean:5.1f} +- {100 * std:3.1f}" if n > 1 else f"{100 * mean:5.1f}"

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [f"{'dataset':8} {'encoder':7} {'method':7} {'linear %':>12} {'kNN %':>12} {'align':>6} {'unif':>6} "
             f"{'seeds':>5} {'seconds':>8}  data",
             "-" * 98]
    for r in results:
        lines.append(f"{r.dataset:8} {r.encoder:7} {r.method:7} {pct(r.linear_acc, r.linear_std, r.n_seeds):>12} "
                     f"{pct(r.knn_acc, r.knn_std, r.n_seeds):>12} {num(r.alignment):>6} {num(r.uniformity):>6} "
                     f"{r.n_seeds:>5} {r.seconds:8.1f}  {r.data}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the lecture notes' protocols
# The lecture notes behind the course report an Iris and an MNIST experiment. Notebooks 04 and 05
# re-run them as the notes ran them, with these two functions, and then change one thing at a time.
# They are deliberately plain: SGD without momentum or schedule, no projection head, no augmentation,
# no validation data, and a linear head on unnormalized features.


def _check_notes_settings(epochs: int, batch_size: int, lr: float, temperature: float) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    for name, value in (("lr", lr), ("temperature", temperature)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")


def notes_pretrain(
    encoder: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """SupCon on the encoder's own outputs with plain SGD, in place, as the notes train.

    Every epoch visits the samples in a fresh random order in batches of ``batch_size``, the last
    one smaller if ``batch_size`` does not divide N (as a default ``DataLoader`` does). The loss is
    :func:`clbook.losses.supcon_loss` (L_out, cosine similarity) on ``encoder(X[batch])``, one view
    per sample. No head, no augmentation, no learning-rate schedule, and the weights of the last
    epoch are kept: nothing is chosen on validation data.

    Parameters
    ----------
    encoder : nn.Module
        Maps ``X[batch]`` to ``[B, D]``; trained in place and left in eval mode.
    X : Tensor, shape [N, ...]
    y : Tensor, shape [N], integer labels
    epochs, batch_size : int
    lr : float
        Learning rate of ``torch.optim.SGD`` (no momentum, no weight decay).
    temperature : float
        SupCon temperature.
    seed : int
        Seeds the batch order.
    progress : bool
        tqdm progress bar.

    Returns
    -------
    list of float
        Mean training loss of each epoch.
    """
    if y.dim() != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have shape [{X.shape[0]}], got {tuple(y.shape)}")
    _check_notes_settings(epochs, batch_size, lr, temperature)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(encoder.parameters(), lr=lr)
    n, losses = X.shape[0], []
    encoder.train()
    for epoch in tqdm(range(1, epochs + 1), desc="notes' SupCon", disable=not progress, leave=False,
                      mininterval=1.0):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = supcon_loss(encoder(X[idx]), labels=y[idx], temperature=temperature)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch}; lower lr?")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / n)
    encoder.eval()
    return losses


def _supcon_runs(z: Tensor, y: Tensor, temperature: float) -> Tensor:
    """L_out (mean over anchors with positives) of S independent batches at once.

    ``z`` is ``[S, B, D]`` (not normalized), ``y`` is ``[S, B]``; returns the S losses ``[S]``.
    The same loss as :func:`clbook.losses.supcon_loss` on each ``(z[s], y[s])``, written with
    plain tensor operations so that S runs share every operation.
    """
    z = F.normalize(z, dim=-1)
    eye = torch.eye(z.shape[1], dtype=torch.bool)
    logits = (z @ z.transpose(1, 2) / temperature).masked_fill(eye, float("-inf"))  # [S, B, B]
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    pos = (y[:, :, None] == y[:, None, :]) & ~eye
    count = pos.sum(dim=-1)  # [S, B]
    per_anchor = -torch.where(pos, log_prob, torch.zeros(())).sum(dim=-1) / count.clamp(min=1)
    has = (count > 0).to(z.dtype)
    return (per_anchor * has).sum(dim=-1) / has.sum(dim=-1).clamp(min=1)


def notes_pretrain_many(
    encoders: list[nn.Module],
    X: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    seeds: list[int],
) -> list[list[float]]:
    """:func:`notes_pretrain` for S independent runs of one small architecture, computed together.

    Run ``s`` trains ``encoders[s]`` on ``X[s]``, ``y[s]`` with the batch order of ``seeds[s]``,
    exactly as ``notes_pretrain(encoders[s], X[s], y[s], ..., seed=seeds[s])`` would: its
    parameters receive the gradient of its own loss only. The runs are stacked with
    :func:`torch.func.stack_module_state` and evaluated with :func:`torch.vmap`, so every step is
    one set of tensor operations for all S runs instead of S sets; for a network as small as the
    notes' Iris MLP that is several times faster. Results agree with separate runs up to
    floating-point rounding (which long SGD runs at a large learning rate can amplify).

    Parameters
    ----------
    encoders : list of S nn.Module
        Same architecture, no buffers that change in training; trained in place, left in eval mode.
    X : Tensor, shape [S, N, ...]
    y : Tensor, shape [S, N]
    epochs, batch_size, lr, temperature
        As in :func:`notes_pretrain`.
    seeds : list of S int
        Batch order of each run.

    Returns
    -------
    list of S lists of float
        Mean training loss of each epoch, per run.
    """
    from torch.func import functional_call, stack_module_state

    n_runs = len(encoders)
    if n_runs == 0 or len(seeds) != n_runs or X.shape[0] != n_runs or y.shape[:1] != (n_runs,):
        raise ValueError(f"need as many encoders, seeds, X[s] and y[s]; got {n_runs} encoders, {len(seeds)} seeds, "
                         f"X {tuple(X.shape)} and y {tuple(y.shape)}")
    if y.dim() != 2 or y.shape[1] != X.shape[1]:
        raise ValueError(f"y must have shape [{n_runs}, {X.shape[1]}], got {tuple(y.shape)}")
    _check_notes_settings(epochs, batch_size, lr, temperature)
    params, buffers = stack_module_state(encoders)  # leaves of shape [S, ...]
    template = copy.deepcopy(encoders[0]).to("meta")

    def forward(p: dict, b: dict, x: Tensor) -> Tensor:
        return functional_call(template, (p, b), (x,))

    batched = torch.vmap(forward)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    opt = torch.optim.SGD(params.values(), lr=lr)
    n, runs = X.shape[1], torch.arange(n_runs)[:, None]
    losses: list[list[float]] = [[] for _ in range(n_runs)]
    for epoch in range(1, epochs + 1):
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens])  # [S, N]
        total = torch.zeros(n_runs)
        for i in range(0, n, batch_size):
            idx = perm[:, i : i + batch_size]
            per_run = _supcon_runs(batched(params, buffers, X[runs, idx]), y[runs, idx], temperature)
            if not torch.isfinite(per_run).all():
                raise FloatingPointError(f"loss became {per_run.tolist()} in epoch {epoch}; lower lr?")
            opt.zero_grad(set_to_none=True)
            per_run.sum().backward()  # run s's parameters get d(loss_s) only
            opt.step()
            total += per_run.detach() * idx.shape[1]
        for s in range(n_runs):
            losses[s].append(total[s].item() / n)
    with torch.no_grad():
        for s, enc in enumerate(encoders):
            for name, p in enc.named_parameters():
                p.copy_(params[name][s])
            enc.eval()
    return losses


@dataclass
class HeadTrace:
    """Accuracies of a linear head measured during its training (see :func:`notes_linear_head`).

    Attributes
    ----------
    steps : list of int
        Optimizer steps after which the head was scored (the last entry is the final step).
    acc : dict of str -> list of float
        For every scored set, its accuracy after each entry of ``steps``.
    head : nn.Linear
        The head after the final step.
    """

    steps: list[int]
    acc: dict[str, list[float]]
    head: nn.Linear

    def best(self, name: str) -> float:
        """The highest accuracy on set ``name`` over all scored steps (choosing the step *on* it)."""
        return max(self.acc[name])

    def chosen_on(self, select: str, report: str) -> float:
        """Accuracy on ``report`` at the step with the best accuracy on ``select`` (first on ties)."""
        return self.acc[report][int(np.argmax(self.acc[select]))]

    def final(self, name: str) -> float:
        """Accuracy on ``name`` after the last step."""
        return self.acc[name][-1]


def notes_linear_head(
    train_feats: Tensor,
    train_y: Tensor,
    score: dict[str, tuple[Tensor, Tensor]],
    *,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 0.1,
    score_every: int = 1,
    seed: int = 0,
) -> HeadTrace:
    """A linear head on frozen, *unnormalized* features, trained with mini-batch Adam, as the notes do.

    Unlike :func:`clbook.training.fit_linear_probe` the features are used as they come (no
    standardization), batches are small and the number of steps is whatever ``epochs`` gives:
    the head may stop far from convergence. After every ``score_every`` steps, and after the last,
    it is scored on every set in ``score``; what to do with those scores (keep the best one, as the
    notes did with the test set, or pick the step on validation data) is up to the caller.

    Parameters
    ----------
    train_feats : Tensor, shape [N, D]
    train_y : Tensor, shape [N], integer labels
    score : dict
        Sets to score, name -> ``(features [M, D], labels [M])``, e.g. ``{"test": (test_feats, y_test)}``.
    epochs, batch_size : int
        The last batch of an epoch is smaller if ``batch_size`` does not divide N.
    lr : float
        Adam's learning rate.
    score_every : int
        Score after every this many optimizer steps.
    seed : int
        Seeds the head's initial weights and the batch order.

    Returns
    -------
    HeadTrace
    """
    if train_feats.dim() != 2 or train_y.shape != (train_feats.shape[0],):
        raise ValueError(f"train_feats must be [N, D] and train_y [N], got {tuple(train_feats.shape)} "
                         f"and {tuple(train_y.shape)}")
    for name, (feats, labels) in score.items():
        if feats.dim() != 2 or feats.shape[1] != train_feats.shape[1] or labels.shape != (feats.shape[0],):
            raise ValueError(f"score[{name!r}] must be features [M, {train_feats.shape[1]}] and labels [M], "
                             f"got {tuple(feats.shape)} and {tuple(labels.shape)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("score_every", score_every)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    n_classes = int(train_y.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(train_feats.shape[1], n_classes)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    trace = HeadTrace([], {name: [] for name in score}, head)

    @torch.no_grad()
    def record(step: int) -> None:
        trace.steps.append(step)
        for name, (feats, labels) in score.items():
            trace.acc[name].append((head(feats).argmax(1) == labels).float().mean().item())

    n, step = train_feats.shape[0], 0
    with single_thread():  # one small matrix product per step: threads only add overhead
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                loss = F.cross_entropy(head(train_feats[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if step % score_every == 0:
                    record(step)
        if not trace.steps or trace.steps[-1] != step:
            record(step)
    return trace
