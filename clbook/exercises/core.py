r"""The checker core: run the learner's function on a few inputs, compare, give a short verdict.

An exercise's checker is an :class:`Exercise`. Call it on the learner's function and it prints
one short verdict:

* a pass line, ``[pass] 02.1 NT-Xent from scratch: 8 inputs checked, all correct.``;
* or the first input that failed, what was expected and what came back, and a hint naming the
  notebook section to reread;
* or ``not attempted yet`` while the function still raises ``NotImplementedError`` (the stubs of
  the student edition do, see :func:`clbook.student.student_edition`).

A checker never shows a traceback and never prints code or a formula that could be copied: it
prints numbers that a correct function returns on one input. The comparison is against a
reference (``clbook``'s own implementation, or one written next to the checker), with
tolerances, on several inputs including the edge cases the notebook taught.

This module holds what every checker shares: :class:`Case`, :class:`Mistake`, :class:`Verdict`,
:class:`Exercise`, the registry :data:`EXERCISES` and :func:`exercise`, which creates and
registers a checker, and two probes that compare gradients instead of values
(``_input_gradient`` and ``_grad_wrt``). The checkers themselves live in one module per
notebook (``clbook.exercises.nb01_margin``, ...); see :mod:`clbook.exercises`.

A checker is a few lines::

    check_my_loss = exercise(
        "10.1", "my new loss", section="10 §3 (the new loss)",
        reference=my_reference_function,           # same signature as the learner's function
        cases=lambda: [Case("a batch of 4, tau = 0.1", (z, bank, 0.1))],
        mistakes=[Mistake(wrong_variant, "the positive belongs in the denominator: reread 10 §2")],
    )

Cases are built lazily (on the first check), so importing a checker costs nothing. Each
:class:`Mistake` is a typical wrong answer: when the learner's output matches it, its hint is
shown instead of the case's or the exercise's. ``check_my_loss(fn)`` prints the verdict;
``check_my_loss.run(fn)`` returns it as a :class:`Verdict` without printing (for tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["Case", "Mistake", "Verdict", "Exercise", "EXERCISES", "exercise"]


# ----------------------------------------------------------------------------- cases, mistakes and verdicts


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


# ----------------------------------------------------------------------------- comparing outputs


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


# ----------------------------------------------------------------------------- the checker and its registry


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
    requires : tuple of (module, str), optional
        Attributes the reference looks up at run time, as pairs of a module and a name:
        ``((clbook.metrics, "alignment"),)``. If one is missing, :meth:`run` returns an
        ``"unavailable"`` verdict naming it (``clbook.metrics.alignment``) instead of checking.
        The course's checkers import what they use, so they need none.
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
        requires: tuple[tuple[ModuleType, str], ...] = (),
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
        """The ``requires`` that their module does not have, as dotted names (``"clbook.metrics.alignment"``)."""
        return [f"{module.__name__}.{name}" for module, name in self.requires if not hasattr(module, name)]

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
    requires: tuple[tuple[ModuleType, str], ...] = (),
) -> Exercise:
    """Create an :class:`Exercise`, register it in :data:`~clbook.exercises.core.EXERCISES` under ``key``, return it.

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
