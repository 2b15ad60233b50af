"""The checkers hold the rules their exercises state, not only their numbers.

Each rule is fed an answer that breaks it: the function the exercise asks for, borrowed from
``clbook`` or from the notebook; autograd where the exercise says "without autograd"; the naive
``exp`` where it says "finite at tau = 0.01" or "float16"; the diagonal left in NT-Xent. Correct
answers still pass, also in a namespace that holds the forbidden names (as a notebook's does), and
everything the checker swapped is back in place afterwards.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

import clbook.losses
import clbook.losses.nt_xent
from clbook import exercises
from clbook.exercises import EXERCISES, Case, Exercise
from clbook.exercises.core import AUTOGRAD
from clbook.losses import NTXentLoss, nt_xent_loss, supcon_loss
from clbook.reference import naive_nt_xent_loss

ROOT = Path(__file__).resolve().parents[1]
WRITE_IT_YOURSELF = "write it yourself"


def correct_nt_xent(z1, z2, tau):
    """NT-Xent written out in log space (what 02.1 asks for)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    size = len(z)
    logits = (z @ z.T / tau).masked_fill(torch.eye(size, dtype=torch.bool), float("-inf"))
    positive = logits[torch.arange(size), torch.arange(size).roll(size // 2)]
    return (torch.logsumexp(logits, dim=1) - positive).mean()


def correct_anchor_gradient(sims, tau):
    """02.3 by hand: softmax / tau, the positive's entry pulled."""
    p = torch.softmax(sims / tau, dim=0)
    grad = p / tau
    grad[0] = -(1 - p[0]) / tau
    return grad


def refused(checker, answer, name):
    """Assert that ``answer`` fails ``checker`` because it used ``name``; return the verdict."""
    verdict = checker.run(answer)
    assert verdict.status == "fail", verdict.message
    assert name in verdict.message, verdict.message
    assert WRITE_IT_YOURSELF in verdict.hint, verdict.hint
    assert "Traceback" not in verdict.message and len(verdict.message.splitlines()) == 3
    return verdict


def only(checker, word):
    """A copy of ``checker`` (not registered) that runs only the cases whose label contains ``word``."""
    cases = [c for c in checker.cases if word in c.label]
    assert cases, word
    copy = Exercise(checker.key, checker.title, checker.section, checker.reference, lambda: cases,
                    checker.mistakes, checker.rtol, checker.atol, forbidden=checker.forbidden,
                    no_autograd=checker.no_autograd)
    return copy


def originals():
    """Everything the checkers swap that these tests look at, to compare before and after."""
    return {
        "clbook.losses.nt_xent_loss": clbook.losses.nt_xent_loss,
        "clbook.losses.nt_xent.nt_xent_loss": clbook.losses.nt_xent.nt_xent_loss,
        "clbook.losses.supcon_loss": clbook.losses.supcon_loss,
        "torch.autograd.grad": torch.autograd.grad,
        "torch.Tensor.backward": torch.Tensor.__dict__["backward"],
        "torch.func.grad": torch.func.grad,
        "this module's nt_xent_loss": globals()["nt_xent_loss"],
    }


@pytest.fixture(autouse=True)
def nothing_stays_swapped():
    before = originals()
    yield
    assert originals() == before
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------------- 02.1: write it yourself


def test_returning_clbooks_nt_xent_fails_with_write_it_yourself():
    refused(exercises.check_nt_xent, lambda z1, z2, tau: nt_xent_loss(z1, z2, tau), "clbook.losses.nt_xent_loss")


@pytest.mark.parametrize("how", ["module", "defining module", "alias", "passed itself", "partial", "class",
                                 "supcon_loss", "import inside"])
def test_every_road_to_clbooks_nt_xent_is_closed(how):
    alias = nt_xent_loss  # a name of the learner's own for it

    def answer(z1, z2, tau):
        if how == "module":
            return clbook.losses.nt_xent_loss(z1, z2, tau)
        if how == "defining module":
            return clbook.losses.nt_xent.nt_xent_loss(z1, z2, tau)
        if how == "alias":
            return alias(z1, z2, tau)
        if how == "class":
            return NTXentLoss(temperature=tau)(z1, z2)
        if how == "supcon_loss":  # SimCLR is SupCon with one class per pair of views
            n = len(z1)
            return supcon_loss(torch.cat([z1, z2]), labels=torch.arange(n).repeat(2), temperature=tau)
        from clbook.losses import nt_xent_loss as imported
        return imported(z1, z2, tau)

    given = {"passed itself": nt_xent_loss, "partial": functools.partial(nt_xent_loss)}.get(how, answer)
    verdict = exercises.check_nt_xent.run(given)
    assert verdict.status == "fail" and WRITE_IT_YOURSELF in verdict.hint, verdict.message
    assert "clbook.losses." in verdict.message


def test_an_answer_that_swallows_the_refusal_still_fails():
    def answer(z1, z2, tau):
        try:
            return nt_xent_loss(z1, z2, tau)
        except Exception:  # noqa: BLE001 - what a learner's fallback would do
            return correct_nt_xent(z1, z2, tau)

    refused(exercises.check_nt_xent, answer, "clbook.losses.nt_xent_loss")


def notebook_function(path: str, name: str):
    """The source of the function ``name`` as notebook ``path`` defines it (its def only, not its cell)."""
    for cell in nbformat.read(ROOT / "notebooks" / path, as_version=4).cells:
        if cell.cell_type != "code" or f"def {name}(" not in cell.source:
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return ast.get_source_segment(cell.source, node)
    raise AssertionError(f"{path} defines no {name}")


def notebook_namespace(*sources: str) -> dict:
    """A namespace like the notebook's: its imports, then ``sources`` executed in it."""
    namespace = {"torch": torch, "F": F, "nt_xent_loss": nt_xent_loss, "naive_nt_xent_loss": naive_nt_xent_loss}
    for source in sources:
        exec(compile(source, "<notebook cell>", "exec"), namespace)
    return namespace


def test_reusing_the_notebooks_stable_nt_xent_fails_with_write_it_yourself():
    namespace = notebook_namespace(notebook_function("02_nt_xent.ipynb", "stable_nt_xent"),
                                   "def my_nt_xent(z1, z2, tau):\n    return stable_nt_xent(z1, z2, tau)\n")
    original = namespace["stable_nt_xent"]
    verdict = refused(exercises.check_nt_xent, namespace["my_nt_xent"], "stable_nt_xent")
    assert "the notebook's own version" in verdict.message
    assert namespace["stable_nt_xent"] is original  # put back: the notebook still has it


def test_a_correct_answer_passes_in_a_namespace_that_holds_the_forbidden_names():
    namespace = notebook_namespace(notebook_function("02_nt_xent.ipynb", "stable_nt_xent"))
    namespace["my_nt_xent"] = correct_nt_xent
    assert exercises.check_nt_xent.run(correct_nt_xent).passed
    # The learner may name their own function like the notebook's: it is the answer, not a borrowed one.
    own = notebook_namespace("def stable_nt_xent(z1, z2, tau):\n"
                             "    z = F.normalize(torch.cat([z1, z2]), dim=1)\n"
                             "    m = len(z)\n"
                             "    logits = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float('-inf'))\n"
                             "    return F.cross_entropy(logits, torch.arange(m).roll(m // 2))\n")
    assert exercises.check_nt_xent.run(own["stable_nt_xent"]).passed


def test_the_names_are_unavailable_only_while_the_answer_runs_and_come_back_after_an_error():
    seen = {}

    def answer(z1, z2, tau):
        seen["module"] = clbook.losses.nt_xent_loss
        seen["defining module"] = clbook.losses.nt_xent.nt_xent_loss
        seen["here"] = globals()["nt_xent_loss"]
        raise ValueError("a bug of the learner's")

    verdict = exercises.check_nt_xent.run(answer)
    assert verdict.status == "fail" and "raised ValueError" in verdict.message
    assert all(f is not nt_xent_loss for f in seen.values()), seen
    assert clbook.losses.nt_xent_loss is nt_xent_loss  # and the fixture checks the rest


@pytest.mark.parametrize("key, answer, name", [
    ("01.1", lambda x1, x2, y, margin=1.0: clbook.losses.margin_contrastive_loss(x1, x2, 1 - y, margin),
     "clbook.losses.margin_contrastive_loss"),
    ("01.3", lambda a, p, n, margin=1.0: F.triplet_margin_loss(a, p, n, margin=margin),
     "torch.nn.functional.triplet_margin_loss"),
    ("03.1", lambda z, labels, tau: supcon_loss(z, labels=labels, temperature=tau, normalize=False),
     "clbook.losses.supcon_loss"),
    ("07.1", lambda q, k, queue, tau: clbook.losses.info_nce_loss(q, k, queue, temperature=tau),
     "clbook.losses.info_nce_loss"),
    ("09.2", lambda s1, s2, q1, q2, tau: clbook.losses.swav_loss(s1, s2, q1, q2, temperature=tau),
     "clbook.losses.swav_loss"),
])
def test_other_exercises_refuse_the_clbook_function_they_ask_for(key, answer, name):
    refused(EXERCISES[key], answer, name)


def test_every_forbidden_dotted_name_exists():
    # A misspelt name would forbid nothing, silently.
    for key, checker in EXERCISES.items():
        for name in checker.forbidden:
            if "." in name:
                module, _, attr = name.rpartition(".")
                owner = torch if module.startswith("torch") else clbook
                for part in module.split(".")[1:]:
                    owner = getattr(owner, part)
                assert hasattr(owner, attr), f"{key}: {name}"


def test_a_new_exercise_forbids_names_in_one_argument():
    # How notebooks 10-12 use it: dotted clbook names and the notebook's own helper.
    checker = Exercise("99.1", "NT-Xent again", "99 §1", reference=lambda z1, z2, tau: nt_xent_loss(z1, z2, tau),
                       cases=lambda: [Case("a batch", (torch.randn(3, 4), torch.randn(3, 4), 0.5))],
                       forbidden=("clbook.losses.nt_xent_loss", "my_helper", "clbook.losses.no_such_loss"))
    assert checker.run(correct_nt_xent).passed
    namespace = notebook_namespace("def my_helper(z1, z2, tau):\n    return 0\n",
                                   "def answer(z1, z2, tau):\n    return my_helper(z1, z2, tau)\n")
    assert "`my_helper`" in checker.run(namespace["answer"]).message
    with pytest.raises(TypeError, match="tuple"):
        Exercise("99.2", "t", "99", reference=abs, cases=list, forbidden="clbook.losses.nt_xent_loss")


# ----------------------------------------------------------------------------- without autograd


def autograd_anchor_gradient(sims, tau):
    s = sims.detach().clone().requires_grad_(True)
    loss = -s[0] / tau + torch.logsumexp(s / tau, dim=0)
    (grad,) = torch.autograd.grad(loss, s)
    return grad


def backward_anchor_gradient(sims, tau):
    with torch.enable_grad():  # an answer that turns gradients back on
        s = sims.detach().clone().requires_grad_(True)
        (-s[0] / tau + torch.logsumexp(s / tau, dim=0)).backward()
    return s.grad


def func_grad_anchor_gradient(sims, tau):
    return torch.func.grad(lambda s: -s[0] / tau + torch.logsumexp(s / tau, dim=0))(sims)


@pytest.mark.parametrize("answer", [autograd_anchor_gradient, backward_anchor_gradient, func_grad_anchor_gradient])
def test_an_autograd_answer_fails_02_3(answer):
    verdict = exercises.check_anchor_gradient.run(answer)
    assert verdict.status == "fail" and "autograd" in verdict.message, verdict.message
    assert "without autograd" in verdict.hint and "02 §7.2" in verdict.hint


def test_02_3_runs_with_gradients_disabled_on_inputs_that_do_not_require_them():
    seen = []

    def answer(sims, tau):
        seen.append((torch.is_grad_enabled(), sims.requires_grad))
        return correct_anchor_gradient(sims, tau)

    assert exercises.check_anchor_gradient.run(answer).passed
    assert seen and set(seen) == {(False, False)}


def test_the_other_exercises_without_autograd_refuse_it():
    def force(distance, y, margin=1.0):
        d = distance.clone().requires_grad_(True)
        energy = torch.where(y == 0, 0.5 * d**2, 0.5 * torch.clamp(margin - d, min=0) ** 2).sum()
        (grad,) = torch.autograd.grad(energy, d)
        return -grad

    def probe_step(W, b, feats, y, lr):
        W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
        F.cross_entropy(feats @ W.T + b, y).backward()
        return (W - lr * W.grad).detach(), (b - lr * b.grad).detach()

    for checker, answer in ((exercises.check_drlim_force, force), (exercises.check_probe_step, probe_step)):
        verdict = checker.run(answer)
        assert verdict.status == "fail" and "autograd" in verdict.message, verdict.message
    assert {k for k, c in EXERCISES.items() if c.no_autograd} >= {"01.2", "02.3", "05.2"}
    assert set(AUTOGRAD) >= {"torch.autograd.grad", "torch.Tensor.backward"}


# ----------------------------------------------------------------------------- finite at tau = 0.01, float16


def naive_nt_xent(z1, z2, tau):
    """The textbook formula in the inputs' dtype: exp without the max shift."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    size = len(z)
    e = torch.exp(z @ z.T / tau) * (1 - torch.eye(size, dtype=z.dtype))
    positive = e[torch.arange(size), torch.arange(size).roll(size // 2)]
    return -torch.log(positive / e.sum(dim=1)).mean()


def naive_anchor_gradient(sims, tau):
    e = torch.exp(sims / tau)  # no max shift
    p = e / e.sum()
    grad = p / tau
    grad[0] = -(1 - p[0]) / tau
    return grad


@pytest.mark.parametrize("answer", [naive_nt_xent, naive_nt_xent_loss])
@pytest.mark.parametrize("word", ["tau = 0.01 (float32)", "float16 views, tau = 0.07"])
def test_naive_exp_fails_the_small_temperature_and_float16_cases_of_02_1(word, answer):
    checker = only(exercises.check_nt_xent, word)
    case = checker.cases[0]
    assert case.args[0].dtype in (torch.float32, torch.float16)
    # The inputs make the naive formula overflow for real, not only in principle.
    assert not torch.isfinite(naive_nt_xent(*case.args)).all()
    verdict = checker.run(answer)
    assert verdict.status == "fail" and "finite" in verdict.message, verdict.message
    assert "02 §5" in verdict.hint and "stab" in verdict.hint
    assert checker.run(correct_nt_xent).passed


def test_naive_softmax_fails_the_float32_case_of_02_3_which_float64_would_let_through():
    checker = only(exercises.check_anchor_gradient, "float32 at tau = 0.01")
    sims, tau = checker.cases[0].args
    assert sims.dtype == torch.float32 and not torch.isfinite(naive_anchor_gradient(sims, tau)).all()
    assert torch.isfinite(naive_anchor_gradient(sims.double(), tau)).all()  # why float64 was not enough
    verdict = checker.run(naive_anchor_gradient)
    assert verdict.status == "fail" and "finite" in verdict.message, verdict.message
    assert "02 §5.2" in verdict.hint and "stabl" in verdict.hint
    assert checker.run(correct_anchor_gradient).passed


# ----------------------------------------------------------------------------- mistakes and their hints


def test_the_diagonal_left_in_gets_its_own_hint():
    def diagonal_left_in(z1, z2, tau):  # written by hand, not the registered mistake
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        size = len(z)
        logits = z @ z.T / tau
        positive = logits[torch.arange(size), torch.arange(size).roll(size // 2)]
        return (torch.logsumexp(logits, dim=1) - positive).mean()

    verdict = exercises.check_nt_xent.run(diagonal_left_in)
    assert verdict.status == "fail"
    assert "diagonal" in verdict.hint and "02 §" in verdict.hint
    assert verdict.hint != exercises.check_nt_xent.section and "reread 02 §2 and §5" not in verdict.hint


def test_hints_point_to_a_section_without_stating_the_formula():
    for key, checker in EXERCISES.items():
        hints = [m.hint for m in checker.mistakes] + [c.hint for c in checker.cases if c.hint]
        for hint in hints:
            assert "reread" in hint or "§" in hint, (key, hint)
            for formula in ("<-", "-(1 - P", "-s_p", "sum_i", "sum_j", "sigma_k /", "-log a/"):
                assert formula not in hint, (key, hint)
    # 02.3's sign hint used to give the positive's entry itself.
    sign_hint = exercises.check_anchor_gradient.mistakes[1].hint
    assert "P(p)" not in sign_hint and "/ tau" not in sign_hint and "02 §7.2" in sign_hint


def test_correct_answers_pass_every_rule():
    assert exercises.check_nt_xent.run(correct_nt_xent).passed
    assert exercises.check_anchor_gradient.run(correct_anchor_gradient).passed
