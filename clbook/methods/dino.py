"""DINO (Caron et al., 2021): self-distillation with no labels, a student and a momentum teacher."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from clbook.checks import check_bool, check_int, check_probability, check_real
from clbook.encoders import WeightNormLinear
from clbook.losses import DINOLoss, teacher_probabilities
from clbook.memory import momentum_update
from clbook.methods.base import Method, output_dim
from clbook.methods.mocov3 import cosine_momentum

__all__ = ["DINO"]


class DINO(Method):
    r"""DINO (Caron et al., 2021): a student network learns to match a momentum teacher's outputs.

    Both networks are the encoder, the projection head and DINO's last layer
    (:class:`clbook.encoders.WeightNormLinear`: the head's output L2-normalized, then a
    weight-normalized linear map to K outputs); the method builds the last layer and the teacher
    (copies of all three, never trained by gradients; they follow the student with a momentum
    rising from ``momentum`` to ``final_momentum`` along a cosine). The student sees every view:
    the 2 global views first, then the local ones (multi-crop: smaller crops, which a ViT takes
    with interpolated position embeddings); the teacher sees the global views only. The loss is
    :func:`clbook.losses.dino_loss`: every teacher view is the target of every student view but
    its own, "local to global".

    Two things keep the outputs from collapsing, each against one kind of collapse:

    * **centering**: the teacher's outputs minus their running mean (``center_momentum``) before
      the softmax, so no output can stay ahead of the others for every image;
    * **sharpening**: a teacher temperature (0.04) below the student's (0.1), so the targets are
      peaked rather than flat.

    Centering alone drives the targets towards uniform, sharpening alone towards one output for
    all images; together they balance (the paper's Figure 7). ``centering=False`` and
    ``teacher_temperature=student_temperature`` are the two ablations.

    Parameters
    ----------
    out_dim : int, default 256
        K, the outputs of the last layer (DINO: 65,536).
    student_temperature : float, default 0.1
    teacher_temperature : float, default 0.04
        Fixed (DINO warms it up from 0.04 to 0.07 over its first 30 epochs; runs here are shorter).
    center_momentum : float in [0, 1], default 0.9
    centering : bool, default True
    momentum : float in [0, 1], default 0.996
        The teacher's momentum at the first step (the paper's).
    final_momentum : float in [momentum, 1], default 1.0
    n_local : int, default 0
        Local views per sample after the 2 global ones (``n_views = 2 + n_local``); they come from
        the training loop's augmentation.
    freeze_last_layer : int, default 1
        Epochs at the start during which the last layer gets no update (the paper's).
    norm_last_layer : bool, default True
        Fix the last layer's row lengths at 1 (:class:`~clbook.encoders.WeightNormLinear`).

    Notes
    -----
    Logged per epoch: ``"teacher_entropy"``, the mean entropy (nats) of the teacher's targets
    :math:`h(P_t)`; ``"kl"``, the loss minus that entropy, the mean
    :math:`\mathrm{KL}(P_t \Vert P_s)` over pairs of views; both averaged over the epoch's steps.
    Collapse to one output and collapse to uniform both send the KL to 0; the entropy tells them
    apart (0 against :math:`\log K`). Per step: ``step_loss``, ``step_entropy`` and ``step_kl``;
    ``"outputs_used"`` counts the outputs that were the teacher's argmax for some sample of the epoch,
    ``"top_output_share"`` is the share of those argmaxes that went to the most frequent output (1
    when one output wins for every image).
    """

    needs_negatives = False  # the loss compares each sample's views with each other only

    def __init__(self, out_dim: int = 256, student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                 center_momentum: float = 0.9, centering: bool = True, momentum: float = 0.996,
                 final_momentum: float = 1.0, n_local: int = 0, freeze_last_layer: int = 1,
                 norm_last_layer: bool = True) -> None:
        super().__init__()
        self.out_dim = check_int("out_dim", out_dim, 2)
        self.student_temperature = check_real("student_temperature", student_temperature)
        self.teacher_temperature = check_real("teacher_temperature", teacher_temperature)
        self.center_momentum = check_probability("center_momentum", center_momentum)
        self.centering = check_bool("centering", centering)
        self.base_momentum = check_probability("momentum", momentum)
        self.final_momentum = check_probability("final_momentum", final_momentum)
        if self.final_momentum < self.base_momentum:
            raise ValueError(f"final_momentum ({final_momentum}) must be at least momentum ({momentum})")
        self.momentum = self.base_momentum
        self.n_local = check_int("n_local", n_local, 0)
        self.n_views = 2 + self.n_local
        self.freeze_last_layer = check_int("freeze_last_layer", freeze_last_layer, 0)
        self.norm_last_layer = check_bool("norm_last_layer", norm_last_layer)
        self.criterion = DINOLoss(self.out_dim, self.student_temperature, self.teacher_temperature,
                                  self.center_momentum, self.centering)
        self.last_layer: WeightNormLinear | None = None
        self.teacher_encoder: nn.Module | None = None
        self.teacher_head: nn.Module | None = None
        self.teacher_last_layer: nn.Module | None = None
        self.frozen = False
        self.step_loss: list[float] = []
        self.step_entropy: list[float] = []
        self.step_kl: list[float] = []
        self._reset_counts()

    def _reset_counts(self) -> None:
        self._sums = torch.zeros(3)  # entropy, kl, steps
        self._wins = torch.zeros(self.out_dim, dtype=torch.long)

    def setup(self, encoder: nn.Module, head: nn.Module) -> None:
        device = next(head.parameters()).device
        self.last_layer = WeightNormLinear(output_dim(head), self.out_dim, self.norm_last_layer).to(device)
        self.teacher_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(head).requires_grad_(False)
        self.teacher_last_layer = copy.deepcopy(self.last_layer).requires_grad_(False)
        self.step_loss, self.step_entropy, self.step_kl = [], [], []

    def outputs(self, encoder: nn.Module, head: nn.Module, x: Tensor, teacher: bool = False) -> Tensor:
        """DINO's outputs ``[N, out_dim]`` (before any softmax) of inputs ``x``: the student's, or the teacher's."""
        if self.last_layer is None:
            raise RuntimeError("DINO.setup(encoder, head) must run first (pretrain calls it)")
        if teacher:
            return self.teacher_last_layer(self.teacher_head(self.teacher_encoder(x)))
        return self.last_layer(head(encoder(x)))

    def _student(self, encoder: nn.Module, head: nn.Module, views: list[Tensor]) -> list[Tensor]:
        """Student outputs of every view, one forward pass per run of views of the same size."""
        out: list[Tensor] = []
        i = 0
        while i < len(views):
            j = i
            while j < len(views) and views[j].shape == views[i].shape:
                j += 1
            out += list(self.outputs(encoder, head, torch.cat(views[i:j])).chunk(j - i))
            i = j
        return out

    def loss(self, encoder: nn.Module, head: nn.Module, views: list[Tensor], y: Tensor | None,
             index: Tensor) -> Tensor:
        if len(views) != self.n_views:
            raise ValueError(f"{self.name} expects {self.n_views} views (2 global + {self.n_local} local), "
                             f"got {len(views)}")
        student = self._student(encoder, head, views)
        with torch.no_grad():
            for module, online in ((self.teacher_encoder, encoder), (self.teacher_head, head)):
                module.train(online.training)
            teacher = list(self.outputs(encoder, head, torch.cat(views[:2]), teacher=True).chunk(2))
        center = self.criterion.center.clone()  # the center this step's loss uses (the loss updates it)
        self.criterion.gather_distributed = self.gather
        loss = self.criterion(student, teacher)
        with torch.no_grad():
            probs = torch.cat([teacher_probabilities(t, center if self.centering else None, self.teacher_temperature)
                               for t in teacher])  # [2B, K]
            entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=1).mean().item()
            kl = loss.item() - entropy  # the cross-entropy is the teacher's entropy plus the KL
            self._sums += torch.tensor([entropy, kl, 1.0])
            self._wins += torch.bincount(probs.argmax(dim=1).cpu(), minlength=self.out_dim)
        self.step_loss.append(loss.item())
        self.step_entropy.append(entropy)
        self.step_kl.append(kl)
        return loss

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.frozen = epoch <= self.freeze_last_layer
        self._reset_counts()

    def before_step(self, step: int, total_steps: int) -> None:
        if self.frozen:  # no gradient, no update: Adam skips parameters whose .grad is None
            for p in self.last_layer.parameters():
                p.grad = None

    def after_step(self, encoder: nn.Module, head: nn.Module, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        momentum_update(self.teacher_encoder, encoder, self.momentum)
        momentum_update(self.teacher_head, head, self.momentum)
        momentum_update(self.teacher_last_layer, self.last_layer, self.momentum)

    def end_epoch(self, encoder: nn.Module, head: nn.Module) -> dict[str, float]:
        n = max(float(self._sums[2]), 1.0)
        return {"teacher_entropy": float(self._sums[0]) / n, "kl": float(self._sums[1]) / n,
                "outputs_used": float((self._wins > 0).sum()),
                "top_output_share": float(self._wins.max()) / max(float(self._wins.sum()), 1.0)}
