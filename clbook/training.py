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
from clbook.distributed import average_gradients, average_value
from clbook.methods import Method, as_method
from clbook.runtime import progress_bar, resolve_device, set_seed, single_thread

__all__ = [
    "set_seed",
    "single_thread",
    "extract_features",
    "History",
    "pretrain",
    "train_step",
    "check_method_data",
    "progress_bar",
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
    steps : int
        Optimizer steps taken.
    samples : int
        Samples seen (steps times the batch size; each sample's views count once).
    """

    loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    metrics: dict[str, list[float]] = field(default_factory=dict)
    steps: int = 0
    samples: int = 0


def train_step(method: Method, encoder: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer,
               scheduler, xb: Tensor, yb: Tensor | None, index: Tensor, augment, generator: torch.Generator,
               step: int, total_steps: int) -> float:
    """One optimizer step of any method: the per-step code of :func:`pretrain` and ``python -m clbook pretrain``.

    Draws ``method.n_views`` augmented views of the batch ``xb`` with ``augment.views`` (or
    ``augment(xb, generator)`` once per view for a plain callable; ``xb`` itself without an
    augmentation), computes the method's loss, backpropagates, averages the gradients over
    the processes when several train together (:func:`clbook.distributed.average_gradients`; a
    no-op with one), and steps the optimizer and the scheduler, with the method's hooks around
    the step. Returns the loss of the (global) batch.
    """
    if augment is None:
        views = [xb]
    elif hasattr(augment, "views"):  # DigitAugment, MultiCrop: the same draws as n_views calls for DigitAugment
        views = augment.views(xb, method.n_views, generator)
    else:  # any callable augment(x, generator)
        views = [augment(xb, generator) for _ in range(method.n_views)]
    loss = method.loss(encoder, head, views, yb, index)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; lower lr?")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients([p for group in optimizer.param_groups for p in group["params"]])
    method.before_step(step, total_steps)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    method.after_step(encoder, head, step, total_steps)
    return average_value(loss)  # the global batch's loss, on every process


def check_method_data(method: Method, y: Tensor | None, augment) -> None:
    """Refuse a run the method cannot learn from: labels it needs, or views that would all be identical."""
    if method.needs_labels and y is None:
        raise ValueError(f"{method.name} needs labels y")
    if method.needs_augment and method.n_views > 1 and augment is None:
        raise ValueError(f"{method.name} needs an augment: without it all views are identical")
    made = getattr(augment, "n_views", None)  # a MultiCrop makes a fixed number of views
    if made is not None and made != method.n_views:
        raise ValueError(f"the augment makes {made} views but {method.name} takes {method.n_views} "
                         "(the method must take as many views as the augment makes)")


def _check_data(X: Tensor, y: Tensor | None) -> None:
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
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]} labels")


def pretrain(
    encoder: nn.Module,
    head: nn.Module,
    X: Tensor,
    y: Tensor | None = None,
    *,
    method: str | Method | Callable = "supcon",
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
    device: str | torch.device | None = "auto",
) -> History:
    """Contrastive pre-training of ``encoder`` with a projection ``head``, in place.

    Parameters
    ----------
    encoder, head : nn.Module
        The loss is computed on ``head(encoder(x))``; only the encoder is kept afterwards. Both are
        moved to ``device`` (and stay there).
    X : Tensor, shape [N, ...]
        Training inputs, whole, in memory (on any device: each batch is moved to ``device``).
    y : Tensor, shape [N], optional
        Labels. Required by methods that use them (SupCon); self-supervised methods ignore them.
    method : str, Method or callable
        A name from :data:`clbook.methods.REGISTRY` (``"supcon"``, ``"simclr"``, ``"moco"``,
        ``"memory_bank"``, ``"simsiam"``, ``"byol"``, ``"swav"``), a
        :class:`clbook.methods.Method` instance, or a loss callable that gets projections ``z`` of
        shape [B, V, D] and labels [B] (or None) and returns a scalar.
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
        Passed to a named method that takes a temperature.
    augment : callable, optional
        ``augment(x_batch, generator) -> x_batch`` drawing fresh randomness per sample, e.g.
        :class:`clbook.data.DigitAugment`, or an object with a method
        ``views(x_batch, n_views, generator) -> list of batches`` such as
        :class:`clbook.data.MultiCrop` (whose views may differ in size). With it every sample
        contributes ``method.n_views`` views; without it, one (SupCon with labels still has positives: the other samples of its
        class).
    val : (X_ref, y_ref, X_val, y_val), optional
        Reference and validation sets for monitoring: after each epoch, kNN accuracy of
        ``X_val`` against ``X_ref`` in feature space. The weights of the best epoch are kept.
    knn_k : int, default 10
        k for that monitoring.
    seed : int
        Seeds the batch order and the augmentations.
    progress : bool
        Show progress (:func:`clbook.runtime.progress_bar`: one line per run in a notebook).
    on_epoch_end : callable, optional
        ``on_epoch_end(encoder, epoch) -> dict`` of figures (e.g. collapse diagnostics on
        validation features), called after every epoch in eval mode and logged in
        ``History.metrics``.
    device : str or torch.device, default "auto"
        CUDA, then MPS, then the CPU (:func:`clbook.runtime.resolve_device`), or a device name.

    Returns
    -------
    History
    """
    _check_data(X, y)
    epochs, knn_k = _check_int("epochs", epochs, 1), _check_int("knn_k", knn_k, 1)
    batch_size = _check_int("batch_size", batch_size, 2)  # a batch of one has no negatives: nothing to learn
    lr, temperature = _check_real("lr", lr), _check_real("temperature", temperature)
    weight_decay = _check_real("weight_decay", weight_decay, strict=False)
    if val is not None and (not isinstance(val, (tuple, list)) or len(val) != 4):
        raise ValueError("val must be a tuple (X_ref, y_ref, X_val, y_val)")
    method = as_method(method, temperature, method_options)
    check_method_data(method, y, augment)
    dev = resolve_device(device)
    encoder.to(dev)
    head.to(dev)
    n, batch_size = X.shape[0], min(batch_size, X.shape[0])
    gen = torch.Generator().manual_seed(seed)
    method.num_samples = n  # per-sample memories (a memory bank) are sized by it
    method.setup(encoder, head)
    method.to(dev)
    params = [*encoder.parameters(), *head.parameters(), *method.trainable_parameters()]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch, total_steps = n // batch_size, epochs * (n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps) if cosine else None
    hist, best_acc, best_state = History(), -1.0, None
    start = time.perf_counter()
    bar = progress_bar(range(1, epochs + 1), f"pretrain {method.name}", progress)
    for epoch in bar:
        for module in (encoder, head, method):
            module.train()
        method.start_epoch(epoch, epochs)
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            total += train_step(method, encoder, head, opt, sched, X[idx].to(dev),
                                y[idx].to(dev) if y is not None else None, idx, augment, gen,
                                hist.steps, total_steps)
            hist.steps, hist.samples = hist.steps + 1, hist.samples + len(idx)
        hist.loss.append(total / steps_per_epoch)
        logged = method.end_epoch(encoder, head)
        if on_epoch_end is not None:
            encoder.eval()
            logged = {**logged, **on_epoch_end(encoder, epoch)}
        for key, value in logged.items():
            hist.metrics.setdefault(key, []).append(float(value))
        postfix = {"loss": f"{hist.loss[-1]:.3f}"}
        if val is not None:
            acc = knn_accuracy(extract_features(encoder, val[0]), val[1], extract_features(encoder, val[2]),
                               val[3], k=knn_k, device=dev)
            hist.val_acc.append(acc)
            postfix["val_knn"] = f"{acc:.3f}"
            if acc > best_acc:
                best_acc, hist.best_epoch = acc, epoch
                best_state = copy.deepcopy(encoder.state_dict())
        bar.set_postfix(postfix, refresh=False)
    if best_state is not None:  # validation data chose the epoch: keep its weights
        encoder.load_state_dict(best_state)
    hist.best_epoch = hist.best_epoch or epochs  # without it, the last epoch
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
