"""Pre-training methods that are more than a loss on projections.

SupCon and SimCLR need only a loss on ``head(encoder(views))``, and :func:`clbook.training.pretrain`
takes them by name. MoCo, a memory bank, SimSiam, BYOL and SwAV also own state of their own: a
key (momentum) encoder, a queue or bank of features, a predictor, prototypes. Each of those is a
:class:`Method` here, one class per method (as in lightly's method modules), and ``pretrain``
runs every one of them through the same loop, with the same progress bar, validation-chosen epoch
and history.

What ``pretrain`` does with a method, step by step::

    method.setup(encoder, head)                 # once: build copies, queues, predictors
    for epoch in 1..epochs:
        method.start_epoch(epoch, epochs)
        for each batch (indices idx, inputs xb):
            views = [augment(xb), augment(xb)]  # method.n_views of them
            loss = method.loss(encoder, head, views, y[idx] or None, idx)
            loss.backward()
            method.before_step(step, total_steps)   # e.g. drop the prototypes' gradient
            optimizer.step()                        # encoder, head and method.trainable_parameters()
            method.after_step(encoder, head, step, total_steps)  # e.g. momentum update, enqueue
        history.metrics[name].append(value) for name, value in method.end_epoch(encoder, head).items()

A method is an ``nn.Module`` so that its state (a queue, a key encoder) follows ``.to(device)`` and
appears in ``state_dict()``. Parameters of copies that must not be trained (a momentum encoder)
have ``requires_grad=False``; :meth:`Method.trainable_parameters` leaves them out.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.cluster import sinkhorn_knopp
from clbook.encoders import Prototypes
from clbook.losses import swav_loss

__all__ = ["Method", "METHODS", "make_method", "SwAV"]


class Method(nn.Module):
    """Base class of a pre-training method run by :func:`clbook.training.pretrain`.

    Attributes
    ----------
    name : str
        Shown in the progress bar and used as the key of :data:`METHODS`.
    n_views : int
        Augmented views per sample that ``pretrain`` passes to :meth:`loss`.
    needs_labels : bool
        True if :meth:`loss` uses the labels (then ``pretrain`` refuses to run without them).
    """

    name: str = "method"
    n_views: int = 2
    needs_labels: bool = False

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        """Called once before training: build what depends on the encoder (copies, predictors)."""

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        """Scalar loss of one batch.

        Parameters
        ----------
        encoder, head : nn.Module
            The online networks being trained.
        views : list of Tensor, each of shape [B, ...]
            ``n_views`` augmentations of the same B samples; row i of every view is sample i.
        y : Tensor, shape [B], or None
            Labels of the batch, when ``pretrain`` was given labels.
        index : Tensor, shape [B], int64
            Positions of the batch's samples in the training set (for per-sample memories).
        """
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates besides the encoder's and the head's."""
        return [p for p in self.parameters() if p.requires_grad]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called at the start of every epoch (1-based)."""

    def before_step(self, step: int, total_steps: int) -> None:
        """Called after ``backward`` and before the optimizer step (0-based ``step``)."""

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        """Called after the optimizer step: momentum updates, enqueueing keys."""

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        """Figures to log for the epoch just finished; ``pretrain`` appends them to ``History.metrics``."""
        return {}


# Name -> class (or factory). Each method module section below registers itself here.
METHODS: dict[str, Callable[..., Method]] = {}


def make_method(name: str, temperature: float | None = None, **options) -> Method:
    """Build a registered method by name.

    ``temperature`` is passed only to methods that take one (SimSiam does not), so that
    ``pretrain(method=..., temperature=...)`` works for every method. Every other option must be
    a parameter of the method: an unknown one raises ``ValueError`` naming it.
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    factory = METHODS[name]
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} takes no option(s) {unknown}; it accepts {sorted(accepted)}")
    if temperature is not None and "temperature" in accepted:
        options = {**options, "temperature": temperature}
    return factory(**options)


# ----------------------------------------------------------------------------- SwAV


def _output_dim(head: nn.Module) -> int:
    """Size of ``head``'s output, read from its last layer with ``out_features`` (a Linear)."""
    last = [m.out_features for m in head.modules() if isinstance(getattr(m, "out_features", None), int)]
    if not last:
        raise ValueError("cannot tell the head's output size; pass dim=... to SwAV")
    return last[-1]


