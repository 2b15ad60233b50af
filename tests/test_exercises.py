"""The exercise checkers: reference solutions pass, typical wrong answers fail with the right hint,
stubs are "not attempted yet", and no verdict is a traceback."""

from __future__ import annotations

import ast
import contextlib
import io
import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clbook import exercises, losses
from clbook.exercises import EXERCISES, Case, Mistake, exercise
from clbook.losses import nt_xent_loss
from clbook.reference import naive_nt_xent_loss
from clbook.student import is_exercise_cell, strip_solutions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def keys(with_mistakes=False):
    """Every registered key as a pytest param (with each of its mistakes' indices if asked)."""
    if with_mistakes:
        return [pytest.param(k, i, id=f"{k}-{i}") for k in sorted(EXERCISES) for i in range(len(EXERCISES[k].mistakes))]
    return [pytest.param(k, id=k) for k in sorted(EXERCISES)]


def stub(*args, **kwargs):
    raise NotImplementedError("Exercise: replace this line with your code")


# ----------------------------------------------------------------------------- the registry


def checked_exercise_cells(path: Path) -> list:
    """The exercise cells of a notebook that call one of clbook.exercises' checkers."""
    cells = []
    for cell in nbformat.read(path, as_version=4).cells:
        called = [name for name in re.findall(r"\b(check_\w+)\s*\(", cell.source)
                  if isinstance(getattr(exercises, name, None), exercises.Exercise)]
        if is_exercise_cell(cell) and called:
            cells.append(cell)
    return cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_notebook_keeps_at_least_two_checked_exercises(path):
    # Both in the registry and in the notebook itself: a checker without its cell checks nothing.
    assert sum(k.startswith(path.name[:2] + ".") for k in EXERCISES) >= 2, path.name
    assert len(checked_exercise_cells(path)) >= 2, f"{path.name} has fewer than two checked exercise cells"


def test_every_checker_belongs_to_a_notebook():
    assert NOTEBOOKS and {k[:2] for k in EXERCISES} <= {p.name[:2] for p in NOTEBOOKS}


@pytest.mark.parametrize("key", keys())
def test_reference_passes(key):
    verdict = EXERCISES[key].run(EXERCISES[key].reference)
    assert verdict.passed, verdict.message
    assert verdict.message.startswith(f"[pass] {key} ")


@pytest.mark.parametrize("key", keys())
def test_stub_is_not_attempted_yet(key):
    verdict = EXERCISES[key].run(stub)
    assert verdict.status == "not attempted"
    assert "not attempted yet" in verdict.message and "NotImplementedError" in verdict.message


@pytest.mark.parametrize("key, index", keys(with_mistakes=True))
def test_each_registered_mistake_fails_with_its_hint(key, index):
    mistake = EXERCISES[key].mistakes[index]
    verdict = EXERCISES[key].run(mistake.function)
    assert verdict.status == "fail"
    assert verdict.hint == mistake.hint
    assert verdict.case is not None and verdict.case in verdict.message
    assert "expected" in verdict.message or "returned" in verdict.message


@pytest.mark.parametrize("key", keys())
def test_verdicts_are_short_and_show_no_code(key):
    for answer in [EXERCISES[key].reference, stub, *(m.function for m in EXERCISES[key].mistakes)]:
        message = EXERCISES[key].run(answer).message
        assert len(message.splitlines()) <= 3
        for leak in ("Traceback", "def ", "return ", "lambda", "logsumexp(", ".pow("):
            assert leak not in message, (leak, message)


def test_a_checker_whose_clbook_functions_are_missing_says_so():
    checker = exercises.Exercise("99.2", "needs more", "99 §2", reference=lambda x: x,
                                 cases=lambda: [Case("x = 1", (1.0,))], requires=((losses, "no_such_loss"),))
    assert not checker.available and checker.missing == ["clbook.losses.no_such_loss"]
    verdict = checker.run(lambda x: x)
    assert verdict.status == "unavailable" and "clbook.losses.no_such_loss" in verdict.message
    assert "Traceback" not in verdict.message and len(verdict.message.splitlines()) == 1
    assert exercises.Exercise("99.3", "t", "99", reference=abs, cases=list, requires=((losses, "nt_xent_loss"),)).available


