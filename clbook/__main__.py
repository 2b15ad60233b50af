"""Command line: ``python -m clbook reproduce`` and ``python -m clbook pretrain``.

``reproduce [--quick] [--json FILE] [--progress]`` runs the experiments of notebooks 04 and 05
headless and prints the results table; ``--json`` also writes the rows as a JSON list of objects
with keys ``dataset``, ``encoder``, ``method``, ``linear_acc``, ``knn_acc``, ``seconds`` and ``data``.

``pretrain --method {simclr,supcon} [...]`` pre-trains the course's CNN on MNIST or a folder of
images, on one process or under ``torchrun --nproc_per_node=K -m clbook pretrain ...``, with a
checkpoint to resume from and a final linear probe (see :mod:`clbook.launch`).
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
    from clbook.launch import add_arguments, run_pretrain

    add_arguments(sub.add_parser("pretrain", help="pre-train an encoder (one process, or several under torchrun)"))
    args = parser.parse_args(argv)
    if args.command == "pretrain":
        run_pretrain(args)
        return 0

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
