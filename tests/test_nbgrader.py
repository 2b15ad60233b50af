"""nbgrader: its own solution-clearing step turns every notebook into a release in which each checker says
"not attempted yet".

A teacher who grades with nbgrader marks each exercise cell as an "Autograded answer" (the Create
Assignment toolbar writes ``metadata.nbgrader`` with ``solution: true``) and runs ``nbgrader
generate_assignment``, whose ``ClearSolutions`` step replaces every block from the line holding
"BEGIN SOLUTION" to the line holding "END SOLUTION" by ``raise NotImplementedError()``. Here that
step runs on every notebook, with the exercise cells marked the way the toolbar marks them and with
nbgrader's default check that no other cell holds a solution region (``enforce_metadata``).

Executing a whole notebook takes up to minutes, and CI already executes every unchanged cell under
nbval. Here each exercise cell of the release runs, in order, in one namespace holding what the
notebook imported before it: the stub raises at the first line of the function, so nothing the
notebook computed is needed (a cell that needed more would fail here with a ``NameError``).
Skipped when nbgrader is not installed (a failure under CLBOOK_REQUIRE_PEERS=1, as in CI).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import re
import warnings
from pathlib import Path

import nbformat
import pytest

from clbook.exercises import EXERCISES
from clbook.student import is_exercise_cell
from conftest import import_peer

ClearSolutions = import_peer("nbgrader.preprocessors", "nbgrader").ClearSolutions

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# nbgrader's delimiters match anywhere in a line (ClearSolutions.begin_solution_delimeter, end_...).
DELIMITERS = ("BEGIN SOLUTION", "END SOLUTION")
# An independent statement of nbgrader's rewrite: from the BEGIN line to the END line, both included,
# becomes its Python stub, indented like the BEGIN line.
BLOCK = re.compile(r"^([ \t]*)[^\n]*BEGIN SOLUTION[^\n]*\n.*?^[^\n]*END SOLUTION[^\n]*(?:\n|\Z)", re.M | re.S)
NOT_ATTEMPTED = "[not attempted yet] "


def exercise_key(cell) -> str:
    found = re.search(r"^\s*#\s*Exercise\s+(\S+)", cell.source, re.M)
    assert found, f"an exercise cell without its '# Exercise <key>' line:\n{cell.source[:200]}"
    return found.group(1)


def marked(nb):
    """A copy of ``nb`` with every exercise cell marked as nbgrader's Create Assignment toolbar marks an
    "Autograded answer"."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if is_exercise_cell(cell):
            cell.metadata["nbgrader"] = {"grade": False, "grade_id": "exercise-" + exercise_key(cell).replace(".", "-"),
                                         "locked": False, "schema_version": 3, "solution": True, "task": False}
    return nb


def imports_of(source: str) -> list[ast.stmt]:
    """The top-level import statements of a cell (IPython's magic and shell lines left out)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())
    return [node for node in ast.parse(code).body if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_clear_solutions_changes_only_the_solutions(path):
    nb = marked(nbformat.read(path, as_version=4))
    # nbgrader takes any line holding a delimiter for one, prose included: it refuses the notebook (a
    # solution region outside a solution cell) or, with enforce_metadata off, replaces the prose
    # between the two lines by "YOUR ANSWER HERE".
    found = [f"cell {i} ({cell.cell_type}): {line.strip()!r}" for i, cell in enumerate(nb.cells)
             if not is_exercise_cell(cell) for line in cell.source.splitlines() if any(d in line for d in DELIMITERS)]
    assert not found, (f"{path.name}: nbgrader would take these lines for solution delimiters; name the markers "
                       "without their words (\"the solution markers\"):\n" + "\n".join(found))
    release, _ = ClearSolutions(enforce_metadata=True).preprocess(copy.deepcopy(nb), {})
    assert len(release.cells) == len(nb.cells)
    stubbed = 0
    for before, after in zip(nb.cells, release.cells):
        if not is_exercise_cell(before):
            assert after == before
            continue
        expected = BLOCK.sub(lambda m: f"{m.group(1)}# YOUR CODE HERE\n{m.group(1)}raise NotImplementedError()\n",
                             before.source)
        assert after.source.rstrip("\n") == expected.rstrip("\n"), f"{path.name}, exercise {exercise_key(before)}"
        stubbed += 1
    keys = {key for key in EXERCISES if key.startswith(path.name[:2] + ".")}
    assert stubbed >= len(keys) >= 2, f"{path.name}: {stubbed} exercise cells, {len(keys)} registered checkers"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_the_release_runs_and_every_checker_says_not_attempted_yet(path):
    nb = marked(nbformat.read(path, as_version=4))
    clear = ClearSolutions(enforce_metadata=True)
    namespace: dict = {"__name__": "__main__"}
    reported: dict[str, list[str]] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if not is_exercise_cell(cell):  # what the notebook has imported so far
            exec(compile(ast.Module(imports_of(cell.source), type_ignores=[]), path.name, "exec"), namespace)
            continue
        released, _ = clear.preprocess_cell(copy.deepcopy(cell), {"language": "python"}, index)
        assert "BEGIN SOLUTION" not in released.source and "raise NotImplementedError()" in released.source
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would be one more thing for the learner to read
            exec(compile(released.source, f"{path.name}, cell {index}", "exec"), namespace)
        key = exercise_key(cell)
        lines = out.getvalue().splitlines()
        assert lines and all(line.startswith(f"{NOT_ATTEMPTED}{key} ") for line in lines), \
            f"{path.name}, exercise {key} printed:\n{out.getvalue()}"
        assert err.getvalue() == "", f"{path.name}, exercise {key} wrote to stderr:\n{err.getvalue()}"
        reported[key] = lines
    registered = {key for key in EXERCISES if key.startswith(path.name[:2] + ".")}
    assert registered and set(reported) == registered, \
        f"{path.name}: checked {sorted(reported)}, registered {sorted(registered)}"
