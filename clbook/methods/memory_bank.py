"""The memory bank of instance discrimination (Wu et al., 2018): one stored feature per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.checks import check_choice, check_int, check_probability, check_real
from clbook.distributed import all_gather_rows
from clbook.losses import info_nce_loss
from clbook.memory import MemoryBank
from clbook.methods.base import Method, output_dim

__all__ = ["MemoryBankMethod"]


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

    Several processes: each process draws its own negatives from an identical bank, and after the
    step every process stores every process's rows, so the banks stay identical.

    Notes
    -----
    At the course's budgets (a few epochs on a few thousand digits) neither positive beat an
    untrained encoder on MNIST in our runs. With ``"view"`` the features drifted away from their
    own stored rows (``bank_cos`` fell, even below 0): the rows are negatives of every other
    sample, and moving *all* features together, faster than the bank follows, lowers the loss.
    With ``"bank"`` the features ended up nearly identical. Wu et al. train for 200 epochs;
    notebook 07 measures this and contrasts it with MoCo.
    """

    def __init__(self, temperature: float = 0.1, num_negatives: int = 4096, bank_momentum: float = 0.5,
                 positive: str = "view", seed: int = 0) -> None:
        super().__init__()
        self.bank_momentum = check_probability("bank_momentum", bank_momentum, high_open=True)
        self.num_negatives = check_int("num_negatives", num_negatives, 1)
        self.temperature = check_real("temperature", temperature)
        self.positive = check_choice("positive", positive, ("view", "bank"))
        self.seed = check_int("seed", seed, 0)
        self.n_views = 2 if positive == "view" else 1
        self.bank: MemoryBank | None = None  # built in setup, when N and the head's output size are known
        self._gen = torch.Generator().manual_seed(seed)
        self._pending: tuple[Tensor, Tensor] | None = None
        self._sums = torch.zeros(2)

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        if self.num_samples is None:
            raise ValueError(f"{self.name} needs num_samples (pretrain sets it to the training set size)")
        self._gen = torch.Generator().manual_seed(self.seed)
        self.bank = MemoryBank(self.num_samples, output_dim(head), self.bank_momentum, generator=self._gen)

    def get_extra_state(self) -> dict:
        # The draws of negatives go on where they stopped when a run is resumed from a checkpoint.
        return {"generator": self._gen.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self._gen.set_state(state["generator"])

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._sums = torch.zeros(2)  # sum of cosines, count

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        b = views[0].shape[0]
        z = head(encoder(torch.cat(views)))  # [V * B, D], one forward for all views
        f = z[:b]
        if self.bank is None:
            raise RuntimeError("MemoryBankMethod.setup(encoder, head) must run before loss()")
        if self.num_negatives > self.num_samples - b:
            raise ValueError(f"num_negatives = {self.num_negatives} exceeds the {self.num_samples} training "
                             f"samples minus a batch of {b}")
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
        return info_nce_loss(f, key, negatives, self.temperature, gather_distributed=self.gather)

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        index, features = self._pending
        if self.gather:  # every process stores every process's rows: one bank everywhere
            index, features = all_gather_rows(index.to(features.device)).to(index.device), all_gather_rows(features)
        self.bank.update(index, features)
        self._pending = None

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        count = float(self._sums[1])
        return {"bank_cos": float(self._sums[0]) / count if count else float("nan")}
