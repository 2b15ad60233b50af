"""The lecture notes' own protocols, run as the notes ran them (notebooks 04 and 05).

The lecture notes behind the course report an Iris and an MNIST experiment. Notebooks 04 and 05
re-run them with these functions, and then change one thing at a time. They are deliberately
plain: SGD without momentum or schedule, no projection head, no augmentation, no validation
data, and a linear head on unnormalized features. The course's own protocol is
:mod:`clbook.experiments`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.checks import check_int, check_real
from clbook.losses import supcon_loss
from clbook.runtime import progress_bar, single_thread

__all__ = ["notes_pretrain", "notes_pretrain_many", "HeadTrace", "notes_linear_head"]


def _check_notes_settings(epochs: int, batch_size: int, lr: float, temperature: float) -> None:
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_real("lr", lr)
    check_real("temperature", temperature)


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
        Show progress (:func:`clbook.runtime.progress_bar`).

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
    for epoch in progress_bar(range(1, epochs + 1), "notes' SupCon", progress):
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
        check_int(name, value, 1)
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
