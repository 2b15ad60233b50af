"""Plots shared by the notebooks: annotated heatmaps, t-SNE maps of features, collapse diagnostics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Sequence

import numpy as np
from torch import Tensor

from clbook.checks import check_int, check_real

__all__ = ["show_matrix", "tsne_embed", "plot_embedding", "plot_tsne_pair", "plot_collapse"]


def _numpy(a) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def show_matrix(
    matrix,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    ax=None,
    fmt: str = ".2f",
):
    """Heatmap of a 2-D array with every value written in its cell.

    Parameters
    ----------
    matrix : array-like or Tensor, shape [R, C]
    row_labels, col_labels : sequence of str, optional
        Tick labels; lengths must match the matrix.
    title : str, optional
    ax : matplotlib Axes, optional
        Drawn into a new figure if omitted.
    fmt : str, default ".2f"
        Format spec for the annotations.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt

    try:
        m = _numpy(matrix).astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"matrix must hold numbers: {err}") from None
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"matrix must be 2-D and non-empty, got shape {m.shape}")
    rows, cols = m.shape
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows")
    if col_labels is not None and len(col_labels) != cols:
        raise ValueError(f"{len(col_labels)} column labels for {cols} columns")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.6 * cols + 2, 0.5 * rows + 1.5), dpi=90)
    finite = m[np.isfinite(m)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    im = ax.imshow(m, cmap="viridis", vmin=lo, vmax=hi)
    mid = (lo + hi) / 2
    for i in range(rows):
        for j in range(cols):
            # Dark text on the bright half of viridis, light text on the dark half.
            ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=8,
                    color="black" if m[i, j] > mid else "white")
    ax.set_xticks(range(cols), col_labels if col_labels is not None else range(cols))
    ax.set_yticks(range(rows), row_labels if row_labels is not None else range(rows))
    if title:
        ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def tsne_embed(features, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (scikit-learn) of features ``[N, D]``; returns an array ``[N, 2]``.

    Features are L2-normalized first, because the contrastive losses compare directions
    (cosine similarity), not lengths.
    """
    from sklearn.manifold import TSNE

    seed = check_int("seed", seed, 0, 2**32 - 1)
    perplexity = check_real("perplexity", perplexity)
    x = _numpy(features).astype(np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must have shape [N, D] with N, D > 0, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values (or values beyond float32's range)")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def _class_colours(classes: np.ndarray) -> list:
    """One distinct colour per class. Up to ten classes given as integers 0-9 keep tab10's colour
    of their value (digit 3 has the same colour in every panel, whichever classes it shows)."""
    import matplotlib.pyplot as plt

    if len(classes) <= 10 and classes.dtype.kind in "iu" and classes.min() >= 0 and classes.max() < 10:
        return [plt.cm.tab10(int(c)) for c in classes]
    if len(classes) <= 10:
        return [plt.cm.tab10(i) for i in range(len(classes))]
    if len(classes) <= 20:
        return [plt.cm.tab20(i) for i in range(len(classes))]
    return [plt.cm.turbo(i / (len(classes) - 1)) for i in range(len(classes))]


def plot_embedding(points, labels, ax=None, title: str | None = None, class_names=None):
    """Scatter of 2-D points ``[N, 2]``, one colour per class, with a legend entry per class.

    ``labels`` may be integers, floats holding whole numbers (``0.0`` is class 0), or any other
    values (strings, fractions), which are then distinct classes in sorted order. ``class_names``,
    if given, is indexed by the integer label (or by the class's position for other labels).
    """
    import matplotlib.pyplot as plt

    p, y = _numpy(points), _numpy(labels)
    if p.ndim != 2 or p.shape[1] != 2 or y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"need points [N, 2] and labels [N], got {p.shape} and {y.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points contain NaN or infinite values")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError("labels contain NaN or infinite values")
        if np.array_equal(y, np.round(y)):
            # Whole-number floats (e.g. labels that went through a float tensor) are the integer
            # classes; a colormap would read 0.0-1.0 as a position and clip 2.0-9.0 to one colour.
            y = y.astype(np.int64)
    elif y.dtype.kind == "b":
        y = y.astype(np.int64)
    classes = np.unique(y)
    if class_names is not None:
        named = y.dtype.kind in "iu" and classes.min() >= 0
        needed = int(classes.max()) + 1 if named else len(classes)
        if len(class_names) < needed:
            raise ValueError(f"class_names has {len(class_names)} names; labels need {needed}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5), dpi=90)
    for i, (c, colour) in enumerate(zip(classes, _class_colours(classes))):
        sel = y == c
        if class_names is None:
            name = str(c)
        else:
            name = class_names[int(c)] if named else class_names[i]
        ax.scatter(p[sel, 0], p[sel, 1], s=4, color=colour, label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return ax


def plot_tsne_pair(features: dict, labels, seed: int = 0, class_names=None, ncols: int = 2):
    """t-SNE maps of several feature sets of the same samples, side by side.

    Parameters
    ----------
    features : dict of str -> Tensor or array, each [N, D]
        Title -> features, e.g. ``{"SupCon CNN": f1, "random CNN": f2}``; at least one entry.
    labels : Tensor or array, shape [N]
    seed : int
        t-SNE's random state.
    class_names : sequence of str, optional
    ncols : int, default 2
        Panels per row; more feature sets wrap onto further rows.

    Returns
    -------
    matplotlib Figure
    """
    import matplotlib.pyplot as plt

    if not isinstance(features, Mapping):
        raise ValueError(f"features must be a dict of title -> features [N, D], got {type(features).__name__}")
    if not features:
        raise ValueError("features is empty: no feature sets to plot; pass {title: features [N, D], ...}")
    ncols = check_int("ncols", ncols, 1)
    n = len(features)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols + 0.6, 4.0 * nrows), dpi=80, squeeze=False)
    for ax, (name, feats) in zip(axes.flat, features.items()):
        plot_embedding(tsne_embed(feats, seed=seed), labels, ax=ax, title=name, class_names=class_names)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", markerscale=3, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.94, 1))
    return fig


def plot_collapse(histories: dict, proj_dim: int | None = None, n_classes: int = 10, axes=None):
    """Collapse diagnostics per epoch of several pre-training runs, one line per run.

    Four panels: ``proj_std`` (std of the normalized projections during training, against
    ``1 / sqrt(proj_dim)`` and 0), ``uniformity`` and ``effective_rank`` of the encoder's
    validation features, and validation kNN accuracy (against chance, ``1 / n_classes``).

    Parameters
    ----------
    histories : dict
        Run name -> :class:`clbook.training.History` with those entries in ``metrics`` (SimSiam
        and BYOL through :func:`clbook.experiments.train_mnist_encoder` log them).
    proj_dim : int, optional
        Size of the projections, for the ``1 / sqrt(proj_dim)`` reference line.
    n_classes : int, default 10
    axes : four Axes, optional

    Returns
    -------
    array of Axes
    """
    import matplotlib.pyplot as plt

    n_classes = check_int("n_classes", n_classes, 1)
    if proj_dim is not None:
        proj_dim = check_int("proj_dim", proj_dim, 1)
    if axes is None:
        _, axes = plt.subplots(1, 4, figsize=(14, 3.1), dpi=80)
    panels = [("proj_std", "std of normalized projections"), ("uniformity", "uniformity (validation)"),
              ("effective_rank", "effective rank (validation)"), ("val_acc", "kNN accuracy (validation)")]
    for i, (name, history) in enumerate(histories.items()):
        for ax, (key, _) in zip(axes, panels):
            values = history.val_acc if key == "val_acc" else history.metrics.get(key)
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, color=f"C{i}", label=name)
    for ax, (key, title) in zip(axes, panels):
        ax.set(title=title, xlabel="epoch")
    if proj_dim:
        axes[0].axhline(proj_dim**-0.5, color="gray", ls="--", lw=1, label=f"1/sqrt({proj_dim})")
    axes[0].axhline(0.0, color="black", lw=0.8)
    axes[1].axhline(0.0, color="black", lw=0.8)
    axes[2].axhline(1.0, color="black", lw=0.8)
    axes[3].axhline(1 / n_classes, color="gray", ls=":", lw=1, label="chance")
    axes[0].legend(fontsize="small")
    axes[3].legend(fontsize="small")
    return axes
