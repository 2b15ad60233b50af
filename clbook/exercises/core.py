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

An exercise's rules are held while the learner's function runs, not only its numbers:

* ``forbidden=("clbook.losses.nt_xent_loss", "stable_nt_xent")``: what the learner is meant to write
  is unavailable. A dotted name is a library function (``clbook``'s or torch's); it is swapped, in its
  module, in every ``clbook`` module that re-exports it and under any name in the learner's
  namespace (``from clbook.losses import nt_xent_loss as f`` included), for a stand-in that says
  "write it yourself". A bare name is the notebook's own finished version, looked up in the
  namespace the learner's function was defined in (its ``__globals__``: the notebook's). The
  checker computes its expected values first, swaps the names only while the learner's function
  runs, and puts everything back afterwards, also when the function raises.
* ``no_autograd=True``: "without autograd". The learner's function runs under
  :func:`torch.no_grad` on inputs that do not require gradients, and torch's autograd entry points
  (:data:`AUTOGRAD`) are forbidden as above, so an autograd answer fails with a clear message.
  (Not for checkers whose cases differentiate the answer with a gradient probe.)

Hints point to the section to reread and do not state the formula; a hint that names no section
(no "reread", no "§") gets "; reread <the exercise's section>" added when the checker is built.

The checker's own functions (its reference and its registered mistakes) run as they are: the tests
run them through :meth:`Exercise.run`, and :meth:`Exercise._diagnose` compares with them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Iterator

import numpy as np
import torch

__all__ = ["Case", "Mistake", "Verdict", "Exercise", "EXERCISES", "exercise", "AUTOGRAD"]

#: torch's autograd entry points, forbidden in every ``no_autograd`` exercise.
AUTOGRAD: tuple[str, ...] = (
    "torch.autograd.grad",
    "torch.autograd.backward",
    "torch.Tensor.backward",
    "torch.autograd.functional.jacobian",
    "torch.autograd.functional.vjp",
    "torch.func.grad",
    "torch.func.grad_and_value",
    "torch.func.vjp",
    "torch.func.jacrev",
    "torch.func.jacfwd",
)


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


# ----------------------------------------------------------------------------- the rules: forbidden names, no autograd


