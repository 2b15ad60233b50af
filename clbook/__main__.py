"""Command line: ``python -m clbook reproduce``, ``pretrain`` and ``student-edition``.

``reproduce [--quick] [--json FILE [--overwrite]] [--progress]`` runs the experiments of notebooks
04, 05, 07 and 08 headless and prints the results table; ``--json`` also writes the rows as a JSON
list of objects with keys ``dataset``, ``encoder``, ``method``, ``linear_acc``, ``knn_acc``,
``alignment``, ``uniformity`` (of the held-out features; ``alignment`` is null for Iris, which has
no augmentation), ``seconds`` and ``data``. The file's path is checked before the run (an existing
file is replaced only with ``--overwrite``), and the JSON is strict: a value that is not a finite
number is written as ``null``.

``pretrain --method NAME [...]`` pre-trains the course's CNN with any method of the registry
(:data:`clbook.methods.REGISTRY`) on MNIST or a folder of images, on one process or under
``torchrun --nproc_per_node=K -m clbook pretrain ...``, with a checkpoint to resume from and a final
linear probe (see :mod:`clbook.launch`).

``student-edition OUTDIR [NOTEBOOK ...]`` writes the notebooks with every solution replaced by a stub.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path


def _json_path_problem(path: str, overwrite: bool, option: str = "--json") -> str | None:
    """Why ``option``'s output could not be written to ``path`` (None if it can), checked before a long run."""
    target = Path(path)
    if target.is_dir():
        return f"{option} {path} is a directory; give a file name"
    if target.exists() and not overwrite:
        return f"{option} {path} exists; pass --overwrite to replace it, or choose another name"
    parent = target.parent
    if not parent.is_dir():
        return f"{option} {path}: the folder {parent} does not exist"
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        return f"{option} {path}: no permission to write there"
    return None


