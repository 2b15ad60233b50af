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
from pathlib import Path
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from clbook.data import SIMCLR_AUGMENT, Split, load_iris, load_mnist, train_val_split
from clbook.encoders import PixelFeatures, ProjectionHead, make_encoder
from clbook.evaluation import LABELS_PER_CLASS, evaluate_few_labels
from clbook.losses import nt_xent_loss
from clbook.methods import REGISTRY, Recipe, SwAV, make_method
from clbook.metrics import alignment, feature_metrics
from clbook.notes import NOTES_MNIST, NOTES_MNIST_REPORTED, run_notes_mnist
from clbook.training import History, evaluate_frozen, extract_features, pretrain, set_seed, single_thread

__all__ = [
    "Result",
    "IRIS_CONFIG",
    "MNIST_CONFIGS",
    "MNIST_SEEDS",
    "MNIST_ROWS",
    "QUICK_EPOCHS",
    "RECIPES",
    "random_encoder",
    "PROTOCOL",
    "train_iris_encoder",
    "train_mnist_encoder",
    "train_mnist_swav",
    "evaluate_encoder",
    "collapse_monitor",
    "ALIGNMENT_AUGMENT",
    "combine_seeds",
    "run_iris",
    "run_mnist",
    "run_notes_rows",
    "reproduce",
    "format_table",
    "load_results",
    "SAVED_REPRODUCE",
]

# Pre-training settings live with each method's registry entry (clbook.methods.REGISTRY); these
# tables are views of it, keyed by (encoder, method), for the notebooks and reproduce.
IRIS_CONFIG = dict(epochs=150, batch_size=256, lr=1e-3, temperature=0.1)
RECIPES: dict[tuple[str, str], Recipe] = {(r.encoder, name): r for name, entry in REGISTRY.items()
                                          for r in entry.recipes}
MNIST_CONFIGS = {key: recipe.config() for key, recipe in RECIPES.items()}
# Encoders in the order they first appear in the registry; each gets its random twin's row.
_KINDS = list(dict.fromkeys(kind for kind, _ in RECIPES))
# A random twin is repeated over as many seeds as the longest row it is compared with.
_TWIN_SEEDS = {kind: max((r.seeds for (k, _), r in RECIPES.items() if k == kind), key=len) for kind in _KINDS}
MNIST_SEEDS = {**{key: r.seeds for key, r in RECIPES.items() if len(r.seeds) > 1},
               **{(kind, "random"): seeds for kind, seeds in _TWIN_SEEDS.items() if len(seeds) > 1}}
# The rows of `python -m clbook reproduce` after Iris: per encoder, its methods in registry order,
# then its random twin; and their epochs with --quick.
PIXELS = ("pixels", "raw")  # the row of raw pixels: no encoder at all
# An encoder none of whose recipes has a row (notebook 13's ViT) gets no twin's row either.
MNIST_ROWS = [PIXELS] + [key for kind in _KINDS
                         if any(r.reproduce for (k, _), r in RECIPES.items() if k == kind)
                         for key in [*(k for k, r in RECIPES.items() if k[0] == kind and r.reproduce),
                                     (kind, "random")]]
QUICK_EPOCHS = {key: r.quick_epochs for key, r in RECIPES.items()}
# Positive pairs for the alignment column: two draws of the strong augmentation of each held-out
# digit, from a fixed generator, the same for every row (so the column compares encoders, not
# augmentations).
ALIGNMENT_AUGMENT = SIMCLR_AUGMENT
ALIGNMENT_SEED = 0
MNIST_VAL_SIZE = 1000  # digits of the training part set aside to choose the epoch
MNIST_MONITOR_REF = 3000  # training digits used as kNN reference while monitoring


#: The course's experimental protocol, stated once (notebooks 05, 07-09 and ``reproduce`` print it).
PROTOCOL = """\
Protocol (notebooks 05, 07-09 and python -m clbook reproduce):
- data: MNIST's training part minus 1,000 validation digits for pre-training; the held-out part
  for every score; the epoch kept is the one with the best validation kNN accuracy;
- compute: every table states the optimizer steps and the samples seen; comparisons "at equal
  compute" match the steps (or scale the learning rate with the batch, and say so);
- baselines: raw pixels and the random twin (same architecture, same seed, untrained) in every
  table, with the same diagnostics (std, uniformity, effective rank, linear probe, kNN);
- labels: linear probe and kNN with all labels, and with 1, 10 and 100 labels per class
  (5 draws of the labelled digits, mean +- std);
- seeds: 3 or more wherever a conclusion rests on a gap under 3 points: mean +- std and the sign
  of the gap on each seed."""


