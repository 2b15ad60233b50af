"""The offline book: every notebook has a page that links to its .ipynb for download, every figure
file exists, no internal link is broken, nothing is loaded from the network (MathJax, the theme's
styles and fonts included), and the README, the book and CI give one build command.

Builds the book once into a temporary folder (``python -m sphinx -b html -W``; it does not execute
the notebooks). To check a build that already exists instead, for instance the one CI has just
made, set ``CLBOOK_DOCS_HTML`` to its folder. Skipped when the ``docs`` extra is not installed,
except under ``CLBOOK_REQUIRE_PEERS=1`` (CI), where the tests run and fail.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

missing = [m for m in ("sphinx", "myst_nb", "jupyter_server_mathjax") if importlib.util.find_spec(m) is None]
# CI sets CLBOOK_REQUIRE_PEERS=1: there a missing book dependency fails instead of skipping (tests/conftest.py).
pytestmark = pytest.mark.skipif(
    bool(missing) and os.environ.get("CLBOOK_REQUIRE_PEERS", "") in ("", "0"),
    reason=f"the book's dependencies are not installed ({', '.join(missing)}): "
    'pip install -r requirements-docs.txt -e ".[docs]"'
)


class Links(HTMLParser):
    """Collects (tag, attribute, value) of every href and src in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append((tag, name, value))


def links_of(page: Path) -> list[tuple[str, str, str]]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


