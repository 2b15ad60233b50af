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

import copy
import inspect
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.cluster import sinkhorn_knopp
from clbook.encoders import PredictionHead, Prototypes
from clbook.losses import info_nce_loss, negative_cosine_loss, normalized_mse_loss, swav_loss
from clbook.memory import FeatureQueue, MemoryBank, momentum_update
from clbook.metrics import feature_std

__all__ = ["Method", "METHODS", "make_method", "MoCo", "MemoryBankMethod", "SwAV"]


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
    num_samples : int or None
        Size of the training set, set by ``pretrain`` before :meth:`setup`.
    """

    name: str = "method"
    n_views: int = 2
    needs_labels: bool = False
    # Set by pretrain before setup(): the number of training samples, for per-sample memories
    # (the ``index`` passed to loss() lies in [0, num_samples)).
    num_samples: int | None = None

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


# ----------------------------------------------------------------------------- negatives beyond the batch
# MoCo (a queue and a momentum key encoder) and the memory bank of instance discrimination:
# both feed clbook.losses.info_nce_loss negatives that were computed in earlier steps.


def _check_probability(name: str, value: float, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0 and not (high_open and value == 1.0)
    if not ok:
        raise ValueError(f"{name} must be a number in [0, 1{')' if high_open else ']'}, got {value!r}")


class MoCo(Method):
    """MoCo (He et al., 2020): a momentum key encoder and a queue of earlier keys as negatives.

    Per step: queries ``q = head(encoder(view 1))`` (trained), keys ``k = key_head(key_encoder(view 2))``
    under ``no_grad``; loss :func:`clbook.losses.info_nce_loss` ``(q, k, negatives=queue)``. After
    the optimizer step the key networks move towards the online ones,
    ``theta_k <- m theta_k + (1 - m) theta_q`` (:func:`clbook.memory.momentum_update`), and the
    batch's keys are enqueued in place of the oldest ones. This is MoCo v1's asymmetric loss with
    v2's projection head. Shuffling BatchNorm is not needed with the course's CNN (it has no
    BatchNorm).

    Parameters
    ----------
    temperature : float, default 0.2
    queue_size : int, default 4096
        Negatives kept in the :class:`clbook.memory.FeatureQueue`. Until the queue holds a first
        batch (the very first step), the other keys of the batch are the negatives.
    momentum : float in [0, 1], default 0.99
        ``m``. With 0 the key networks are copies of the online ones after every step.

    Logged per epoch (``History.metrics``): ``pos_cos``, the mean cosine between a query and its
    key, and ``neg_cos``, between a query and the queued negatives.
    """

    name = "moco"
    n_views = 2

    def __init__(self, temperature: float = 0.2, queue_size: int = 4096, momentum: float = 0.99) -> None:
        super().__init__()
        _check_probability("momentum", momentum)
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a positive integer, got {queue_size!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature, self.queue_size, self.momentum = float(temperature), queue_size, float(momentum)
        self.key_encoder: nn.Module | None = None
        self.key_head: nn.Module | None = None
        self.queue: FeatureQueue | None = None  # built at the first batch, when D is known
        self._keys: Tensor | None = None
        self._sums = torch.zeros(3)

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        # Copies start equal to the online networks and are never trained by the optimizer.
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(head).requires_grad_(False)
        self.queue = None

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._sums = torch.zeros(3)  # sum of pos_cos, sum of neg_cos, batches

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if self.key_encoder is None:
            raise RuntimeError("MoCo.setup(encoder, head) must run before loss()")
        q = head(encoder(views[0]))  # [B, D]
        with torch.no_grad():
            self.key_encoder.train(encoder.training)
            self.key_head.train(head.training)
            k = F.normalize(self.key_head(self.key_encoder(views[1])), dim=1)  # [B, D], constants
        if self.queue is None:
            self.queue = FeatureQueue(self.queue_size, k.shape[1]).to(k.device)
        negatives = self.queue.features() if len(self.queue) else None
        self._keys = k
        with torch.no_grad():
            qn = F.normalize(q.detach().float(), dim=1)
            pos = (qn * k.float()).sum(1).mean()
            neg = (qn @ negatives.float().mean(0)).mean() if negatives is not None else torch.tensor(0.0)
            self._sums += torch.stack([pos.cpu(), neg.cpu(), torch.tensor(1.0)])
        return info_nce_loss(q, k, negatives, self.temperature)

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        momentum_update(self.key_encoder, encoder, self.momentum)
        momentum_update(self.key_head, head, self.momentum)
        self.queue.enqueue(self._keys)
        self._keys = None

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        n = max(float(self._sums[2]), 1.0)
        return {"pos_cos": float(self._sums[0]) / n, "neg_cos": float(self._sums[1]) / n}


class MemoryBankMethod(Method):
    """Negatives from a memory bank: one stored feature per training sample (Wu et al., 2018).

    Every training sample i owns a stored unit vector ``v_i`` (:class:`clbook.memory.MemoryBank`).
    Per step the batch's features ``f = head(encoder(view 1))`` are the queries of
    :func:`clbook.losses.info_nce_loss`, with ``num_negatives`` stored vectors of *other* samples,
    drawn at random, as negatives (the softmax over sampled negatives that later work uses in place
    of the paper's NCE). After the step the batch's rows are updated,
    ``v_i <- normalize(m v_i + (1 - m) f_i)``. The stored vectors were computed by earlier
    versions of the encoder: they are *stale*.

    Parameters
    ----------
    temperature : float, default 0.1
    num_negatives : int, default 4096
    bank_momentum : float in [0, 1), default 0.5
        ``m`` of the bank update; 0 stores the latest feature.
    positive : {"view", "bank"}, default "view"
        What query i is pulled towards. ``"view"``: the feature of a second augmented view of the
        same sample (two views per sample; gradient through both, as in SimCLR). ``"bank"``: the
        sample's own stored vector ``v_i`` (one view per sample; Wu et al.'s instance
        discrimination, where the bank supplies the positive too). A sample met for the first
        time has only a random stored vector; with ``"bank"`` its feature is stored before the
        loss, so that it is not pulled towards noise.
    seed : int, default 0
        Seeds the bank's random initial vectors and the draws of negatives.

    Logged per epoch (``History.metrics``): ``bank_cos``, the mean cosine between a sample's stored
    vector and its current feature, measured just before the update, over samples stored in an
    earlier step: from epoch 2 on, when each stored vector is about an epoch old. (Epoch 1 has no
    such sample and logs NaN.) It measures staleness and augmentation together: the stored vector
    came from another augmented view.

    Notes
    -----
    At the course's budgets (a few epochs on a few thousand digits) neither positive beat an
    untrained encoder on MNIST in our runs. With ``"view"`` the features drifted away from their
    own stored rows (``bank_cos`` fell, even below 0): the rows are negatives of every other
    sample, and moving *all* features together, faster than the bank follows, lowers the loss.
    With ``"bank"`` the features ended up nearly identical. Wu et al. train for 200 epochs;
    notebook 07 measures this and contrasts it with MoCo.
    """

    name = "memory_bank"

    def __init__(self, temperature: float = 0.1, num_negatives: int = 4096, bank_momentum: float = 0.5,
                 positive: str = "view", seed: int = 0) -> None:
        super().__init__()
        _check_probability("bank_momentum", bank_momentum, high_open=True)
        if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
            raise ValueError(f"num_negatives must be a positive integer, got {num_negatives!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if positive not in ("view", "bank"):
            raise ValueError(f'positive must be "view" or "bank", got {positive!r}')
        self.temperature, self.num_negatives = float(temperature), num_negatives
        self.bank_momentum, self.positive, self.seed = float(bank_momentum), positive, seed
        self.n_views = 2 if positive == "view" else 1
        self.bank: MemoryBank | None = None  # built at the first batch, when D is known
        self._gen = torch.Generator().manual_seed(seed)
        self._pending: tuple[Tensor, Tensor] | None = None
        self._sums = torch.zeros(2)

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        if self.num_samples is None:
            raise ValueError("memory_bank needs num_samples (pretrain sets it to the training set size)")
        self.bank = None
        self._gen = torch.Generator().manual_seed(self.seed)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._sums = torch.zeros(2)  # sum of cosines, count

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        b = views[0].shape[0]
        z = head(encoder(torch.cat(views)))  # [V * B, D], one forward for all views
        f = z[:b]
        if self.bank is None:
            if self.num_samples is None:
                raise RuntimeError("MemoryBankMethod.setup(encoder, head) must run before loss()")
            if self.num_negatives > self.num_samples - b:
                raise ValueError(f"num_negatives = {self.num_negatives} exceeds the {self.num_samples} training "
                                 f"samples minus a batch of {b}")
            self.bank = MemoryBank(self.num_samples, f.shape[1], self.bank_momentum, generator=self._gen).to(f.device)
        seen = self.bank.seen[index.to(self.bank.seen.device)].to(f.device)  # [B]
        stored = self.bank.get(index)  # [B, D], the samples' own stored vectors (before this step)
        with torch.no_grad():  # staleness, over samples stored in an earlier step
            cos = (F.normalize(f.detach().float(), dim=1) * stored.float()).sum(1)[seen]
            self._sums += torch.stack([cos.sum().cpu(), torch.tensor(float(cos.numel()))])
        if self.positive == "view":
            key = z[b:]
        else:
            if not bool(seen.all()):
                self.bank.update(index[~seen.cpu()], f.detach()[~seen])
            key = self.bank.get(index)
        # Only stored features are negatives: random initial vectors lie nowhere near the features,
        # so they would teach nothing (and early in epoch 1 they would be almost all the negatives).
        negatives = self.bank.negatives(self.num_negatives, exclude=index, generator=self._gen,
                                        seen_only=True)  # [K, D], fewer during the first epoch
        if len(negatives) == 0:
            negatives = None  # the very first step: the other keys of the batch are the negatives
        self._pending = (index, f.detach())
        return info_nce_loss(f, key, negatives, self.temperature)

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        index, features = self._pending
        self.bank.update(index, features)
        self._pending = None

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        count = float(self._sums[1])
        return {"bank_cos": float(self._sums[0]) / count if count else float("nan")}


METHODS["moco"] = MoCo
METHODS["memory_bank"] = MemoryBankMethod


# ----------------------------------------------------------------------------- SimSiam and BYOL


def _output_dim(head: nn.Module) -> int:
    """Size of the projections ``head`` produces: the ``out_features`` of its last linear layer."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot tell the head's output size (it has no nn.Linear); pass its size to the method")
    return linears[-1].out_features