@dataclass
class Result:
    """One row of the results table (the JSON written by ``python -m clbook reproduce``).

    ``linear_acc`` and ``knn_acc`` are fractions in [0, 1] on the held-out split; for rows over
    several seeds they are means; ``linear_std``, ``knn_std``, ``n_seeds`` and the per-seed
    lists ``linear_all``, ``knn_all`` (not part of the JSON) say how much they vary.
    ``alignment``, ``uniformity``, ``std`` and ``effective_rank`` (:mod:`clbook.metrics`, means
    over seeds) describe the held-out features; see :func:`evaluate_encoder`. ``alignment`` is
    None without an augmentation (Iris). ``steps`` and ``samples`` are the optimizer steps and
    samples seen in pre-training, per seed (0 for an untrained encoder).

    ``few`` holds the few-label evaluation (:func:`clbook.evaluation.evaluate_few_labels`):
    labels per class ``n -> {"linear", "linear_std", "knn", "knn_std"}``. With one seed the std
    is over the draws of labelled digits; with several it is over the seeds (of each seed's mean
    over its draws), and ``few_all`` keeps the per-seed means, ``n -> {"linear": [...], "knn": [...]}``.
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
    std: float | None = None
    effective_rank: float | None = None
    steps: int = 0
    samples: int = 0
    few: dict = field(default_factory=dict)
    few_all: dict = field(default_factory=dict)
    notes_head_acc: float | None = None

    def row(self) -> dict:
        """The JSON row.

        Keys: dataset, encoder, method, linear_acc, linear_std, knn_acc, knn_std, n_seeds,
        alignment, uniformity, std, effective_rank, steps, samples, seconds, data, notes_head_acc
        (the lecture notes' own head, on the notes' rows only; None elsewhere), and for every
        size ``n`` of the few-label evaluation ``linear_{n}``, ``linear_{n}_std``, ``knn_{n}``,
        ``knn_{n}_std`` (fractions).
        """
        d = asdict(self)
        out = {k: d[k] for k in ("dataset", "encoder", "method", "linear_acc", "linear_std", "knn_acc", "knn_std",
                                 "n_seeds", "alignment", "uniformity", "std", "effective_rank", "steps", "samples",
                                 "seconds", "data", "notes_head_acc")}
        for n, scores in sorted(self.few.items()):
            for key in ("linear", "linear_std", "knn", "knn_std"):
                name = key.replace("linear", f"linear_{n}").replace("knn", f"knn_{n}")
                out[name] = scores[key]
        return out

    @classmethod
    def from_row(cls, row: dict) -> "Result":
        """The :class:`Result` of a JSON row written by :meth:`row` (per-seed lists are not in the JSON)."""
        few: dict = {}
        for key, value in row.items():
            parts = key.split("_")
            if parts[0] in ("linear", "knn") and len(parts) >= 2 and parts[1].isdigit():
                scores = few.setdefault(int(parts[1]), {})
                scores[parts[0] + ("_std" if parts[-1] == "std" else "")] = value
        plain = {f.name for f in fields(cls)} - {"few", "few_all", "linear_all", "knn_all"}
        return cls(**{k: v for k, v in row.items() if k in plain}, few=dict(sorted(few.items())))


def random_encoder(kind: str, seed: int = 0) -> nn.Module:
    """An untrained encoder in eval mode: the "random twin" of a trained one with the same seed."""
    return make_encoder(kind, seed=seed).eval()


def _check_method(method: str) -> None:
    known = sorted({m for _, m in RECIPES} | {"random"})
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
    on_epoch_end: Callable[[nn.Module, nn.Module, int], dict[str, float]] | None = None,
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
        Show progress (one line per run in a notebook).
    monitor : bool, optional
        Log the collapse diagnostics of :func:`collapse_monitor` on the validation digits after
        every epoch, in ``history.metrics``. Default: the recipe's ``monitor`` (methods without negatives).
    on_epoch_end : callable, optional
        ``on_epoch_end(encoder, head, epoch) -> dict``, called after every epoch, after the
        monitor, with the projection head too; its figures are logged in ``history.metrics``
        like the monitor's. For instance, to keep copies of the last epoch's encoder and head:
        the returned encoder is the validation-chosen epoch's, which need not be the last.
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
        monitor = RECIPES[kind, method].monitor
    watch = collapse_monitor(X_val, seed=seed) if monitor else None

    def after_epoch(model: nn.Module, epoch: int) -> dict[str, float]:
        logged = watch(model, epoch) if watch is not None else {}
        return {**logged, **(on_epoch_end(model, head, epoch) if on_epoch_end is not None else {})}

    history = pretrain(encoder, head, X_fit, y_fit, method=method,
                       val=(X_fit[ref], y_fit[ref], X_val, y_val), seed=seed, progress=progress,
                       on_epoch_end=after_epoch if watch is not None or on_epoch_end is not None else None, **cfg)
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
    options rather than replacing them; ``overrides["encoder_options"]`` go to
    :func:`clbook.encoders.make_encoder` (e.g. ``{"any_size": True}`` for multi-crop's small views).

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
    encoder = make_encoder(kind, seed=seed, **cfg.pop("encoder_options", {}))
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


def evaluate_encoder(encoder: nn.Module, split: Split, seed: int = 0, augment=None, device="auto",
                     few_labels: bool = True) -> dict:
    """Linear probe and kNN of a frozen encoder on ``split`` (see :func:`evaluate_frozen`), and diagnostics.

    Adds ``"uniformity"``, ``"std"`` and ``"effective_rank"`` of the held-out features
    (:func:`clbook.metrics.feature_metrics`) and, if an ``augment`` is given, ``"alignment"`` of
    the features of two augmented views of every held-out digit (drawn from the fixed
    ``ALIGNMENT_SEED``, the same for every encoder); otherwise ``"alignment"`` is None. With
    ``few_labels``, ``"few"`` is the few-label evaluation
    (:func:`clbook.evaluation.evaluate_few_labels`, 1, 10 and 100 labels per class, 5 draws).
    ``device`` is where features, probe and kNN are computed (``"auto"``: CUDA, then MPS, then the CPU).
    """
    train_feats = extract_features(encoder, split.X_train, device=device)
    test_feats = extract_features(encoder, split.X_test, device=device)
    scores = evaluate_frozen(train_feats, split.y_train, test_feats, split.y_test, seed=seed, device=device)
    scores.update(feature_metrics(test_feats))
    scores["alignment"] = None
    if augment is not None:
        gen = torch.Generator().manual_seed(ALIGNMENT_SEED)
        v1, v2 = augment(split.X_test, gen), augment(split.X_test, gen)
        scores["alignment"] = alignment(extract_features(encoder, v1, device=device),
                                        extract_features(encoder, v2, device=device))
    scores["few"] = (evaluate_few_labels(train_feats, split.y_train, test_feats, split.y_test, seed=seed,
                                         device=device) if few_labels else {})
    return scores


def _result(dataset: str, kind: str, method: str, scores: dict, seconds: float, data: str,
            history: History | None) -> Result:
    """One seed's row from :func:`evaluate_encoder`'s scores."""
    few = {n: {k: v[k] for k in ("linear", "linear_std", "knn", "knn_std")} for n, v in scores["few"].items()}
    return Result(dataset, kind, method, scores["linear_acc"], scores["knn_acc"], seconds, data,
                  linear_all=[scores["linear_acc"]], knn_all=[scores["knn_acc"]], alignment=scores["alignment"],
                  uniformity=scores["uniformity"], std=scores["std"], effective_rank=scores["effective_rank"],
                  steps=history.steps if history else 0, samples=history.samples if history else 0,
                  few=few, few_all={n: {"linear": [v["linear"]], "knn": [v["knn"]]} for n, v in few.items()})


def combine_seeds(runs: list[Result]) -> Result:
    """One row from single-seed runs of the same experiment.

    Accuracies become means over the runs with their standard deviations (``np.std``, the spread
    of these runs), ``seconds`` the total, and ``linear_all`` / ``knn_all`` keep every run. The
    few-label scores become means over the runs of each run's mean over its draws; with more
    than one run their std is the spread over the runs, and ``few_all`` keeps every run's mean.
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

    if len(runs) == 1:
        few, few_all = copy.deepcopy(first.few), copy.deepcopy(first.few_all)
    else:
        sizes = set.intersection(*(set(r.few_all) for r in runs))
        few_all = {n: {m: [x for r in runs for x in r.few_all[n][m]] for m in ("linear", "knn")} for n in sorted(sizes)}
        few = {n: {"linear": float(np.mean(v["linear"])), "linear_std": float(np.std(v["linear"])),
                   "knn": float(np.mean(v["knn"])), "knn_std": float(np.std(v["knn"]))} for n, v in few_all.items()}
    return Result(first.dataset, first.encoder, first.method, float(np.mean(lin)), float(np.mean(knn)),
                  float(sum(r.seconds for r in runs)), first.data, float(np.std(lin)), float(np.std(knn)), len(lin),
                  lin, knn, mean_of("alignment"), mean_of("uniformity"), mean_of("std"), mean_of("effective_rank"),
                  first.steps, first.samples, few, few_all)