def test_the_course_checkers_import_what_they_use_and_need_nothing_looked_up():
    assert all(checker.available and not checker.requires for checker in EXERCISES.values())


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
        # Written out: calling nt_xent_loss here would be refused first (02.1 forbids it).
        z = torch.cat([z1, F.normalize(z2, dim=1)])
        logits = (z @ z.T / tau).masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(z)).roll(len(z) // 2))

    verdict = exercises.check_nt_xent.run(raises)
    assert verdict.status == "fail" and "raised RuntimeError" in verdict.message
    verdict = exercises.check_nt_xent.run(in_place)
    assert verdict.status == "fail" and "in place" in verdict.message
    verdict = exercises.check_nt_xent.run(lambda z1, z2, tau: None)
    assert "return" in verdict.message
    verdict = exercises.check_nt_xent.run(nt_xent_loss(torch.ones(2, 2), torch.ones(2, 2)))
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
    assert checker.run(lambda x: x + x + 1).hint == "off by one; reread 99 §1"  # every hint names a section
    assert checker.run(lambda x: 3 * x).hint == "reread 99 §1"
    assert "99.1" not in EXERCISES and checker.cases[0].label == "x = 3"


# ----------------------------------------------------------------------------- wrong answers for 03-09


def literal_supcon_out(z, labels, tau):
    """SupCon computed literally: the anchor without positives gives 0 / 0 = nan."""
    eye = torch.eye(len(labels), dtype=torch.bool)
    e = torch.exp(z @ z.T / tau).masked_fill(eye, 0.0)
    frac = e / e.sum(dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    return (-(torch.log(frac) * pos).nan_to_num(0.0).sum(1) / pos.sum(1)).mean()


def test_supcon_out_that_keeps_the_anchor_without_positives_is_told_to_leave_it_out():
    verdict = exercises.check_supcon_out.run(literal_supcon_out)
    assert verdict.status == "fail" and "no positive" in verdict.case
    assert "left out" in verdict.hint


def test_info_nce_without_detach_fails_on_the_queue_gradient():
    def attached(query, key, queue, tau):
        q, k, n = (F.normalize(x, dim=1) for x in (query, key, queue))
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ n.T], dim=1) / tau
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))

    verdict = exercises.check_info_nce_queue.run(attached)
    assert verdict.status == "fail" and "queue" in verdict.case and "detach" in verdict.hint


def test_enqueue_in_place_is_refused():
    def in_place(queue, ptr, keys):
        rows = (ptr + torch.arange(len(keys))) % len(queue)
        queue[rows] = F.normalize(keys, dim=1)
        return queue, (ptr + len(keys)) % len(queue)

    verdict = exercises.check_enqueue.run(in_place)
    assert verdict.status == "fail" and "in place" in verdict.message


def test_standardize_leaking_the_test_set_is_named():
    def pooled(train, test):
        both = torch.cat([train, test])
        mean, std = both.mean(0), both.std(0)
        return (train - mean) / std, (test - mean) / std

    assert "leaks" in hint_of(exercises.check_standardize, pooled)


def test_uniformity_outside_log_space_fails_on_far_points():
    def naive(z1, z2, t=2.0):
        u1, u2 = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
        return (u1 - u2).pow(2).sum(1).mean().item(), torch.exp(-t * torch.pdist(u1).pow(2)).mean().log().item()

    verdict = exercises.check_alignment_uniformity.run(naive)
    assert verdict.status == "fail" and "t = 300" in verdict.case and "log space" in verdict.hint


def test_simsiam_without_stop_gradient_fails_on_the_target_gradient():
    def no_stop(p1, p2, z1, z2):
        return -0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean())

    verdict = exercises.check_simsiam_loss.run(no_stop)
    assert verdict.status == "fail" and "must be zero" in verdict.case and "stop-gradient" in verdict.hint


def test_sinkhorn_with_exp_fails_at_small_epsilon():
    def with_exp(scores, epsilon, n_iter):
        B, K = scores.shape
        q = torch.exp(scores / epsilon)
        for _ in range(n_iter):
            q = q / q.sum(0, keepdim=True) * (B / K)
            q = q / q.sum(1, keepdim=True)
        return q

    verdict = exercises.check_sinkhorn.run(with_exp)
    assert verdict.status == "fail" and "epsilon = 0.01" in verdict.case and "log" in verdict.hint


def test_swav_with_codes_attached_fails_on_the_code_gradient():
    def attached(s1, s2, q1, q2, tau):
        return -0.5 * ((q2 * F.log_softmax(s1 / tau, 1)).sum(1).mean() + (q1 * F.log_softmax(s2 / tau, 1)).sum(1).mean())

    verdict = exercises.check_swav_loss.run(attached)
    assert verdict.status == "fail" and "codes" in verdict.case and "detach" in verdict.hint


