"""Pre-training, frozen-feature evaluation (linear probe and kNN), seeds and history plots.

Evaluation hygiene, used throughout the course
----------------------------------------------
1. Pre-train on the training data. If a validation set is given, :func:`pretrain` measures kNN
   accuracy on it after every epoch and keeps the weights of the best epoch: the number of
   epochs is chosen on validation data.
2. :func:`evaluate_frozen` carves a validation part out of the training features, picks the
   probe's weight decay and kNN's k on it, refits on all training features, and only then looks
   at the held-out data, once.
"""

from __future__ import annotations

import copy
import math
import numbers
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm  # plain text bar: no ipywidgets needed, renders in notebooks too

from clbook.losses import nt_xent_loss, supcon_loss
from clbook.methods import METHODS, Method, make_method

__all__ = [
    "set_seed",
    "single_thread",
    "extract_features",
    "History",
    "pretrain",
    "knn_predict",
    "knn_accuracy",
    "LinearProbe",
    "fit_linear_probe",
    "evaluate_frozen",
    "plot_history",
    "plot_probe",
]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so that a run can be repeated exactly on one machine."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def single_thread():
    """Run small tensor operations on one thread.

    A linear probe multiplies matrices of a few thousand by a hundred; splitting that across
    threads costs more than it saves, and on a busy machine (other processes on the cores)
    OpenMP's waiting threads made it 10-30 times slower in our measurements.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@torch.no_grad()
def extract_features(encoder: nn.Module, X: Tensor, batch_size: int = 1024) -> Tensor:
    """Features of a frozen encoder: ``[N, ...] -> [N, D]``, computed in eval mode, no gradients.

    The encoder's train/eval mode is restored afterwards.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if not isinstance(X, Tensor) or X.dim() == 0:
        raise ValueError(f"X must be a tensor of inputs [N, ...], got {getattr(X, 'shape', type(X).__name__)}")
    was_training = encoder.training
    encoder.eval()
    try:
        out = [encoder(X[i : i + batch_size]) for i in range(0, X.shape[0], batch_size)]
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


# ----------------------------------------------------------------------------- kNN


def _check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int if it is an integer (Python, NumPy or 0-d tensor) >= ``minimum``."""
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_real(name: str, value, minimum: float = 0.0, strict: bool = True) -> float:
    """``value`` as a finite float (Python, NumPy or 0-d tensor) > ``minimum`` (>= if not strict)."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype != torch.bool and not value.is_complex():
        value = float(value.detach())
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")
    return float(value)


def _check_feats(feats: Tensor, name: str, width: int | None = None) -> None:
    """Features ``[N, D]``: a non-empty tensor, ``width`` columns if given, no NaN or inf."""
    if not isinstance(feats, Tensor) or feats.dim() != 2:
        shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise ValueError(f"{name} must be a tensor of shape [N, D], got {shape}")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(feats.shape)})")
    if width is not None and feats.shape[1] != width:
        raise ValueError(f"{name} has {feats.shape[1]} columns, expected {width} (the reference's D)")
    if feats.is_floating_point() and not bool(torch.isfinite(feats).all()):
        # A NaN row would be every query's nearest neighbour, a NaN feature a NaN probe.
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_xy(feats: Tensor, y: Tensor, feats_name: str, y_name: str) -> None:
    """Features ``[N, D]`` (see :func:`_check_feats`) and integer class labels ``[N]``, all >= 0."""
    _check_feats(feats, feats_name)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != feats.shape[0]:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{y_name} (labels) must have shape [{feats.shape[0]}], one per row of {feats_name}; "
                         f"got {shape}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"{y_name} must hold integer class labels, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise ValueError(f"{y_name} must hold class labels >= 0, got {int(y.min())}")


