"""Wall time of the whole course: every notebook executed headlessly in a fresh kernel.

Run from the repository root::

    python benchmarks/bench_course.py                       # every notebooks/*.ipynb
    python benchmarks/bench_course.py --quick               # the theory notebooks 01-03 (what CI runs)
    python benchmarks/bench_course.py notebooks/01_*.ipynb  # just some
    python benchmarks/bench_course.py --write               # also save the executed notebooks

Each notebook is read into memory, executed top to bottom by ``nbclient`` in a new kernel (as
``jupyter nbconvert --execute`` would, with the notebook's folder as working directory) and
thrown away: nothing is written back, so the committed outputs stay untouched (with ``--write``,
each notebook that ran without error is saved back with its new outputs, as ``jupyter nbconvert
--execute --inplace`` would, so that one execution gives both the figures and the committed
outputs). The time of a notebook is the wall time from kernel start to kernel shutdown. The slowest cells of each
notebook are listed too (from the kernel's own execution timestamps), to show where the time goes.

The figures go to stdout, as a Markdown table for the README, and to JSON
(``benchmarks/results/course.json`` by default). Targets, on a 2-core CPU with no GPU: part one
(notebooks 01-06) in at most 300 s together, and every later notebook in at most 75 s on its own.
Exit status 1 if a notebook fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_losses import machine_info  # noqa: E402

TARGET_S = 300.0  # part one, notebooks 01-06, together
TARGET_LATER_S = 75.0  # each notebook from 07 on


def part_one(name: str) -> bool:
    """Notebooks 01-06 share one budget; later ones have a budget each."""
    return name[:2].isdigit() and int(name[:2]) <= 6


def _cell_seconds(cell) -> float | None:
    """Execution time the kernel reported for one cell (nbclient records the timestamps)."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def run_notebook(path: Path, timeout: int, kernel: str, slowest: int = 3, write: bool = False) -> dict:
    """Execute one notebook in memory in a fresh kernel; return its wall time and slowest cells.

    With ``write``, a notebook that ran without error is saved back to ``path``.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}})
    entry = {"notebook": path.name, "cells": sum(c.cell_type == "code" for c in nb.cells)}
    t0 = time.perf_counter()
    try:
        client.execute()
        entry["status"] = "ok"
    except (CellExecutionError, CellTimeoutError) as e:
        entry["status"] = "error"
        entry["error"] = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
    entry["wall_s"] = round(time.perf_counter() - t0, 2)
    if write and entry["status"] == "ok":
        nbformat.write(nb, path)
    cells = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            seconds = _cell_seconds(cell)
            if seconds is not None:
                first = next((line for line in cell.source.splitlines() if line.strip()), "")
                cells.append({"cell": index, "seconds": round(seconds, 2), "first_line": first[:80]})
    entry["cells_s"] = round(sum(c["seconds"] for c in cells), 2)
    entry["slowest_cells"] = sorted(cells, key=lambda c: -c["seconds"])[:slowest]
    return entry


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "notebooks", "clbook"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (rev + ("+changes" if dirty else "")) or None


def markdown(result: dict, total_label: str = "whole course") -> str:
    mach = result["machine"]
    lines = [
        f"Each notebook executed headlessly in a fresh kernel ({result['kernel']}), no GPU, no downloads; "
        f"{mach['cpu']}, {mach['cores']} cores, {mach['memory_gb']} GB RAM, Python {mach['python']}, "
        f"torch {mach['torch']}; revision {result['revision']}, {result['date'][:10]}.",
        "",
        "| notebook | wall time (s) | status |",
        "|---|---:|---|",
    ]
    first = [e for e in result["notebooks"] if part_one(e["notebook"])]
    later = [e for e in result["notebooks"] if not part_one(e["notebook"])]
    for e in first:
        lines.append(f"| {e['notebook']} | {e['wall_s']:.1f} | {e['status']} |")
    if first:
        total = sum(e["wall_s"] for e in first)
        label = total_label if not later else "part one, 01-06"
        lines.append(f"| **{label}** | **{total:.1f}** | target <= {TARGET_S:.0f} s together |")
    for e in later:
        lines.append(f"| {e['notebook']} | {e['wall_s']:.1f} | {e['status']}, target <= {TARGET_LATER_S:.0f} s |")
    if first and later:
        lines.append(f"| **whole course** | **{result['total_s']:.1f}** | |")
    return "\n".join(lines)


def run(paths: list[Path], timeout: int, kernel: str, out: Path | None, total_label: str = "whole course",
        write: bool = False) -> dict:
    result = {
        "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "revision": git_revision(),
        "kernel": kernel,
        "target_s": TARGET_S,
        "target_later_s": TARGET_LATER_S,
        "notebooks": [],
    }
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
          f"{result['machine']['torch']}, load average {result['machine']['load_average_at_start']}")
    print(f"{len(paths)} notebook(s), each in a fresh kernel, "
          f"{'saved back when they run without error' if write else 'nothing written back'}\n")
    for path in paths:
        print(f"  {path.name:44s} ", end="", flush=True)
        entry = run_notebook(path, timeout, kernel, write=write)
        result["notebooks"].append(entry)
        slow = ", ".join(f"cell {c['cell']} {c['seconds']:.1f} s" for c in entry["slowest_cells"])
        print(f"{entry['wall_s']:7.1f} s  {entry['status']}  (slowest: {slow or '-'})")
        if entry["status"] != "ok":
            print(f"    {entry['error']}")
    result["total_s"] = round(sum(e["wall_s"] for e in result["notebooks"]), 2)
    first = [e for e in result["notebooks"] if part_one(e["notebook"])]
    later = [e for e in result["notebooks"] if not part_one(e["notebook"])]
    result["part_one_s"] = round(sum(e["wall_s"] for e in first), 2)
    checks = []
    if total_label == "whole course" and first:  # the 01-06 budget is for all six together
        checks.append(("part one, 01-06", result["part_one_s"], TARGET_S))
    checks += [(e["notebook"], e["wall_s"], TARGET_LATER_S) for e in later]
    result["target_met"] = all(t <= target for _, t, target in checks) if checks else None
    print()
    for name, t, target in checks:
        print(f"  {name:44s} {t:7.1f} s  [{'ok' if t <= target else 'MISSED'}] target <= {target:.0f} s")
    print(f"  {total_label:44s} {result['total_s']:7.1f} s")
    print("\nMarkdown for the README:\n")
    print(markdown(result, total_label))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {out}")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    parser.add_argument("--kernel", default="python3", help="kernel name")
    parser.add_argument("--quick", action="store_true",
                        help="only the theory notebooks 01-03, which train nothing (about half a minute; for CI)")
    parser.add_argument("--write", action="store_true",
                        help="save each notebook that ran without error back with its new outputs")
    parser.add_argument("--out", type=Path, help="JSON file to write (default benchmarks/results/course[_quick].json)")
    args = parser.parse_args(argv)
    if args.quick and args.notebooks:
        parser.error("--quick picks the notebooks itself; pass either --quick or notebooks")
    paths = args.notebooks or sorted((REPO / "notebooks").glob("0[1-3]_*.ipynb" if args.quick else "*.ipynb"))
    out = args.out or REPO / "benchmarks" / "results" / ("course_quick.json" if args.quick else "course.json")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    if not paths:
        parser.error("no notebooks found")
    label = "theory notebooks 01-03 (--quick)" if args.quick else "whole course"
    return run([p.resolve() for p in paths], args.timeout, args.kernel, out, label, write=args.write)


if __name__ == "__main__":
    sys.exit(0 if all(e["status"] == "ok" for e in main()["notebooks"]) else 1)
