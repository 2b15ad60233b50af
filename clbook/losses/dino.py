r"""DINO's self-distillation loss (Caron et al., 2021): the student predicts the teacher's centered, sharpened output.

.. math:: P_t = \operatorname{softmax}\big((g_t - c) / \tau_t\big), \qquad
          \log P_s = \operatorname{log\,softmax}(g_s / \tau_s), \qquad
          L = \operatorname{mean}_{(t, s),\ s \ne t}\ \operatorname{mean}_i
              \Big[-\sum_k P_t^{(t)}[i, k]\,\log P_s^{(s)}[i, k]\Big]

Shapes: ``student`` is a list of V tensors ``[B, K]``, the student's outputs on V views (the
global views first, then the local ones); ``teacher`` a list of G <= V tensors ``[B, K]``, the
teacher's outputs on the G global views, in the same order; ``center`` ``[K]``. Every teacher
view is a target for every student view except its own (the pairs with ``s == t`` are skipped),
so there are ``G (V - 1)`` pairs. The teacher's probabilities are constants (no gradient).

The plain form below is what runs; :class:`DINOLoss` adds the center, an exponential moving
average of the teacher's mean output, updated after every call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbook.distributed import world_info
from clbook.losses._checks import _check_embeddings, _check_positive, _result, _to_float32

__all__ = ["dino_loss", "teacher_probabilities", "DINOLoss"]


def _check_views(student: list[Tensor], teacher: list[Tensor]) -> None:
    for name, views in (("student", student), ("teacher", teacher)):
        if isinstance(views, Tensor) or not isinstance(views, (list, tuple)) or not views:
            raise ValueError(f"{name} must be a non-empty list of tensors [B, K], one per view; "
                             f"got {type(views).__name__}")
        for i, v in enumerate(views):
            _check_embeddings(f"{name}[{i}]", v)
    shape = list(teacher[0].shape)
    for name, views in (("student", student), ("teacher", teacher)):
        for i, v in enumerate(views):
            if list(v.shape) != shape:
                raise ValueError(f"every view must have shape {shape} (teacher[0]), got {name}[{i}] {list(v.shape)}")
    if len(teacher) > len(student):
        raise ValueError(f"the teacher sees the global views, which the student sees too: got {len(teacher)} "
                         f"teacher views but only {len(student)} student views")
    if len(student) < 2:
        raise ValueError("DINO needs at least 2 views (a view is never its own target)")


def _check_center(center: Tensor | None, k: int) -> None:
    if center is None:
        return
    if not isinstance(center, Tensor) or center.shape not in ((k,), (1, k)):
        shape = list(center.shape) if isinstance(center, Tensor) else type(center).__name__
        raise ValueError(f"center must have shape [{k}] (one entry per output), got {shape}")
    _check_embeddings("center", center.reshape(1, k))


def teacher_probabilities(teacher: Tensor, center: Tensor | None = None, temperature: float = 0.04) -> Tensor:
    r"""The teacher's targets ``softmax((teacher - center) / temperature)``, ``[B, K] -> [B, K]``, no gradient.

    Centering (subtracting ``center``, the running mean of the teacher's outputs) keeps any one
    output from dominating; sharpening (a temperature below the student's) keeps the targets
    from going uniform. ``center=None`` skips centering.
    """
    _check_embeddings("teacher", teacher)
    _check_center(center, teacher.shape[1])
    return _targets(teacher, center, _check_positive("temperature", temperature))


def _targets(teacher: Tensor, center: Tensor | None, temperature: float) -> Tensor:
    """:func:`teacher_probabilities` without the checks (the inputs are checked by the caller)."""
    (t,), _ = _to_float32(teacher.detach())
    if center is not None:
        t = t - center.detach().reshape(1, -1).to(t.dtype)
    return F.softmax(t / temperature, dim=1)


def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor | None = None,
              student_temperature: float = 0.1, teacher_temperature: float = 0.04) -> Tensor:
    r"""DINO's loss: cross-entropy from the teacher's centered, sharpened outputs to the student's.

    .. math:: L = \frac{1}{G (V - 1)} \sum_{t=1}^{G} \sum_{s \ne t} \frac1B \sum_{i=1}^{B}
              -\sum_k P_t^{(t)}[i, k] \log P_s^{(s)}[i, k]

    with :math:`P_t = \operatorname{softmax}((g_t - c)/\tau_t)` (constant) and
    :math:`P_s = \operatorname{softmax}(g_s/\tau_s)`. Since :math:`-\sum P_t \log P_s = h(P_t) +
    \mathrm{KL}(P_t \Vert P_s)`, the loss is the entropy of the teacher's targets plus how far the
    student is from them; only the KL part depends on the student.

    Parameters
    ----------
    student : list of V Tensors, each [B, K]
        The student's outputs (before any softmax) on every view: the G global views first, in the
        teacher's order, then the local views.
    teacher : list of G Tensors, each [B, K]
        The teacher's outputs on the global views. Detached: no gradient reaches them.
    center : Tensor, shape [K], optional
        Subtracted from the teacher's outputs (constant). None: no centering.
    student_temperature : float, default 0.1
    teacher_temperature : float, default 0.04
        Both positive. DINO warms the teacher's up from 0.04 to at most 0.07.

    Returns
    -------
    Tensor, shape []
        The mean over the ``G (V - 1)`` pairs of views and the B samples, in the promoted dtype of
        the inputs (half precision computed in float32).

    Notes
    -----
    The official ``DINOLoss`` (facebookresearch/dino) and lightly's ``DINOLoss`` compute the same
    number from the same inputs (the tests compare to 1e-6); both also update their center after
    the call, as :class:`DINOLoss` here does.
    """
    _check_views(student, teacher)
    student_temperature = _check_positive("student_temperature", student_temperature)
    teacher_temperature = _check_positive("teacher_temperature", teacher_temperature)
    _check_center(center, teacher[0].shape[1])
    _, dtype = _to_float32(*student, *teacher)  # the dtype returned: the inputs' promoted one
    compute = torch.float64 if dtype == torch.float64 else torch.float32  # half precision: float32
    targets = [_targets(t, center, teacher_temperature).to(compute) for t in teacher]  # G x [B, K]
    log_p = [F.log_softmax(s.to(compute) / student_temperature, dim=1) for s in student]  # V x [B, K]
    total, pairs = 0.0, 0
    for t, target in enumerate(targets):
        for s, logp in enumerate(log_p):
            if s == t:  # a view is never its own target
                continue
            total = total - (target * logp).sum(dim=1).mean()
            pairs += 1
    return _result(total / pairs, dtype, "dino_loss")


class DINOLoss(nn.Module):
    r"""DINO's loss with its center: :func:`dino_loss`, then an EMA update of the center.

    After every call in training mode, :math:`c \leftarrow m\,c + (1 - m)\,\bar g_t`, with
    :math:`\bar g_t` the mean of the teacher's outputs over the batch and its global views (over
    every process's batch with ``gather_distributed=True``). The loss of a call uses the center
    from before it, as in the official code.

    Parameters
    ----------
    dim : int
        K, the size of the outputs.
    student_temperature : float, default 0.1
    teacher_temperature : float, default 0.04
    center_momentum : float in [0, 1], default 0.9
    centering : bool, default True
        False: no centering at all (the ablation): the center is neither used nor updated.
    gather_distributed : bool, default False

    Attributes
    ----------
    center : Tensor, shape [K]
        A buffer, zeros at the start.
    """

    def __init__(self, dim: int, student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                 center_momentum: float = 0.9, centering: bool = True, gather_distributed: bool = False) -> None:
        super().__init__()
        from clbook.checks import check_bool, check_int, check_probability

        self.dim = check_int("dim", dim, 1)
        self.student_temperature = _check_positive("student_temperature", student_temperature)
        self.teacher_temperature = _check_positive("teacher_temperature", teacher_temperature)
        self.center_momentum = check_probability("center_momentum", center_momentum)
        self.centering = check_bool("centering", centering)
        self.gather_distributed = gather_distributed
        self.register_buffer("center", torch.zeros(self.dim))

    def forward(self, student: list[Tensor], teacher: list[Tensor], teacher_temperature: float | None = None) -> Tensor:
        """The loss with the current center (and ``teacher_temperature`` if given), then the center's update."""
        temperature = self.teacher_temperature if teacher_temperature is None else teacher_temperature
        loss = dino_loss(student, teacher, self.center if self.centering else None, self.student_temperature,
                         temperature)
        if self.training and self.centering:
            self.update_center(teacher)
        return loss

    @torch.no_grad()
    def update_center(self, teacher: list[Tensor]) -> None:
        """``center <- m center + (1 - m) mean`` of the teacher's outputs ``G x [B, K]`` (every process's)."""
        outputs = torch.cat([t.detach().float() for t in teacher])  # [G B, K]
        total, count = outputs.sum(dim=0), torch.tensor(float(len(outputs)), device=outputs.device)
        if world_info(self.gather_distributed) is not None:
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        m = self.center_momentum
        self.center.mul_(m).add_((total / count).to(self.center.dtype), alpha=1.0 - m)
