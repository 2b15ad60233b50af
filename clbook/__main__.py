"""Command line: ``python -m clbook reproduce``, ``pretrain`` and ``student-edition``.

``reproduce [--quick] [--json FILE [--overwrite]] [--progress]`` runs the experiments of notebooks
04, 05, 07 and 08 headless and prints the results table; ``--json`` also writes the rows as a JSON
list of objects with keys ``dataset``, ``encoder``, ``method``, ``linear_acc``, ``knn_acc``,
``alignment``, ``uniformity`` (of the held-out features; ``alignment`` is null for Iris, which has
no augmentation), ``seconds`` and ``data``. The file's path is checked before the run (an existing
file is replaced only with ``--overwrite``), and the JSON is strict: a value that is not a finite
number is written as ``null``.

``pretrain --method NAME [...]`` pre-trains the course's CNN with any method of the registry
(:data:`clbook.methods.REGISTRY`) on MNIST or a folder of images, on one process or under ``torchrun --nproc_per_node=K -m clbook pretrain ...``, with a
checkpoint to resume from and a final linear probe (see :mod:`clbook.launch`).

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


def _json_path_problem(path: str, overwrite: bool) -> str | None:
    """Why rows could not be written to ``path`` (None if they can), checked before a long run."""
    target = Path(path)
    if target.is_dir():
        return f"--json {path} is a directory; give a file name"
    if target.exists() and not overwrite:
        return f"--json {path} exists; pass --overwrite to replace it, or choose another name"
    parent = target.parent
    if not parent.is_dir():
        return f"--json {path}: the folder {parent} does not exist"
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        return f"--json {path}: no permission to write there"
    return None


def _strict(value):
    """A JSON-safe value: NaN and infinities become None (``null``), which strict parsers accept."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the experiments and print the results table")
    rep.add_argument("--quick", action="store_true", help="few epochs: a smoke test of about a minute")
    rep.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    rep.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    rep.add_argument("--progress", action="store_true", help="show progress bars while training")
    rep.add_argument("--data", metavar="DIR", help="data directory (default: CLBOOK_DATA or <repo>/data)")
    rep.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps")
    stu = sub.add_parser("student-edition", help="write the notebooks with every solution replaced by a stub")
    stu.add_argument("outdir", help="folder for the student notebooks (created if needed)")
    stu.add_argument("notebooks", nargs="*", help="notebooks to convert (default: every notebook of the course)")
    from clbook.launch import add_arguments, check_arguments, run_pretrain

    add_arguments(sub.add_parser("pretrain", help="pre-train an encoder (one process, or several under torchrun)"))
    args = parser.parse_args(argv)
    if args.command == "pretrain":
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
    print(f"\nTotal: {time.perf_counter() - start:.0f} s" + (" (--quick: below the course's targets)" if args.quick else ""))
    if args.json:
        rows = [{key: _strict(value) for key, value in r.row().items()} for r in results]
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2, allow_nan=False)
            f.write("\n")
        print(f"Wrote {len(results)} rows to {args.json}")
    return 0


def _error(command: str, err: Exception | str) -> int:
    """One line on stderr, no traceback, and status 2 (argparse's status for a usage error)."""
    print(f"python -m clbook {command}: error: {' '.join(str(err).split())}", file=sys.stderr)
    return 2


def _student_edition(outdir: str, notebooks: list[str]) -> int:
    from pathlib import Path

    from clbook.student import student_edition

    sources = [Path(p) for p in notebooks] or Path(__file__).resolve().parents[1] / "notebooks"
    try:
        written = student_edition(sources, Path(outdir))
    except (ValueError, OSError) as err:
        print(f"student-edition: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {len(written)} student notebooks to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