def run_iris(method: str = "supcon", seeds=(0, 1, 2, 3, 4), progress: bool = False, device="auto") -> Result:
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
        history = None
        if method == "supcon":
            encoder, history = train_iris_encoder(split, seed=seed, progress=progress, device=device)
        else:
            encoder = random_encoder("mlp", seed=seed)
        scores = evaluate_encoder(encoder, split, seed=seed, device=device)
        runs.append(_result("iris", "mlp", method, scores, time.perf_counter() - start, "iris-sklearn", history))
    return combine_seeds(runs)


def run_mnist(
    kind: str, method: str, split: Split, seed: int = 0, progress: bool = True, device="auto", **overrides
) -> tuple[Result, nn.Module, History | None]:
    """Train (or build, for ``method="random"``) one MNIST encoder and evaluate it.

    ``run_mnist("pixels", "raw", split)`` evaluates raw pixels, standardized with the training
    digits' statistics (:class:`clbook.encoders.PixelFeatures`), the same way.

    Returns
    -------
    result : Result
    encoder : nn.Module
    history : History or None
        None for a random encoder and for pixels.
    """
    start = time.perf_counter()
    if (kind, method) == PIXELS:
        encoder, history = PixelFeatures(split.X_train), None
    else:
        _check_method(method)
        if method == "random":
            encoder, history = random_encoder(kind, seed=seed), None
        else:
            encoder, history = train_mnist_encoder(kind, method, split, seed=seed, progress=progress, device=device,
                                                   **overrides)
    scores = evaluate_encoder(encoder, split, seed=seed, augment=ALIGNMENT_AUGMENT, device=device)
    result = _result("mnist", kind, method, scores, time.perf_counter() - start, split.source, history)
    return result, encoder, history


