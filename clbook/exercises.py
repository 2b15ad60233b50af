r"""Checkers for the notebooks' exercises: run the learner's function, compare, give a short verdict.

Every checkable exercise of the course has one checker here, an :class:`Exercise`. Call it on
your function and it prints one short verdict:

* a pass line, ``[pass] 02.1 NT-Xent from scratch: 8 inputs checked, all correct.``;
* or the first input that failed, what was expected and what came back, and a hint naming the
  notebook section to reread;
* or ``not attempted yet`` while the function still raises ``NotImplementedError`` (the stubs of
  the student edition do, see :func:`clbook.student.student_edition`).

A checker never shows a traceback and never prints code or a formula that could be copied: it
prints numbers that a correct function returns on one input. The comparison is against
``clbook``'s own implementation (or, where ``clbook`` has none, a reference written here), with
tolerances, on several inputs including the edge cases the notebook taught: temperature 0.01,
float16, identical points, a point far from every Gaussian.

Adding a checker for a new exercise is a few lines::

    check_my_loss = exercise(
        "10.1", "my new loss", section="10 §3 (the new loss)",
        reference=my_reference_function,           # same signature as the learner's function
        cases=lambda: [Case("a batch of 4, tau = 0.1", (z, bank, 0.1))],
        mistakes=[Mistake(wrong_variant, "the positive belongs in the denominator: reread 10 §2")],
    )

Cases are built lazily (on the first check), so importing this module costs nothing. Each
:class:`Mistake` is a typical wrong answer: when the learner's output matches it, its hint is
shown instead of the case's or the exercise's. ``check_my_loss(fn)`` prints the verdict;
``check_my_loss.run(fn)`` returns it as a :class:`Verdict` without printing (for tests).

The exercises, by notebook (``EXERCISES`` maps the key to the checker):

========  ======================================  =========================================
key       checker                                 the learner writes
========  ======================================  =========================================
01.1      :data:`check_drlim_other_convention`    DrLIM's loss with ``y = 1`` for similar
01.2      :data:`check_drlim_force`               the force ``-dE/dD`` of one pair
01.3      :data:`check_triplet_loss`              the triplet loss
02.1      :data:`check_nt_xent`                   NT-Xent, stable at tau 0.01 and float16
02.2      :data:`check_dropped_diagonal_targets`  cross-entropy targets, diagonal dropped
02.3      :data:`check_anchor_gradient`           the gradient of one anchor's loss
03.1      :data:`check_supcon_out`                SupCon L_out, anchors without positives out
03.2      :data:`check_supcon_in`                 SupCon L_in (the mean inside the log)
03.3      :data:`check_supcon_pair_weighted`      the notes' pair-weighted form
04.1      :data:`check_standardize`               standardize with training statistics only
04.2      :data:`check_choose_k`                  kNN's k chosen on validation data
05.1      :data:`check_knn_predict`               kNN by cosine similarity, majority vote
05.2      :data:`check_probe_step`                one gradient step of a linear probe
06.1      :data:`check_em_step`                   one EM iteration (E-step, then M-step)
06.2      :data:`check_gmm_bic`                   the BIC of a fitted mixture
06.3      :data:`check_partition_weighted_loss`   SupCon with a weighted log-partition term
07.1      :data:`check_info_nce_queue`            InfoNCE with a queue, no gradient into it
07.2      :data:`check_enqueue`                   the queue's FIFO enqueue, with wrap-around
07.3      :data:`check_ema_update`                the momentum (EMA) update
08.1      :data:`check_alignment_uniformity`      alignment and uniformity, in log space
08.2      :data:`check_simsiam_loss`              SimSiam's symmetric loss, stop-gradient
08.3      :data:`check_effective_rank`            the effective rank (RankMe)
09.1      :data:`check_sinkhorn`                  Sinkhorn-Knopp in log space
09.2      :data:`check_swav_loss`                 SwAV's swapped prediction
========  ======================================  =========================================

The checkers of 08 and 09 compare with ``clbook.metrics``, ``clbook.losses.negative_cosine_loss``,
``clbook.cluster.sinkhorn_knopp`` and ``clbook.losses.swav_loss``; with a ``clbook`` that lacks
them, they report ``unavailable`` (``Exercise.available`` is False) instead of checking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from clbook.cluster import GMMResult, gmm_e_step, gmm_em, gmm_m_step
from clbook.losses import margin_contrastive_loss, nt_xent_loss, supcon_loss, triplet_margin_loss

__all__ = [
    "Case",
    "Mistake",
    "Verdict",
    "Exercise",
    "exercise",
    "EXERCISES",
    "check_drlim_other_convention",
    "check_drlim_force",
    "check_triplet_loss",
    "check_nt_xent",
    "check_dropped_diagonal_targets",
    "check_anchor_gradient",
    "check_em_step",
    "check_gmm_bic",
    "check_partition_weighted_loss",
    "check_supcon_out",
    "check_supcon_in",
    "check_supcon_pair_weighted",
    "check_standardize",
    "check_choose_k",
    "check_knn_predict",
    "check_probe_step",
    "check_info_nce_queue",
    "check_enqueue",
    "check_ema_update",
    "check_alignment_uniformity",
    "check_simsiam_loss",
    "check_effective_rank",
    "check_sinkhorn",
    "check_swav_loss",
]


# ----------------------------------------------------------------------------- the core


@dataclass
class Case:
    """One input on which the learner's function is compared with the reference.

    Parameters
    ----------
    label : str
        What the input is, in words (printed when the case fails): "a dissimilar pair 0.2 apart".
    args : tuple
        Positional arguments, passed (as fresh copies) to the learner's function and the reference.
    kwargs : dict, optional
        Keyword arguments, passed the same way.
    hint : str, optional
        Shown when this case fails, instead of the exercise's hint (no :class:`Mistake` matching).
    rtol, atol : float, optional
        Tolerances for this case, instead of the exercise's (float16 inputs need wider ones).
    expected : callable, optional
        Computes the expected output from ``(args, kwargs)``; by default the reference is called
        on them. Used to compare a float16 answer with the float32 value, for instance.
    probe : callable, optional
        ``probe(fn, args, kwargs)`` turns a function into the output to compare, applied to the
        learner's function and the reference alike; by default ``fn(*args, **kwargs)``. A probe
        can compare gradients instead of values, for instance.
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    hint: str | None = None
    rtol: float | None = None
    atol: float | None = None
    expected: Callable[[tuple, dict], Any] | None = None
    probe: Callable[[Callable, tuple, dict], Any] | None = None


@dataclass
class Mistake:
    """A typical wrong answer: a function with the learner's signature, and the hint it deserves.

    When a case fails and the learner's output agrees with ``function``'s on that case (within the
    case's tolerances), ``hint`` is shown. Mistakes are tried in order; the first match wins.
    """

    function: Callable
    hint: str


@dataclass
class Verdict:
    """Outcome of one check.

    Attributes
    ----------
    key : str
        The exercise, e.g. ``"02.1"``.
    status : {"pass", "fail", "not attempted", "unavailable"}
    message : str
        What the checker prints: one line for a pass, a few lines for a failure.
    case : str or None
        Label of the failing case (None unless ``status == "fail"``).
    hint : str or None
        The hint shown with a failure.
    """

    key: str
    status: str
    message: str
    case: str | None = None
    hint: str | None = None

    @property
    def passed(self) -> bool:
        """Whether every case passed."""
        return self.status == "pass"

    def __str__(self) -> str:
        return self.message


class _Disagreement(Exception):
    """Raised inside :func:`_compare`: the outputs differ; the message says how."""


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy() if value.is_floating_point() else value.cpu().numpy()
    return value


def _compare(expected: Any, got: Any, rtol: float, atol: float, where: str = "") -> None:
    """Raise :class:`_Disagreement` unless ``got`` equals ``expected`` within the tolerances.

    Handles numbers, tensors, arrays and (nested) tuples or lists of them.
    """
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            raise _Disagreement(f"expected {len(expected)} values{where}, got one {type(got).__name__}")
        if len(got) != len(expected):
            raise _Disagreement(f"expected {len(expected)} values{where}, got {len(got)}")
        for i, (e, g) in enumerate(zip(expected, got)):
            _compare(e, g, rtol, atol, where=f" in output {i + 1}" if not where else f"{where}, item {i + 1}")
        return
    if got is None:
        raise _Disagreement(f"the function returned None{where}: is a `return` missing?")
    e, g = _to_numpy(expected), _to_numpy(got)
    try:
        e, g = np.asarray(e, dtype=np.float64), np.asarray(g, dtype=np.float64)
    except (TypeError, ValueError):
        raise _Disagreement(f"expected a number or an array{where}, got {type(got).__name__}") from None
    if e.shape != g.shape:
        raise _Disagreement(f"expected shape {list(e.shape)}{where}, got shape {list(g.shape)}")
    finite = np.isfinite(e)
    if not np.isfinite(g[finite]).all():
        bad = g[finite][~np.isfinite(g[finite])].flat[0]
        raise _Disagreement(f"expected a finite value{where}, got {bad}")
    if not np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True):
        if e.ndim == 0:
            raise _Disagreement(f"expected {_fmt(e)}{where}, got {_fmt(g)}")
        worst = np.unravel_index(np.argmax(np.abs(g - e) - rtol * np.abs(e)), e.shape)
        index = ", ".join(str(int(i)) for i in worst)
        raise _Disagreement(f"at index [{index}]{where}: expected {_fmt(e[worst])}, got {_fmt(g[worst])}")


