"""Sphinx configuration of the clbook book: the executed notebooks, a course map and the API.

Build (no notebook is executed again; the pages show the outputs saved in the notebooks), the
command of the README, docs/index.md and CI:

    pip install -r requirements.txt -r requirements-docs.txt -e ".[docs]"
    python -m sphinx -b html -W --keep-going docs docs/_build/html

``docs/notebooks/`` is a generated copy of the course's ``notebooks/`` folder (refreshed on every
build, not tracked), so every notebook, including ones added later, gets a page. Math is rendered
by MathJax 2 served from the copy that the ``jupyter-server-mathjax`` package installs; it is
copied into the built site at the end of the build, so the pages read offline. The course table on
the index page is generated here from ``benchmarks/results/course.json`` and the notebooks' titles.
The layout is sphinx-book-theme's, with docs/_static/clbook.css on top; every notebook page gets a
download link to its .ipynb under its title (``add_download_link``).
"""

from __future__ import annotations

import importlib
import html
import inspect
import json
import posixpath
import shutil
import sys
from pathlib import Path

import nbformat
from docutils import nodes

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # autodoc imports this checkout's clbook

import clbook  # noqa: E402

project = "clbook"
author = "the clbook authors"
copyright = "2026, the clbook authors"
release = version = clbook.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
exclude_patterns = ["_build", "_generated", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
suppress_warnings = ["myst.header"]  # notebooks start at "# 01 · ..." and go on with "##"

# ----------------------------------------------------------------------------- notebooks


def sync_notebooks() -> None:
    """Mirror ROOT/notebooks/*.ipynb into DOCS/notebooks/, touching only files that changed.

    A copy rather than a symbolic link: MyST resolves links between notebooks from the real path
    of a page, which for a link would lie outside the book.
    """
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    sources = {p.name: p for p in (ROOT / "notebooks").glob("*.ipynb")}
    for stale in target.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, source in sources.items():
        copy = target / name
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            shutil.copy2(source, copy)


sync_notebooks()
nb_execution_mode = "off"  # the notebooks are executed by CI; the book shows their saved outputs
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
myst_dmath_double_inline = True  # "$$...$$" inside a paragraph (as Jupyter allows) is display math
myst_update_mathjax = False  # MathJax 2 is configured below

# ----------------------------------------------------------------------------- API reference
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc docstrings state types and shapes
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# ----------------------------------------------------------------------------- HTML and math
# The layout of Jupyter Book: the notebooks in a sidebar on the left, the page's own table of
# contents on the right, and a download button (the .ipynb) on every notebook page. Its CSS,
# JavaScript and icon fonts are files of the theme, copied into the built site: nothing is loaded
# from the network.
html_theme = "sphinx_book_theme"
html_title = "clbook: contrastive learning, derived and then checked by numbers"
html_theme_options = {
    "logo": {"text": "clbook"},  # the sidebar's heading; the full title is the first entry below it
    "home_page_in_toc": True,
    "show_toc_level": 2,  # the right-hand table of contents lists a page's sections and subsections
    "toc_title": "On this page",
    "use_download_button": True,  # a notebook page offers its .ipynb (the copy under _sources/)
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
}
html_static_path = ["_static"]
# Code cells reach about 140 characters and printed outputs more: wider pages, and lines that
# still do not fit wrap instead of hiding behind a horizontal scroll bar (docs/_static/clbook.css).
html_css_files = ["clbook.css"]
html_copy_source = True  # the download button's .ipynb
html_sourcelink_suffix = ""  # ... copied as _sources/notebooks/NAME.ipynb, not NAME.ipynb.txt
html_show_sourcelink = False

import jupyter_server_mathjax  # noqa: E402

MATHJAX_SOURCE = Path(jupyter_server_mathjax.__file__).resolve().parent / "static"
# Relative to the built site's _static folder; the files are copied there by copy_mathjax.
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {
    "tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processEscapes": True},
    # jupyter-server-mathjax ships the STIX-Web fonts only (no TeX fonts, no image fonts): without
    # this, MathJax asks for its default TeX font data, which is not there, and shows an error.
    "HTML-CSS": {"availableFonts": ["STIX-Web"], "preferredFont": "STIX-Web", "webFont": "STIX-Web",
                 "imageFont": None, "linebreaks": {"automatic": True}},
    # A display formula wider than the column breaks at an operator instead of scrolling sideways.
    "CommonHTML": {"linebreaks": {"automatic": True}},
    "SVG": {"linebreaks": {"automatic": True}},
    "messageStyle": "none",  # no "Processing math: 53%" box in the corner while a long page typesets
}


