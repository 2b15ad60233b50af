"""``python -m clbook``'s help and messages: defaults on every help line, plain words, counts in the right number,
and one clear line when a folder named clbook hides the package."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import torch

import clbook.data
from clbook.__main__ import build_parser, main
from clbook.data import Split
from clbook.methods import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def option_help(text: str, option: str) -> str:
    """The help of one option in ``--help``'s output: from its line to the next option's, joined into one line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^\s+{re.escape(option)}\b", line))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if re.match(r"^\s{2}\S", line) or not line.strip():  # the next option, or the end of the section
            break
        block.append(line)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize("command", ["reproduce", "pretrain", "student-edition"])
def test_every_help_line_states_its_default(command, capsys):
    parser = subcommands()[command]
    text = help_text([command], capsys)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.default is False or action.required:
            continue  # -h, flags (off unless given) and what must be given
        name = action.option_strings[0] if action.option_strings else action.metavar
        line = option_help(text, name)
        assert "default" in line, f"{command} {name}: no default in its help: {line!r}"
        if action.default not in (None, []):  # a value: the value itself is shown
            assert f"(default: {action.default})" in line, f"{command} {name}: {line!r}"


def test_pretrain_help_shows_the_defaults_the_parser_uses(capsys):
    text = help_text(["pretrain"], capsys)
    defaults = vars(subcommands()["pretrain"].parse_args([]))
    for option in ("--epochs", "--batch-size", "--lr", "--seed", "--method", "--device"):
        value = defaults[option.lstrip("-").replace("-", "_")]
        assert f"(default: {value})" in option_help(text, option)
    # No single value: each method's recipe, read from the registry.
    for name, entry in REGISTRY.items():
        if not entry.recipes:  # notebook 12's methods: not offered by pretrain (no MNIST recipe)
            assert name not in option_help(text, "--method")
            continue
        temperature = entry.recipes[0].temperature
        if temperature is not None:
            assert f"{name} {temperature}" in option_help(text, "--temperature")
        if "momentum" in entry.recipes[0].options:
            assert f"{name} {entry.recipes[0].options['momentum']}" in option_help(text, "--momentum")


@pytest.mark.parametrize("argv", [[], ["reproduce"], ["pretrain"], ["student-edition"]])
def test_help_is_plain_words(argv, capsys):
    text = help_text(argv, capsys)
    for markup in ("``", ":func:", ":mod:", ":data:", ":class:"):  # reStructuredText of the docstrings
        assert markup not in text, f"{markup!r} in {' '.join(['python -m clbook', *argv])} --help"
    for command in subcommands():
        if not argv:
            assert command in text


def write_notebooks(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:02d}_toy.ipynb"
        source = "# Exercise 9.1\ndef f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n"
        cell = nbformat.v4.new_code_cell(source)
        nbformat.write(nbformat.v4.new_notebook(cells=[cell]), path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("n, noun", [(1, "notebook"), (2, "notebooks")])
def test_student_edition_counts_in_the_right_number(n, noun, tmp_path, capsys):
    paths = write_notebooks(tmp_path / "in", n)
    assert main(["student-edition", str(tmp_path / "out"), *paths]) == 0
    assert capsys.readouterr().out.strip() == f"Wrote {n} student {noun} to {tmp_path / 'out'}"
    assert len(list((tmp_path / "out").glob("*.ipynb"))) == n


@pytest.fixture
def twenty_images(monkeypatch):
    """A stand-in for MNIST: 20 training and 10 held-out images of 2 classes."""
    gen = torch.Generator().manual_seed(0)
    split = Split(torch.rand(20, 1, 28, 28, generator=gen), torch.arange(20) % 2,
                  torch.rand(10, 1, 28, 28, generator=gen), torch.arange(10) % 2, "stand-in", ["a", "b"])
    monkeypatch.setattr(clbook.data, "load_mnist", lambda *a, **kw: split)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_one_process_one_image_one_step_are_singular(twenty_images, capsys):
    assert main(["pretrain", "--method", "simclr", "--limit", "1", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "1 training image is fewer than one global batch (1 process x --batch-size 2)" in err, err

    assert main(["pretrain", "--method", "simsiam", "--batch-size", "20", "--epochs", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "20 images (stand-in), 1 process on cpu" in out and "1 step per epoch" in out, out
    assert "temperature" not in out  # SimSiam has none
    assert "on 10 held-out images" in out, out


def test_a_folder_named_clbook_gets_one_clear_line(tmp_path):
    """From the folder that holds a clone named clbook, as with an editable install.

    Python then takes the clone (no ``__init__.py``) for a namespace package ``clbook``, and an
    editable install's finder still supplies ``clbook/__main__.py``: run that file in that state.
    """
    clone = tmp_path / "clbook"
    (clone / "data").mkdir(parents=True)  # the clone's data/ would pass for clbook.data
    script = textwrap.dedent(f"""
        import runpy, sys
        import clbook  # the folder {clone.name}/ in the current folder: a namespace package
        assert getattr(clbook, "__file__", None) is None
        sys.argv = ["clbook", "--help"]
        runpy.run_path({str(ROOT / "clbook" / "__main__.py")!r}, run_name="__main__")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("python -m clbook: error: the folder ") and str(clone) in done.stderr
    assert f"cd {clone}" in done.stderr and done.stdout == ""
