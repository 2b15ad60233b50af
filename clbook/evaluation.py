"""Frozen-feature evaluation: features, kNN, the linear probe, and the protocol that uses them.

Evaluation hygiene, used throughout the course
----------------------------------------------
:func:`evaluate_frozen` carves a validation part out of the training features, picks the probe's
weight decay and kNN's k on it, refits on all training features, and only then looks at the
held-out data, once.

Devices: ``device="auto"`` (the default) computes on CUDA, then MPS, then the CPU
(:func:`clbook.runtime.resolve_device`); results come back on the CPU. On the CPU every function
computes exactly what it computed before it took a device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.checks import check_features, check_features_labels, check_int, check_real
from clbook.runtime import resolve_device, single_thread

__all__ = [
    "extract_features",
    "knn_predict",
    "knn_accuracy",
    "LinearProbe",
    "fit_linear_probe",
    "evaluate_frozen",
    "LABELS_PER_CLASS",
    "labelled_subset",
    "evaluate_few_labels",
    "plot_probe",
    "plot_label_efficiency",
]


def _module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters live (the CPU for a module without any)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(encoder: nn.Module, X: Tensor, batch_size: int = 1024,
                     device: str | torch.device | None = None) -> Tensor:
    """Features of a frozen encoder: ``[N, ...] -> [N, D]``, computed in eval mode, no gradients.

    Parameters
    ----------
    encoder : nn.Module
        Its train/eval mode (and its device) are what they were afterwards.
    X : Tensor, shape [N, ...]
    batch_size : int
    device : str or torch.device, optional
        Where to compute. Default: where the encoder's parameters are. ``"auto"`` picks CUDA,
        then MPS, then the CPU; the encoder is moved there for the call and back afterwards.

    Returns
    -------
    Tensor, shape [N, D], on the device of ``X``.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    if not isinstance(X, Tensor) or X.dim() == 0:
        raise ValueError(f"X must be a tensor of inputs [N, ...], got {getattr(X, 'shape', type(X).__name__)}")
    home = _module_device(encoder)
    dev = home if device is None else resolve_device(device)
    was_training = encoder.training
    encoder.eval()
    if dev != home:
        encoder.to(dev)
    try:
        out = [encoder(X[i : i + batch_size].to(dev)).to(X.device) for i in range(0, X.shape[0], batch_size)]
    finally:
        encoder.train(was_training)
        if dev != home:
            encoder.to(home)
    return torch.cat(out) if out else torch.empty(0)


# ----------------------------------------------------------------------------- kNN


def knn_predict(train_feats: Tensor, train_y: Tensor, query_feats: Tensor, k: int = 10,
                device: str | torch.device | None = "auto") -> Tensor:
    """k-nearest-neighbour labels by cosine similarity, majority vote (ties: smallest label).

    Parameters
    ----------
    train_feats : Tensor, shape [N, D]
    train_y : Tensor, shape [N], integer labels >= 0
    query_feats : Tensor, shape [M, D]
    k : int
    device : str or torch.device, default "auto"

    Returns
    -------
    Tensor, shape [M], int64, on the CPU
    """
    check_features_labels(train_feats, train_y, "train_feats", "train_y")
    check_features("query_feats", query_feats, width=train_feats.shape[1])
    k = check_int("k", k, 1)
    if k > train_feats.shape[0]:
        raise ValueError(f"k must be an integer in [1, {train_feats.shape[0]}] (rows of train_feats), got {k}")
    dev = resolve_device(device)
    ref = F.normalize(train_feats.to(dev).float(), dim=1)
    labels = train_y.to(dev).long()
    n_classes = int(train_y.max()) + 1
    preds = []
    for i in range(0, query_feats.shape[0], 1024):  # bounded memory: [1024, N] similarities
        sim = F.normalize(query_feats[i : i + 1024].to(dev).float(), dim=1) @ ref.T
        idx = sim.topk(k, dim=1).indices  # [m, k]
        votes = F.one_hot(labels[idx], n_classes).sum(dim=1)  # [m, C]
        preds.append(votes.argmax(dim=1))  # argmax returns the first maximum: smallest label
    return torch.cat(preds).cpu()


def knn_accuracy(train_feats: Tensor, train_y: Tensor, test_feats: Tensor, test_y: Tensor, k: int = 10,
                 device: str | torch.device | None = "auto") -> float:
    """Fraction of ``test_feats`` whose kNN label (see :func:`knn_predict`) equals ``test_y``."""
    check_features_labels(test_feats, test_y, "test_feats", "test_y")
    return (knn_predict(train_feats, train_y, test_feats, k, device) == test_y.cpu()).float().mean().item()


# ----------------------------------------------------------------------------- linear probe