def knn_predict(train_feats: Tensor, train_y: Tensor, query_feats: Tensor, k: int = 10) -> Tensor:
    """k-nearest-neighbour labels by cosine similarity, majority vote (ties: smallest label).

    Parameters
    ----------
    train_feats : Tensor, shape [N, D]
    train_y : Tensor, shape [N], integer labels >= 0
    query_feats : Tensor, shape [M, D]
    k : int

    Returns
    -------
    Tensor, shape [M], int64
    """
    _check_xy(train_feats, train_y, "train_feats", "train_y")
    _check_feats(query_feats, "query_feats", width=train_feats.shape[1])
    k = _check_int("k", k, 1)
    if k > train_feats.shape[0]:
        raise ValueError(f"k must be an integer in [1, {train_feats.shape[0]}] (rows of train_feats), got {k}")
    ref = F.normalize(train_feats.float(), dim=1)
    n_classes = int(train_y.max()) + 1
    preds = []
    for i in range(0, query_feats.shape[0], 1024):  # bounded memory: [1024, N] similarities
        sim = F.normalize(query_feats[i : i + 1024].float(), dim=1) @ ref.T
        idx = sim.topk(k, dim=1).indices  # [m, k]
        votes = F.one_hot(train_y[idx].long(), n_classes).sum(dim=1)  # [m, C]
        preds.append(votes.argmax(dim=1))  # argmax returns the first maximum: smallest label
    return torch.cat(preds)


def knn_accuracy(train_feats: Tensor, train_y: Tensor, test_feats: Tensor, test_y: Tensor, k: int = 10) -> float:
    """Fraction of ``test_feats`` whose kNN label (see :func:`knn_predict`) equals ``test_y``."""
    _check_xy(test_feats, test_y, "test_feats", "test_y")
    return (knn_predict(train_feats, train_y, test_feats, k) == test_y).float().mean().item()


# ----------------------------------------------------------------------------- pre-training


@dataclass
class History:
    """What happened during :func:`pretrain`.

    Attributes
    ----------
    loss : list of float
        Mean training loss of each epoch.
    val_acc : list of float
        kNN accuracy on the validation set after each epoch (empty without validation data).
    best_epoch : int
        1-based epoch whose weights were kept (the last one without validation data).
    seconds : float
        Wall-clock training time.
    metrics : dict of str -> list of float
        Per-epoch figures logged by a :class:`clbook.methods.Method` (``end_epoch``) or by the
        ``on_epoch_end`` callback of :func:`pretrain`, one value per epoch under each name.
    """

    loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    metrics: dict[str, list[float]] = field(default_factory=dict)


LossFn = Callable[[Tensor, Tensor | None], Tensor]


def _loss_for(method: str | LossFn, temperature: float) -> LossFn:
    """Loss on projections ``z`` of shape [B, V, D] and labels ``y`` [B] (or None)."""
    if callable(method):
        return method
    if method == "supcon":
        return lambda z, y: supcon_loss(z, labels=y, temperature=temperature)
    if method == "simclr":
        def simclr(z: Tensor, y: Tensor | None) -> Tensor:
            if z.shape[1] != 2:
                raise ValueError("SimCLR needs exactly two views; pass an augment")
            return nt_xent_loss(z[:, 0], z[:, 1], temperature=temperature)
        return simclr
    raise ValueError(f"unknown method {method!r}; use 'supcon', 'simclr', one of {sorted(METHODS)}, "
                     "a clbook.methods.Method or a callable")


