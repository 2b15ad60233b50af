"""DINO's loss against a float64 loop, the official DINOLoss (transcribed) and lightly's; gradients; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clbook.losses import DINOLoss, dino_loss, teacher_probabilities


def outputs(b: int = 6, k: int = 9, v: int = 5, g: int = 2, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    student = [torch.randn(b, k, generator=gen, dtype=dtype) for _ in range(v)]
    teacher = [torch.randn(b, k, generator=gen, dtype=dtype) for _ in range(g)]
    return student, teacher


class OfficialDINOLoss(nn.Module):
    """facebookresearch/dino's DINOLoss (main_dino.py), transcribed for one process.

    Changes: ``dist.all_reduce`` and ``dist.get_world_size()`` dropped (one process); nothing else.
    """

    def __init__(self, out_dim, ncrops, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs,
                 student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
        ))

    def forward(self, student_output, teacher_output, epoch):
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)
        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        batch_center = batch_center / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def loop_reference(student, teacher, center, ts, tt):
    """Sample by sample, pair by pair, in float64 with math (no torch softmax)."""
    total, pairs = 0.0, 0
    for t, tv in enumerate(teacher):
        for s, sv in enumerate(student):
            if s == t:
                continue
            per_sample = []
            for i in range(len(tv)):
                tl = [(a - c) / tt for a, c in zip(tv[i].tolist(), center.tolist())]
                m = max(tl)
                p = [math.exp(x - m) for x in tl]
                p = [x / sum(p) for x in p]
                sl = [a / ts for a in sv[i].tolist()]
                m2 = max(sl)
                lse = m2 + math.log(sum(math.exp(x - m2) for x in sl))
                per_sample.append(-sum(pk * (x - lse) for pk, x in zip(p, sl)))
            total += sum(per_sample) / len(per_sample)
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("v, g", [(2, 2), (5, 2), (4, 1)])
def test_matches_a_float64_loop(v, g):
    student, teacher = outputs(v=v, g=g)
    center = 0.3 * torch.randn(9, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = dino_loss(student, teacher, center, 0.1, 0.04).item()
    assert ours == pytest.approx(loop_reference(student, teacher, center, 0.1, 0.04), rel=1e-9)


def test_matches_the_official_dino_loss_over_several_steps_with_its_center():
    """Five calls: the loss of each and the center after each match the official module to 1e-6."""
    k, ncrops = 12, 6
    official = OfficialDINOLoss(k, ncrops, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3,
                                nepochs=5, student_temp=0.1, center_momentum=0.9)
    ours = DINOLoss(k, student_temperature=0.1, center_momentum=0.9)
    for epoch in range(5):
        student, teacher = outputs(b=8, k=k, v=ncrops, g=2, seed=epoch, dtype=torch.float32)
        student = [3 * s for s in student]  # outputs of a trained head vary more than N(0, 1)
        temp = float(official.teacher_temp_schedule[epoch])
        theirs = official(torch.cat(student), torch.cat(teacher), epoch)
        mine = ours(student, teacher, teacher_temperature=temp)
        assert mine.item() == pytest.approx(theirs.item(), abs=1e-6, rel=1e-6)
        torch.testing.assert_close(ours.center, official.center[0], atol=1e-6, rtol=1e-6)
    assert ours.center.abs().max() > 0.01  # the center really moved


def test_matches_lightly_dino_loss_over_several_steps_with_its_center(peer):
    LightlyDINOLoss = peer("lightly.loss", "lightly").DINOLoss
    k = 10
    theirs_fn = LightlyDINOLoss(output_dim=k, warmup_teacher_temp=0.04, teacher_temp=0.04,
                                warmup_teacher_temp_epochs=1, student_temp=0.1, center_momentum=0.9)
    ours = DINOLoss(k, student_temperature=0.1, teacher_temperature=0.04, center_momentum=0.9)
    for step in range(4):
        student, teacher = outputs(b=7, k=k, v=5, g=2, seed=10 + step, dtype=torch.float32)
        theirs = theirs_fn(teacher, student)  # lightly takes the teacher's views first
        mine = ours(student, teacher)
        assert mine.item() == pytest.approx(theirs.item(), abs=1e-6, rel=1e-6)
        torch.testing.assert_close(ours.center, theirs_fn.center.reshape(-1), atol=1e-6, rtol=1e-6)
    # and with a teacher temperature given per call (DINO's warm-up)
    student, teacher = outputs(b=7, k=k, v=3, g=2, seed=20, dtype=torch.float32)
    theirs = theirs_fn(teacher, student, teacher_temp=0.06)
    assert ours(student, teacher, teacher_temperature=0.06).item() == pytest.approx(theirs.item(), abs=1e-6)


def test_loss_is_teacher_entropy_plus_kl():
    student, teacher = outputs(v=2, g=2)
    center = torch.zeros(9, dtype=torch.float64)
    p = [teacher_probabilities(t, center, 0.04) for t in teacher]
    log_q = [F.log_softmax(s / 0.1, dim=1) for s in student]
    entropy = sum(-(pi * pi.log()).sum(1).mean() for pi in p) / 2
    kl = (F.kl_div(log_q[1], p[0], reduction="batchmean") + F.kl_div(log_q[0], p[1], reduction="batchmean")) / 2
    torch.testing.assert_close(dino_loss(student, teacher, center, 0.1, 0.04), entropy + kl)


def test_gradient_reaches_the_student_only_and_is_softmax_minus_target():
    student, teacher = outputs(v=2, g=2)
    student = [s.clone().requires_grad_() for s in student]
    teacher = [t.clone().requires_grad_() for t in teacher]
    dino_loss(student, teacher, None, 0.1, 0.04).backward()
    assert all(t.grad is None for t in teacher)
    # d/ds of -sum_k p_k log softmax(s / ts)_k, averaged over B samples and 2 pairs
    expected = (F.softmax(student[0].detach() / 0.1, 1) - teacher_probabilities(teacher[1], None, 0.04)) / (0.1 * 6 * 2)
    torch.testing.assert_close(student[0].grad, expected)


def test_gradcheck():
    student, teacher = outputs(b=3, k=4, v=3, g=2)
    center = torch.randn(4, dtype=torch.float64)
    leaves = [s.clone().requires_grad_() for s in student]
    assert torch.autograd.gradcheck(lambda a, b, c: dino_loss([a, b, c], teacher, center, 0.3, 0.1), tuple(leaves))


def test_half_precision_is_computed_in_float32():
    student, teacher = outputs(dtype=torch.float32)
    out = dino_loss([s.half() for s in student], [t.half() for t in teacher], None, 0.1, 0.01)
    assert out.dtype == torch.float16
    ref = dino_loss([s.half().float() for s in student], [t.half().float() for t in teacher], None, 0.1, 0.01)
    assert out.item() == pytest.approx(ref.item(), rel=2e-3)


def test_inputs_are_not_modified_and_eval_mode_keeps_the_center():
    student, teacher = outputs(dtype=torch.float32)
    copies = [x.clone() for x in student + teacher]
    module = DINOLoss(9)
    module(student, teacher)
    assert all(torch.equal(a, b) for a, b in zip(student + teacher, copies))
    moved = module.center.clone()
    assert moved.abs().sum() > 0
    module.eval()
    module(student, teacher)
    assert torch.equal(module.center, moved)
    off = DINOLoss(9, centering=False)
    off(student, teacher)
    assert torch.equal(off.center, torch.zeros(9))
    assert off(student, teacher).item() == pytest.approx(dino_loss(student, teacher, None).item())


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "student": a["student"][0]}, "list of tensors"),
        (lambda a: {**a, "student": []}, "list of tensors"),
        (lambda a: {**a, "student": a["student"][:1], "teacher": a["teacher"][:1]}, "at least 2 views"),
        (lambda a: {**a, "teacher": a["teacher"] * 4}, "teacher views but only"),
        (lambda a: {**a, "student": [a["student"][0][:, :-1]] + a["student"][1:]}, "every view must have shape"),
        (lambda a: {**a, "teacher": [a["teacher"][0][0]] + a["teacher"][1:]}, r"\[N, D\]"),
        (lambda a: {**a, "center": torch.zeros(5)}, "center must have shape"),
        (lambda a: {**a, "center": torch.full((9,), float("nan"))}, "NaN"),
        (lambda a: {**a, "teacher": [a["teacher"][0].masked_fill(a["teacher"][0] > 1, float("inf")),
                                     *a["teacher"][1:]]}, "NaN or infinite"),
        (lambda a: {**a, "student_temperature": 0.0}, "student_temperature"),
        (lambda a: {**a, "teacher_temperature": -0.04}, "teacher_temperature"),
        (lambda a: {**a, "student": [s.long() for s in a["student"]]}, "floating-point"),
    ],
)
def test_bad_input(change, match):
    student, teacher = outputs(dtype=torch.float32)
    args = dict(student=student, teacher=teacher, center=torch.zeros(9), student_temperature=0.1,
                teacher_temperature=0.04)
    with pytest.raises(ValueError, match=match):
        dino_loss(**change(args))


def test_module_bad_options():
    with pytest.raises(ValueError, match="center_momentum"):
        DINOLoss(4, center_momentum=1.5)
    with pytest.raises(ValueError, match="dim"):
        DINOLoss(0)