class SwAV(Method):
    """SwAV (Caron et al., 2020): online clustering with swapped predictions.

    Per batch, both views are embedded on the unit sphere and scored against K prototypes
    (:class:`clbook.encoders.Prototypes`). Each view's scores go through
    :func:`clbook.cluster.sinkhorn_knopp`, without gradient, to give its *code*: a soft
    assignment in which every prototype gets an equal share of the batch. Each view then
    predicts the *other* view's code from its own scores (:func:`clbook.losses.swav_loss`).
    The equal-partition constraint is what keeps every sample from landing on one prototype.

    As in the paper, the prototypes are frozen (their gradient dropped) during the first
    ``freeze_epochs`` epochs, while the encoder learns to spread the embeddings, and are put back
    on the unit sphere after every optimizer step. There is no feature queue (SwAV adds one when
    the batch is small compared with K; with K well below the batch size it is not needed).

    Parameters
    ----------
    n_prototypes : int, default 10
        Number of prototypes K. Each batch of B samples is split into K groups of about B / K,
        so B should be several times K.
    temperature : float, default 0.1
        Softmax temperature of the prediction.
    epsilon : float, default 0.05
        Entropy weight of the Sinkhorn-Knopp codes.
    sinkhorn_iterations : int, default 3
        Sinkhorn-Knopp iterations per batch. 0 gives plain softmax codes, with no equal-partition
        constraint at all (an ablation: training then tends to put every sample on one prototype).
    freeze_epochs : int, default 1
        Epochs at the start during which the prototypes are not updated.
    dim : int, optional
        Size of the head's output; read from the head's last linear layer if omitted.

    Attributes
    ----------
    prototypes : Prototypes
        Built in :meth:`setup`; ``prototypes.weight`` is ``[K, dim]``.

    ``end_epoch`` logs ``prototypes_used`` (how many prototypes were the most likely prediction
    of at least one training sample in the epoch; 1 means collapse) and ``code_entropy`` (entropy
    of the codes, averaged over samples, in nats).
    """

    name = "swav"
    n_views = 2

    def __init__(self, n_prototypes: int = 10, temperature: float = 0.1, epsilon: float = 0.05,
                 sinkhorn_iterations: int = 3, freeze_epochs: int = 1, dim: int | None = None) -> None:
        super().__init__()
        if isinstance(n_prototypes, bool) or not isinstance(n_prototypes, int) or n_prototypes < 2:
            raise ValueError(f"n_prototypes must be an integer >= 2, got {n_prototypes!r}")
        for name, value in (("temperature", temperature), ("epsilon", epsilon)):
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name, value in (("sinkhorn_iterations", sinkhorn_iterations), ("freeze_epochs", freeze_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        self.n_prototypes, self.temperature, self.epsilon = n_prototypes, temperature, epsilon
        self.sinkhorn_iterations, self.freeze_epochs, self.dim = sinkhorn_iterations, freeze_epochs, dim
        self.prototypes: Prototypes | None = None
        self.frozen = False
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._wins = torch.zeros(self.n_prototypes, dtype=torch.long)
        self._entropy, self._seen = 0.0, 0

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        dim = self.dim if self.dim is not None else _output_dim(head)
        device = next(head.parameters()).device
        self.prototypes = Prototypes(dim, self.n_prototypes).to(device)

    def scores(self, z: Tensor) -> Tensor:
        """Cosine scores ``[N, K]`` of head outputs ``z`` ``[N, dim]`` against the prototypes."""
        if self.prototypes is None:
            raise RuntimeError("SwAV.setup(encoder, head) must run first (pretrain calls it)")
        return self.prototypes(F.normalize(z, dim=1))

    def codes(self, scores: Tensor) -> Tensor:
        """Sinkhorn-Knopp codes ``[B, K]`` of a batch's scores, without gradient."""
        with torch.no_grad():
            return sinkhorn_knopp(scores.detach(), self.epsilon, self.sinkhorn_iterations)

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        b = views[0].shape[0]
        scores = self.scores(head(encoder(torch.cat(views))))  # [2B, K], one forward for both views
        s1, s2 = scores[:b], scores[b:]
        q1, q2 = self.codes(s1), self.codes(s2)
        with torch.no_grad():
            self._wins += torch.bincount(scores.argmax(dim=1).cpu(), minlength=self.n_prototypes)
            q = torch.cat([q1, q2]).float()
            self._entropy += -(q * q.clamp_min(1e-30).log()).sum().item()
            self._seen += len(q)
        return swav_loss(s1, s2, q1, q2, self.temperature)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.frozen = epoch <= self.freeze_epochs
        self._reset_counts()

    def before_step(self, step: int, total_steps: int) -> None:
        if self.frozen:
            # No gradient, no update: Adam skips parameters whose .grad is None.
            self.prototypes.weight.grad = None

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        self.prototypes.normalize_()

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        return {"prototypes_used": float((self._wins > 0).sum()),
                "code_entropy": self._entropy / max(self._seen, 1)}

    @torch.no_grad()
    def assign(self, encoder: nn.Module, head: nn.Module, X: Tensor, batch_size: int = 1024) -> Tensor:
        """Most likely prototype of every input, ``[N]`` int64: the argmax of its scores.

        Computed in eval mode; the modes of ``encoder`` and ``head`` are restored afterwards.
        """
        modes = encoder.training, head.training
        encoder.eval()
        head.eval()
        try:
            out = [self.scores(head(encoder(X[i : i + batch_size]))).argmax(dim=1)
                   for i in range(0, X.shape[0], batch_size)]
        finally:
            encoder.train(modes[0])
            head.train(modes[1])
        return torch.cat(out)


METHODS["swav"] = SwAV
