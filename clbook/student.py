"""The student edition: the course's notebooks with every exercise's solution replaced by a stub.

In the course's own notebooks, each checked exercise is a code cell that holds its solution
between two marker lines, inside the function the learner is asked to write::

    # Exercise 02.1
    def my_nt_xent(z1, z2, tau):
        # BEGIN SOLUTION
        ...
        # END SOLUTION

    check_nt_xent(my_nt_xent)

:func:`student_notebook` replaces everything from ``# BEGIN SOLUTION`` to ``# END SOLUTION``
(both lines included) by one line, indented like the marker, that raises ``NotImplementedError``
naming the exercise; the checker then reports "not attempted yet" instead of failing. The exercise
is named by the cell's first ``# Exercise <key>`` comment. Outputs, execution counts and execution
timings of the exercise cells are cleared (they show the solution's verdict), and so is their
``nbval-check-output`` tag (with which CI compares the saved pass line); every other cell, outputs
included, is left exactly as it was. Markers must come in pairs, in order, without nesting: anything else
raises ``ValueError`` naming the notebook and the cell.

nbgrader does the same job with its ``ClearSolutions`` preprocessor, but it brings a server
extension, a database and its own metadata; a marker-to-stub rewrite is a few lines on top of
nbformat, which the course already uses.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat

__all__ = ["BEGIN", "END", "is_exercise_cell", "strip_solutions", "student_notebook", "student_edition"]

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
_EXERCISE = re.compile(r"^\s*#\s*Exercise\s+(\S+)", re.MULTILINE)


def _is_marker(line: str, marker: str) -> bool:
    return line.strip() == marker


def is_exercise_cell(cell) -> bool:
    """Whether ``cell`` is a code cell with at least one solution marker line."""
    return cell.get("cell_type") == "code" and any(
        _is_marker(line, BEGIN) or _is_marker(line, END) for line in cell.source.splitlines()
    )


def strip_solutions(source: str, name: str) -> str:
    """Replace every ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` block of ``source`` by a stub.

    Parameters
    ----------
    source : str
        The code of one cell.
    name : str
        How the stub names the exercise, e.g. ``"Exercise 02.1"``.

    Returns
    -------
    str
        The code with each block replaced by ``raise NotImplementedError(...)`` at the marker's
        indentation.

    Raises
    ------
    ValueError
        If the markers are unbalanced, nested or out of order.
    """
    out: list[str] = []
    inside = False
    for number, line in enumerate(source.splitlines(), start=1):
        if _is_marker(line, BEGIN):
            if inside:
                raise ValueError(f"line {number}: {BEGIN!r} inside another solution block (missing {END!r}?)")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("{name}: replace this line with your code")')
        elif _is_marker(line, END):
            if not inside:
                raise ValueError(f"line {number}: {END!r} without a {BEGIN!r} before it")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{BEGIN!r} without a matching {END!r}")
    return "\n".join(out)


def student_notebook(nb, label: str = "notebook"):
    """Return a copy of the notebook ``nb`` with the solutions stubbed and exercise outputs cleared.

    Parameters
    ----------
    nb : nbformat.NotebookNode
        A notebook as read by :func:`nbformat.read`; it is not modified.
    label : str
        Name used in error messages and in stubs of cells without an ``# Exercise`` comment.

    Returns
    -------
    nbformat.NotebookNode
        The student version.

    Raises
    ------
    ValueError
        If a cell's markers are unbalanced (the message names the notebook and the cell).
    """
    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        if not is_exercise_cell(cell):
            continue
        match = _EXERCISE.search(cell.source)
        name = f"Exercise {match.group(1)}" if match else f"the exercise in cell {index} of {label}"
        try:
            cell.source = strip_solutions(cell.source, name)
        except ValueError as err:
            raise ValueError(f"{label}, cell {index}: {err}") from None
        cell.outputs = []
        cell.execution_count = None
        # The saved verdict is gone, so nbval must not compare it; the timings were the solution's.
        cell.metadata.pop("execution", None)
        if "nbval-check-output" in cell.metadata.get("tags", []):
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != "nbval-check-output"]
            if not cell.metadata["tags"]:
                del cell.metadata["tags"]
    return nb


def student_edition(notebooks: list[Path] | Path, outdir: Path) -> list[Path]:
    """Write the student version of each notebook into ``outdir``; return the written paths.

    Parameters
    ----------
    notebooks : list of Path, or Path
        Notebook files, or a folder whose ``*.ipynb`` files are all converted.
    outdir : Path
        Created if needed. Must not be the folder the notebooks come from.

    Returns
    -------
    list of Path
        One file per notebook, same file names. Notebooks without exercises are copied as they are.
    """
    if isinstance(notebooks, (str, Path)) and Path(notebooks).is_dir():
        notebooks = sorted(Path(notebooks).glob("*.ipynb"))
    paths = [Path(p) for p in notebooks]
    if not paths:
        raise ValueError("no notebooks to convert")
    outdir = Path(outdir)
    if any(p.resolve().parent == outdir.resolve() for p in paths):
        raise ValueError(f"outdir {outdir} holds the solved notebooks; choose another folder")
    # Convert every notebook before writing any, so that an unbalanced one leaves nothing half done.
    converted = [student_notebook(nbformat.read(p, as_version=4), label=p.name) for p in paths]
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in zip(paths, converted):
        target = outdir / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written