class SimSiam(Method):
    r"""SimSiam (Chen and He, 2021): two views, a predictor, a stop-gradient, no negatives.

    For views :math:`x_1, x_2`: projections :math:`z_v = h(f(x_v))`, predictions
    :math:`p_v = \mathrm{pred}(z_v)`, and the symmetric loss
    :math:`\tfrac12 D(p_1, \mathrm{sg}(z_2)) + \tfrac12 D(p_2, \mathrm{sg}(z_1))` with
    :func:`clbook.losses.negative_cosine_loss`. Both views go through the networks in one batch.

    Parameters
    ----------
    pred_hidden : int, default 32
        Bottleneck width of the :class:`clbook.encoders.PredictionHead`.
    proj_dim : int, optional
        Size of the head's output; read from the head's last ``nn.Linear`` if omitted.
    stop_gradient : bool, default True
        ``False`` is the ablation that lets gradients through the targets (it collapses).
    predictor : bool, default True
        ``False`` is the ablation without predictor (:math:`p_v = z_v`; it collapses too).

    Logged per epoch in ``History.metrics``: ``"proj_std"``, the mean over the epoch's batches of
    :func:`clbook.metrics.feature_std` of the projections :math:`z` (the paper's collapse monitor,
    to compare with ``1 / sqrt(proj_dim)``).
    """

    name = "simsiam"
    n_views = 2

    def __init__(self, pred_hidden: int = 32, proj_dim: int | None = None, stop_gradient: bool = True,
                 predictor: bool = True) -> None:
        super().__init__()
        if pred_hidden < 1:
            raise ValueError(f"pred_hidden must be a positive int, got {pred_hidden!r}")
        self.pred_hidden, self.proj_dim = pred_hidden, proj_dim
        self.stop_gradient, self.use_predictor = bool(stop_gradient), bool(predictor)
        self.predictor: nn.Module = nn.Identity()
        self._std_sum, self._std_batches = 0.0, 0

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        dim = self.proj_dim if self.proj_dim is not None else _output_dim(head)
        if self.use_predictor:
            self.predictor = PredictionHead(dim, self.pred_hidden)

    def _project(self, encoder: nn.Module, head: nn.Module, views: list[Tensor]) -> tuple[Tensor, int]:
        """Projections ``z`` [2B, D] of both views (view 1 in rows :B), computed as one batch; and B."""
        if len(views) != 2:
            raise ValueError(f"{self.name} needs exactly two views, got {len(views)}")
        b = views[0].shape[0]
        z = head(encoder(torch.cat(views)))
        self._log_std(z[:b])
        return z, b

    def _log_std(self, z: Tensor) -> None:
        self._std_sum += feature_std(z.detach())
        self._std_batches += 1

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._std_sum, self._std_batches = 0.0, 0

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        z, b = self._project(encoder, head, views)
        p = self.predictor(z)
        z1, z2, p1, p2 = z[:b], z[b:], p[:b], p[b:]
        return 0.5 * (negative_cosine_loss(p1, z2, self.stop_gradient)
                      + negative_cosine_loss(p2, z1, self.stop_gradient))

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        return {"proj_std": self._std_sum / max(self._std_batches, 1)}