def copy_mathjax(app, exception) -> None:
    """Copy MathJax 2 from jupyter-server-mathjax into the built site (nothing is kept in the repo)."""
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    if not (target / "MathJax.js").exists():
        # Only English is used: the translations are left out (2 MB of the 12).
        shutil.copytree(MATHJAX_SOURCE, target, ignore=shutil.ignore_patterns("localization"), dirs_exist_ok=True)


# ----------------------------------------------------------------------------- course table

# What each notebook needs besides the pinned environment. Notebooks not listed here get "none
# beyond the environment" unless they load data through clbook.data (then: see the notebook).
DATA = {
    "01": "none (toy points)",
    "02": "none (random vectors)",
    "03": "none (a 4-sample toy batch)",
    "04": "Iris (ships with scikit-learn)",
    "05": "MNIST (shipped test split `data/mnist_t10k/`, or a download)",
    "06": "MNIST (as in 05)",
    "07": "correlated Gaussians (generated), then MNIST (as in 05)",
    "08": "a toy (generated), then MNIST (as in 05)",
    "09": "a toy (generated), then MNIST (as in 05)",
    "10": "a linear toy (generated), then MNIST (as in 05)",
    "11": "speech-like sequences of several speakers (generated)",
    "12": "MNIST (as in 05), cut into views and paired with generated captions",
}


def course_table() -> str:
    """Markdown table: notebook page, title, minutes (from the course benchmark) and data."""
    timings = {}
    bench = ROOT / "benchmarks" / "results" / "course.json"
    if bench.exists():
        timings = {row["notebook"]: row for row in json.loads(bench.read_text())["notebooks"]}
    lines = ["| notebook | minutes | data |", "|---|---:|---|"]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        first = next((c.source for c in nb.cells if c.cell_type == "markdown"), path.stem)
        title = first.splitlines()[0].lstrip("# ").strip()
        row = timings.get(path.name)
        minutes = f"{row['wall_s'] / 60:.1f}" if row and row.get("status") == "ok" else "not yet measured"
        data = DATA.get(path.name[:2])
        if data is None:
            text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
            data = "see the notebook" if ("load_mnist" in text or "load_iris" in text) else "none"
        lines.append(f"| {{doc}}`{title} </notebooks/{path.stem}>` | {minutes} | {data} |")
    return "\n".join(lines) + "\n"


def write_course_table(app) -> None:
    generated = DOCS / "_generated"
    generated.mkdir(exist_ok=True)
    target = generated / "course_table.md"
    text = course_table()
    if not target.exists() or target.read_text() != text:  # unchanged: keep the build incremental
        target.write_text(text)


# ----------------------------------------------------------------------------- API pages


def api_modules() -> list[str]:
    """The public modules and packages of clbook: ``losses`` is a package, the rest are files."""
    files = [p.stem for p in (ROOT / "clbook").glob("*.py")]
    packages = [p.parent.name for p in (ROOT / "clbook").glob("*/__init__.py")]
    return sorted(name for name in files + packages if not name.startswith("_"))