class Anchors(HTMLParser):
    """The attributes of every <a> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.anchors.append(dict(attrs))


def anchors_of(page: Path) -> list[dict[str, str | None]]:
    parser = Anchors()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.anchors


BUILD = "python -m sphinx -b html -W --keep-going docs docs/_build/html"
INSTALL = 'pip install -r requirements.txt -r requirements-docs.txt -e ".[docs]"'


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    given = os.environ.get("CLBOOK_DOCS_HTML")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("book")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-d", str(out / ".doctrees"),
         str(ROOT / "docs"), str(out / "html")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, f"sphinx failed:\n{result.stderr[-3000:]}"
    return out / "html"


def test_every_notebook_has_a_page_linked_from_the_index(html):
    index_links = {href for _, _, href in links_of(html / "index.html")}
    for notebook in NOTEBOOKS:
        page = html / "notebooks" / f"{notebook.stem}.html"
        assert page.exists(), f"no page for {notebook.name}"
        assert f"notebooks/{notebook.stem}.html" in index_links, f"the index does not link {notebook.name}"


def test_every_figure_of_a_notebook_is_on_its_page_and_exists(html):
    for notebook in NOTEBOOKS:
        nb = nbformat.read(notebook, as_version=4)
        figures = sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code" for out in c.outputs)
        page = html / "notebooks" / f"{notebook.stem}.html"
        images = [v for tag, attr, v in links_of(page) if tag == "img" and attr == "src"]
        assert len(images) >= figures, f"{notebook.name}: {figures} figures, {len(images)} images on its page"
        for src in images:
            assert (page.parent / unquote(urlsplit(src).path)).is_file(), f"{page.name}: missing image {src}"


def test_no_internal_link_points_to_a_missing_file(html):
    pages = sorted(html.rglob("*.html"))
    assert len(pages) > len(NOTEBOOKS)
    broken = []
    for page in pages:
        if "_static" in page.parts:  # MathJax's own files
            continue
        for tag, attr, value in links_of(page):
            parts = urlsplit(value)
            if parts.scheme or parts.netloc or not parts.path:  # external, mailto:, or "#anchor"
                continue
            if not (page.parent / unquote(parts.path)).exists():
                broken.append(f"{page.relative_to(html)}: <{tag} {attr}={value!r}>")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:20])


def test_the_book_reads_offline_with_local_mathjax(html):
    page = html / "notebooks" / "02_nt_xent.html"
    scripts = [v for tag, attr, v in links_of(page) if tag == "script"]
    mathjax = [s for s in scripts if "MathJax.js" in s]
    assert mathjax and not urlsplit(mathjax[0]).scheme, "MathJax must be served from the built site"
    assert (page.parent / urlsplit(mathjax[0]).path).is_file()
    assert r"\(" in page.read_text(encoding="utf-8")  # math is left for MathJax to typeset
    for page in sorted(html.rglob("*.html")):
        if "_static" in page.parts:
            continue
        for tag, attr, value in links_of(page):
            if tag in ("script", "link", "img", "iframe", "source"):
                assert not urlsplit(value).scheme, f"{page.relative_to(html)} loads {value} from the network"
    # The theme's styles: no font or stylesheet fetched from elsewhere (its icons are local webfonts).
    for sheet in sorted((html / "_static").rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        remote = re.findall(r"(?:url\(\s*[\"']?|@import\s+[\"']?)(?:https?:)?//[^)\"'\s]+", text)
        assert not remote, f"{sheet.relative_to(html)} loads {remote[:3]} from the network"


def test_every_notebook_page_links_its_ipynb_for_download(html):
    for notebook in NOTEBOOKS:
        page = html / "notebooks" / f"{notebook.stem}.html"
        downloads = [a for a in anchors_of(page) if "download" in a and a.get("href", "").endswith(".ipynb")]
        assert downloads, f"{page.name}: no download link to its notebook"
        target = page.parent / unquote(urlsplit(downloads[0]["href"]).path)
        assert target.is_file() and target.read_bytes() == notebook.read_bytes(), \
            f"{page.name}: the download is not {notebook.name} as it is in notebooks/"


def test_one_build_command_everywhere():
    for path in ("README.md", "docs/index.md", "docs/conf.py", ".ci/run"):
        text = (ROOT / path).read_text(encoding="utf-8")
        assert BUILD in text, f"{path} does not give the book's build command: {BUILD}"
        for line in text.splitlines():  # and no other sphinx command
            if "-m sphinx" in line and "sys.executable" not in line:
                assert BUILD in line, f"{path}: another build command: {line.strip()}"
    for path in ("README.md", "docs/index.md", "docs/conf.py"):
        assert INSTALL in (ROOT / path).read_text(encoding="utf-8"), f"{path} does not give: {INSTALL}"


def test_api_reference_has_a_page_per_module(html):
    files = [p.stem for p in (ROOT / "clbook").glob("*.py")]
    packages = [p.parent.name for p in (ROOT / "clbook").glob("*/__init__.py")]
    modules = sorted(name for name in files + packages if not name.startswith("_"))
    assert "losses" in modules and "distributed" in modules
    for module in modules:
        assert (html / "api" / f"{module}.html").exists(), f"no API page for clbook.{module}"
    for module, name in [("losses", "nt_xent_loss"), ("cluster", "gmm_em"), ("exercises", "Exercise"),
                         ("exercises", "check_nt_xent"), ("methods", "make_method"), ("methods", "MoCo"),
                         ("student", "student_edition"), ("distributed", "gather_rows")]:
        page = (html / "api" / f"{module}.html").read_text(encoding="utf-8")
        assert f'id="clbook.{module}.{name}"' in page, f"clbook.{module}.{name} missing from the API reference"


@pytest.mark.parametrize("package", ["losses", "methods", "exercises"])
def test_api_page_of_a_package_documents_every_public_name_under_the_package(html, package):
    import importlib

    module = importlib.import_module(f"clbook.{package}")
    page = (html / "api" / f"{package}.html").read_text(encoding="utf-8")
    for name in module.__all__:
        if not callable(getattr(module, name)):  # data is documented in its file (clbook.exercises.core.EXERCISES)
            assert f'.{name}"' in page, f"{name} missing from the API reference"
            continue
        assert f'id="clbook.{package}.{name}"' in page, f"clbook.{package}.{name} missing from the API reference"


def test_api_page_of_losses_has_a_section_per_file(html):
    page = (html / "api" / "losses.html").read_text(encoding="utf-8")
    for part in ("margin", "nt_xent", "supcon", "info_nce", "no_negatives", "swav"):
        assert f'id="module-clbook.losses.{part}"' in page, f"no section for clbook.losses.{part}"