def run_notes_rows(split: Split, epochs: int = NOTES_MNIST["epochs"], seed: int = 0, progress: bool = False,
                   device="auto") -> list[Result]:
    """The lecture notes' MNIST experiment as two rows: the notes' CNN SupCon-trained their way, and its twin.

    :func:`clbook.notes.run_notes_mnist` with the notes' loss (raw inner products, times the
    temperature), inputs, batch, optimizer and temperature 10. ``linear_acc`` and ``knn_acc`` are
    the course's probe and kNN on its features, ``notes_head_acc`` the notes' own head (their
    reported numbers: :data:`clbook.notes.NOTES_MNIST_REPORTED`). No augmentation, hence no alignment.
    """
    start = time.perf_counter()
    out = run_notes_mnist(split, epochs=epochs, seed=seed, progress=progress, device=device, few_labels=True)
    rows = []
    for name in ("supcon", "random"):
        r = out[name]
        few = {n: {k: v[k] for k in ("linear", "linear_std", "knn", "knn_std")} for n, v in r["few"].items()}
        trained = name == "supcon"
        rows.append(Result("mnist", "notes-cnn", "notes-supcon" if trained else "random", r["linear_acc"], r["knn_acc"],
                           out["seconds"] if trained else time.perf_counter() - start - out["seconds"], split.source,
                           linear_all=[r["linear_acc"]], knn_all=[r["knn_acc"]], uniformity=r["uniformity"],
                           std=r["std"], effective_rank=r["effective_rank"], steps=out["steps"] if trained else 0,
                           samples=out["samples"] if trained else 0, few=few,
                           few_all={n: {"linear": [v["linear"]], "knn": [v["knn"]]} for n, v in few.items()},
                           notes_head_acc=r["notes_head_acc"]))
    return rows


def reproduce(quick: bool = False, progress: bool = False, split: Split | None = None,
              device="auto") -> list[Result]:
    """Run every experiment of the results table.

    Rows: Iris (SupCon and its random twin, 5 seeds), then MNIST: raw pixels, every registered
    method with a recipe (:data:`MNIST_ROWS`, each encoder followed by its random twin), then
    the lecture notes' protocol and its twin (:func:`run_notes_rows`, at the notes' 32 epochs).

    Parameters
    ----------
    quick : bool
        Few epochs and one seed per row (a smoke test that finishes in about a minute); numbers
        are then below the course's targets.
    progress : bool
        Progress lines during pre-training.
    split : Split, optional
        MNIST data; loaded with :func:`clbook.data.load_mnist` if omitted.
    """
    iris_seeds = (0, 1, 2) if quick else (0, 1, 2, 3, 4)
    results = [run_iris("supcon", iris_seeds, progress=progress, device=device),
               run_iris("random", iris_seeds, device=device)]
    split = split if split is not None else load_mnist()
    for kind, method in MNIST_ROWS:
        overrides = {"epochs": QUICK_EPOCHS[(kind, method)]} if quick and (kind, method) in QUICK_EPOCHS else {}
        seeds = (0,) if quick else MNIST_SEEDS.get((kind, method), (0,))
        runs = [run_mnist(kind, method, split, seed=seed, progress=progress, device=device, **overrides)[0]
                for seed in seeds]
        results.append(combine_seeds(runs))
    results += run_notes_rows(split, epochs=1 if quick else NOTES_MNIST["epochs"], progress=progress, device=device)
    return results


