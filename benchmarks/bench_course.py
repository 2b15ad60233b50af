"""Wall time of the whole course: every notebook executed headlessly in a fresh kernel.

Run from the repository root::

    python benchmarks/bench_course.py                       # every notebooks/*.ipynb
    python benchmarks/bench_course.py --quick               # the theory notebooks 01-03 (what CI runs)
    python benchmarks/bench_course.py notebooks/01_*.ipynb  # just some

Each notebook is read into memory, executed top to bottom by ``nbclient`` in a new kernel (as
``jupyter nbconvert --execute`` would, with the notebook's folder as working directory) and
thrown away: nothing is written back, so the committed outputs stay untouched. The time of a
notebook is the wall time from kernel start to kernel shutdown. The slowest cells of each
notebook are listed too (from the kernel's own execution timestamps), to show where the time goes.

The figures go to stdout, as a Markdown table for the README, and to JSON
(``benchmarks/results/course.json`` by default). Target: the whole course in at most 300 s on a
2-core CPU with no GPU. Exit status 1 if a notebook fails.
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

TARGET_S = 300.0


def _cell_seconds(cell) -> float | None:
    """Execution time the kernel reported for one cell (nbclient records the timestamps)."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def run_notebook(path: Path, timeout: int, kernel: str, slowest: int = 3) -> dict:
    """Execute one notebook in memory in a fresh kernel; return its wall time and slowest cells."""
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
    for e in result["notebooks"]:
        lines.append(f"| {e['notebook']} | {e['wall_s']:.1f} | {e['status']} |")
    lines.append(f"| **{total_label}** | **{result['total_s']:.1f}** | target <= {TARGET_S:.0f} s for the whole course |")
    return "\n".join(lines)


def run(paths: list[Path], timeout: int, kernel: str, out: Path | None, total_label: str = "whole course") -> dict:
    result = {
        "machine": machine_info(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "revision": git_revision(),
        "kernel": kernel,
        "target_s": TARGET_S,
        "notebooks": [],
    }
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
          f"{result['machine']['torch']}, load average {result['machine']['load_average_at_start']}")
    print(f"{len(paths)} notebook(s), each in a fresh kernel, nothing written back\n")
    for path in paths:
        print(f"  {path.name:44s} ", end="", flush=True)
        entry = run_notebook(path, timeout, kernel)
        result["notebooks"].append(entry)
        slow = ", ".join(f"cell {c['cell']} {c['seconds']:.1f} s" for c in entry["slowest_cells"])
        print(f"{entry['wall_s']:7.1f} s  {entry['status']}  (slowest: {slow or '-'})")
        if entry["status"] != "ok":
            print(f"    {entry['error']}")
    result["total_s"] = round(sum(e["wall_s"] for e in result["notebooks"]), 2)
    result["target_met"] = result["total_s"] <= TARGET_S if total_label == "whole course" else None
    verdict = f"[{'ok' if result['target_met'] else 'MISSED'}] target <= {TARGET_S:.0f} s"
    print(f"\n  {total_label:44s} {result['total_s']:7.1f} s  "
          + (verdict if total_label == "whole course" else "(the target is for the whole course)"))
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
    return run([p.resolve() for p in paths], args.timeout, args.kernel, out, label)


if __name__ == "__main__":
    sys.exit(0 if all(e["status"] == "ok" for e in main()["notebooks"]) else 1)
