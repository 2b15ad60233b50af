"""The exercise checkers: reference solutions pass, typical wrong answers fail with the right hint,
stubs are "not attempted yet", and no verdict is a traceback."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clbook import exercises
from clbook.exercises import EXERCISES, Case, Mistake, exercise
from clbook.reference import naive_nt_xent_loss
from clbook.student import is_exercise_cell, strip_solutions

ROOT = Path(__file__).resolve().parents[1]
SOLVED = ["01_spring_margin_loss.ipynb", "02_nt_xent.ipynb", "06_clustering_em.ipynb"]


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ----------------------------------------------------------------------------- the registry


def test_every_solved_notebook_has_at_least_two_checked_exercises():
    for name in SOLVED:
        key = name[:2]
        assert sum(k.startswith(key + ".") for k in EXERCISES) >= 2, name


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_reference_passes(key):
    verdict = EXERCISES[key].run(EXERCISES[key].reference)
    assert verdict.passed, verdict.message
    assert verdict.message.startswith(f"[pass] {key} ")


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_stub_is_not_attempted_yet(key):
    verdict = EXERCISES[key].run(stub)
    assert verdict.status == "not attempted"
    assert "not attempted yet" in verdict.message and "NotImplementedError" in verdict.message


@pytest.mark.parametrize(
    "key, index", [(k, i) for k in sorted(EXERCISES) for i in range(len(EXERCISES[k].mistakes))]
)
def test_each_registered_mistake_fails_with_its_hint(key, index):
    mistake = EXERCISES[key].mistakes[index]
    verdict = EXERCISES[key].run(mistake.function)
    assert verdict.status == "fail"
    assert verdict.hint == mistake.hint
    assert verdict.case is not None and verdict.case in verdict.message
    assert "expected" in verdict.message or "returned" in verdict.message


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_verdicts_are_short_and_show_no_code(key):
    for answer in [EXERCISES[key].reference, stub, *(m.function for m in EXERCISES[key].mistakes)]:
        message = EXERCISES[key].run(answer).message
        assert len(message.splitlines()) <= 3
        for leak in ("Traceback", "def ", "return ", "lambda", "logsumexp(", ".pow("):
            assert leak not in message, (leak, message)


def test_duplicate_keys_are_refused():
    with pytest.raises(ValueError, match="already registered"):
        exercise("01.1", "again", "01", reference=stub, cases=lambda: [])


# ----------------------------------------------------------------------------- wrong answers written by hand


def hint_of(checker, answer):
    verdict = checker.run(answer)
    assert verdict.status == "fail", verdict.message
    return verdict.hint


def test_naive_nt_xent_fails_at_small_temperature_with_the_stability_hint():
    # clbook.reference's textbook formula: right at tau = 0.5, nan at tau = 0.01.
    verdict = exercises.check_nt_xent.run(naive_nt_xent_loss)
    assert verdict.status == "fail"
    assert "tau = 0.01" in verdict.case and "finite" in verdict.message
    assert "02 §5" in verdict.hint


def shifted_only_nt_xent(z1, z2, tau):
    """Row max subtracted, but the ratio taken before the log: underflows for a losing positive."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    size = len(z)
    logits = z @ z.T / tau
    logits = logits - logits.max(dim=1, keepdim=True).values
    e = torch.exp(logits) * (1 - torch.eye(size, dtype=z.dtype))
    pos = e[torch.arange(size), torch.arange(size).roll(size // 2)]
    return -torch.log(pos / e.sum(1)).mean()


def test_shift_without_log_space_fails_on_unrelated_views_at_small_temperature():
    verdict = exercises.check_nt_xent.run(shifted_only_nt_xent)
    assert verdict.status == "fail" and "tau = 0.01" in verdict.case
    assert "log-sum-exp" in verdict.hint


def test_nt_xent_without_normalization_is_told_about_cosine_similarity():
    def unnormalized(z1, z2, tau):
        z = torch.cat([z1, z2])
        m = len(z)
        logits = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
        return (torch.logsumexp(logits, 1) - logits[torch.arange(m), torch.arange(m).roll(m // 2)]).mean()

    assert "normalize" in hint_of(exercises.check_nt_xent, unnormalized)


def test_float32_upcast_nt_xent_passes_the_float16_cases():
    def upcast(z1, z2, tau):
        return naive_free(z1.float(), z2.float(), tau)

    def naive_free(z1, z2, tau):
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        m = len(z)
        logits = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
        return F.cross_entropy(logits, torch.arange(m).roll(m // 2))

    assert exercises.check_nt_xent.run(upcast).passed


def test_drlim_with_a_bare_sqrt_fails_on_the_gradient_at_identical_points():
    def with_norm(x1, x2, y, margin=1.0):
        d = (x1 - x2).pow(2).sum(dim=1).sqrt()  # sqrt's slope is infinite at 0: nan gradient
        y = y.to(x1.dtype)
        return (y * 0.5 * d**2 + (1 - y) * 0.5 * torch.clamp(margin - d, min=0) ** 2).mean()

    verdict = exercises.check_drlim_other_convention.run(with_norm)
    assert verdict.status == "fail" and "gradient" in verdict.case
    assert "sqrt" in verdict.hint


def test_drlim_in_clbook_convention_is_sent_to_the_label_trap():
    def clbook_convention(x1, x2, y, margin=1.0):
        d2 = (x1 - x2).pow(2).sum(1)
        d = d2.clamp_min(1e-12).sqrt()
        y = y.to(x1.dtype)
        return ((1 - y) * 0.5 * d2 + y * 0.5 * torch.clamp(margin - d, min=0) ** 2).mean()

    assert "label trap" in hint_of(exercises.check_drlim_other_convention, clbook_convention)


def test_em_step_with_a_naive_e_step_fails_on_the_far_point():
    def naive_em(X, weights, means, covariances, reg_covar=1e-6):
        d = X.shape[1]
        dens = np.stack([w * np.exp(-0.5 * np.einsum("nd,de,ne->n", X - m, np.linalg.inv(c), X - m))
                         / np.sqrt(np.linalg.det(2 * np.pi * c)) for w, m, c in zip(weights, means, covariances)], 1)
        with np.errstate(invalid="ignore"):
            r = dens / dens.sum(1, keepdims=True)
        nk = r.sum(0)
        mu = r.T @ X / nk[:, None]
        cov = np.stack([(r[:, j, None] * (X - mu[j])).T @ (X - mu[j]) / nk[j] + reg_covar * np.eye(d)
                        for j in range(len(nk))])
        return nk / len(X), mu, cov

    verdict = exercises.check_em_step.run(naive_em)
    assert verdict.status == "fail" and "60 units" in verdict.case
    assert "log space" in verdict.hint


def test_answers_that_raise_or_modify_their_input_get_one_line_reasons():
    def raises(z1, z2, tau):
        return z1 @ z2  # shapes do not match

    def in_place(z1, z2, tau):
        z1.div_(z1.norm(dim=1, keepdim=True))
        return exercises.nt_xent_loss(z1, z2, tau)

    verdict = exercises.check_nt_xent.run(raises)
    assert verdict.status == "fail" and "raised RuntimeError" in verdict.message
    verdict = exercises.check_nt_xent.run(in_place)
    assert verdict.status == "fail" and "in place" in verdict.message
    verdict = exercises.check_nt_xent.run(lambda z1, z2, tau: None)
    assert "return" in verdict.message
    verdict = exercises.check_nt_xent.run(exercises.nt_xent_loss(torch.ones(2, 2), torch.ones(2, 2)))
    assert "expected a function" in verdict.message


def test_calling_a_checker_prints_the_verdict(capsys):
    exercises.check_dropped_diagonal_targets(lambda n: torch.zeros(2 * n, dtype=torch.long))
    out = capsys.readouterr().out
    assert out.startswith("[not yet] 02.2") and "layout (c)" in out and "Traceback" not in out


def test_a_new_checker_is_a_few_lines():
    # Built directly (not with exercise()), so the test registers nothing.
    checker = exercises.Exercise(
        "99.1", "double", "99 §1", reference=lambda x: 2 * x,
        cases=lambda: [Case("x = 3", (3.0,)), Case("a vector", (torch.arange(3.0),))],
        mistakes=[Mistake(lambda x: x + x + 1, "off by one")],
    )
    assert checker.run(lambda x: x * 2).passed
    assert checker.run(lambda x: x + x + 1).hint == "off by one"
    assert checker.run(lambda x: 3 * x).hint == "reread 99 §1"
    assert "99.1" not in EXERCISES and checker.cases[0].label == "x = 3"


# ----------------------------------------------------------------------------- the notebooks' own solutions


def exercise_cells():
    """Every exercise cell of every notebook (notebooks added later are picked up too).

    An exercise cell must run on its own given torch, F (torch.nn.functional), np and math.
    """
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if is_exercise_cell(cell):
                yield pytest.param(cell.source, id=f"{path.name[:2]}-{cell.source.splitlines()[0][2:]}")


def run_cell(source: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<exercise cell>", "exec"), {"torch": torch, "F": F, "np": np, "math": math})
    return out.getvalue()


@pytest.mark.parametrize("source", list(exercise_cells()))
def test_notebook_solution_passes_and_its_stub_is_not_attempted(source):
    assert run_cell(source).startswith("[pass]")
    stubbed = strip_solutions(source, "Exercise under test")
    assert "not attempted yet" in run_cell(stubbed)


def test_exercise_cells_are_compared_by_nbval_and_saved_passing():
    # The tag makes nbval compare the printed verdict, so a check that stops passing fails CI.
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if is_exercise_cell(cell):
                assert "nbval-check-output" in cell.metadata.get("tags", []), path.name
                text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
                assert text.startswith("[pass]"), f"{path.name}: saved verdict {text[:60]!r}"