def _strict(value):
    """A JSON-safe value: NaN and infinities become None (``null``), which strict parsers accept."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


# The help, in plain words (the module docstring above, in reStructuredText, is for readers of the code).
DESCRIPTION = ("The course's command line: run its experiments and print the results table (reproduce), "
               "pre-train an encoder with any method of the course, on one process or several under "
               "torchrun (pretrain), or write the notebooks with every solution replaced by a stub, for "
               "learners (student-edition).")
EPILOG = "Run python -m clbook COMMAND --help for the options of a command and their defaults."
COMMANDS = {
    "reproduce": "run the experiments of notebooks 04, 05, 07, 08 and 09 and print the results table",
    "pretrain": "pre-train the course's CNN with one method (one process, or several under torchrun)",
    "student-edition": "write the notebooks with every solution replaced by a stub",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that appends "(default: ...)" to a help line, except where it would be noise.

    Left as they are: flags (``store_true``, whose default is off), options without a default
    value (their help says in words what happens without them, "default: every notebook"), and
    help lines that already state their default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_value = action.default is None or action.default is False or action.default == []  # not 0
        if no_value or action.default is argparse.SUPPRESS or "(default" in text:
            return text
        return super()._get_help_string(action)


def shadowing_folder() -> str | None:
    """The folder that hides the clbook package from Python, or None when ``clbook`` is the package.

    From the folder that holds a clone named ``clbook`` (git's default name), Python takes the clone
    itself, a folder without ``__init__.py``, for a namespace package called ``clbook``; with an
    editable install, ``python -m clbook`` still finds this file, but ``clbook.data`` is then the
    clone's ``data/`` folder and the imports fail with an ImportError of "unknown location".
    """
    package = sys.modules.get("clbook")
    if package is None or getattr(package, "__file__", None) is not None:
        return None
    return next(iter(getattr(package, "__path__", [])), None)  # a namespace package has no __file__


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m clbook`` and its three commands."""
    from clbook.launch import add_arguments

    parser = argparse.ArgumentParser(prog="python -m clbook", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        text = COMMANDS[name]
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                              formatter_class=HelpFormatter)

    rep = command("reproduce")
    rep.add_argument("--quick", action="store_true", help="few epochs: a smoke test of about a minute")
    rep.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON (default: no file)")
    rep.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    rep.add_argument("--plot", metavar="FILE", help="also draw accuracy against labels per class, one line per "
                     "MNIST row, to FILE (PNG; default: no plot)")
    rep.add_argument("--progress", action="store_true", help="show progress bars while training")
    rep.add_argument("--data", metavar="DIR", help="data folder (default: $CLBOOK_DATA, else the clone's data/)")
    rep.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps")
    add_arguments(command("pretrain"))
    stu = command("student-edition")
    stu.add_argument("outdir", metavar="OUTDIR", help="folder for the student notebooks (created if needed)")
    stu.add_argument("notebooks", metavar="NOTEBOOK", nargs="*",
                     help="notebooks to convert (default: every notebook of the course)")
    return parser


def main(argv: list[str] | None = None) -> int:
    folder = shadowing_folder()
    if folder is not None:  # before any import from clbook, which would fail with a puzzling ImportError
        return _error("", f"the folder {folder} hides the clbook package (it has the same name); run the "
                      f"command from inside the clone (cd {folder}) or from any other folder")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "pretrain":
        from clbook.launch import check_arguments, run_pretrain

        try:
            check_arguments(args, int(os.environ.get("WORLD_SIZE", "1")))  # before any work
            run_pretrain(args)
        except (ValueError, FileNotFoundError) as err:
            return _error("pretrain", err)
        return 0
    if args.command == "student-edition":
        return _student_edition(args.outdir, args.notebooks)
    if args.json:
        problem = _json_path_problem(args.json, args.overwrite)
        if problem:
            parser.error(problem)  # before the minutes-long run, not after it
    if args.plot:
        problem = _json_path_problem(args.plot, args.overwrite, "--plot")
        if problem:
            parser.error(problem)
    if args.data is not None and not Path(args.data).is_dir():
        return _error("reproduce", f"--data {args.data}: no such folder")
    from clbook.runtime import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        return _error("reproduce", err)

    from clbook.data import load_mnist
    from clbook.experiments import format_table, reproduce

    start = time.perf_counter()
    try:
        split = load_mnist(root=args.data)
    except (ValueError, FileNotFoundError) as err:
        return _error("reproduce", err)
    results = reproduce(quick=args.quick, progress=args.progress, split=split, device=args.device)
    print()
    print(format_table(results))
    print(f"\nTotal: {time.perf_counter() - start:.0f} s"
          + (" (--quick: below the course's targets)" if args.quick else ""))
    if args.json:
        rows = [{key: _strict(value) for key, value in r.row().items()} for r in results]
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, allow_nan=False)
            f.write("\n")
        print(f"Wrote {len(results)} row{'s' * (len(results) != 1)} to {args.json}")
    if args.plot:
        _plot(results, args.plot)
        print(f"Wrote the few-label plot to {args.plot}")
    return 0


def _plot(results, path: str) -> None:
    """Linear probe and kNN accuracy against labels per class for the MNIST rows (random twins dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clbook.evaluation import plot_label_efficiency

    rows = {f"{r.method} {r.encoder}": r for r in results if r.dataset == "mnist" and r.few}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), dpi=100)
    for ax, metric in zip(axes, ("linear", "knn")):
        plot_label_efficiency({k: r.few for k, r in rows.items()},
                              {k: (r.linear_acc if metric == "linear" else r.knn_acc) for k, r in rows.items()},
                              metric=metric, ax=ax, reference=("random", "pixels"), legend_outside=metric == "knn")
    axes[0].get_legend().remove()  # one legend, beside the right panel, hides no line
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _error(command: str, err: Exception | str) -> int:
    """One line on stderr, no traceback, and status 2 (argparse's status for a usage error)."""
    print(f"{' '.join(['python -m clbook', command]).strip()}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def _student_edition(outdir: str, notebooks: list[str]) -> int:
    from pathlib import Path

    from clbook.student import student_edition

    sources = [Path(p) for p in notebooks] or Path(__file__).resolve().parents[1] / "notebooks"
    try:
        written = student_edition(sources, Path(outdir))
    except (ValueError, OSError) as err:
        return _error("student-edition", err)
    n = len(written)
    print(f"Wrote {n} student notebook{'s' * (n != 1)} to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
