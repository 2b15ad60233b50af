"""The set-up files agree with each other: one pinned set, named the same everywhere."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def environment_pip_section() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    section = []
    for line in lines[start + 1 :]:
        match = re.match(r"^\s{6,}- (.+)$", line)
        if not match:
            break
        section.append(match.group(1).strip())
    return section


def name_of(requirement: str) -> str:
    return re.split(r"[=<>!\[ ]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_pins_the_same_set_as_requirements_txt():
    pinned = requirement_lines((ROOT / "requirements.txt").read_text())
    section = environment_pip_section()
    assert section[:-1] == pinned
    assert section[-1] == "-e .[test]"
    assert all("==" in line for line in pinned)


def test_environment_yml_is_thin():
    text = (ROOT / "environment.yml").read_text()
    conda_deps = re.findall(r"^  - (\S+)$", text, flags=re.M)
    # Channels and conda packages: python and pip only; everything else comes from the pip section.
    assert conda_deps == ["conda-forge", "python=3.11", "pip", "pip:"]


def test_pinned_set_covers_every_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    pinned = {name_of(line) for line in requirement_lines((ROOT / "requirements.txt").read_text())}
    missing = {name_of(d) for d in declared} - pinned
    assert not missing, f"declared in pyproject.toml but not pinned: {missing}"


def test_torch_and_torchvision_are_the_known_good_pair():
    pinned = requirement_lines((ROOT / "requirements.txt").read_text())
    assert "torch==2.14.1" in pinned and "torchvision==0.29.1" in pinned


def test_readme_lists_every_notebook_and_names_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "python -m pytest" in readme
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert notebook.name in readme, f"README's table misses {notebook.name}"


def test_docs_extra_is_pinned_apart_and_changes_no_course_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    docs_pins = requirement_lines((ROOT / "requirements-docs.txt").read_text())
    assert all("==" in line for line in docs_pins)
    pinned_docs = {name_of(line) for line in docs_pins}
    missing = {name_of(d) for d in project["optional-dependencies"]["docs"]} - pinned_docs
    assert not missing, f"declared in the docs extra but not pinned in requirements-docs.txt: {missing}"
    course = {name_of(line) for line in requirement_lines((ROOT / "requirements.txt").read_text())}
    assert not pinned_docs & course, "requirements-docs.txt must not re-pin the course's packages"