def api_page(name: str) -> str:
    """The reStructuredText of ``clbook.<name>``'s page.

    A module: its docstring and members. A package: its docstring, then one section per file, in
    the order of the package's ``__all__``: the file's docstring (the plain form of its loss),
    then its public names, documented under the package (``clbook.losses.nt_xent_loss``), which is
    where they are imported from and what the other docstrings refer to.
    """
    # reStructuredText rather than MyST: in a MyST page, the sections of a docstring would
    # become explicit labels, and two modules' "Conventions" would collide.
    title = f"``clbook.{name}``"
    text = f"{title}\n{'=' * len(title)}\n\n.. automodule:: clbook.{name}\n"
    if not (ROOT / "clbook" / name / "__init__.py").exists():
        return text
    package = importlib.import_module(f"clbook.{name}")
    files: dict[str, list[str]] = {}  # file -> its names in the package's __all__, in that order
    for member in package.__all__:
        obj = getattr(package, member)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            home = obj.__module__
        else:  # data (a registry): the file that lists it, whose "#:" comment documents it
            homes = [m for m in sys.modules.values() if getattr(m, "__name__", "").startswith(f"{package.__name__}.")
                     and member in getattr(m, "__all__", ())]
            home = homes[0].__name__ if homes else package.__name__
        files.setdefault(home, []).append(member)
    text += "   :no-members:\n"
    for module, members in files.items():
        if module == package.__name__:  # defined in the package itself (a registry, say): no section
            text += f"\n.. currentmodule:: clbook.{name}\n"
        else:
            heading = f"``{module.rpartition('.')[2]}``"
            text += (f"\n{heading}\n{'-' * len(heading)}\n\n.. automodule:: {module}\n   :no-members:\n\n"
                     f".. currentmodule:: clbook.{name}\n")
        for member in members:
            obj = getattr(package, member)
            kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "data"
            # Data is documented where its "#:" comment is: in the package itself, or in its file.
            where = f"{module}." if kind == "data" and module != package.__name__ else ""
            text += f"\n.. auto{kind}:: {where}{member}\n"
    return text


def write_api_pages(app) -> None:
    """One page per module or package of clbook in docs/api/ (generated, not tracked): new ones get one too.

    One page each, because several module docstrings have a section of the same name
    ("Conventions"), which on a shared page would be duplicate targets.
    """
    target = DOCS / "api"
    target.mkdir(exist_ok=True)
    modules = api_modules()
    for stale in target.glob("*.*"):
        if stale.stem not in modules or stale.suffix != ".rst":
            stale.unlink()
    for name in modules:
        text = api_page(name)
        page = target / f"{name}.rst"
        if not page.exists() or page.read_text() != text:
            page.write_text(text)


# ----------------------------------------------------------------------------- download link


def add_download_link(app, doctree, docname: str) -> None:
    """Under a notebook page's title, a link that downloads the notebook the page shows.

    The file is the copy of the notebook that Sphinx keeps under ``_sources/`` (``html_copy_source``),
    the same one the download button of the page's header offers; this link is visible without
    opening a menu, and its ``download`` attribute saves the file instead of displaying its JSON.
    """
    if app.builder.format != "html" or not docname.startswith("notebooks/"):
        return
    name = posixpath.basename(docname) + ".ipynb"
    href = posixpath.relpath(f"_sources/{docname}.ipynb", posixpath.dirname(docname))
    link = nodes.raw("", f'<p class="clbook-download"><a class="reference download" href="{html.escape(href)}" '
                     f'download="{html.escape(name)}">Download this notebook ({html.escape(name)})</a> '
                     "to run it yourself.</p>", format="html")
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        doctree.insert(0, link)
    else:  # right after the title
        section.insert(1 if section.children and isinstance(section[0], nodes.title) else 0, link)


def setup(app):
    app.connect("builder-inited", write_api_pages)
    app.connect("builder-inited", write_course_table)
    app.connect("doctree-resolved", add_download_link)
    app.connect("build-finished", copy_mathjax)
