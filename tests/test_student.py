"""The student edition: solutions stubbed, exercise outputs cleared, everything else untouched."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clbook.__main__ import main
from clbook.student import BEGIN, END, is_exercise_cell, strip_solutions, student_edition, student_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# An independent statement of the rewrite: a whole marked block, markers included, becomes one
# line at the BEGIN marker's indentation.
BLOCK = re.compile(r"^([ \t]*)# BEGIN SOLUTION[ \t]*\n.*?^[ \t]*# END SOLUTION[ \t]*$", re.M | re.S)


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    assert main(["student-edition", str(out)]) == 0
    return out


def solution_blocks(source: str) -> list[str]:
    return [m.group(0) for m in BLOCK.finditer(source)]


def test_every_notebook_is_written(edition):
    assert sorted(p.name for p in edition.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_solutions_replaced_and_nothing_else_changed(edition, path):
    solved = nbformat.read(path, as_version=4)
    student = nbformat.read(edition / path.name, as_version=4)
    assert len(student.cells) == len(solved.cells)
    for before, after in zip(solved.cells, student.cells):
        if not is_exercise_cell(before):
            assert after == before  # source, outputs, metadata, id: all unchanged
            continue
        blocks = solution_blocks(before.source)
        assert blocks, "markers in an exercise cell must be balanced"
        name = re.search(r"# Exercise (\S+)", before.source).group(1)
        expected = BLOCK.sub(
            lambda m: f'{m.group(1)}raise NotImplementedError("Exercise {name}: replace this line with your code")',
            before.source,
        )
        assert after.source == expected  # outside the markers, character for character the same
        assert BEGIN not in after.source and END not in after.source
        for block in blocks:  # no solution line survives (lines that also occur outside excepted)
            outside = set(BLOCK.sub("", before.source).splitlines())
            for line in block.splitlines()[1:-1]:
                if line.strip() and line not in outside:
                    assert line not in after.source.splitlines()
        assert after.outputs == [] and after.execution_count is None
        assert "nbval-check-output" not in after.metadata.get("tags", []) and "execution" not in after.metadata
        kept = {k: v for k, v in before.metadata.items() if k not in ("execution", "tags")}
        assert {k: v for k, v in after.metadata.items() if k != "tags"} == kept and after.id == before.id


def test_every_notebook_of_the_edition_has_exercises_to_do(edition):
    # Every notebook ends with at least two checked exercises, so its student version has at
    # least two stubs, each still calling its checker.
    for path in sorted(edition.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        stubs = [c for c in nb.cells if "raise NotImplementedError(\"Exercise" in c.source]
        assert len(stubs) >= 2, path.name
        assert all(re.search(r"\bcheck_\w+\(", c.source) for c in stubs), path.name


def test_a_checker_on_a_stub_reports_not_attempted_yet(edition):
    nb = nbformat.read(edition / "02_nt_xent.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "# Exercise 02.1" in c.source)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(cell.source, {"torch": torch, "F": F, "np": np})
    assert out.getvalue().startswith("[not attempted yet] 02.1")


@pytest.mark.parametrize(
    "source, problem",
    [
        ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "without a matching"),
        ("def f():\n    return 1\n    # END SOLUTION\n", "without a '# BEGIN SOLUTION' before"),
        ("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    x = 1\n    # END SOLUTION\n", "inside another"),
    ],
)
def test_unbalanced_markers_are_a_clear_error(source, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        strip_solutions(source, "Exercise 9.9")


def test_an_unbalanced_notebook_names_itself_and_writes_nothing(tmp_path, capsys):
    good = tmp_path / "in" / "a_good.ipynb"
    bad = tmp_path / "in" / "b_bad.ipynb"
    good.parent.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# Exercise 9.1\ndef f():\n    # BEGIN SOLUTION\n    return 1\n")])
    nbformat.write(nb, bad)
    nbformat.write(nbformat.v4.new_notebook(), good)
    with pytest.raises(ValueError, match=r"b_bad.ipynb, cell 0: .*without a matching"):
        student_edition([good, bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["student-edition", str(tmp_path / "out2"), str(good), str(bad)]) == 2
    assert "b_bad.ipynb" in capsys.readouterr().err


def test_the_input_notebook_is_not_modified():
    nb = nbformat.read(ROOT / "notebooks" / "01_spring_margin_loss.ipynb", as_version=4)
    before = nbformat.writes(nb)
    student_notebook(nb, "01")
    assert nbformat.writes(nb) == before


def test_refuses_to_overwrite_the_solved_notebooks():
    with pytest.raises(ValueError, match="holds the solved notebooks"):
        student_edition(ROOT / "notebooks", ROOT / "notebooks")
