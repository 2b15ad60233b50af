"""The lecture notes' own protocols, run as the notes ran them (notebooks 04 and 05).

The lecture notes behind the course report an Iris and an MNIST experiment. Notebooks 04 and 05
re-run them with these functions, and then change one thing at a time. They are deliberately
plain: SGD without momentum or schedule, no projection head, no augmentation, no validation
data, and a linear head on unnormalized features. The course's own protocol is
:mod:`clbook.experiments`.

The notes' loss is their ``SupConLoss``: SupCon's L_out on *raw* inner products divided by the
temperature (their code removes the normalization), averaged over the anchors that have
positives and multiplied by the temperature (``scale_by_temperature=True``). In clbook's terms
that is ``supcon_loss(f, labels, temperature=t, **NOTES_LOSS)``, the default of every function
here; ``normalize=True, base_temperature=None`` gives the course's cosine SupCon instead.
Since a loss on unnormalized features sees ``f_i . f_j / t = cos_ij * |f_i| |f_j| / t``, its
effective temperature on cosines is about ``t / |f|^2``, and the encoder can change it by changing
the length of its features (a loss on unnormalized features learns its own temperature): the
functions here record the mean feature norm of every epoch for that reason.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.checks import check_images, check_int, check_real
from clbook.data import Split
from clbook.encoders import make_encoder
from clbook.evaluation import evaluate_few_labels, evaluate_frozen, extract_features
from clbook.metrics import feature_metrics
from clbook.losses import supcon_loss
from clbook.runtime import progress_bar, resolve_device, single_thread

__all__ = [
    "NOTES_LOSS",
    "NOTES_MNIST",
    "NOTES_MNIST_REPORTED",
    "NotesHistory",
    "notes_pretrain",
    "notes_pretrain_history",
    "notes_pretrain_many",
    "HeadTrace",
    "notes_linear_head",
    "notes_linear_head_many",
    "notes_mnist_inputs",
    "run_notes_mnist",
]

#: The notes' loss as :func:`clbook.losses.supcon_loss` options: raw inner products, times the temperature.
NOTES_LOSS = {"normalize": False, "base_temperature": 1.0}

#: The notes' MNIST protocol: pre-training (SGD, no momentum, batches of 256, temperature 10, 32
#: epochs) and the linear head (Adam at 0.1, batches of 256; 2 epochs on the SupCon CNN's features
#: and 4 on the random CNN's, as in their two runs). Images are scaled to [-1, 1].
NOTES_MNIST = {
    "epochs": 32, "batch_size": 256, "lr": 0.01, "temperature": 10.0,
    "head_batch_size": 256, "head_lr": 0.1, "head_epochs": {"supcon": 2, "random": 4},
}

#: Test accuracies the notes report for that protocol (their last evaluation, on 60,000 training digits).
NOTES_MNIST_REPORTED = {"supcon": 0.9889, "random": 0.8836}


@dataclass
class NotesHistory:
    """What :func:`notes_pretrain_history` records, one entry per epoch.

    Attributes
    ----------
    loss : list of float
        Mean training loss of the epoch (over samples).
    feature_norm : list of float
        Mean L2 norm of the encoder's outputs over the epoch's batches, as the loss saw them
        (the weights change during the epoch). With the notes' loss the effective temperature on
        cosines is about ``temperature / feature_norm**2``.
    steps : int
        Optimizer steps taken.
    samples : int
        Samples seen (``epochs * N``).
    seconds : float
        Wall-clock time of the training loop.
    """

    loss: list[float] = field(default_factory=list)
    feature_norm: list[float] = field(default_factory=list)
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0


def _check_notes_settings(epochs: int, batch_size: int, lr: float, temperature: float) -> None:
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_real("lr", lr)
    check_real("temperature", temperature)


def _check_loss_options(normalize: bool, base_temperature: float | None) -> None:
    if not isinstance(normalize, (bool, np.bool_)):
        raise ValueError(f"normalize must be True or False, got {normalize!r}")
    if base_temperature is not None:
        check_real("base_temperature", base_temperature)


def notes_pretrain_history(
    encoder: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    normalize: bool = False,
    base_temperature: float | None = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> NotesHistory:
    """SupCon on the encoder's own outputs with plain SGD, in place, as the notes train.

    Every epoch visits the samples in a fresh random order in batches of ``batch_size``, the last
    one smaller if ``batch_size`` does not divide N (as a default ``DataLoader`` does). The loss is
    :func:`clbook.losses.supcon_loss` (L_out) on ``encoder(X[batch])``, one view per sample; by
    default the notes' own loss (raw inner products, times the temperature: :data:`NOTES_LOSS`).
    No head, no augmentation, no learning-rate schedule, and the weights of the last epoch are
    kept: nothing is chosen on validation data.

    Parameters
    ----------
    encoder : nn.Module
        Maps ``X[batch]`` to ``[B, D]``; trained in place, on the device of its parameters (the
        batches are moved there), and left in eval mode.
    X : Tensor, shape [N, ...]
    y : Tensor, shape [N], integer labels
    epochs, batch_size : int
    lr : float
        Learning rate of ``torch.optim.SGD`` (no momentum, no weight decay).
    temperature : float
        SupCon temperature.
    normalize : bool, default False
        L2-normalize the outputs first (the course's cosine SupCon); the notes do not.
    base_temperature : float or None, default 1.0
        The loss is multiplied by ``temperature / base_temperature``; 1.0 is the notes'
        ``scale_by_temperature=True``, None leaves the loss unscaled.
    seed : int
        Seeds the batch order.
    progress : bool
        Show progress (:func:`clbook.runtime.progress_bar`).

    Returns
    -------
    NotesHistory
        Loss and mean feature norm of every epoch, steps, samples seen, seconds.
    """
    if y.dim() != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have shape [{X.shape[0]}], got {tuple(y.shape)}")
    _check_notes_settings(epochs, batch_size, lr, temperature)
    _check_loss_options(normalize, base_temperature)
    dev = next(encoder.parameters()).device
    X, y = X.to(dev), y.to(dev)  # no copy when they are there already
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(encoder.parameters(), lr=lr)
    n, history = X.shape[0], NotesHistory()
    start = time.perf_counter()
    encoder.train()
    bar = progress_bar(range(1, epochs + 1), "notes' SupCon", progress)
    for epoch in bar:
        perm = torch.randperm(n, generator=gen).to(dev)
        total = norms = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            f = encoder(X[idx])
            if not torch.isfinite(f).all():
                raise FloatingPointError(f"the features became infinite or NaN in epoch {epoch}; lower lr?")
            try:
                loss = supcon_loss(f, labels=y[idx], temperature=temperature, normalize=normalize,
                                   base_temperature=base_temperature)
            except ValueError as err:
                if "overflowed" not in str(err):  # supcon_loss's message for a non-finite result
                    raise
                raise FloatingPointError(f"the loss overflowed in epoch {epoch} (largest |feature| "
                                         f"{f.detach().abs().max().item():.3g}); lower lr?") from None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            norms += f.detach().norm(dim=1).sum().item()
            history.steps += 1
        history.loss.append(total / n)
        history.feature_norm.append(norms / n)
        history.samples += n
        bar.set_postfix({"loss": f"{history.loss[-1]:.3f}", "|f|": f"{history.feature_norm[-1]:.2f}"})
    history.seconds = time.perf_counter() - start
    encoder.eval()
    return history


def notes_pretrain(
    encoder: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float,
    normalize: bool = False,
    base_temperature: float | None = 1.0,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """:func:`notes_pretrain_history`, returning only the mean training loss of each epoch.

    Same parameters; by default the notes' own loss (:data:`NOTES_LOSS`).
    """
    return notes_pretrain_history(encoder, X, y, epochs=epochs, batch_size=batch_size, lr=lr,
                                  temperature=temperature, normalize=normalize,
                                  base_temperature=base_temperature, seed=seed, progress=progress).loss


def _supcon_runs(z: Tensor, y: Tensor, temperature: Tensor, normalize: Tensor, scale: Tensor) -> Tensor:
    """L_out (mean over anchors with positives) of S independent batches at once.

    ``z`` is ``[S, B, D]``, ``y`` is ``[S, B]``; ``temperature``, ``normalize`` (bool) and ``scale``
    are ``[S]``: run s L2-normalizes its rows if ``normalize[s]`` and its loss is multiplied by
    ``scale[s]``. Returns the S losses ``[S]``: the same as :func:`clbook.losses.supcon_loss` on
    each ``(z[s], y[s])``, written with plain tensor operations so that S runs share every operation
    (and :func:`torch.vmap` can batch the encoders that produce ``z``).
    """
    z = torch.where(normalize[:, None, None], F.normalize(z, dim=-1), z)
    eye = torch.eye(z.shape[1], dtype=torch.bool, device=z.device)
    # The diagonal at -inf before the log-sum-exp: finite for features of any length (notebook 02).
    logits = (z @ z.transpose(1, 2) / temperature[:, None, None]).masked_fill(eye, float("-inf"))  # [S, B, B]
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    pos = (y[:, :, None] == y[:, None, :]) & ~eye
    count = pos.sum(dim=-1)  # [S, B]
    per_anchor = -torch.where(pos, log_prob, torch.zeros((), dtype=z.dtype, device=z.device)).sum(dim=-1) \
        / count.clamp(min=1)
    has = (count > 0).to(z.dtype)
    return scale * (per_anchor * has).sum(dim=-1) / has.sum(dim=-1).clamp(min=1)


def _per_run(name: str, value, n_runs: int) -> list:
    """``value`` repeated for every run, or a sequence of exactly ``n_runs`` values."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_runs:
            raise ValueError(f"{name}: need one value per run ({n_runs}), got {len(value)}")
        return list(value)
    return [value] * n_runs


def notes_pretrain_many(
    encoders: list[nn.Module],
    X: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    temperature: float | Sequence[float],
    seeds: list[int],
    normalize: bool | Sequence[bool] = False,
    base_temperature: float | None | Sequence[float | None] = 1.0,
) -> list[NotesHistory]:
    """:func:`notes_pretrain_history` for S independent runs of one small architecture, computed together.

    Run ``s`` trains ``encoders[s]`` on ``X[s]``, ``y[s]`` with the batch order of ``seeds[s]`` and
    its own loss settings, exactly as ``notes_pretrain_history(encoders[s], X[s], y[s], ...,
    seed=seeds[s])`` would: its parameters receive the gradient of its own loss only. The runs are
    stacked with :func:`torch.func.stack_module_state` and evaluated with :func:`torch.vmap`, so
    every step is one set of tensor operations for all S runs instead of S sets; for a network as
    small as the notes' Iris MLP that is several times faster. Results agree with separate runs up
    to floating-point rounding (which long SGD runs at a large learning rate can amplify).

    Parameters
    ----------
    encoders : list of S nn.Module
        Same architecture, no buffers that change in training; trained in place (on the CPU),
        left in eval mode.
    X : Tensor, shape [S, N, ...]
    y : Tensor, shape [S, N]
    epochs, batch_size, lr
        As in :func:`notes_pretrain_history`, shared by all runs.
    temperature, normalize, base_temperature
        As in :func:`notes_pretrain_history` (default: the notes' loss); each one either a single
        value for every run or a list of S values, one per run.
    seeds : list of S int
        Batch order of each run.

    Returns
    -------
    list of S NotesHistory
        Loss and mean feature norm of each epoch, per run (``seconds``: the shared loop's time).
    """
    from torch.func import functional_call, stack_module_state

    n_runs = len(encoders)
    if n_runs == 0 or len(seeds) != n_runs or X.shape[0] != n_runs or y.shape[:1] != (n_runs,):
        raise ValueError(f"need as many encoders, seeds, X[s] and y[s]; got {n_runs} encoders, {len(seeds)} seeds, "
                         f"X {tuple(X.shape)} and y {tuple(y.shape)}")
    if y.dim() != 2 or y.shape[1] != X.shape[1]:
        raise ValueError(f"y must have shape [{n_runs}, {X.shape[1]}], got {tuple(y.shape)}")
    temps = _per_run("temperature", temperature, n_runs)
    norms = _per_run("normalize", normalize, n_runs)
    bases = _per_run("base_temperature", base_temperature, n_runs)
    for t, norm, base in zip(temps, norms, bases):
        _check_notes_settings(epochs, batch_size, lr, t)
        _check_loss_options(norm, base)
    temp_t = torch.tensor([float(t) for t in temps])
    norm_t = torch.tensor([bool(v) for v in norms])
    scale_t = torch.tensor([1.0 if b is None else float(t) / float(b) for t, b in zip(temps, bases)])
    params, buffers = stack_module_state(encoders)  # leaves of shape [S, ...]
    template = copy.deepcopy(encoders[0]).to("meta")

    def forward(p: dict, b: dict, x: Tensor) -> Tensor:
        return functional_call(template, (p, b), (x,))

    batched = torch.vmap(forward)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    opt = torch.optim.SGD(params.values(), lr=lr)
    n, runs = X.shape[1], torch.arange(n_runs)[:, None]
    histories = [NotesHistory() for _ in range(n_runs)]
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens])  # [S, N]
        total, norm_sum = torch.zeros(n_runs), torch.zeros(n_runs)
        for i in range(0, n, batch_size):
            idx = perm[:, i : i + batch_size]
            f = batched(params, buffers, X[runs, idx])  # [S, B, D]
            per_run = _supcon_runs(f, y[runs, idx], temp_t, norm_t, scale_t)
            if not torch.isfinite(per_run).all():
                raise FloatingPointError(f"loss became {per_run.tolist()} in epoch {epoch}; lower lr?")
            opt.zero_grad(set_to_none=True)
            per_run.sum().backward()  # run s's parameters get d(loss_s) only
            opt.step()
            total += per_run.detach() * idx.shape[1]
            norm_sum += f.detach().norm(dim=-1).sum(dim=-1)
        for s in range(n_runs):
            histories[s].loss.append(total[s].item() / n)
            histories[s].feature_norm.append(norm_sum[s].item() / n)
    seconds = time.perf_counter() - start
    steps = epochs * math.ceil(n / batch_size)
    for h in histories:
        h.steps, h.samples, h.seconds = steps, epochs * n, seconds
    with torch.no_grad():
        for s, enc in enumerate(encoders):
            for name, p in enc.named_parameters():
                p.copy_(params[name][s])
            enc.eval()
    return histories


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