@dataclass
class LinearProbe:
    """A linear classifier on standardized frozen features, with its training curves.

    Attributes
    ----------
    linear : nn.Linear
        On the CPU.
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
        check_features("feats", feats, width=self.mean.shape[0])
        return self.linear((feats.cpu().float() - self.mean) / self.std).argmax(dim=1)

    def accuracy(self, feats: Tensor, y: Tensor) -> float:
        """Fraction of correct predictions."""
        check_features_labels(feats, y, "feats", "y")
        return (self.predict(feats) == y.cpu()).float().mean().item()


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
    device: str | torch.device | None = "auto",
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
    device : str or torch.device, default "auto"
        Where the steps run; the returned probe lives on the CPU.

    Returns
    -------
    LinearProbe
    """
    check_features_labels(train_feats, train_y, "train_feats", "train_y")
    if (val_feats is None) != (val_y is None):
        raise ValueError("pass both val_feats and val_y, or neither")
    if val_feats is not None:
        check_features_labels(val_feats, val_y, "val_feats", "val_y")
        check_features("val_feats", val_feats, width=train_feats.shape[1])
    weight_decay = check_real("weight_decay", weight_decay, strict=False)
    steps = check_int("steps", steps, 1)
    lr = check_real("lr", lr)
    dev = resolve_device(device)
    train_feats = train_feats.detach().float().cpu()
    mean = train_feats.mean(dim=0)
    std = train_feats.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    z = ((train_feats - mean) / std).to(dev)
    y = train_y.to(dev)
    zv = ((val_feats.detach().float().cpu() - mean) / std).to(dev) if val_feats is not None else None
    yv = val_y.to(dev) if val_y is not None else None
    n_classes = int(train_y.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = nn.Linear(z.shape[1], n_classes)
    linear.to(dev)
    opt = torch.optim.Adam(linear.parameters(), lr=lr, weight_decay=weight_decay)
    history: dict[str, list[float]] = {"loss": [], "train_acc": []}
    if zv is not None:
        history["val_acc"] = []
    with single_thread():
        for _ in range(steps):
            logits = linear(z)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history["loss"].append(loss.item())
            history["train_acc"].append((logits.argmax(1) == y).float().mean().item())
            if zv is not None:
                with torch.no_grad():
                    history["val_acc"].append((linear(zv).argmax(1) == yv).float().mean().item())
    return LinearProbe(linear.cpu().eval(), mean, std, history, weight_decay)


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
    device: str | torch.device | None = "auto",
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

    check_features_labels(train_feats, train_y, "train_feats", "train_y")
    check_features_labels(test_feats, test_y, "test_feats", "test_y")
    check_features("test_feats", test_feats, width=train_feats.shape[1])
    if not weight_decays:
        raise ValueError("weight_decays is empty: give at least one weight decay to choose from")
    f_fit, y_fit, f_val, y_val = train_val_split(train_feats, train_y, val_size, seed)
    scores = {wd: fit_linear_probe(f_fit, y_fit, weight_decay=wd, seed=seed, device=device).accuracy(f_val, y_val)
              for wd in weight_decays}
    wd = max(scores, key=scores.get)  # ties: the first, i.e. the smallest listed penalty
    knn_scores = {k: knn_accuracy(f_fit, y_fit, f_val, y_val, k, device) for k in ks if k <= len(y_fit)}
    if not knn_scores:
        raise ValueError(f"ks: no k in {list(ks)} fits the {len(y_fit)} training features left after validation")
    k = max(knn_scores, key=knn_scores.get)
    probe = fit_linear_probe(train_feats, train_y, weight_decay=wd, seed=seed, device=device)
    return {
        "linear_acc": probe.accuracy(test_feats, test_y),
        "knn_acc": knn_accuracy(train_feats, train_y, test_feats, test_y, k, device),
        "weight_decay": wd,
        "k": k,
        "val_linear_acc": scores[wd],
        "val_knn_acc": knn_scores[k],
        "probe": probe,
    }


# ----------------------------------------------------------------------------- few labels

#: Labels per class of the few-label evaluation (SimCLR v2's semi-supervised setting, at MNIST scale).
LABELS_PER_CLASS = (1, 10, 100)


def labelled_subset(y: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Indices of ``per_class`` examples of every class of ``y``, drawn without replacement.

    Parameters
    ----------
    y : Tensor, shape [N], integer labels
    per_class : int
        Must not exceed the smallest class's count.
    generator : torch.Generator
        The draw (the caller's generator advances).

    Returns
    -------
    Tensor, shape [C * per_class], int64, sorted.
    """
    per_class = check_int("per_class", per_class, 1)
    picks = []
    for c in torch.unique(y):
        members = torch.nonzero(y == c).flatten()
        if per_class > members.numel():
            raise ValueError(f"per_class={per_class} exceeds the {members.numel()} examples of class {int(c)}")
        picks.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


def evaluate_few_labels(
    train_feats: Tensor,
    train_y: Tensor,
    test_feats: Tensor,
    test_y: Tensor,
    *,
    labels_per_class: Sequence[int] = LABELS_PER_CLASS,
    draws: int = 5,
    weight_decay: float = 1e-3,
    knn_k: int = 10,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> dict[int, dict[str, float]]:
    """Linear probe and kNN on frozen features when only a few training examples carry labels.

    For each ``n`` in ``labels_per_class`` and each of ``draws`` draws, ``n`` labelled examples
    per class are drawn from the training features (:func:`labelled_subset`); a linear probe
    (:func:`fit_linear_probe`) and a kNN classifier with ``k = min(knn_k, n)`` are fitted on
    them alone and scored on all of ``test_feats``. With a handful of labels there is nothing to
    validate on, so the hyper-parameters are fixed in advance, the same for every encoder.

    This is where pre-training shows: on MNIST a random CNN is a strong representation when every
    label is used, but far weaker when ten per class are (Chen et al., 2020b: big
    self-supervised models are strong semi-supervised learners).

    Parameters
    ----------
    train_feats : Tensor, shape [N, D]
    train_y : Tensor, shape [N]
    test_feats : Tensor, shape [M, D]
    test_y : Tensor, shape [M]
    labels_per_class : sequence of int
        Sizes that exceed the smallest class are skipped (Iris has no 100 per class).
    draws : int
        Draws of the labelled examples per size; the draw seeds depend only on ``seed``, so
        every encoder is probed with the same digits.
    weight_decay, knn_k, seed, device
        Probe penalty, kNN's largest k, seed of the draws and the probes, where to compute.

    Returns
    -------
    dict
        ``n -> {"linear": mean, "linear_std": std, "knn": mean, "knn_std": std, "linear_all": [...],
        "knn_all": [...]}``, accuracies as fractions; std over the draws (``np.std``).
    """
    check_features_labels(train_feats, train_y, "train_feats", "train_y")
    check_features_labels(test_feats, test_y, "test_feats", "test_y")
    check_features("test_feats", test_feats, width=train_feats.shape[1])
    draws = check_int("draws", draws, 1)
    smallest = int(torch.bincount(train_y.long()).min()) if train_y.numel() else 0
    out: dict[int, dict[str, float]] = {}
    for n in labels_per_class:
        n = check_int("labels_per_class", n, 1)
        if n > smallest:
            continue
        lin, knn = [], []
        for d in range(draws):
            gen = torch.Generator().manual_seed(1_000 * seed + d)  # same digits for every encoder
            idx = labelled_subset(train_y, n, gen)
            f, y = train_feats[idx], train_y[idx]
            probe = fit_linear_probe(f, y, weight_decay=weight_decay, seed=seed + d, device=device)
            lin.append(probe.accuracy(test_feats, test_y))
            knn.append(knn_accuracy(f, y, test_feats, test_y, min(knn_k, n), device))
        out[n] = {"linear": float(torch.tensor(lin).mean()), "linear_std": float(torch.tensor(lin).std(unbiased=False)),
                  "knn": float(torch.tensor(knn).mean()), "knn_std": float(torch.tensor(knn).std(unbiased=False)),
                  "linear_all": lin, "knn_all": knn}
    return out


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


def plot_label_efficiency(rows: dict[str, dict], all_labels: dict[str, float] | None = None, metric: str = "linear",
                          ax=None, reference: str | Sequence[str] | None = None, legend_outside: bool = False):
    """Accuracy against labels per class, one line per encoder (few-label evaluation).

    Parameters
    ----------
    rows : dict
        Name -> the output of :func:`evaluate_few_labels` (``n -> {metric: ..., metric_std: ...}``).
    all_labels : dict, optional
        Name -> accuracy with every label, drawn as the rightmost point, labelled "all".
    metric : {"linear", "knn"}
    ax : Axes, optional
    reference : str or sequence of str, optional
        Names containing one of these strings (e.g. "random", "pixels") are drawn dashed: the baselines.
    legend_outside : bool, default False
        Put the legend to the right of the axes (for many lines).

    Returns
    -------
    Axes
    """
    import matplotlib.pyplot as plt

    if metric not in ("linear", "knn"):
        raise ValueError(f"metric must be 'linear' or 'knn', got {metric!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4), dpi=90)
    refs = (reference,) if isinstance(reference, str) else tuple(reference or ())
    colours = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    sizes = sorted({n for few in rows.values() for n in few})
    positions = {n: i for i, n in enumerate(sizes)}
    for i, (name, few) in enumerate(rows.items()):
        xs = [positions[n] for n in sorted(few)]
        ys = [100 * few[n][metric] for n in sorted(few)]
        es = [100 * few[n][f"{metric}_std"] for n in sorted(few)]
        if all_labels is not None and name in all_labels:
            xs.append(len(sizes))
            ys.append(100 * all_labels[name])
            es.append(0.0)
        dashed = any(r in name for r in refs)
        ax.errorbar(xs, ys, yerr=es, color=colours(i % colours.N), ls="--" if dashed else "-", marker="o", ms=3,
                    capsize=2, label=name)
    ticks = [str(n) for n in sizes] + (["all"] if all_labels else [])
    ax.set_xticks(range(len(ticks)), ticks)
    ax.set(xlabel="labelled examples per class", ylabel=f"{'linear probe' if metric == 'linear' else 'kNN'} accuracy %",
           title="accuracy against labels")
    if legend_outside:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small", loc="lower right")
    return ax