#: The rows of a full ``python -m clbook reproduce --json`` run on the course's CPU, kept in the clone
#: (found relative to this file, so that a notebook copied elsewhere still finds it).
SAVED_REPRODUCE = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "reproduce.json"


def load_results(path: str | Path = SAVED_REPRODUCE) -> list[Result]:
    """The rows of a JSON file written by ``python -m clbook reproduce --json FILE``, as :class:`Result`.

    Without ``path``, the saved run of the clone (:data:`SAVED_REPRODUCE`).
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.name}: no such file; write one with `python -m clbook reproduce --json FILE`")
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a JSON list of rows, as written by `python -m clbook reproduce --json`")
    return [Result.from_row(r) for r in rows]


def format_table(results: list[Result]) -> str:
    """Results as two fixed-width text tables: every label, then few labels.

    The first has accuracies in percent (mean +- std over seeds), the held-out features'
    diagnostics (``align`` and ``unif``, alignment and uniformity: lower means more aligned or
    more uniform; ``std`` and ``erank``, the features' std and effective rank; ``-`` when not
    measured), and the pre-training's optimizer ``steps`` and ``samples`` seen per seed. The
    second has the linear probe and kNN with 1, 10 and 100 labels per class.
    """

    def pct(mean: float, std: float, n: int = 2) -> str:
        return f"{100 * mean:5.1f} +- {100 * std:3.1f}" if n > 1 else f"{100 * mean:5.1f}"

    def num(value: float | None, fmt: str = ".2f") -> str:
        return "-" if value is None else format(value, fmt)

    head = f"{'dataset':8} {'encoder':7} {'method':11}"
    lines = [f"{head} {'linear %':>12} {'kNN %':>12} {'align':>6} {'unif':>6} {'std':>6} {'erank':>6} "
             f"{'seeds':>5} {'steps':>6} {'samples':>8} {'seconds':>8}  data"]
    lines.append("-" * len(lines[0]) + "-" * 10)
    for r in results:
        lines.append(f"{r.dataset:8} {r.encoder:7} {r.method:11} {pct(r.linear_acc, r.linear_std, r.n_seeds):>12} "
                     f"{pct(r.knn_acc, r.knn_std, r.n_seeds):>12} {num(r.alignment):>6} {num(r.uniformity):>6} "
                     f"{num(r.std, '.3f'):>6} {num(r.effective_rank, '.1f'):>6} {r.n_seeds:>5} {r.steps:>6} "
                     f"{r.samples:>8} {r.seconds:8.1f}  {r.data}")
    sizes = sorted({n for r in results for n in r.few})
    if sizes:
        lines += ["", "Few labels: accuracy % with n labelled digits per class (mean +- std; see Result.few)",
                  f"{head} " + " ".join(f"{f'linear@{n}':>12}" for n in sizes) + " "
                  + " ".join(f"{f'kNN@{n}':>12}" for n in sizes)]
        lines.append("-" * len(lines[-1]))
        for r in results:
            cells = [pct(r.few[n]["linear"], r.few[n]["linear_std"]) if n in r.few else "-" for n in sizes]
            cells += [pct(r.few[n]["knn"], r.few[n]["knn_std"]) if n in r.few else "-" for n in sizes]
            lines.append(f"{r.dataset:8} {r.encoder:7} {r.method:11} " + " ".join(f"{c:>12}" for c in cells))
    notes = [r for r in results if r.notes_head_acc is not None]
    if notes:
        lines += ["", "The lecture notes' MNIST protocol, scored by the notes' own head (final step) and reported by the notes:"]
        for r in notes:
            reported = NOTES_MNIST_REPORTED["random" if r.method == "random" else "supcon"]
            lines.append(f"  {r.encoder} {r.method:12} this run {100 * r.notes_head_acc:5.2f}   the notes {100 * reported:5.2f}")
    return "\n".join(lines)