# ----------------------------------------------------------------------------- the notebooks' own solutions


def exercise_cells():
    """Every exercise cell of every notebook (notebooks added later, or given cells later, are picked up too).

    An exercise cell must run on its own given torch, F (torch.nn.functional), np and math.
    """
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if is_exercise_cell(cell):
                key = cell.source.splitlines()[0][len("# Exercise "):].strip()
                yield pytest.param(cell, id=f"{path.name[:2]}-{key}")


def run_cell(source: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<exercise cell>", "exec"), {"torch": torch, "F": F, "np": np, "math": math})
    return out.getvalue()


@pytest.mark.parametrize("cell", list(exercise_cells()))
def test_notebook_solution_passes_and_its_stub_is_not_attempted(cell):
    assert cell.source.splitlines()[0].startswith("# Exercise ")
    assert run_cell(cell.source).startswith("[pass]")
    stubbed = strip_solutions(cell.source, "Exercise under test")
    assert "not attempted yet" in run_cell(stubbed)


@pytest.mark.parametrize("cell", list(exercise_cells()))
def test_exercise_cells_are_compared_by_nbval_and_saved_passing(cell):
    # The tag makes nbval compare the printed verdict, so a check that stops passing fails CI.
    assert "nbval-check-output" in cell.metadata.get("tags", [])
    if not cell.outputs and cell.execution_count is None:
        # Inserted but not executed yet: nbval fails on it (no saved verdict to compare) until the
        # notebook is executed, so this is a reminder, not a pass.
        pytest.skip("exercise cell not executed yet: execute its notebook")
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    assert text.startswith("[pass]"), f"saved verdict {text[:60]!r}"


def test_each_notebook_has_a_cell_for_every_checker():
    for path in NOTEBOOKS:
        cells = [c for c in nbformat.read(path, as_version=4).cells if is_exercise_cell(c)]
        present = {c.source.splitlines()[0][len("# Exercise "):].strip() for c in cells}
        wanted = {k for k in EXERCISES if k.startswith(path.name[:2] + ".")}
        assert wanted <= present, f"{path.name}: no cell for {sorted(wanted - present)}"
        assert present <= set(EXERCISES), f"{path.name}: cells without a checker {sorted(present - set(EXERCISES))}"


# ----------------------------------------------------------------------------- the package's layout

PACKAGE = ROOT / "clbook" / "exercises"


def notebook_modules():
    """``{"01": "nb01_margin", ...}``: the module of each notebook's checkers."""
    return {p.stem[2:4]: p.stem for p in sorted(PACKAGE.glob("nb[0-9][0-9]_*.py"))}


def test_no_module_of_the_package_uses_importlib():
    for path in sorted(PACKAGE.glob("*.py")):
        assert "importlib" not in path.read_text(encoding="utf-8"), f"{path.name} uses importlib"
        assert "__import__" not in path.read_text(encoding="utf-8"), f"{path.name} uses __import__"


def test_every_checker_named_in_a_notebook_is_importable_from_the_package():
    used = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                used |= set(re.findall(r"\bcheck_\w+", cell.source))
    assert used, "no notebook names a checker"
    for name in sorted(used):
        assert isinstance(getattr(exercises, name, None), exercises.Exercise), f"clbook.exercises.{name}"
        assert name in exercises.__all__, name


def test_each_notebook_has_one_module_holding_its_checkers_and_no_other():
    modules = notebook_modules()
    assert sorted(modules) == sorted({k[:2] for k in EXERCISES})
    found = {}
    for number, stem in modules.items():
        module = getattr(exercises, stem)  # imported by the package's __init__
        checkers = {name: getattr(module, name) for name in module.__all__}
        assert checkers and all(isinstance(c, exercises.Exercise) for c in checkers.values()), stem
        assert all(c.key.startswith(number + ".") for c in checkers.values()), stem
        for name, checker in checkers.items():
            assert getattr(exercises, name) is checker, f"clbook.exercises does not re-export {stem}.{name}"
            found[checker.key] = checker
    assert found == EXERCISES


def test_nothing_in_clbook_imports_the_exercises():
    for path in sorted((ROOT / "clbook").rglob("*.py")):
        if PACKAGE in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # "from clbook import exercises" too
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            assert not any(n == "clbook.exercises" or n.startswith("clbook.exercises.") for n in names), path.name