def _fmt(x: Any) -> str:
    x = float(x)
    return f"{x:.6g}" if math.isfinite(x) else str(x)


def _copy(value: Any) -> Any:
    """A fresh copy of an argument, so that no function sees what another one did to its input."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    """Whether an argument is unchanged (tensors and arrays bit for bit; other objects are not compared)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and bool(
            ((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all())
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return True


def _call(fn: Callable, args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


class Exercise:
    """The checker of one exercise: call it on the learner's function to print a verdict.

    Parameters
    ----------
    key : str
        Notebook number and exercise number, ``"01.2"``.
    title : str
        Short name, printed in every verdict.
    section : str
        The notebook section to reread, named in the default hint: ``"02 §5 (numerical stability)"``.
    reference : callable
        The correct function, with the learner's signature (usually built on ``clbook``).
    cases : callable
        Returns the list of :class:`Case` to run; called once, on the first check.
    mistakes : list of Mistake, optional
        Typical wrong answers and their hints.
    rtol, atol : float
        Default tolerances of :func:`numpy.allclose`, in float64.
    requires : tuple of str, optional
        Dotted names the reference needs (``"clbook.metrics.alignment"``). If one is missing from
        the installed ``clbook``, :meth:`run` returns an ``"unavailable"`` verdict saying so.
    """

    def __init__(
        self,
        key: str,
        title: str,
        section: str,
        reference: Callable,
        cases: Callable[[], list[Case]],
        mistakes: list[Mistake] | None = None,
        rtol: float = 1e-4,
        atol: float = 1e-6,
        requires: tuple[str, ...] = (),
    ) -> None:
        self.key, self.title, self.section = key, title, section
        self.requires = tuple(requires)
        self.reference, self._make_cases = reference, cases
        self.mistakes = list(mistakes or [])
        self.rtol, self.atol = rtol, atol
        self._cases: list[Case] | None = None
        self.__doc__ = f"Checker of exercise {key}: {title} (reread {section})."

    @property
    def cases(self) -> list[Case]:
        """The cases, built on first use."""
        if self._cases is None:
            self._cases = self._make_cases()
        return self._cases

    def __repr__(self) -> str:
        return f"<checker of exercise {self.key}: {self.title}>"

    @property
    def missing(self) -> list[str]:
        """The names in ``requires`` that the installed ``clbook`` does not have."""
        import importlib

        absent = []
        for dotted in self.requires:
            module, _, name = dotted.rpartition(".")
            try:
                if not hasattr(importlib.import_module(module), name):
                    absent.append(dotted)
            except ImportError:
                absent.append(dotted)
        return absent

    @property
    def available(self) -> bool:
        """Whether everything the reference needs is installed."""
        return not self.missing

    def __call__(self, answer: Callable) -> None:
        """Check ``answer`` and print the verdict."""
        print(self.run(answer).message)

    def run(self, answer: Callable) -> Verdict:
        """Check ``answer`` on every case and return the :class:`Verdict` (printing nothing)."""
        head = f"{self.key} {self.title}"
        if self.missing:
            return Verdict(self.key, "unavailable",
                           f"[unavailable] {head}: this checker needs {', '.join(self.missing)}, which the "
                           "installed clbook does not have; update clbook.")
        if not callable(answer):
            return self._fail(head, None, f"expected a function, got {type(answer).__name__}",
                              "pass the function itself, without calling it: check(my_function)")
        for case in self.cases:
            probe = case.probe or _call
            rtol = self.rtol if case.rtol is None else case.rtol
            atol = self.atol if case.atol is None else case.atol
            args, kwargs = _copy(case.args), _copy(case.kwargs)
            try:
                got = probe(answer, args, kwargs)
            except NotImplementedError:
                return Verdict(self.key, "not attempted",
                               f"[not attempted yet] {head}: the function still raises NotImplementedError. "
                               "Replace the `raise` line with your code, then run the cell again.")
            except Exception as err:  # the learner's bug, reported in one line, not a traceback
                return self._fail(head, case, f"raised {type(err).__name__}: {_short(err)}", case.hint)
            if not _same(args, case.args) or not _same(kwargs, case.kwargs):
                return self._fail(head, case, "the function changed its input in place",
                                  "work on copies (or out-of-place operations): a loss must not modify its arguments")
            expected = (case.expected or (lambda a, k: probe(self.reference, a, k)))(_copy(case.args), _copy(case.kwargs))
            try:
                _compare(expected, got, rtol, atol)
            except _Disagreement as diff:
                return self._fail(head, case, str(diff), self._diagnose(case, got, rtol, atol))
        n = len(self.cases)
        return Verdict(self.key, "pass", f"[pass] {head}: {n} input{'s' * (n != 1)} checked, all correct.")

    def _diagnose(self, case: Case, got: Any, rtol: float, atol: float) -> str | None:
        probe = case.probe or _call
        for mistake in self.mistakes:
            try:
                wrong = probe(mistake.function, _copy(case.args), _copy(case.kwargs))
                _compare(wrong, got, rtol, atol)
            except Exception:  # noqa: BLE001 - a mistake that does not apply (or does not match)
                continue
            return mistake.hint
        return case.hint

    def _fail(self, head: str, case: Case | None, what: str, hint: str | None) -> Verdict:
        hint = hint or f"reread {self.section}"
        on = f" on {case.label}" if case is not None else ""
        message = f"[not yet] {head}{on}:\n  {what}\n  hint: {hint}"
        return Verdict(self.key, "fail", message, case.label if case else None, hint)


def _short(err: Exception, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: Every checker, by key (``"01.1"``, ...).
EXERCISES: dict[str, Exercise] = {}


def exercise(
    key: str,
    title: str,
    section: str,
    reference: Callable,
    cases: Callable[[], list[Case]],
    mistakes: list[Mistake] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    requires: tuple[str, ...] = (),
) -> Exercise:
    """Create an :class:`Exercise`, register it in :data:`EXERCISES` under ``key`` and return it.

    The arguments are those of :class:`Exercise`. A key can be registered only once.
    """
    if key in EXERCISES:
        raise ValueError(f"exercise {key!r} is already registered")
    EXERCISES[key] = Exercise(key, title, section, reference, cases, mistakes, rtol, atol, requires)
    return EXERCISES[key]


# ----------------------------------------------------------------------------- probes


def _input_gradient(fn: Callable, args: tuple, kwargs: dict) -> Any:
    """Gradient of ``fn(*args)`` with respect to its first argument (a float tensor)."""
    x = args[0].detach().clone().requires_grad_(True)
    out = fn(x, *args[1:], **kwargs)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise TypeError("the loss is not connected to its input: use torch operations only, no .item() or numpy")
    (grad,) = torch.autograd.grad(out, x)
    return grad


# ----------------------------------------------------------------------------- notebook 01


def _drlim_other_reference(x1, x2, y, margin=1.0):
    return margin_contrastive_loss(x1, x2, 1 - y, margin)


def _drlim_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([1, 0, 1, 0, 0, 1])
    same = torch.ones(2, 2)
    return [
        Case("one similar pair (y = 1) 0.5 apart", (torch.tensor([[0.5, 0.0]]), torch.zeros(1, 2), torch.tensor([1]))),
        Case("one dissimilar pair (y = 0) 0.5 apart, margin 1",
             (torch.tensor([[0.5, 0.0]]), torch.zeros(1, 2), torch.tensor([0]))),
        Case("one dissimilar pair 1.5 apart, beyond the margin",
             (torch.tensor([[1.5, 0.0]]), torch.zeros(1, 2), torch.tensor([0])),
             hint="a dissimilar pair beyond the margin costs nothing: reread 01 §2 (the repulsive spring lets go)"),
        Case("a batch of 6 pairs in 3-D, margin 2", (x1, x2, y), {"margin": 2.0}),
        Case("two identical points, one pair of each label", (same, same.clone(), torch.tensor([1, 0]))),
        Case("the gradient at two identical points (must be finite)",
             (same, same.clone(), torch.tensor([1, 0])), probe=_input_gradient,
             hint="the slope of sqrt at 0 is infinite: do not take a square root for the attractive term, "
                  "and guard it in the repulsive one; reread 01 §3 (the comment on D = 0)"),
    ]


#: 01.1: the DrLIM loss with the other label convention, ``y = 1`` similar and ``y = 0`` dissimilar.
check_drlim_other_convention = exercise(
    "01.1", "DrLIM loss with y = 1 for similar pairs", "01 §2 (two different springs)",
    reference=_drlim_other_reference,
    cases=_drlim_cases,
    mistakes=[
        Mistake(lambda x1, x2, y, margin=1.0: margin_contrastive_loss(x1, x2, y, margin),
                "this is clbook's convention (y = 0 similar); here y = 1 means similar: reread 01 §6 (the label trap)"),
        Mistake(lambda x1, x2, y, margin=1.0: 2 * margin_contrastive_loss(x1, x2, 1 - y, margin),
                "each spring stores one half k x^2: reread 01 §1-2 (the factor 1/2)"),
        Mistake(lambda x1, x2, y, margin=1.0: margin_contrastive_loss(x1, x2, 1 - y, margin) * len(y),
                "the batch loss is the mean over pairs, not the sum: reread 01 §2"),
    ],
)


def _drlim_force_reference(distance, y, margin=1.0):
    # -dE/dD through clbook: pairs laid along the x axis, the force on x1 along +x.
    x1 = torch.stack([distance, torch.zeros_like(distance)], dim=1).to(torch.float64).requires_grad_(True)
    total = margin_contrastive_loss(x1, torch.zeros_like(x1), y, margin) * len(distance)
    (grad,) = torch.autograd.grad(total, x1)
    return -grad[:, 0]


def _drlim_force_cases() -> list[Case]:
    d = torch.tensor([0.1, 0.5, 0.99, 1.0, 1.5, 3.0], dtype=torch.float64)
    return [
        Case("similar pairs (y = 0) at distances 0.1 to 3", (d, torch.zeros(6, dtype=torch.long))),
        Case("dissimilar pairs (y = 1) at distances 0.1 to 3, margin 1", (d, torch.ones(6, dtype=torch.long))),
        Case("mixed labels, margin 2", (d, torch.tensor([0, 1, 0, 1, 1, 1])), {"margin": 2.0}),
    ]


#: 01.2: the force ``-dE/dD`` on one pair, as a function of the distance, label and margin.
check_drlim_force = exercise(
    "01.2", "force of the DrLIM springs", "01 §2-3 (energy and force against distance)",
    reference=_drlim_force_reference,
    cases=_drlim_force_cases,
    mistakes=[
        Mistake(lambda d, y, margin=1.0: -_drlim_force_reference(d, y, margin),
                "the force is minus the derivative of the energy: reread 01 §1 (F = -dE/dx)"),
        Mistake(lambda d, y, margin=1.0: torch.where(y == 0, -d, margin - d),
                "the repulsive spring lets go at the margin, its force is 0 beyond it: reread 01 §2"),
        Mistake(lambda d, y, margin=1.0: torch.where(y == 1, -d, (margin - d).clamp(min=0)),
                "y = 0 is the similar pair (clbook's convention): reread 01 §6"),
    ],
)


def _triplet_cases() -> list[Case]:
    g = torch.Generator().manual_seed(2)
    a, p, n = (torch.randn(8, 4, generator=g) for _ in range(3))
    far = torch.tensor([[5.0, 0.0]])
    return [
        Case("one triplet that violates the margin", (torch.zeros(1, 2), torch.tensor([[0.6, 0.0]]), torch.tensor([[0.0, 0.8]]))),
        Case("one triplet already satisfied (negative far away)", (torch.zeros(1, 2), torch.tensor([[0.5, 0.0]]), far),
             hint="a satisfied triplet costs exactly 0: reread 01 §5 (the hinge max(0, ...))"),
        Case("8 random triplets in 4-D, margin 0.5", (a, p, n), {"margin": 0.5}),
        Case("the gradient when anchor and positive coincide (must be finite)",
             (torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[0.3, 0.0]])),
             probe=_input_gradient,
             hint="sqrt has an infinite slope at 0: guard the distance when two points coincide (01 §3)"),
    ]


#: 01.3: the triplet loss ``mean max(0, m + d(a, p) - d(a, n))``.
check_triplet_loss = exercise(
    "01.3", "triplet loss", "01 §5 (the same with the triplet loss)",
    reference=triplet_margin_loss,
    cases=_triplet_cases,
    mistakes=[
        Mistake(lambda a, p, n, margin=1.0: F.relu(margin + (a - p).pow(2).sum(1) - (a - n).pow(2).sum(1)).mean(),
                "the distances are Euclidean, not squared: reread 01 §5"),
        Mistake(lambda a, p, n, margin=1.0: (margin + (a - p).norm(dim=1) - (a - n).norm(dim=1)).mean(),
                "a triplet that already satisfies the margin must cost 0: reread 01 §5 (max(0, ...))"),
    ],
)


# ----------------------------------------------------------------------------- notebook 02


def _nt_xent_cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, generator=g)
    z1, z2 = x + 0.8 * torch.randn(4, 16, generator=g), x + 0.8 * torch.randn(4, 16, generator=g)
    # Views that are unrelated: many anchors have a negative closer than their positive, the case
    # where a shifted-but-not-log-space loss underflows at small temperatures.
    h1, h2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    stability = "reread 02 §5 (numerical stability: row max, log-sum-exp, -inf on the diagonal)"

    def half_case(tau):
        # A float16 answer is compared with the float32 value of the same inputs, within float16's
        # resolution of logits of size 1 / tau (02 §5.5).
        return Case(f"float16 views, tau = {tau}", (z1.half(), z2.half(), tau),
                    expected=lambda a, k: nt_xent_loss(a[0].float(), a[1].float(), a[2]),
                    atol=4 * 2**-10 / tau, rtol=0.0, hint=stability)

    return [
        Case("the toy batch of 02 §1 (N = 4, D = 16), tau = 0.5", (z1, z2, 0.5)),
        Case("unnormalized views 100x larger, tau = 0.5", (100 * z1, 100 * z2, 0.5),
             hint="cosine similarity compares directions: normalize the rows first (02 §1)"),
        Case("N = 1: the positive is the only other row, tau = 0.5", (z1[:1], z2[:1], 0.5)),
        Case("unrelated views (N = 6), tau = 0.1", (h1, h2, 0.1)),
        Case("the toy batch at tau = 0.01 (float32)", (z1, z2, 0.01), hint=stability),
        Case("unrelated views at tau = 0.01 (float32)", (h1, h2, 0.01), hint=stability),
        half_case(0.5),
        half_case(0.07),
    ]


def _masked_before_exp(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = z.shape[0]
    logits = (z @ z.T / tau) * (1 - torch.eye(m, dtype=z.dtype))
    return (torch.logsumexp(logits, 1) - logits[torch.arange(m), torch.arange(m).roll(m // 2)]).mean()


def _unnormalized(z1, z2, tau):
    z = torch.cat([z1, z2])
    m = z.shape[0]
    logits = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
    return (torch.logsumexp(logits, 1) - logits[torch.arange(m), torch.arange(m).roll(m // 2)]).mean()


def _positive_left_out(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = z.shape[0]
    logits = z @ z.T / tau
    pos_col = torch.arange(m).roll(m // 2)
    pos = logits[torch.arange(m), pos_col]
    drop = torch.eye(m, dtype=torch.bool) | F.one_hot(pos_col, m).bool()
    return (torch.logsumexp(logits.masked_fill(drop, float("-inf")), 1) - pos).mean()


def _first_views_only(z1, z2, tau):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    m = z.shape[0]
    logits = (z @ z.T / tau).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
    per_anchor = torch.logsumexp(logits, 1) - logits[torch.arange(m), torch.arange(m).roll(m // 2)]
    return per_anchor[: m // 2].mean()


#: 02.1: NT-Xent from scratch, finite and correct at temperature 0.01 and in float16.
check_nt_xent = exercise(
    "02.1", "NT-Xent from scratch", "02 §2 and §5 (the formula, then the stable implementation)",
    reference=nt_xent_loss,
    cases=_nt_xent_cases,
    mistakes=[
        Mistake(_masked_before_exp,
                "the diagonal logit became 0, so exp(0) = 1 joined every denominator: set the diagonal to "
                "-inf before the log-sum-exp; reread 02 §5.4"),
        Mistake(_positive_left_out,
                "the positive belongs in its own denominator, -log a/(a+b): reread 02 §3"),
        Mistake(_unnormalized,
                "cosine similarity compares directions: normalize the rows first; reread 02 §1"),
        Mistake(lambda z1, z2, tau: nt_xent_loss(z1, z2, 1.0),
                "divide the similarities by the temperature: reread 02 §2"),
        Mistake(_first_views_only,
                "every one of the 2N views is an anchor, so the mean runs over 2N terms: reread 02 §2"),
    ],
)


def _dropped_diagonal_reference(n):
    positive = torch.arange(2 * n).roll(n)
    return positive - (positive > torch.arange(2 * n)).long()


#: 02.2: cross-entropy targets for the layout that drops the diagonal, ``[2N, 2N - 1]`` logits.
check_dropped_diagonal_targets = exercise(
    "02.2", "targets with the diagonal dropped", "02 §4 (layout (a): drop the diagonal)",
    reference=_dropped_diagonal_reference,
    cases=lambda: [Case(f"N = {n}", (n,)) for n in (1, 2, 4, 7)],
    mistakes=[
        Mistake(lambda n: torch.arange(2 * n).roll(n),
                "those are the targets of layout (b), which keeps the diagonal; after dropping it, the "
                "columns right of i move one to the left: reread 02 §4 (a)"),
        Mistake(lambda n: torch.zeros(2 * n, dtype=torch.long),
                "zeros are the targets of layout (c), positive first: reread 02 §4 (a)"),
    ],
    rtol=0.0, atol=0.0,
)


def _anchor_gradient_reference(sims, tau):
    s = sims.detach().clone().requires_grad_(True)
    loss = -s[0] / tau + torch.logsumexp(s / tau, dim=0)
    (grad,) = torch.autograd.grad(loss, s)
    return grad


def _anchor_gradient_cases() -> list[Case]:
    neg = torch.linspace(-1, 1, 9, dtype=torch.float64)
    row = torch.cat([torch.tensor([0.8], dtype=torch.float64), neg])
    return [
        Case("positive 0.8 and 9 negatives in [-1, 1], tau = 1", (row, 1.0)),
        Case("the same row, tau = 0.1", (row, 0.1)),
        Case("one negative only, tau = 0.5", (torch.tensor([0.2, 0.5], dtype=torch.float64), 0.5)),
        Case("the same row at tau = 0.01", (row, 0.01),
             hint="at small tau exp overflows: compute the softmax stably (torch.softmax, or subtract the max); "
                  "reread 02 §5.2"),
    ]


#: 02.3: the gradient of one anchor's loss with respect to its similarities (positive first).
check_anchor_gradient = exercise(
    "02.3", "gradient of one anchor's loss", "02 §7.2 (the gradient weight per negative)",
    reference=_anchor_gradient_reference,
    cases=_anchor_gradient_cases,
    mistakes=[
        Mistake(lambda s, tau: _anchor_gradient_reference(s, tau) * tau,
                "the logits are s / tau, so every entry carries a factor 1 / tau: reread 02 §7.2"),
        Mistake(lambda s, tau: torch.cat([(1 - torch.softmax(s / tau, 0)[:1]) / tau, torch.softmax(s / tau, 0)[1:] / tau]),
                "the positive is pulled: its entry is negative, -(1 - P(p)) / tau; reread 02 §7.2"),
        Mistake(lambda s, tau: torch.softmax(s / tau, 0) / tau,
                "the positive also appears in the numerator, -s_p / tau: its entry is -(1 - P(p)) / tau; "
                "reread 02 §7.2"),
    ],
    rtol=1e-6, atol=1e-9,
)


# ----------------------------------------------------------------------------- notebook 06


def _em_step_reference(X, weights, means, covariances, reg_covar=1e-6):
    resp, _ = gmm_e_step(X, weights, means, covariances)
    return gmm_m_step(X, resp, reg_covar)


def _em_cases() -> list[Case]:
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal([0, 0], 1.0, (20, 2)), rng.normal([4, 1], 0.7, (15, 2))])
    w, mu = np.array([0.5, 0.5]), np.array([[0.5, 0.5], [3.0, 0.0]])
    cov = np.stack([np.eye(2), np.eye(2)])
    far = np.vstack([X, [[60.0, 0.0]]])
    X3 = rng.normal(size=(30, 3))
    mu3 = X3[:3].copy()
    cov3 = np.stack([np.eye(3) * s for s in (0.5, 1.0, 2.0)])
    return [
        Case("35 points, 2 components, identity covariances", (X, w, mu, cov)),
        Case("the same with unequal weights and reg_covar = 0.1", (X, np.array([0.8, 0.2]), mu, cov), {"reg_covar": 0.1}),
        Case("3-D data, 3 components of different sizes", (X3, np.full(3, 1 / 3), mu3, cov3)),
        Case("a point 60 units from both components", (far, w, mu, cov),
             hint="the density of the far point underflows to 0 and 0 / 0 = nan: compute the responsibilities "
                  "in log space; reread 06 §2 (why the E-step works in log space)"),
    ]


def _em_means_over_n(X, weights, means, covariances, reg_covar=1e-6):
    resp, _ = gmm_e_step(X, weights, means, covariances)
    w, _, cov = gmm_m_step(X, resp, reg_covar)
    return w, resp.T @ X / len(X), cov


def _em_old_means(X, weights, means, covariances, reg_covar=1e-6):
    resp, _ = gmm_e_step(X, weights, means, covariances)
    w, mu, _ = gmm_m_step(X, resp, reg_covar)
    nk = resp.sum(0)
    cov = np.stack([(resp[:, j, None] * (X - means[j])).T @ (X - means[j]) / nk[j] + reg_covar * np.eye(X.shape[1])
                    for j in range(len(nk))])
    return w, mu, cov


#: 06.1: one EM iteration: the E-step's responsibilities, then the M-step's parameters.
check_em_step = exercise(
    "06.1", "one EM step", "06 §2 (EM from the Q-function: E-step, then M-step)",
    reference=_em_step_reference,
    cases=_em_cases,
    mistakes=[
        Mistake(_em_means_over_n,
                "a mean is divided by the soft count N_j = sum_i r_ij, not by n: reread 06 §2 (M-step, means)"),
        Mistake(_em_old_means,
                "the covariance is the scatter about the new means: reread 06 §2 (M-step, covariances)"),
        Mistake(lambda X, w, mu, cov, reg_covar=1e-6: _em_step_reference(X, w, mu, cov, 0.0),
                "add reg_covar to the diagonal of every covariance, as gmm_m_step does: reread 06 §2"),
    ],
    rtol=1e-6, atol=1e-9,
)


def _gmm_bic_reference(X, fit: GMMResult) -> float:
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    k = len(fit.weights)
    n_params = (k - 1) + k * d + k * d * (d + 1) // 2
    return -2 * n * fit.log_likelihood_history[-1] + n_params * math.log(n)


def _bic_cases() -> list[Case]:
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal([0, 0], 1.0, (40, 2)), rng.normal([5, 0], 1.0, (40, 2))])
    Y = rng.normal(size=(50, 3))
    return [Case(f"{len(data)} points in {data.shape[1]}-D, a fit with k = {k}", (data, gmm_em(data, k, random_state=0)))
            for data, k in ((X, 1), (X, 2), (X, 4), (Y, 2))]


def _bic_mean_loglik(X, fit):
    n = len(X)
    return _gmm_bic_reference(X, fit) + 2 * (n - 1) * fit.log_likelihood_history[-1]


def _bic_params_full(X, fit):
    n, d = np.shape(X)
    k = len(fit.weights)
    return -2 * n * fit.log_likelihood_history[-1] + (k + k * d + k * d * d) * math.log(n)


#: 06.2: the Bayesian information criterion of a fitted mixture, to choose k.
check_gmm_bic = exercise(
    "06.2", "BIC of a Gaussian mixture", "06 §1-2 (the log-likelihood) and the exercise's definition",
    reference=_gmm_bic_reference,
    cases=_bic_cases,
    mistakes=[
        Mistake(_bic_mean_loglik,
                "log_likelihood_history holds the mean per point; the BIC needs the total, n times it"),
        Mistake(_bic_params_full,
                "count free parameters: the weights sum to one (k - 1), and a symmetric d x d covariance "
                "has d (d + 1) / 2 of them"),
    ],
    rtol=1e-8, atol=1e-6,
)


def _positives_only(z, labels, tau):
    z = F.normalize(z, dim=1)
    pos = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    d2 = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
    return ((d2 * pos).sum(1) / pos.sum(1)).mean() / (2 * tau)


def _partition_weighted_reference(z, labels, tau, lam):
    # SupCon = alignment + (log-partition - 1 / tau) (06 §5); weight the second part by lam.
    align = _positives_only(z, labels, tau)
    return align + lam * (supcon_loss(z, labels=labels, temperature=tau) - align)


def _partition_cases() -> list[Case]:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(12, 2, generator=g)
    labels = torch.tensor([0, 1, 2] * 4)
    z8 = torch.randn(8, 5, generator=g)
    l8 = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    return [
        Case("lam = 0: positives only, tau = 0.5", (z, labels, 0.5, 0.0)),
        Case("lam = 1: SupCon itself, tau = 0.5", (z, labels, 0.5, 1.0),
             hint="with lam = 1 the loss must equal clbook.losses.supcon_loss: reread 06 §5 (the split)"),
        Case("lam = 0.3, tau = 0.5", (z, labels, 0.5, 0.3)),
        Case("5-D embeddings, lam = 0.7, tau = 0.1", (z8, l8, 0.1, 0.7)),
    ]


#: 06.3: SupCon with its log-partition term weighted by ``lam`` (0: positives only, 1: SupCon).
check_partition_weighted_loss = exercise(
    "06.3", "SupCon with a weighted log-partition term",
    "06 §5 (the contrastive view: the split into alignment and log-partition, on unit vectors)",
    reference=_partition_weighted_reference,
    cases=_partition_cases,
    mistakes=[
        Mistake(lambda z, labels, tau, lam: _positives_only(z, labels, tau)
                + lam * (supcon_loss(z, labels=labels, temperature=tau) - _positives_only(z, labels, tau) + 1 / tau),
                "the constant -1/tau belongs to the split: with it, lam = 1 gives SupCon exactly; reread 06 §5"),
    ],
)


# ----------------------------------------------------------------------------- later modules
#
# Some checkers compare with functions that arrive with notebooks 08 and 09 (clbook.metrics,
# negative_cosine_loss, sinkhorn_knopp, swav_loss). They are imported when a check runs, so that
# this module imports on any clbook; without them the checker says so instead of failing.


def _clbook(module: str, name: str) -> Callable:
    """``clbook.<module>.<name>``, imported on use."""
    import importlib

    return getattr(importlib.import_module(f"clbook.{module}"), name)


def _grad_wrt(*positions: int) -> Callable[[Callable, tuple, dict], Any]:
    """A probe: the gradients of ``fn(*args)`` with respect to the arguments at ``positions``.

    An argument that the output does not depend on (no gradient reaches it) gets a zero gradient,
    so a stop-gradient shows up as zeros, and a missing one as non-zero numbers.
    """

    def probe(fn: Callable, args: tuple, kwargs: dict) -> Any:
        args = list(args)
        leaves = []
        for i in positions:
            args[i] = args[i].detach().clone().requires_grad_(True)
            leaves.append(args[i])
        out = fn(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or out.dim() != 0:
            raise TypeError("the loss must be a 0-d torch tensor (use torch operations, no .item())")
        if not out.requires_grad:
            return tuple(torch.zeros_like(x) for x in leaves)
        grads = torch.autograd.grad(out, leaves, allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))

    return probe


# ----------------------------------------------------------------------------- notebook 03


def _supcon_out_reference(z, labels, tau):
    return supcon_loss(z, labels=labels, temperature=tau, normalize=False)


def _supcon_in_reference(z, labels, tau):
    return supcon_loss(z, labels=labels, temperature=tau, normalize=False, variant="in")


def _log_fractions(z, labels, tau):
    """``log F_ip`` on raw inner products, and the positive mask (03 steps 2-8, in log space)."""
    eye = torch.eye(len(labels), dtype=torch.bool)
    logits = (z @ z.T / tau).masked_fill(eye, float("-inf"))
    log_f = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return log_f, (labels[:, None] == labels[None, :]) & ~eye


def _supcon_pair_reference(z, labels, tau):
    # The lecture notes' form: a flat mean of -log F_ip over every (anchor, positive) pair.
    log_f, pos = _log_fractions(z, labels, tau)
    return -log_f[pos].mean()


def _supcon_zero_counted(z, labels, tau):
    _, pos = _log_fractions(z, labels, tau)
    has = pos.any(dim=1)
    return _supcon_out_reference(z, labels, tau) * has.sum() / len(labels)


def _supcon_in_without_log_count(z, labels, tau):
    _, pos = _log_fractions(z, labels, tau)
    counts = pos.sum(dim=1)
    return _supcon_in_reference(z, labels, tau) - counts[counts > 0].double().log().mean().to(z.dtype)


def _supcon_cases() -> list[Case]:
    g = torch.Generator().manual_seed(4)
    toy = torch.randn(4, 2, generator=g)
    z8 = torch.randn(8, 3, generator=g)
    z6 = torch.randn(6, 4, generator=g)
    return [
        Case("a batch of 4 in 2-D, labels [1, 2, 1, 1] (anchor 1 has no positive), tau = 1",
             (toy, torch.tensor([1, 2, 1, 1]), 1.0),
             hint="an anchor without positives is left out of the mean: reread 03 step 9 and the Summary"),
        Case("4 samples, labels [1, 2, 1, 2] (every anchor has one positive), tau = 0.5",
             (toy, torch.tensor([1, 2, 1, 2]), 0.5)),
        Case("6 samples: classes of 3, 2 and 1, tau = 0.5", (z6, torch.tensor([0, 0, 0, 1, 1, 2]), 0.5),
             hint="reread 03 'A batch where they differ' (classes of different sizes)"),
        Case("8 samples, 3 classes, tau = 0.1", (z8, torch.tensor([0, 1, 2, 0, 1, 2, 0, 0]), 0.1)),
        Case("the 8 samples 20x longer, tau = 0.1 (logits in the hundreds)",
             (20 * z8, torch.tensor([0, 1, 2, 0, 1, 2, 0, 0]), 0.1),
             hint="exp overflows: work in log space with the diagonal at -inf; reread 03 'The stable form'"),
    ]


_SUPCON_SECTION = "03 steps 2-9 (SupCon step by step) and 'The stable form'"

#: 03.1: SupCon's L_out on raw inner products, leaving out the anchors without positives.
check_supcon_out = exercise(
    "03.1", "SupCon L_out, anchors without positives left out", _SUPCON_SECTION,
    reference=_supcon_out_reference,
    cases=_supcon_cases,
    mistakes=[
        Mistake(_supcon_zero_counted,
                "an anchor without positives counts 0 here, which rescales the loss (the SupContrast "
                "reference does that); leave it out of the mean instead: reread 03 step 9"),
        Mistake(_supcon_pair_reference,
                "that is the pair-weighted form of the lecture notes; L_out averages over each anchor's own "
                "positives first, then over anchors: reread 03 'Another road to 2.4826'"),
        Mistake(_supcon_in_reference,
                "the mean over positives goes outside the log in L_out (inside is L_in): reread 03 "
                "'L_out against L_in'"),
        Mistake(lambda z, labels, tau: supcon_loss(z, labels=labels, temperature=tau),
                "this notebook uses raw inner products z_i . z_a, not cosines: do not normalize; reread 03 step 1"),
    ],
)

#: 03.2: SupCon's L_in (the mean over positives inside the log).
check_supcon_in = exercise(
    "03.2", "SupCon L_in", "03 'L_out against L_in'",
    reference=_supcon_in_reference,
    cases=_supcon_cases,
    mistakes=[
        Mistake(_supcon_out_reference,
                "that is L_out; L_in takes -log of the mean fraction F_ip over the positives: reread 03 "
                "'L_out against L_in'"),
        Mistake(_supcon_in_without_log_count,
                "the mean inside the log divides by |P(i)|: -log of the *mean* fraction, not of the sum; "
                "reread 03 'L_out against L_in'"),
    ],
)

#: 03.3: the lecture notes' pair-weighted form, a flat mean over all (anchor, positive) pairs.
check_supcon_pair_weighted = exercise(
    "03.3", "SupCon, the pair-weighted form", "03 'Another road to 2.4826: the lecture notes' pair-weighted form'",
    reference=_supcon_pair_reference,
    cases=_supcon_cases,
    mistakes=[
        Mistake(_supcon_out_reference,
                "that is the anchor-weighted L_out; the pair-weighted form divides every anchor's summed "
                "-log F by the number of positive pairs of the whole batch: reread 03 'A batch where they differ'"),
    ],
)


# ----------------------------------------------------------------------------- notebook 04


def _standardize_reference(train_feats, test_feats):
    mean, std = train_feats.mean(dim=0), train_feats.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant feature: leave it centred
    return (train_feats - mean) / std, (test_feats - mean) / std


def _standardize_own_stats(train_feats, test_feats):
    return _standardize_reference(train_feats, train_feats)[0], _standardize_reference(test_feats, test_feats)[0]


def _standardize_pooled(train_feats, test_feats):
    both = torch.cat([train_feats, test_feats])
    mean, std = both.mean(dim=0), both.std(dim=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return (train_feats - mean) / std, (test_feats - mean) / std


def _standardize_cases() -> list[Case]:
    g = torch.Generator().manual_seed(5)
    train = torch.randn(20, 4, generator=g) * torch.tensor([1.0, 5.0, 0.1, 30.0]) + torch.tensor([0.0, 2.0, -1.0, 10.0])
    test = torch.randn(7, 4, generator=g) * 3 + 1
    const = train.clone()
    const[:, 2] = 4.0
    return [
        Case("20 training rows and 7 test rows, 4 features of very different scales", (train, test)),
        Case("a test set of one row", (train, test[:1])),
        Case("a feature that is constant on the training rows", (const, test),
             hint="a constant training feature has std 0: divide by 1 instead (as fit_linear_probe does); "
                  "reread 04 'Why such a small task makes the comparison weak'"),
    ]


#: 04.1: standardize train and test features with the training mean and std only.
check_standardize = exercise(
    "04.1", "standardize with training statistics", "04 §'The lecture notes' experiment' (standardize the features)",
    reference=_standardize_reference,
    cases=_standardize_cases,
    mistakes=[
        Mistake(_standardize_own_stats,
                "the test rows were standardized with their own statistics: use the training mean and std for "
                "both, the test set must not shape the features"),
        Mistake(_standardize_pooled,
                "the statistics came from training and test rows together: that leaks the test set; use the "
                "training rows only"),
        Mistake(lambda a, b: tuple((x - a.mean(0)) / a.std(0, correction=0).clamp_min(1e-8).where(a.std(0) > 1e-8, torch.ones(()))
                                   for x in (a, b)),
                "use the sample standard deviation (divisor n - 1, torch's default), as fit_linear_probe does"),
    ],
)


def _choose_k_reference(train_feats, train_y, val_feats, val_y, ks):
    from clbook.training import knn_accuracy

    scores = [knn_accuracy(train_feats, train_y, val_feats, val_y, k=k) for k in ks]
    return ks[int(np.argmax(scores))]  # argmax: the first (smallest listed) k among the best


def _choose_k_cases() -> list[Case]:
    g = torch.Generator().manual_seed(6)
    centres = torch.randn(3, 5, generator=g) * 1.5
    y = torch.arange(60) % 3
    x = centres[y] + torch.randn(60, 5, generator=g)
    yv = torch.arange(30) % 3
    xv = centres[yv] + torch.randn(30, 5, generator=g)
    noisy_y = y.clone()
    noisy_y[::4] = (noisy_y[::4] + 1) % 3  # every fourth training label wrong: a larger k helps
    return [
        Case("3 blobs in 5-D, k in [1, 3, 5, 15]", (x, y, xv, yv, [1, 3, 5, 15])),
        Case("the same with every fourth training label wrong, k in [1, 3, 9, 21]", (x, noisy_y, xv, yv, [1, 3, 9, 21])),
        Case("k listed from large to small: [21, 9, 3, 1]", (x, noisy_y, xv, yv, [21, 9, 3, 1]),
             hint="among equally good k, return the first one listed"),
    ]


#: 04.2: choose kNN's k on validation data (never on the test flowers).
check_choose_k = exercise(
    "04.2", "choose kNN's k on validation data", "04 Summary (pick everything on validation data)",
    reference=_choose_k_reference,
    cases=_choose_k_cases,
    mistakes=[
        Mistake(lambda xt, yt, xv, yv, ks: ks[int(np.argmax([(_knn_l2(xt, yt, xv, k) == yv).float().mean() for k in ks]))],
                "the neighbours are found by cosine similarity (clbook.training.knn_predict), not Euclidean distance"),
    ],
    rtol=0.0, atol=0.0,
)


def _knn_l2(train_feats, train_y, query_feats, k):
    idx = torch.cdist(query_feats, train_feats).topk(k, largest=False).indices
    return F.one_hot(train_y[idx], int(train_y.max()) + 1).sum(1).argmax(1)


# ----------------------------------------------------------------------------- notebook 05


def _knn_reference(train_feats, train_y, query_feats, k):
    from clbook.training import knn_predict

    return knn_predict(train_feats, train_y, query_feats, k=k)


def _knn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(40, 6, generator=g)
    y = torch.randint(0, 4, (40,), generator=g)
    q = torch.randn(10, 6, generator=g)
    scaled = x * torch.linspace(0.1, 10, 40)[:, None]  # lengths differ, directions do not
    # A tie: two neighbours of class 2 and two of class 0; the vote goes to the smaller label.
    tx = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [-1.0, 0.0]])
    ty = torch.tensor([2, 0, 2, 0, 1])
    return [
        Case("40 training points in 6-D, 4 classes, 10 queries, k = 5", (x, y, q, 5)),
        Case("k = 1", (x, y, q, 1)),
        Case("the same training points with lengths from 0.1 to 10, k = 5", (scaled, y, q, 5),
             hint="the neighbours are the most *similar directions*: cosine similarity, not Euclidean distance"),
        Case("a 2-2 tie among the 4 nearest neighbours", (tx, ty, torch.tensor([[1.0, 0.05]]), 4),
             hint="a tie goes to the smallest label (argmax returns the first maximum)"),
    ]


#: 05.1: kNN classification by cosine similarity and majority vote.
check_knn_predict = exercise(
    "05.1", "kNN by cosine similarity, majority vote", "05 'Baselines first' (kNN on frozen features)",
    reference=_knn_reference,
    cases=_knn_cases,
    mistakes=[
        Mistake(_knn_l2, "the neighbours are found by cosine similarity, not Euclidean distance"),
        Mistake(lambda x, y, q, k: F.one_hot(y[(F.normalize(q, dim=1) @ F.normalize(x, dim=1).T).topk(k, largest=False).indices],
                                             int(y.max()) + 1).sum(1).argmax(1),
                "the nearest neighbours have the *largest* cosine similarity (topk with largest=True)"),
    ],
    rtol=0.0, atol=0.0,
)


def _probe_step_reference(W, b, feats, y, lr):
    W, b = W.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(feats @ W.T + b, y)
    gW, gb = torch.autograd.grad(loss, (W, b))
    return (W - lr * gW).detach(), (b - lr * gb).detach()


def _probe_step_cases() -> list[Case]:
    g = torch.Generator().manual_seed(8)
    feats, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    W, b = 0.1 * torch.randn(3, 5, generator=g), torch.zeros(3)
    big = torch.randn(4, 5, generator=g) * 40  # logits in the hundreds
    return [
        Case("zero-bias head, 16 features in 5-D, 3 classes, lr = 0.1", (W, b, feats, y, 0.1)),
        Case("a non-zero bias, lr = 1", (W, torch.tensor([0.5, -0.2, 0.1]), feats, y, 1.0)),
        Case("4 long feature vectors (logits in the hundreds), lr = 0.01", (W, b, big, y[:4], 0.01),
             hint="exp overflows: compute the softmax stably (torch.softmax or F.cross_entropy)"),
    ]


def _probe_step_sum(W, b, feats, y, lr):
    return _probe_step_reference(W, b, feats, y, lr * len(y))


#: 05.2: one full-batch gradient step of a linear probe (softmax regression) on frozen features.
check_probe_step = exercise(
    "05.2", "one linear-probe step", "05 'Baselines first' (the linear probe) and 02 §7.2 (softmax gradient)",
    reference=_probe_step_reference,
    cases=_probe_step_cases,
    mistakes=[
        Mistake(lambda W, b, x, y, lr: _probe_step_reference(W, b, x, y, -lr),
                "a gradient step goes *down* the gradient: subtract lr times it"),
        Mistake(_probe_step_sum, "the loss is the mean cross-entropy over the batch, so its gradient is divided by N"),
        Mistake(lambda W, b, x, y, lr: (_probe_step_reference(W, b, x, y, lr)[0], b),
                "the bias is trained too"),
    ],
    rtol=1e-5, atol=1e-6,
)


# ----------------------------------------------------------------------------- notebook 07


def _info_nce_reference(query, key, queue, tau):
    from clbook.losses import info_nce_loss

    return info_nce_loss(query, key, queue, temperature=tau)


def _info_nce_cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)
    q = torch.randn(4, 8, generator=g)
    k = q + 0.5 * torch.randn(4, 8, generator=g)
    queue = F.normalize(torch.randn(16, 8, generator=g), dim=1)
    stability = "reread 02 §5 (log-sum-exp) and 07 §3: at tau = 0.01 the logits reach 100"
    return [
        Case("4 queries, a queue of 16 negatives in 8-D, tau = 0.07", (q, k, queue, 0.07)),
        Case("queries and keys 50x longer, tau = 0.2", (50 * q, 50 * k, queue, 0.2),
             hint="the similarities are cosines: L2-normalize query, key and queue first (07 §3)"),
        Case("a queue of one negative, tau = 0.5", (q, k, queue[:1], 0.5)),
        Case("tau = 0.01", (q, k, queue, 0.01), hint=stability),
        Case("the gradient that reaches the queue (must be zero)", (q, k, queue, 0.1), probe=_grad_wrt(2),
             hint="the queue holds constants from earlier batches: no gradient may flow into it (detach it); "
                  "reread 07 §3"),
        Case("the gradient with respect to the queries", (q, k, queue, 0.1), probe=_grad_wrt(0)),
    ]


def _info_nce_positive_left_out(query, key, queue, tau):
    q, k, n = (F.normalize(x, dim=1) for x in (query, key, queue))
    return (torch.logsumexp(q @ n.T / tau, dim=1) - (q * k).sum(1) / tau).mean()


def _info_nce_with_batch(query, key, queue, tau):
    from clbook.losses import info_nce_loss

    return info_nce_loss(query, key, torch.cat([key.detach(), queue]), temperature=tau)


#: 07.1: InfoNCE with a queue of negatives shared by all queries, no gradient into the queue.
check_info_nce_queue = exercise(
    "07.1", "InfoNCE with a queue of negatives", "07 §3 (MoCo: a queue and a momentum encoder)",
    reference=_info_nce_reference,
    cases=_info_nce_cases,
    mistakes=[
        Mistake(_info_nce_positive_left_out,
                "the positive belongs in its own denominator: logits [N, 1 + K] with the positive in column 0; "
                "reread 07 §1"),
        Mistake(lambda q, k, n, tau: _info_nce_reference(q, k, n, 1.0),
                "divide the similarities by the temperature"),
        Mistake(_info_nce_with_batch,
                "the negatives are the queue's rows only (the other keys of the batch are not among them here)"),
    ],
)


def _enqueue_reference(queue, ptr, keys):
    from clbook.memory import FeatureQueue

    fifo = FeatureQueue(queue.shape[0], queue.shape[1], dtype=queue.dtype)
    fifo.queue.copy_(queue)
    fifo.ptr.fill_(int(ptr))
    fifo.count.fill_(queue.shape[0])  # the storage is full: every row is a stored key
    fifo.enqueue(keys)
    return fifo.queue.clone(), int(fifo.ptr)


def _enqueue_no_wrap(queue, ptr, keys):
    out = queue.clone()
    keys = F.normalize(keys, dim=1)[-len(queue):]
    room = min(len(keys), len(queue) - ptr)
    out[ptr:ptr + room] = keys[:room]
    return out, (ptr + room) % len(queue)


def _enqueue_unnormalized(queue, ptr, keys):
    out, new_ptr = _enqueue_reference(queue, ptr, keys)
    rows = (ptr + torch.arange(min(len(keys), len(queue)))) % len(queue)
    out[rows] = keys[-len(queue):]
    return out, new_ptr


def _enqueue_cases() -> list[Case]:
    g = torch.Generator().manual_seed(10)
    queue = F.normalize(torch.randn(8, 3, generator=g), dim=1)
    keys = torch.randn(11, 3, generator=g) * 3
    return [
        Case("a queue of 8, pointer 0, 3 keys", (queue, 0, keys[:3])),
        Case("pointer 6, 4 keys: two at the end, two wrapped to the start", (queue, 6, keys[:4]),
             hint="rows that do not fit before the end wrap around to row 0: reread 07 §3 (the queue)"),
        Case("pointer 5, 3 keys: exactly up to the end", (queue, 5, keys[:3]),
             hint="the pointer after the last row is row 0 again (modulo the size)"),
        Case("a batch as large as the queue, pointer 3", (queue, 3, keys[:8])),
        Case("a batch of 11, larger than the queue of 8, pointer 2", (queue, 2, keys),
             hint="a batch larger than the queue keeps only its newest (last) rows"),
    ]


#: 07.2: the FIFO enqueue of MoCo's queue, with wrap-around.
check_enqueue = exercise(
    "07.2", "the queue's FIFO enqueue", "07 §3 (MoCo: a queue and a momentum encoder)",
    reference=_enqueue_reference,
    cases=_enqueue_cases,
    mistakes=[
        Mistake(_enqueue_no_wrap,
                "the keys that do not fit before the end of the storage were dropped: wrap them around to row 0"),
        Mistake(_enqueue_unnormalized, "the queue stores L2-normalized keys"),
    ],
    rtol=1e-6, atol=1e-6,
)


def _ema_reference(target, online, m):
    from clbook.memory import momentum_update

    t = torch.nn.ParameterList([torch.nn.Parameter(x.detach().clone()) for x in target])
    o = torch.nn.ParameterList([torch.nn.Parameter(x.detach().clone()) for x in online])
    with torch.no_grad():
        momentum_update(t, o, m)
    return [p.detach() for p in t]


def _ema_cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    target = [torch.randn(3, 4, generator=g), torch.randn(4, generator=g)]
    online = [torch.randn(3, 4, generator=g), torch.randn(4, generator=g)]
    return [
        Case("a weight [3, 4] and a bias [4], m = 0.99", (target, online, 0.99)),
        Case("m = 0.9", (target, online, 0.9)),
        Case("m = 0: the target becomes a copy of the online network", (target, online, 0.0)),
        Case("m = 1: the target does not move", (target, online, 1.0)),
    ]


#: 07.3: the momentum (EMA) update of the key encoder's weights.
check_ema_update = exercise(
    "07.3", "the momentum update", "07 §3 (the momentum encoder)",
    reference=_ema_reference,
    cases=_ema_cases,
    mistakes=[
        Mistake(lambda t, o, m: [m * b + (1 - m) * a for a, b in zip(t, o)],
                "m weighs the *target's* old weights (m = 0.99 moves it slowly): theta_k <- m theta_k + (1 - m) theta_q"),
    ],
    rtol=1e-6, atol=1e-7,
)


# ----------------------------------------------------------------------------- notebook 08


def _align_uniform_reference(z1, z2, t=2.0):
    return _clbook("metrics", "alignment")(z1, z2), _clbook("metrics", "uniformity")(z1, t=t)


def _align_uniform_cases() -> list[Case]:
    g = torch.Generator().manual_seed(12)
    z1 = torch.randn(16, 8, generator=g)
    z2 = z1 + 0.6 * torch.randn(16, 8, generator=g)
    point = torch.randn(1, 8, generator=g)
    collapsed = point.repeat(10, 1) * torch.linspace(0.5, 3, 10)[:, None]  # one direction, many lengths
    # Three directions 120 degrees apart: every squared distance is 3, and exp(-300 * 3) underflows.
    angles = torch.tensor([0.0, 2.0, 4.0]) * math.pi / 3
    spread = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * torch.tensor([[1.0], [2.0], [0.5]])
    return [
        Case("16 pairs of views in 8-D, t = 2", (z1, z2)),
        Case("the same views 30x longer, t = 2", (30 * z1, 30 * z2),
             hint="both metrics live on the unit sphere: L2-normalize the rows first (08 'The diagnostics')"),
        Case("a collapsed encoder: every feature points the same way (must give 0 and 0, finite)",
             (collapsed, collapsed.clone()),
             hint="at collapse every pairwise distance is 0 and the uniformity is exactly log 1 = 0: average over "
                  "pairs i < j (no point with itself); reread 08 'The diagnostics'"),
        Case("three points 120 degrees apart, t = 300", (spread, spread.flip(0)), {"t": 300.0},
             hint="exp(-t d^2) underflows to 0 and log 0 = -inf: factor the smallest distance out (log space); "
                  "reread 08 'The diagnostics'"),
    ]


def _uniformity_with_self(z1, z2, t=2.0):
    z = F.normalize(z1.double(), dim=1)
    sq = torch.cdist(z, z).pow(2)
    return _clbook("metrics", "alignment")(z1, z2), torch.exp(-t * sq).mean().log().item()


def _uniformity_not_squared(z1, z2, t=2.0):
    z = F.normalize(z1.double(), dim=1)
    d = torch.pdist(z)
    return _clbook("metrics", "alignment")(z1, z2), (-t * d.min() + torch.exp(-t * (d - d.min())).mean().log()).item()


def _alignment_not_squared(z1, z2, t=2.0):
    return _clbook("metrics", "alignment")(z1, z2, alpha=1), _clbook("metrics", "uniformity")(z1, t=t)


#: 08.1: alignment and uniformity (Wang and Isola), in log space and finite at collapse.
check_alignment_uniformity = exercise(
    "08.1", "alignment and uniformity", "08 'The diagnostics'",
    reference=_align_uniform_reference,
    cases=_align_uniform_cases,
    mistakes=[
        Mistake(_uniformity_with_self,
                "the mean runs over the pairs i < j; a point and itself (distance 0) do not count"),
        Mistake(_uniformity_not_squared, "the Gaussian potential uses the *squared* distance, exp(-t ||zi - zj||^2)"),
        Mistake(_alignment_not_squared, "alignment is the mean *squared* distance between the two views (alpha = 2)"),
    ],
    rtol=1e-6, atol=1e-9,
    requires=("clbook.metrics.alignment", "clbook.metrics.uniformity"),
)


def _simsiam_reference(p1, p2, z1, z2):
    D = _clbook("losses", "negative_cosine_loss")
    return 0.5 * D(p1, z2) + 0.5 * D(p2, z1)


def _simsiam_cases() -> list[Case]:
    g = torch.Generator().manual_seed(13)
    p1, p2, z1, z2 = (torch.randn(6, 5, generator=g) for _ in range(4))
    p_zero = p1.clone()
    p_zero[2] = 0.0
    return [
        Case("6 pairs in 5-D", (p1, p2, z1, z2)),
        Case("predictions 100x longer than the targets", (100 * p1, 100 * p2, z1, z2)),
        Case("a prediction that is exactly zero (cosine 0, not nan)", (p_zero, p2, z1, z2),
             hint="a zero vector has no direction: F.normalize and F.cosine_similarity guard the division"),
        Case("the gradient reaching the predictions p1, p2", (p1, p2, z1, z2), probe=_grad_wrt(0, 1)),
        Case("the gradient reaching the targets z1, z2 (must be zero)", (p1, p2, z1, z2), probe=_grad_wrt(2, 3),
             hint="stop-gradient: the targets z are constants (detach them); without it SimSiam collapses, "
                  "reread 08 §2"),
    ]


def _simsiam_unswapped(p1, p2, z1, z2):
    return _simsiam_reference(p1, p2, z2, z1)


#: 08.2: SimSiam's symmetric negative-cosine loss with stop-gradient.
check_simsiam_loss = exercise(
    "08.2", "SimSiam's symmetric loss", "08 §1-2 (a loss without negatives; SimSiam with and without stop-gradient)",
    reference=_simsiam_reference,
    cases=_simsiam_cases,
    mistakes=[
        Mistake(_simsiam_unswapped,
                "each view's prediction is compared with the *other* view's projection: D(p1, z2) and D(p2, z1)"),
        Mistake(lambda p1, p2, z1, z2: -_simsiam_reference(p1, p2, z1, z2),
                "the loss is the *negative* cosine: minimizing it makes prediction and target point the same way"),
        Mistake(lambda p1, p2, z1, z2: 2 * _simsiam_reference(p1, p2, z1, z2),
                "the symmetric loss is the mean of the two terms, 1/2 D(p1, z2) + 1/2 D(p2, z1)"),
    ],
    rtol=1e-5, atol=1e-6,
    requires=("clbook.losses.negative_cosine_loss",),
)


def _effective_rank_reference(z):
    return _clbook("metrics", "effective_rank")(z)


def _effective_rank_cases() -> list[Case]:
    g = torch.Generator().manual_seed(14)
    z = torch.randn(32, 8, generator=g)
    direction = torch.randn(1, 8, generator=g)
    collapsed = torch.linspace(0.5, 2, 20)[:, None] * direction
    low = torch.randn(32, 3, generator=g) @ torch.randn(3, 8, generator=g)  # rank 3: five zero singular values
    return [
        Case("32 random features in 8-D", (z,)),
        Case("a collapsed set: every row a multiple of one vector (effective rank 1)", (collapsed,),
             hint="0 log 0 counts 0 (torch.special.xlogy); reread 08 'The diagnostics'"),
        Case("features of rank 3 in 8-D", (low,),
             hint="singular values that are (numerically) 0 contribute 0 log 0 = 0 to the entropy, not nan"),
        Case("an orthogonal matrix scaled by 5 (all singular values equal)", (5 * torch.eye(6),)),
    ]


def _effective_rank_squared(z):
    s = torch.linalg.svdvals(z.double()).pow(2)
    p = s / s.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum()).item()


def _effective_rank_centred(z):
    return _effective_rank_reference(z - z.mean(dim=0))


#: 08.3: the effective rank (RankMe) of a feature matrix.
check_effective_rank = exercise(
    "08.3", "effective rank", "08 'The diagnostics' (effective rank)",
    reference=_effective_rank_reference,
    cases=_effective_rank_cases,
    mistakes=[
        Mistake(_effective_rank_squared,
                "p_k are the singular values themselves, sigma_k / sum_j sigma_j, not their squares (eigenvalues)"),
        Mistake(lambda z: math.log(_effective_rank_reference(z)),
                "the effective rank is exp of the entropy (1 at collapse), not the entropy itself"),
        Mistake(_effective_rank_centred, "use the raw features, not centred ones (RankMe)"),
    ],
    rtol=1e-5, atol=1e-6,
    requires=("clbook.metrics.effective_rank",),
)


# ----------------------------------------------------------------------------- notebook 09


def _sinkhorn_reference(scores, epsilon, n_iter):
    return _clbook("cluster", "sinkhorn_knopp")(scores, epsilon=epsilon, n_iter=n_iter)


def _sinkhorn_rows_first(scores, epsilon, n_iter):
    B, K = scores.shape
    log_q = scores.double() / epsilon
    for _ in range(n_iter):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(B / K)
    return log_q.exp().to(scores.dtype)


def _sinkhorn_cases() -> list[Case]:
    g = torch.Generator().manual_seed(15)
    s = torch.tanh(torch.randn(8, 4, generator=g))  # cosine-like scores in [-1, 1]
    s6 = torch.tanh(torch.randn(6, 4, generator=g))
    stability = ("exp(S / epsilon) overflows float32 for epsilon = 0.01: normalize log Q with log-sum-exp "
                 "instead; reread 09 §1")
    return [
        Case("8 samples, 4 prototypes, epsilon = 0.05, 3 iterations", (s, 0.05, 3), hint=stability),
        Case("the same with 1 iteration", (s, 0.05, 1)),
        Case("20 iterations: the columns come close to B / K", (s, 0.5, 20)),
        Case("6 samples, 4 prototypes (B / K = 1.5), epsilon = 0.1", (s6, 0.1, 3)),
        Case("epsilon = 0.01", (s, 0.01, 3), hint=stability),
    ]


#: 09.1: Sinkhorn-Knopp in log space: rows sum to one, columns to B / K.
check_sinkhorn = exercise(
    "09.1", "Sinkhorn-Knopp in log space", "09 §1 (assignments on a toy: softmax against Sinkhorn)",
    reference=_sinkhorn_reference,
    cases=_sinkhorn_cases,
    mistakes=[
        Mistake(_sinkhorn_rows_first,
                "each iteration normalizes the columns first, then the rows, so that every sample's row sums to one "
                "at the end"),
        Mistake(lambda s, eps, n: torch.softmax(s / eps, dim=1),
                "a row softmax is the start, not the answer: alternate column and row normalizations n_iter times"),
    ],
    rtol=1e-4, atol=1e-6,
    requires=("clbook.cluster.sinkhorn_knopp",),
)


def _swav_reference(scores1, scores2, q1, q2, tau):
    return _clbook("losses", "swav_loss")(scores1, scores2, q1, q2, temperature=tau)


def _swav_cases() -> list[Case]:
    g = torch.Generator().manual_seed(16)
    s1, s2 = torch.tanh(torch.randn(6, 4, generator=g)), torch.tanh(torch.randn(6, 4, generator=g))
    q1, q2 = torch.softmax(torch.randn(6, 4, generator=g), 1), torch.softmax(torch.randn(6, 4, generator=g), 1)
    hard = F.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).float()
    return [
        Case("6 samples, 4 prototypes, tau = 0.1", (s1, s2, q1, q2, 0.1)),
        Case("hard one-hot codes, tau = 0.5", (s1, s2, hard, hard.roll(1, 0), 0.5)),
        Case("tau = 0.005 (logits up to 200)", (s1, s2, q1, q2, 0.005),
             hint="exp(200) overflows float32: use log_softmax; reread 09 §3"),
        Case("the gradient reaching the scores", (s1, s2, q1, q2, 0.1), probe=_grad_wrt(0, 1)),
        Case("the gradient reaching the codes (must be zero)", (s1, s2, q1, q2, 0.1), probe=_grad_wrt(2, 3),
             hint="the codes are targets: no gradient flows into them (detach them); reread 09 §3"),
    ]


#: 09.2: SwAV's swapped prediction: each view's scores predict the other view's code.
check_swav_loss = exercise(
    "09.2", "SwAV's swapped prediction", "09 §3 (SwAV: the swapped prediction)",
    reference=_swav_reference,
    cases=_swav_cases,
    mistakes=[
        Mistake(lambda s1, s2, q1, q2, tau: _swav_reference(s1, s2, q2, q1, tau),
                "swap the views: the scores of view 1 predict the code of view 2, and the other way round"),
        Mistake(lambda s1, s2, q1, q2, tau: _swav_reference(s1, s2, q1, q2, 1.0),
                "divide the scores by the temperature before the softmax"),
        Mistake(lambda s1, s2, q1, q2, tau: 2 * _swav_reference(s1, s2, q1, q2, tau),
                "the loss is the mean of the two cross-entropies, not their sum"),
    ],
    rtol=1e-5, atol=1e-6,
    requires=("clbook.losses.swav_loss",),
)