class _Forbidden(Exception):
    """Raised by a stand-in: the learner's function used a name that its exercise forbids."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is unavailable in this exercise: write it yourself")
        self.name = name


def _resolve(dotted: str) -> tuple[Any, str, Any] | None:
    """``(owner, attribute, value)`` of an already imported dotted name, or None if there is none.

    The owner is a module or a class (``torch.Tensor.backward``); nothing is imported here.
    """
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        owner = sys.modules.get(".".join(parts[:i]))
        if owner is not None:
            break
    else:
        return None
    for part in parts[i:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    if not hasattr(owner, parts[-1]):
        return None
    return owner, parts[-1], getattr(owner, parts[-1])


def _unwrap(fn: Any) -> Any:
    """The plain function behind a bound method or a :func:`functools.partial` (for its globals)."""
    for _ in range(8):
        inner = getattr(fn, "__func__", None) or getattr(fn, "func", None)
        if inner is None or inner is fn:
            break
        fn = inner
    return fn


class _Rules:
    """The swaps of one check: built once per :meth:`Exercise.run`, applied around each call of the answer.

    ``targets`` holds ``(kind, where, name, original, label)``: ``kind`` is ``"attr"`` (a module's or
    class's attribute), ``"item"`` (a name in the learner's namespace) or ``"cell"`` (a variable the
    learner's function closes over). ``used`` collects the labels of the stand-ins that were called,
    so that an answer which swallows the stand-in's exception is caught all the same.
    """

    def __init__(self, exercise: "Exercise", answer: Callable) -> None:
        self.no_autograd = exercise.no_autograd
        self.used: list[str] = []
        self.targets: list[tuple[str, Any, Any, Any, str]] = []
        names = list(exercise.forbidden) + (list(AUTOGRAD) if exercise.no_autograd else [])
        banned: dict[int, tuple[Any, str]] = {}  # id(object) -> (object, its dotted name)
        for name in names:
            if "." not in name:
                continue
            found = _resolve(name)
            if found is None:  # not installed (an older torch, say): nothing to forbid
                continue
            owner, attr, value = found
            banned.setdefault(id(value), (value, name))
            self.targets.append(("attr", owner, attr, owner.__dict__.get(attr, _ABSENT)
                                 if isinstance(owner, type) else value, name))
        # Re-exports: every clbook module (the checkers' own excepted) that holds a forbidden object.
        for module_name, module in list(sys.modules.items()):
            if module is None or not (module_name == "clbook" or module_name.startswith("clbook.")):
                continue
            if module_name.startswith("clbook.exercises"):
                continue
            for attr, value in list(vars(module).items()):
                if id(value) in banned and banned[id(value)][0] is value:
                    self.targets.append(("attr", module, attr, value, banned[id(value)][1]))
        # The learner's namespace: forbidden objects under any name, and the notebook's own versions.
        fn = _unwrap(answer)
        namespace = getattr(fn, "__globals__", None)
        if isinstance(namespace, dict):
            for key, value in list(namespace.items()):
                if value is answer or value is fn:
                    continue
                if id(value) in banned and banned[id(value)][0] is value:
                    self.targets.append(("item", namespace, key, value, banned[id(value)][1]))
                elif key in exercise.forbidden:
                    self.targets.append(("item", namespace, key, value, f"`{key}`, the notebook's own version,"))
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if id(value) in banned and banned[id(value)][0] is value:
                self.targets.append(("cell", cell, None, value, banned[id(value)][1]))
        self.banned = banned
        self._dedupe()

    def _stand_in(self, label: str) -> Callable:
        used = self.used

        def write_it_yourself(*args: Any, **kwargs: Any) -> Any:
            used.append(label)
            raise _Forbidden(label)

        write_it_yourself.__name__ = "write_it_yourself"
        return write_it_yourself

    def _dedupe(self) -> None:
        seen, kept = set(), []
        for target in self.targets:
            where = (target[0], id(target[1]), target[2])
            if where not in seen:
                seen.add(where)
                kept.append(target)
        self.targets = kept

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Swap every target for its stand-in (and disable gradients if asked); undo it all on exit."""
        with ExitStack() as stack:
            for kind, where, name, original, label in self.targets:
                stand_in = self._stand_in(label)
                if kind == "attr":
                    setattr(where, name, stand_in)
                    stack.callback(_restore_attr, where, name, original)
                elif kind == "item":
                    where[name] = stand_in
                    stack.callback(where.__setitem__, name, original)
                else:
                    where.cell_contents = stand_in
                    stack.callback(setattr, where, "cell_contents", original)
            if self.no_autograd:
                stack.enter_context(torch.no_grad())
            yield

    def guard(self, answer: Callable) -> Callable:
        """``answer``, run with the rules applied."""

        entry = self.banned.get(id(_unwrap(answer)))
        if entry is not None and entry[0] is _unwrap(answer):  # the forbidden function itself, passed as the answer
            answer = self._stand_in(entry[1])

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self.applied():
                return answer(*args, **kwargs)

        return guarded


_ABSENT = object()


def _restore_attr(owner: Any, name: str, original: Any) -> None:
    if original is _ABSENT:  # a class attribute that came from a base class: remove the override
        delattr(owner, name)
    else:
        setattr(owner, name, original)


def _is_autograd_error(err: Exception) -> bool:
    """Whether ``err`` is what autograd raises when gradients are disabled."""
    text = str(err)
    return isinstance(err, RuntimeError) and ("does not require grad" in text or "grad_fn" in text)



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
    forbidden : tuple of str, optional
        What the learner is meant to write, unavailable while the learner's function runs: dotted
        library names (``"clbook.losses.nt_xent_loss"``) and bare names of the notebook's own
        finished versions (``"stable_nt_xent"``). See the module's docstring.
    no_autograd : bool
        Run the learner's function with gradients disabled and torch's autograd forbidden
        (:data:`AUTOGRAD`), for exercises that say "without autograd".
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
        forbidden: tuple[str, ...] = (),
        no_autograd: bool = False,
    ) -> None:
        if isinstance(forbidden, str):
            raise TypeError("forbidden must be a tuple of names, not one string")
        self.key, self.title, self.section = key, title, section
        self.forbidden, self.no_autograd = tuple(forbidden), bool(no_autograd)
        self.requires = tuple(requires)
        self.reference, self._make_cases = reference, cases
        # Every hint names the section to reread: a hint that does not gets the exercise's section.
        self.mistakes = [Mistake(m.function, self._pointed(m.hint)) for m in mistakes or []]
        self.rtol, self.atol = rtol, atol
        self._cases: list[Case] | None = None
        self.__doc__ = f"Checker of exercise {key}: {title} (reread {section})."

    @property
    def cases(self) -> list[Case]:
        """The cases, built on first use."""
        if self._cases is None:
            self._cases = [c if c.hint is None else dataclasses.replace(c, hint=self._pointed(c.hint))
                           for c in self._make_cases()]
        return self._cases

    def _pointed(self, hint: str) -> str:
        """``hint``, with "; reread <the exercise's section>" added unless it already names a section."""
        return hint if ("reread" in hint or "§" in hint) else f"{hint}; reread {self.section}"

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
        # The checker's own functions run as they are; a learner's runs under the exercise's rules.
        own = answer is self.reference or any(answer is m.function for m in self.mistakes)
        rules = None if own else _Rules(self, answer)
        for case in self.cases:
            probe = case.probe or _call
            rtol = self.rtol if case.rtol is None else case.rtol
            atol = self.atol if case.atol is None else case.atol
            # Expected values first: the rules below make the names the reference uses unavailable.
            expected = (case.expected or (lambda a, k: probe(self.reference, a, k)))(_copy(case.args), _copy(case.kwargs))
            args, kwargs = _copy(case.args), _copy(case.kwargs)
            if rules is not None:
                rules.used.clear()
            try:
                got = probe(answer if rules is None else rules.guard(answer), args, kwargs)
            except NotImplementedError:
                return Verdict(self.key, "not attempted",
                               f"[not attempted yet] {head}: the function still raises NotImplementedError. "
                               "Replace the `raise` line with your code, then run the cell again.")
            except Exception as err:  # the learner's bug, reported in one line, not a traceback
                broken = self._rule_broken(head, case, rules, err)
                if broken is not None:
                    return broken
                return self._fail(head, case, f"raised {type(err).__name__}: {_short(err)}", case.hint)
            broken = self._rule_broken(head, case, rules, None)
            if broken is not None:  # a stand-in was called, and the answer swallowed its exception
                return broken
            if not _same(args, case.args) or not _same(kwargs, case.kwargs):
                return self._fail(head, case, "the function changed its input in place",
                                  "work on copies (or out-of-place operations): a loss must not modify its arguments")
            try:
                _compare(expected, got, rtol, atol)
            except _Disagreement as diff:
                return self._fail(head, case, str(diff), self._diagnose(case, got, rtol, atol))
        n = len(self.cases)
        return Verdict(self.key, "pass", f"[pass] {head}: {n} input{'s' * (n != 1)} checked, all correct.")

    def _rule_broken(self, head: str, case: Case, rules: "_Rules | None", err: Exception | None) -> Verdict | None:
        """The failing verdict when the answer broke one of the exercise's rules, else None."""
        if rules is None:
            return None
        label = rules.used[0] if rules.used else (err.name if isinstance(err, _Forbidden) else None)
        if label is not None and label in AUTOGRAD:
            return self._fail(head, case, f"the function uses autograd ({label})",
                              f"this exercise is without autograd: derive the gradient on paper; reread {self.section}")
        if label is not None:
            return self._fail(head, case, f"the function calls {label.rstrip(',')}, which this exercise asks you to write",
                              f"write it yourself, with torch operations; reread {self.section}")
        if err is not None and rules.no_autograd and _is_autograd_error(err):
            return self._fail(head, case, "the function used autograd, which is disabled here",
                              f"this exercise is without autograd: derive the gradient on paper; reread {self.section}")
        return None

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
    forbidden: tuple[str, ...] = (),
    no_autograd: bool = False,
) -> Exercise:
    """Create an :class:`Exercise`, register it in :data:`~clbook.exercises.core.EXERCISES` under ``key``, return it.

    The arguments are those of :class:`Exercise`. A key can be registered only once.
    """
    if key in EXERCISES:
        raise ValueError(f"exercise {key!r} is already registered")
    EXERCISES[key] = Exercise(key, title, section, reference, cases, mistakes, rtol, atol, requires,
                              forbidden, no_autograd)
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
