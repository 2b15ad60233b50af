"""Smoke tests: both benchmark scripts run end to end on tiny inputs and write sane JSON.

Nothing here is timed or compared against a speed target; the scripts print the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_loss_benchmark_runs_and_agrees_with_references(tmp_path):
    out = tmp_path / "losses.json"
    # A memory budget (0.5 MB) that only pytorch-metric-learning's NTXentLoss, cubic in N, exceeds.
    done = run_script(str(BENCH / "bench_losses.py"), "--quick", "--sizes", "16", "--tiled-sizes", "16", "32",
                      "--repeats", "1", "--max-gb", "0.0005", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert {b["group"] for b in result["groups"]} == {"nt_xent", "supcon_10", "supcon_100", "supcon_unlabelled",
                                                      "nt_xent_tiled", "supcon_10_tiled"}
    # Tiled against untiled: one row per group and size, and a memory line through the two sizes.
    tiled = result["tiled"]
    assert [(r["group"], r["n"]) for r in tiled["rows"]] == [("nt_xent_tiled", 16), ("nt_xent_tiled", 32),
                                                             ("supcon_10_tiled", 16), ("supcon_10_tiled", 32)]
    assert all(r["tiled_ms"] > 0 and r["untiled_ms"] > 0 and r["time_ratio"] > 0 for r in tiled["rows"])
    assert set(tiled["fits_in_8gb"]) == {"nt_xent_tiled", "supcon_10_tiled"}
    assert "| nt_xent_tiled | 32 | 64 |" in done.stdout
    for block in result["groups"]:
        clbook = block["entries"][0]
        assert clbook["impl"].startswith("clbook") and "skipped" not in clbook
        for entry in block["entries"]:
            if entry["impl"] == "pytorch-metric-learning NTXentLoss":
                assert "estimated peak" in entry["skipped"] and "median_s" not in entry
                continue
            assert "skipped" not in entry, entry
            assert entry["median_s"] > 0 and entry["peak_mb"] >= 0
            assert 1 <= entry["calls_per_sample"] <= 50
            # With one repeat, the paired time ratio is just the ratio of the two samples.
            assert entry["time_ratio"] == pytest.approx(entry["times_s"][0] / clbook["times_s"][0])
            # Every implementation computes the same loss on the same inputs (the fused form is
            # a different loss when labels are given; the script marks it by leaving the key out).
            if "abs_diff_to_clbook" in entry:
                assert entry["abs_diff_to_clbook"] < 1e-4, entry
    assert "| nt_xent |" in done.stdout  # the Markdown table for the README


def test_loss_benchmark_refuses_zero_warmup():
    done = run_script(str(BENCH / "bench_losses.py"), "--quick", "--warmup", "0")
    assert done.returncode == 2 and "--warmup must be at least 1" in done.stderr


def tiny_notebook(path: Path, source: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"), nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)


def test_course_benchmark_runs_notebooks_without_writing_them(tmp_path):
    good, bad = tmp_path / "01_good.ipynb", tmp_path / "02_bad.ipynb"
    tiny_notebook(good, "print(6 * 7)")
    tiny_notebook(bad, "raise RuntimeError('on purpose')")
    before = good.read_bytes(), bad.read_bytes()
    out = tmp_path / "course.json"
    done = run_script(str(BENCH / "bench_course.py"), str(good), str(bad), "--out", str(out))
    assert done.returncode == 1  # one notebook failed
    result = json.loads(out.read_text())
    status = {e["notebook"]: e["status"] for e in result["notebooks"]}
    assert status == {"01_good.ipynb": "ok", "02_bad.ipynb": "error"}
    assert "on purpose" in result["notebooks"][1]["error"]
    assert result["total_s"] == pytest.approx(sum(e["wall_s"] for e in result["notebooks"]), abs=0.02)
    assert (good.read_bytes(), bad.read_bytes()) == before  # executed in memory only
    assert "| **whole course** |" in done.stdout


def test_course_benchmark_writes_back_and_budgets_later_notebooks_apart(tmp_path):
    first, later = tmp_path / "01_first.ipynb", tmp_path / "07_later.ipynb"
    tiny_notebook(first, "print(6 * 7)")
    tiny_notebook(later, "print('later')")
    out = tmp_path / "course.json"
    done = run_script(str(BENCH / "bench_course.py"), str(first), str(later), "--write", "--out", str(out))
    assert done.returncode == 0, done.stderr
    saved = nbformat.read(first, as_version=4).cells[1]
    assert saved.execution_count == 1 and saved.outputs[0]["text"] == "42\n"  # written back, executed
    result = json.loads(out.read_text())
    assert result["part_one_s"] == pytest.approx(result["notebooks"][0]["wall_s"], abs=0.01)
    assert result["target_met"] is True
    assert "| **part one, 01-06** |" in done.stdout and "| 07_later.ipynb |" in done.stdout
    assert "target <= 75 s" in done.stdout


def test_device_benchmark_times_the_cpu_at_least(tmp_path):
    out = tmp_path / "device.json"
    done = run_script(str(BENCH / "bench_device.py"), "--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(out.read_text())
    cpu = next(r for r in record["rows"] if r["device"] == "cpu")
    assert cpu["seconds_per_epoch"] > 0 and cpu["steps_per_epoch"] == 2  # 1,024 digits in batches of 512
    assert "| cpu |" in done.stdout and "x CPU" in done.stdout

