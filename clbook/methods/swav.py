"""SwAV (Caron et al., 2020): online clustering with swapped predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.checks import check_int, check_real
from clbook.sinkhorn import sinkhorn_knopp
from clbook.distributed import all_gather_rows
from clbook.encoders import Prototypes
from clbook.losses import swav_loss, swav_multicrop_loss
from clbook.methods.base import Method, output_dim

__all__ = ["SwAV"]


class SwAV(Method):
    """SwAV (Caron et al., 2020): online clustering with swapped predictions.

    Per batch, both views are embedded on the unit sphere and scored against K prototypes
    (:class:`clbook.encoders.Prototypes`). Each view's scores go through
    :func:`clbook.sinkhorn.sinkhorn_knopp`, without gradient, to give its *code*: a soft
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
    n_local : int, default 0
        Multi-crop (:class:`clbook.data.MultiCrop` with ``n_global=2``): the method then takes
        ``2 + n_local`` views, two global crops first, then the small local ones. As in the paper,
        only the two global views get codes, and each global view's code is predicted from every
        other view, local crops included (:func:`clbook.losses.swav_multicrop_loss`). The encoder
        runs once per run of same-size views (the local crops are smaller: an encoder that takes
        them, e.g. ``ConvEncoder(any_size=True)``), and the head once on all of them, so a
        BatchNorm in the head sees every view, as in SwAV's code. 0: the two-view method.

    Attributes
    ----------
    prototypes : Prototypes
        Built in :meth:`setup`; ``prototypes.weight`` is ``[K, dim]``.

    ``end_epoch`` logs ``prototypes_used`` (how many prototypes were the most likely prediction
    of at least one training sample in the epoch; 1 means collapse) and ``code_entropy`` (entropy
    of the codes, averaged over samples, in nats).
    """

    def __init__(self, n_prototypes: int = 10, temperature: float = 0.1, epsilon: float = 0.05,
                 sinkhorn_iterations: int = 3, freeze_epochs: int = 1, dim: int | None = None,
                 n_local: int = 0) -> None:
        super().__init__()
        self.n_local = check_int("n_local", n_local, 0)
        self.n_views = 2 + self.n_local
        self.n_prototypes = check_int("n_prototypes", n_prototypes, 2)
        self.temperature = check_real("temperature", temperature)
        self.epsilon = check_real("epsilon", epsilon)
        self.sinkhorn_iterations = check_int("sinkhorn_iterations", sinkhorn_iterations, 0)
        self.freeze_epochs = check_int("freeze_epochs", freeze_epochs, 0)
        self.dim = None if dim is None else check_int("dim", dim, 1)
        self.prototypes: Prototypes | None = None
        self.frozen = False
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._wins = torch.zeros(self.n_prototypes, dtype=torch.long)
        self._entropy, self._seen = 0.0, 0

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        dim = self.dim if self.dim is not None else output_dim(head)
        device = next(head.parameters()).device
        self.prototypes = Prototypes(dim, self.n_prototypes).to(device)

    def scores(self, z: Tensor) -> Tensor:
        """Cosine scores ``[N, K]`` of head outputs ``z`` ``[N, dim]`` against the prototypes."""
        if self.prototypes is None:
            raise RuntimeError("SwAV.setup(encoder, head) must run first (pretrain calls it)")
        return self.prototypes(F.normalize(z, dim=1))

    def codes(self, scores: Tensor) -> Tensor:
        """Sinkhorn-Knopp codes ``[B, K]`` of a batch's scores, without gradient.

        Several processes: the codes of the global batch (every prototype gets an equal share of
        all processes' samples), of which this process keeps its own rows.
        """
        with torch.no_grad():
            if not self.gather:
                return sinkhorn_knopp(scores.detach(), self.epsilon, self.sinkhorn_iterations)
            # SwAV's distributed_sinkhorn all-reduces the row and column sums at every iteration;
            # gathering the [B, K] scores once and running the same iterations gives the same codes.
            every = all_gather_rows(scores.detach())  # [world * B, K], this rank's rows from rank * B
            rank = torch.distributed.get_rank()
            b = scores.shape[0]
            return sinkhorn_knopp(every, self.epsilon, self.sinkhorn_iterations)[rank * b : (rank + 1) * b]

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if len(views) != self.n_views:
            raise ValueError(f"SwAV(n_local={self.n_local}) takes {self.n_views} views, got {len(views)}")
        b = views[0].shape[0]
        if self.n_local == 0:
            scores = self.scores(head(encoder(torch.cat(views))))  # [2B, K], one forward for both views
            s1, s2 = scores[:b], scores[b:]
            q1, q2 = self.codes(s1), self.codes(s2)
            self._count(scores, [q1, q2])
            return swav_loss(s1, s2, q1, q2, self.temperature)
        scores = self.scores(head(_encode_by_size(encoder, views)))  # [V * B, K]
        per_view = list(scores.split(b))
        codes = [self.codes(s) for s in per_view[:2]]  # the global crops only
        self._count(scores, codes)
        return swav_multicrop_loss(per_view, codes, self.temperature)

    def _count(self, scores: Tensor, codes: list[Tensor]) -> None:
        """Tally the epoch's figures: prototype wins over all views, code entropy."""
        with torch.no_grad():
            self._wins += torch.bincount(scores.argmax(dim=1).cpu(), minlength=self.n_prototypes)
            q = torch.cat(codes).float()
            self._entropy += -(q * q.clamp_min(1e-30).log()).sum().item()
            self._seen += len(q)

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


def _encode_by_size(encoder: nn.Module, views: list[Tensor]) -> Tensor:
    """Features ``[V * B, D]`` of V views in order, one encoder call per run of same-size views.

    Views of different sizes cannot share a batch; grouping consecutive ones (SwAV's code groups
    its crops by resolution the same way) keeps it to two calls for multi-crop.
    """
    out, start = [], 0
    for end in range(1, len(views) + 1):
        if end == len(views) or views[end].shape != views[start].shape:
            out.append(encoder(torch.cat(views[start:end])))
            start = end
    return torch.cat(out)
