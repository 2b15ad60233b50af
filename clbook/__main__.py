"""Command line: ``python -m clbook reproduce [--quick] [--json FILE] [--progress]``.

Runs the experiments of notebooks 04, 05 and 08 headless and prints the results table; ``--json``
also writes the rows as a JSON list of objects with keys ``dataset``, ``encoder``, ``method``,
``linear_acc``, ``knn_acc``, ``alignment``, ``uniformity`` (of the held-out features; ``alignment``
is null for Iris, which has no augmentation), ``seconds`` and ``data``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the experiments and print the results table")
    rep.add_argument("--quick", action="store_true", help="few epochs: a smoke test of about a minute")
    rep.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    rep.add_argument("--progress", action="store_true", help="show progress bars while training")
    rep.add_argument("--data", metavar="DIR", help="data directory (default: CLBOOK_DATA or <repo>/data)")
    args = parser.parse_args(argv)

    from clbook.data import load_mnist
    from clbook.experiments import format_table, reproduce

    start = time.perf_counter()
    split = load_mnist(root=args.data)
    results = reproduce(quick=args.quick, progress=args.progress, split=split)
    print()
    print(format_table(results))
    print(f"\nTotal: {time.perf_counter() - start:.0f} s" + (" (--quick: below the course's targets)" if args.quick else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.row() for r in results], f, indent=2)
            f.write("\n")
        print(f"Wrote {len(results)} rows to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