def pretrain(
    encoder: nn.Module,
    head: nn.Module,
    X: Tensor,
    y: Tensor | None = None,
    *,
    method: str | Method | LossFn = "supcon",
    method_options: dict | None = None,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    cosine: bool = True,
    temperature: float = 0.1,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    val: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    knn_k: int = 10,
    seed: int = 0,
    progress: bool = True,
    on_epoch_end: Callable[[nn.Module, int], dict[str, float]] | None = None,
) -> History:
    """Contrastive pre-training of ``encoder`` with a projection ``head``, in place.

    Parameters
    ----------
    encoder, head : nn.Module
        The loss is computed on ``head(encoder(x))``; only the encoder is kept afterwards.
    X : Tensor, shape [N, ...]
        Training inputs, whole, in memory.
    y : Tensor, shape [N], optional
        Labels. Required for ``"supcon"``, ignored by ``"simclr"`` (self-supervised).
    method : str, Method or callable
        ``"supcon"``: :func:`clbook.losses.supcon_loss` with labels. ``"simclr"``:
        :func:`clbook.losses.nt_xent_loss` on two augmented views, no labels. Any name in
        :data:`clbook.methods.METHODS` (MoCo, memory bank, ...) or a :class:`clbook.methods.Method`
        instance: a method with state of its own, run through the same loop. A callable gets
        projections ``z`` of shape [B, V, D] and labels [B] (or None) and returns a scalar.
    method_options : dict, optional
        Keyword arguments for a method given by name, e.g. ``{"queue_size": 4096}`` for MoCo.
    epochs, batch_size, lr, weight_decay
        Adam optimisation settings. The last incomplete batch is dropped, so that every batch
        has enough negatives. ``batch_size`` must be at least 2 (a batch of one has no
        negatives) and is capped at N, which must be at least 2 too.
    cosine : bool, default True
        Decay the learning rate from ``lr`` to 0 along a cosine over all steps (as in the SimCLR
        and SupCon papers); the last epochs then refine instead of jumping around.
    temperature : float, default 0.1
        Passed to the loss (and to a named method that takes a temperature).
    augment : callable, optional
        ``augment(x_batch, generator) -> x_batch`` drawing fresh randomness per sample, e.g.
        :class:`clbook.data.DigitAugment`. With it every sample contributes two views; without
        it, one (SupCon with labels still has positives: the other samples of its class).
    val : (X_ref, y_ref, X_val, y_val), optional
        Reference and validation sets for monitoring: after each epoch, kNN accuracy of
        ``X_val`` against ``X_ref`` in feature space. The weights of the best epoch are kept.
    knn_k : int, default 10
        k for that monitoring.
    seed : int
        Seeds the batch order and the augmentations.
    progress : bool
        Show a tqdm progress bar.
    on_epoch_end : callable, optional
        ``on_epoch_end(encoder, epoch) -> dict`` of figures (e.g. collapse diagnostics on
        validation features), called after every epoch in eval mode and logged in
        ``History.metrics``.

    Returns
    -------
    History
    """
    if not isinstance(X, Tensor):
        raise ValueError(f"X must be a torch.Tensor of training inputs [N, ...], got {type(X).__name__}")
    if X.dim() == 0 or X.shape[0] < 2:
        raise ValueError(f"X has {X.shape[0] if X.dim() else 0} sample(s): contrastive pre-training needs at "
                         "least 2 (the negatives of a sample are the others in its batch)")
    if X.is_floating_point() and not bool(torch.isfinite(X).all()):
        raise ValueError("X contains NaN or infinite values")
    if y is not None:
        if not isinstance(y, Tensor) or y.dim() != 1:
            raise ValueError(f"y must be a tensor of labels [N], got "
                             f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
        if y.is_floating_point() and not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or infinite values")
    epochs = _check_int("epochs", epochs, 1)
    # A batch of one has no negatives: every loss is 0 and nothing would be learnt.
    batch_size = _check_int("batch_size", batch_size, 2)
    lr = _check_real("lr", lr)
    weight_decay = _check_real("weight_decay", weight_decay, strict=False)
    temperature = _check_real("temperature", temperature)
    knn_k = _check_int("knn_k", knn_k, 1)
    if val is not None and (not isinstance(val, (tuple, list)) or len(val) != 4):
        raise ValueError("val must be a tuple (X_ref, y_ref, X_val, y_val)")
    if isinstance(method, str) and method in METHODS:
        method = make_method(method, temperature, **(method_options or {}))
    elif method_options:
        raise ValueError("method_options go with a method given by name from clbook.methods.METHODS")
    runner = method if isinstance(method, Method) else None
    if runner is not None and runner.needs_labels and y is None:
        raise ValueError(f"{runner.name} needs labels y")
    if runner is not None and runner.n_views > 1 and augment is None:
        raise ValueError(f"{runner.name} needs an augment: without it all views are identical")
    if method == "supcon" and y is None:
        raise ValueError("SupCon needs labels y; use method='simclr' for unlabelled data")
    if method == "simclr" and augment is None:
        raise ValueError("SimCLR needs an augment: without it both views are identical")
    if y is not None and y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]} labels")
    loss_fn = None if runner is not None else _loss_for(method, temperature)
    labelled = method != "simclr"
    n = X.shape[0]
    batch_size = min(batch_size, n)
    gen = torch.Generator().manual_seed(seed)
    params = list(encoder.parameters()) + list(head.parameters())
    if runner is not None:
        runner.num_samples = n  # per-sample memories (a memory bank) are sized by it
        runner.setup(encoder, head)
        params += runner.trainable_parameters()
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = n // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch) if cosine else None
    hist = History()
    best_acc, best_state = -1.0, None
    start = time.perf_counter()
    # mininterval keeps the bar from writing hundreds of updates into a saved notebook.
    name = method if isinstance(method, str) else runner.name if runner is not None else "custom"
    step, total_steps = 0, epochs * steps_per_epoch
    bar = tqdm(range(1, epochs + 1), desc=f"pretrain {name}",
               disable=not progress, leave=False, mininterval=1.0)
    for epoch in bar:
        encoder.train()
        head.train()
        if runner is not None:
            runner.train()
            runner.start_epoch(epoch, epochs)
        perm = torch.randperm(n, generator=gen)
        total, batches = 0.0, 0
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            xb = X[idx]
            if runner is not None:
                views = [augment(xb, gen) for _ in range(runner.n_views)] if augment is not None else [xb]
                loss = runner.loss(encoder, head, views, y[idx] if y is not None else None, idx)
            elif augment is not None:
                views = torch.cat([augment(xb, gen), augment(xb, gen)])  # [2B, ...], one forward
                z = head(encoder(views)).view(2, len(idx), -1).transpose(0, 1)  # [B, 2, D]
            else:
                z = head(encoder(xb)).unsqueeze(1)  # [B, 1, D]
            if runner is None:
                loss = loss_fn(z, y[idx] if labelled and y is not None else None)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch}; lower lr?")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if runner is not None:
                runner.before_step(step, total_steps)
            opt.step()
            if sched is not None:
                sched.step()
            if runner is not None:
                runner.after_step(encoder, head, step, total_steps)
            step += 1
            total, batches = total + loss.item(), batches + 1
        hist.loss.append(total / max(batches, 1))
        postfix = {"loss": f"{hist.loss[-1]:.3f}"}
        logged = runner.end_epoch(encoder, head) if runner is not None else {}
        if on_epoch_end is not None:
            encoder.eval()
            logged = {**logged, **on_epoch_end(encoder, epoch)}
        for key, value in logged.items():
            hist.metrics.setdefault(key, []).append(float(value))
        if val is not None:
            X_ref, y_ref, X_val, y_val = val
            acc = knn_accuracy(extract_features(encoder, X_ref), y_ref,
                               extract_features(encoder, X_val), y_val, k=knn_k)
            hist.val_acc.append(acc)
            postfix["val_knn"] = f"{acc:.3f}"
            if acc > best_acc:
                best_acc, hist.best_epoch = acc, epoch
                best_state = copy.deepcopy(encoder.state_dict())
        bar.set_postfix(postfix, refresh=False)
    if best_state is not None:
        encoder.load_state_dict(best_state)
    else:
        hist.best_epoch = epochs
    encoder.eval()
    hist.seconds = time.perf_counter() - start
    return hist


