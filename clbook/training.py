"""Pre-training: one loop for every method, its history, and a plot of it.

Evaluation hygiene: if a validation set is given, :func:`pretrain` measures kNN accuracy on it
after every epoch and keeps the weights of the best epoch, so the number of epochs is chosen on
validation data. Frozen-feature evaluation lives in :mod:`clbook.evaluation` (re-exported here).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm  # plain text bar: no ipywidgets needed, renders in notebooks too

from clbook.checks import check_int as _check_int, check_real as _check_real
from clbook.evaluation import (
    LinearProbe,
    evaluate_frozen,
    extract_features,
    fit_linear_probe,
    knn_accuracy,
    knn_predict,
    plot_probe,
)
from clbook.losses import nt_xent_loss, supcon_loss
from clbook.methods import METHODS, Method, make_method
from clbook.runtime import set_seed, single_thread

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