class BYOL(SimSiam):
    r"""BYOL (Grill et al., 2020): an online network predicts a slow-moving target network.

    The target encoder and head are copies of the online ones, never trained by gradients; after
    every optimizer step they move towards the online weights,
    :math:`\xi \leftarrow m\,\xi + (1 - m)\,\theta` (:func:`clbook.memory.momentum_update`), with
    the momentum raised from ``momentum`` to ``final_momentum`` along a cosine over all steps:
    :math:`m_k = 1 - (1 - m_0)\,(\cos(\pi k / K) + 1) / 2`. The loss is
    :func:`clbook.losses.normalized_mse_loss` between the online prediction of one view and the
    target projection of the other, symmetrized (averaged over both directions).

    Parameters
    ----------
    pred_hidden : int, default 32
    proj_dim : int, optional
        As for :class:`SimSiam`.
    momentum : float in [0, 1], default 0.99
        Momentum at the first step. 0 makes the target a copy of the online network after every
        step: SimSiam with stop-gradient (up to the normalized-MSE scale).
    final_momentum : float in [momentum, 1], default 1.0
        Momentum at the last step.
    predictor : bool, default True
        ``False`` is the ablation without predictor.

    Logged per epoch: ``"proj_std"`` (online projections, as for SimSiam) and ``"momentum"``
    (its value at the epoch's last step).
    """

    name = "byol"

    def __init__(self, pred_hidden: int = 32, proj_dim: int | None = None, momentum: float = 0.99,
                 final_momentum: float = 1.0, predictor: bool = True) -> None:
        super().__init__(pred_hidden, proj_dim, stop_gradient=True, predictor=predictor)
        for name, value in (("momentum", momentum), ("final_momentum", final_momentum)):
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if final_momentum < momentum:
            raise ValueError(f"final_momentum ({final_momentum}) must be at least momentum ({momentum})")
        self.base_momentum, self.final_momentum = float(momentum), float(final_momentum)
        self.momentum = self.base_momentum
        self.target_encoder: nn.Module | None = None
        self.target_head: nn.Module | None = None

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        super().setup(encoder, head)
        self.target_encoder, self.target_head = copy.deepcopy(encoder), copy.deepcopy(head)
        for p in list(self.target_encoder.parameters()) + list(self.target_head.parameters()):
            p.requires_grad_(False)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """The scheduled momentum at optimizer step ``step`` (0-based) of ``total_steps``: ``momentum`` at step 0."""
        frac = step / max(total_steps, 1)
        return self.final_momentum - (self.final_momentum - self.base_momentum) * (math.cos(math.pi * frac) + 1) / 2

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if self.target_encoder is None:
            raise RuntimeError("BYOL.setup(encoder, head) must run before loss()")
        z, b = self._project(encoder, head, views)
        p = self.predictor(z)
        with torch.no_grad():
            t = self.target_head(self.target_encoder(torch.cat(views)))
        return 0.5 * (normalized_mse_loss(p[:b], t[b:]) + normalized_mse_loss(p[b:], t[:b]))

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        self.momentum = self.momentum_at(step, total_steps)
        momentum_update(self.target_encoder, encoder, self.momentum)
        momentum_update(self.target_head, head, self.momentum)

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        return {**super().end_epoch(encoder, head), "momentum": self.momentum}


METHODS["simsiam"] = SimSiam
METHODS["byol"] = BYOL


# ----------------------------------------------------------------------------- SwAV


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