# ----------------------------------------------------------------------------- linear probe


@dataclass
class LinearProbe:
    """A linear classifier on standardized frozen features, with its training curves.

    Attributes
    ----------
    linear : nn.Linear
    mean, std : Tensor, shape [D]
        Standardization fitted on the training features.
    history : dict of str -> list of float
        ``"loss"`` and ``"train_acc"`` per step, and ``"val_acc"`` if validation data was given.
    weight_decay : float
    """

    linear: nn.Linear
    mean: Tensor
    std: Tensor
    history: dict[str, list[float]]
    weight_decay: float

    @torch.no_grad()
    def predict(self, feats: Tensor) -> Tensor:
        """Class labels ``[N]`` for features ``[N, D]``."""
        _check_feats(feats, "feats", width=self.mean.shape[0])
        return self.linear((feats - self.mean) / self.std).argmax(dim=1)

    def accuracy(self, feats: Tensor, y: Tensor) -> float:
        """Fraction of correct predictions."""
        _check_xy(feats, y, "feats", "y")
        return (self.predict(feats) == y).float().mean().item()


def fit_linear_probe(
    train_feats: Tensor,
    train_y: Tensor,
    val_feats: Tensor | None = None,
    val_y: Tensor | None = None,
    *,
    weight_decay: float = 1e-4,
    steps: int = 100,
    lr: float = 0.1,
    seed: int = 0,
) -> LinearProbe:
    """Train a linear layer on frozen features with full-batch Adam and cross-entropy.

    The features are standardized with the training mean and std (constant dimensions get std 1),
    which makes one learning rate work for any encoder. The problem is convex, so a few hundred
    full-batch steps converge; ``weight_decay`` is the only knob worth tuning.

    Parameters
    ----------
    train_feats : Tensor, shape [N, D]
    train_y : Tensor, shape [N], integer labels
    val_feats, val_y : Tensor, optional
        If given, validation accuracy is recorded at every step (for curves only).
    weight_decay : float
        L2 penalty (coupled, as in ``torch.optim.Adam``).
    steps, lr, seed
        Optimisation settings; ``seed`` fixes the initial weights.

    Returns
    -------
    LinearProbe
    """
    _check_xy(train_feats, train_y, "train_feats", "train_y")
    if (val_feats is None) != (val_y is None):
        raise ValueError("pass both val_feats and val_y, or neither")
    if val_feats is not None:
        _check_xy(val_feats, val_y, "val_feats", "val_y")
        _check_feats(val_feats, "val_feats", width=train_feats.shape[1])
    weight_decay = _check_real("weight_decay", weight_decay, strict=False)
    steps = _check_int("steps", steps, 1)
    lr = _check_real("lr", lr)
    train_feats = train_feats.detach().float()
    mean = train_feats.mean(dim=0)
    std = train_feats.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    z = (train_feats - mean) / std
    zv = (val_feats.detach().float() - mean) / std if val_feats is not None else None
    n_classes = int(train_y.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(z.shape[1], n_classes)
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    history: dict[str, list[float]] = {"loss": [], "train_acc": []}
    if zv is not None:
        history["val_acc"] = []
    with single_thread():
        for _ in range(steps):
            logits = linear(z)
            loss = F.cross_entropy(logits, train_y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history["loss"].append(loss.item())
            history["train_acc"].append((logits.argmax(1) == train_y).float().mean().item())
            if zv is not None:
                with torch.no_grad():
                    history["val_acc"].append((linear(zv).argmax(1) == val_y).float().mean().item())
    return LinearProbe(linear.eval(), mean, std, history, weight_decay)


# ----------------------------------------------------------------------------- evaluation


def evaluate_frozen(
    train_feats: Tensor,
    train_y: Tensor,
    test_feats: Tensor,
    test_y: Tensor,
    *,
    weight_decays: Sequence[float] = (0.0, 1e-4, 1e-3, 1e-2),
    ks: Sequence[int] = (1, 5, 10, 20),
    val_size: float = 0.2,
    seed: int = 0,
) -> dict:
    """Linear-probe and kNN accuracy on held-out features, hyper-parameters chosen on validation.

    A stratified validation part (``val_size``) is carved out of the training features; the
    probe's weight decay and kNN's k are chosen there; the probe is refitted on all training
    features, and the held-out features are used exactly once.

    Returns
    -------
    dict
        ``linear_acc``, ``knn_acc`` (fractions), ``weight_decay``, ``k`` (the choices),
        ``val_linear_acc``, ``val_knn_acc`` (validation scores of the choices) and ``probe``.
    """
    from clbook.data import train_val_split

    _check_xy(train_feats, train_y, "train_feats", "train_y")
    _check_xy(test_feats, test_y, "test_feats", "test_y")
    _check_feats(test_feats, "test_feats", width=train_feats.shape[1])
    if not weight_decays:
        raise ValueError("weight_decays is empty: give at least one weight decay to choose from")
    f_fit, y_fit, f_val, y_val = train_val_split(train_feats, train_y, val_size, seed)
    scores = {wd: fit_linear_probe(f_fit, y_fit, weight_decay=wd, seed=seed).accuracy(f_val, y_val)
              for wd in weight_decays}
    wd = max(scores, key=scores.get)  # ties: the first, i.e. the smallest listed penalty
    knn_scores = {k: knn_accuracy(f_fit, y_fit, f_val, y_val, k) for k in ks if k <= len(y_fit)}
    if not knn_scores:
        raise ValueError(f"ks: no k in {list(ks)} fits the {len(y_fit)} training features left after validation")
    k = max(knn_scores, key=knn_scores.get)
    probe = fit_linear_probe(train_feats, train_y, weight_decay=wd, seed=seed)
    return {
        "linear_acc": probe.accuracy(test_feats, test_y),
        "knn_acc": knn_accuracy(train_feats, train_y, test_feats, test_y, k),
        "weight_decay": wd,
        "k": k,
        "val_linear_acc": scores[wd],
        "val_knn_acc": knn_scores[k],
        "probe": probe,
    }


# ----------------------------------------------------------------------------- plots


def plot_history(history: History, ax=None, title: str | None = None):
    """Training loss per epoch and, if recorded, validation kNN accuracy on a twin axis.

    Returns the loss Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2), dpi=90)
    epochs = np.arange(1, len(history.loss) + 1)
    ax.plot(epochs, history.loss, color="C0", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="C0")
    if history.val_acc:
        ax2 = ax.twinx()
        ax2.plot(epochs, history.val_acc, color="C1", label="validation kNN accuracy")
        ax2.axvline(history.best_epoch, color="C1", ls=":", lw=1)
        ax2.set_ylabel("validation kNN accuracy", color="C1")
    if title:
        ax.set_title(title)
    return ax


def plot_probe(probes: dict[str, LinearProbe], axes=None):
    """Loss and accuracy curves of several linear probes (e.g. trained vs random encoder).

    Parameters
    ----------
    probes : dict
        Name -> :class:`LinearProbe`.
    axes : pair of Axes, optional

    Returns
    -------
    pair of Axes
        (loss, accuracy).
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
    ax_loss, ax_acc = axes
    for i, (name, probe) in enumerate(probes.items()):
        h = probe.history
        ax_loss.plot(h["loss"], color=f"C{i}", label=name)
        ax_acc.plot(h["train_acc"], color=f"C{i}", ls="--", label=f"{name} (train)")
        if "val_acc" in h:
            ax_acc.plot(h["val_acc"], color=f"C{i}", label=f"{name} (validation)")
    ax_loss.set(xlabel="probe step", ylabel="cross-entropy", title="linear probe loss")
    ax_acc.set(xlabel="probe step", ylabel="accuracy", title="linear probe accuracy")
    ax_loss.legend()
    ax_acc.legend(fontsize="small")
    return axes