def notes_linear_head_many(
    train_feats: Tensor,
    train_y: Tensor,
    score: dict[str, tuple[Tensor, Tensor]],
    *,
    seeds: list[int],
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 0.1,
    score_every: int = 1,
) -> list[HeadTrace]:
    """:func:`notes_linear_head` for S independent heads, computed together.

    Head ``s`` is trained on ``train_feats[s]``, ``train_y[s]`` with seed ``seeds[s]`` (initial
    weights and batch order) exactly as ``notes_linear_head(train_feats[s], train_y[s], ...,
    seed=seeds[s])`` would, and scored on ``score[name][0][s]``, ``score[name][1][s]``. The S heads
    are one ``[S, C, D]`` weight tensor: Adam's update is elementwise, and the summed loss gives each
    head the gradient of its own mean cross-entropy only, so every step is one set of batched
    operations for all S heads. Results agree with separate runs up to floating-point rounding
    (a test checks it). Long heads on many encoders (thousands of steps) become affordable.

    Parameters
    ----------
    train_feats : Tensor, shape [S, N, D]
    train_y : Tensor, shape [S, N], integer labels
    score : dict
        name -> ``(features [S, M, D], labels [S, M])``.
    seeds : list of S int
    epochs, batch_size, lr, score_every
        As in :func:`notes_linear_head`, shared by all heads.

    Returns
    -------
    list of S HeadTrace
    """
    if train_feats.dim() != 3 or train_y.shape != train_feats.shape[:2]:
        raise ValueError(f"train_feats must be [S, N, D] and train_y [S, N], got {tuple(train_feats.shape)} "
                         f"and {tuple(train_y.shape)}")
    n_runs, n, d = train_feats.shape
    if len(seeds) != n_runs:
        raise ValueError(f"need one seed per head: {n_runs} heads, {len(seeds)} seeds")
    for name, (feats, labels) in score.items():
        if feats.dim() != 3 or feats.shape[0] != n_runs or feats.shape[2] != d or labels.shape != feats.shape[:2]:
            raise ValueError(f"score[{name!r}] must be features [{n_runs}, M, {d}] and labels [{n_runs}, M], "
                             f"got {tuple(feats.shape)} and {tuple(labels.shape)}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("score_every", score_every)):
        check_int(name, value, 1)
    check_real("lr", lr)
    n_classes = int(train_y.max()) + 1
    starts = []
    for seed in seeds:  # each head's initial weights exactly as notes_linear_head draws them
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            starts.append(nn.Linear(d, n_classes))
    weight = nn.Parameter(torch.stack([h.weight.detach() for h in starts]))  # [S, C, D]
    bias = nn.Parameter(torch.stack([h.bias.detach() for h in starts]))  # [S, C]
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    opt = torch.optim.Adam([weight, bias], lr=lr)
    traces = [HeadTrace([], {name: [] for name in score}, starts[s]) for s in range(n_runs)]
    runs = torch.arange(n_runs)[:, None]

    def logits(feats: Tensor) -> Tensor:  # [S, B, D] -> [S, B, C]
        return torch.baddbmm(bias[:, None, :], feats, weight.transpose(1, 2))

    @torch.no_grad()
    def record(step: int) -> None:
        for name, (feats, labels) in score.items():
            acc = (logits(feats).argmax(-1) == labels).float().mean(dim=1)  # [S]
            for s, value in enumerate(acc.tolist()):
                traces[s].acc[name].append(value)
        for trace in traces:
            trace.steps.append(step)

    step = 0
    with single_thread():  # small batched products: threads only add overhead
        for _ in range(epochs):
            perm = torch.stack([torch.randperm(n, generator=g) for g in gens])  # [S, N]
            for i in range(0, n, batch_size):
                idx = perm[:, i : i + batch_size]
                out = logits(train_feats[runs, idx])  # [S, B, C]
                # Sum over heads of each head's mean cross-entropy: head s gets d(loss_s) only.
                loss = F.cross_entropy(out.reshape(-1, n_classes), train_y[runs, idx].reshape(-1),
                                       reduction="none").view(n_runs, -1).mean(dim=1).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if step % score_every == 0:
                    record(step)
        if not traces[0].steps or traces[0].steps[-1] != step:
            record(step)
    with torch.no_grad():
        for s, trace in enumerate(traces):
            trace.head.weight.copy_(weight[s])
            trace.head.bias.copy_(bias[s])
    return traces


# ----------------------------------------------------------------------------- the notes' MNIST protocol


def notes_mnist_inputs(X: Tensor) -> Tensor:
    """Digits scaled to [-1, 1], as the notes' ``transforms.Normalize((0.5,), (0.5,))``: ``2 x - 1``.

    ``X`` [N, 1, 28, 28], floats in [0, 1] or ``uint8`` (divided by 255 first); a new tensor, the
    caller's is not modified.
    """
    return check_images("X", X) * 2.0 - 1.0


def run_notes_mnist(
    split: Split,
    epochs: int = NOTES_MNIST["epochs"],
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = "auto",
    *,
    temperature: float = NOTES_MNIST["temperature"],
    normalize: bool = False,
    base_temperature: float | None = 1.0,
    batch_size: int = NOTES_MNIST["batch_size"],
    lr: float = NOTES_MNIST["lr"],
    few_labels: bool = False,
) -> dict:
    """The notes' MNIST experiment: their CNN, their loss, their head, and the course's probe beside it.

    The notes' protocol (:data:`NOTES_MNIST`): images scaled to [-1, 1]
    (:func:`notes_mnist_inputs`); the notes' CNN (``make_encoder("notes-cnn", seed=seed)``, a ReLU on
    its 128 features) pre-trained with the notes' SupCon loss on those features directly, by SGD at
    0.01 in batches of 256 at temperature 10, the last epoch kept; then a linear head by Adam on the
    frozen, unnormalized features, its *final* test accuracy reported (the notes' numbers,
    :data:`NOTES_MNIST_REPORTED`, are their last evaluation). The random twin (same seed, never
    trained) gets the same treatment. Both encoders are also scored with the course's protocol
    (:func:`clbook.evaluation.evaluate_frozen`: standardized features, weight decay and kNN's k
    chosen on validation digits, a probe trained to convergence).

    Parameters
    ----------
    split : Split
        MNIST (:func:`clbook.data.load_mnist`); its images in [0, 1] (or ``uint8``).
    epochs : int, default 32
        Pre-training epochs (the notes' 32; fewer for a quick look).
    seed : int
        Initial weights, batch order, head and probe.
    progress : bool
        One progress line for the pre-training.
    device : str or torch.device, default "auto"
        Where pre-training, features and the course's probe run (CUDA, then MPS, then the CPU);
        the notes' head runs on the CPU.
    temperature, normalize, base_temperature, batch_size, lr
        The pre-training; the defaults are the notes'. ``normalize=True, base_temperature=None``
        is the course's cosine SupCon.
    few_labels : bool, default False
        Also the few-label evaluation of both encoders (:func:`clbook.evaluation.evaluate_few_labels`).

    Returns
    -------
    dict
        ``"supcon"`` and ``"random"``: each a dict with ``notes_head_acc`` (the notes' head, final
        step), ``linear_acc`` and ``knn_acc`` (the course's probe and kNN), ``feature_norm`` (mean
        L2 norm of its training features), ``head_epochs``, the held-out features' ``std``,
        ``uniformity`` and ``effective_rank`` (:func:`clbook.metrics.feature_metrics`) and ``few``
        (empty unless ``few_labels``). Then, for the pre-training:
        ``loss`` and ``feature_norm`` (one per epoch, :class:`NotesHistory`), ``steps``,
        ``samples``, ``seconds``, ``seconds_per_epoch``, and ``settings`` (everything above) and
        ``data`` (the split's source).
    """
    check_int("epochs", epochs, 1)
    check_int("seed", seed, 0)
    dev = resolve_device(device)
    X_train, X_test = notes_mnist_inputs(split.X_train), notes_mnist_inputs(split.X_test)
    encoder = make_encoder("notes-cnn", seed=seed).to(dev)
    history = notes_pretrain_history(encoder, X_train, split.y_train, epochs=epochs, batch_size=batch_size, lr=lr,
                                     temperature=temperature, normalize=normalize,
                                     base_temperature=base_temperature, seed=seed, progress=progress)
    out: dict = {}
    for name, enc in (("supcon", encoder), ("random", make_encoder("notes-cnn", seed=seed).eval())):
        f_train = extract_features(enc, X_train, device=dev).cpu()
        f_test = extract_features(enc, X_test, device=dev).cpu()
        head_epochs = NOTES_MNIST["head_epochs"][name]
        head = notes_linear_head(f_train, split.y_train.cpu(), {"test": (f_test, split.y_test.cpu())},
                                 epochs=head_epochs, batch_size=NOTES_MNIST["head_batch_size"],
                                 lr=NOTES_MNIST["head_lr"], score_every=10**9, seed=seed)
        course = evaluate_frozen(f_train, split.y_train, f_test, split.y_test, seed=seed, device=dev)
        out[name] = {"notes_head_acc": head.final("test"), "linear_acc": course["linear_acc"],
                     "knn_acc": course["knn_acc"], "feature_norm": f_train.norm(dim=1).mean().item(),
                     "head_epochs": head_epochs, **feature_metrics(f_test),
                     "few": evaluate_few_labels(f_train, split.y_train, f_test, split.y_test, seed=seed, device=dev)
                     if few_labels else {}}
    encoder.cpu()
    out.update(
        loss=history.loss, feature_norm=history.feature_norm, steps=history.steps, samples=history.samples,
        seconds=history.seconds, seconds_per_epoch=history.seconds / epochs,
        settings={"epochs": epochs, "batch_size": batch_size, "lr": lr, "temperature": temperature,
                  "normalize": bool(normalize), "base_temperature": base_temperature, "seed": seed,
                  "head_batch_size": NOTES_MNIST["head_batch_size"], "head_lr": NOTES_MNIST["head_lr"],
                  "device": str(dev)},
        data=split.source,
    )
    return out
