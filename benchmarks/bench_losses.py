"""Time and memory of contrastive losses: clbook against the fused form and the reference libraries.

Run from the repository root::

    python benchmarks/bench_losses.py            # N = 256, 1024, 4096 (a few minutes)
    python benchmarks/bench_losses.py --quick    # tiny sizes, a few seconds (what CI runs)
    python benchmarks/bench_losses.py --groups nt_xent_tiled supcon_10_tiled --threads 1 --time-max-n 4096

What is measured
----------------
Forward plus backward of one loss call on the same float32 CPU inputs, D = 128:

* **NT-Xent at size N**: ``z1``, ``z2`` of shape [N, D], so 2N rows in the similarity matrix.
  Compared: ``clbook.losses.nt_xent_loss``; the *fused form* (normalize -> matmul -> diagonal
  set to -inf -> ``cross_entropy``) written out below; the naive teaching version of notebook 02
  (``clbook.reference.naive_nt_xent_loss``); pytorch-metric-learning's ``NTXentLoss``.
* **SupCon at size N**: N rows, that is N/2 samples with 2 views each (``features`` [N/2, 2, D]),
  with labels from 10 classes, from 100 classes, or none (then only the other view is a
  positive). Compared: ``clbook.losses.supcon_loss``; the fused NT-Xent form on the same N rows
  (the cost floor: one similarity matrix and one softmax); the SupContrast reference's
  algorithm (``clbook.reference.supcontrast_loss``); pytorch-metric-learning's ``SupConLoss``.

* **Tiled against untiled** (issue 18), N pairs = 2N rows for both NT-Xent and SupCon (10
  classes, N samples x 2 views), at ``--tiled-sizes`` (default 1,024, 4,096 and 16,384):
  ``block_size=`` with the block clbook picks, against the untiled path (what clbook ran before
  tiling), whose [M, M] matrices do not fit the memory limit at N = 16,384. Targets: peak memory
  at N = 16,384 at most 300 MB, time within 1.2x of untiled at N = 4,096. A line through the two
  largest sizes' peak memory estimates the largest N that fits in 8 GB (not run: one call there
  would take days). Calls of many seconds get ``--slow-repeats`` repeats; ``--time-max-n`` limits
  timing to the smaller sizes (the memory run's single call time is reported for the others).
  ``--groups nt_xent_tiled supcon_10_tiled`` runs only these.

Time is the median of ``--repeats`` timed samples after warm-up; a sample of an implementation
that takes only milliseconds averages enough back-to-back calls to last about 30 ms. Repeats are
interleaved (every round takes one sample of each implementation, in a freshly shuffled order) so
that background load on a shared machine hits every implementation alike, and each sample
follows an untimed call of the same implementation, so that none is timed straight after another
one freed gigabytes. A time ratio is *paired*: the median over rounds of the implementation's
sample over clbook's sample from the same round, so that a round slowed as a whole cancels out.
Compare only figures from the same run.

Peak memory is measured in a child process per case, forked from a clean server process (torch has no allocation counter
on CPU): the child tells glibc to serve every block of 64 kB or more from its own mapping, so
that freed tensors leave the resident set at once; it builds the inputs, runs one small
warm-up, resets the kernel's high-water mark of its resident set (``/proc/self/clear_refs``),
runs forward plus backward once, and reports ``VmHWM - VmRSS``, the growth of the resident set
above what it held just before. That counts every byte the call made resident, the autograd
graph and the input gradients included, and nothing allocated before. Each child runs under a
data limit (``RLIMIT_DATA``) so that a case that would blow up fails instead of swapping the
machine, and cases whose estimated peak exceeds ``--max-gb`` are skipped with the reason
printed (pytorch-metric-learning's ``NTXentLoss`` builds a positive-by-negative pair tensor,
so its memory grows with the cube of N).

Figures go to stdout (a table with medians and ratios to clbook) and to JSON
(``benchmarks/results/losses.json`` by default).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # so that "python benchmarks/bench_losses.py" finds clbook

from clbook.losses import _tiled  # noqa: E402  (the tiling thresholds: the losses read them at call time)
from clbook.losses import nt_xent_loss, supcon_loss  # noqa: E402
from clbook.reference import naive_nt_xent_loss, supcontrast_loss  # noqa: E402

D = 128
TARGET_SIZES = (256, 1024, 4096)  # the sizes the issue states its targets for
TILED_SIZES = (1024, 4096, 16384)  # tiled against untiled; the targets are stated at 4096 and 16384
TILED_TIME_N, TILED_MEMORY_N = 4096, 16384
TILED_MEMORY_TARGET_MB = 300
FIT_IN_GB = 8  # the largest N that fits in this much memory is reported
GB = 1024**3
MB = 1024**2
SAMPLE_S = 0.03  # a timed sample of a fast implementation averages calls for at least this long
MAX_CALLS = 50
SLOW_CALL_S = 3.0  # calls slower than this get --slow-repeats repeats and no untimed call before each


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """CPU model, core count, memory and library versions, for the record next to the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------- implementations


def fused_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The fused form: normalize -> matmul -> diagonal -inf -> cross-entropy. The cost floor."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T
    logits.div_(temperature)
    logits.fill_diagonal_(float("-inf"))
    return F.cross_entropy(logits, torch.arange(2 * n).roll(n))


def _pml():
    try:
        from pytorch_metric_learning import losses
    except ImportError:  # optional: the benchmark still runs without it
        return None
    return losses


@dataclass
class Impl:
    name: str
    # Builds the loss from the case's inputs; called inside the timed region.
    loss: Callable[[dict], torch.Tensor]
    # Peak memory estimate in bytes for m rows (calibrated on small runs, rounded up).
    estimate: Callable[[int], float]
    same_value: bool = True  # should equal clbook's loss on these inputs


def _sq(k: float) -> Callable[[int], float]:
    return lambda m: k * 4 * m * m  # k float32 [m, m] matrices


def nt_xent_impls() -> list[Impl]:
    t = 0.5
    impls = [
        Impl("clbook nt_xent_loss", lambda x: nt_xent_loss(x["z1"], x["z2"], t), _sq(4)),
        Impl("fused form", lambda x: fused_nt_xent(x["z1"], x["z2"], t), _sq(4)),
        Impl("naive (notebook 02)", lambda x: naive_nt_xent_loss(x["z1"], x["z2"], t), _sq(8)),
    ]
    pml = _pml()
    if pml is not None:
        loss = pml.NTXentLoss(temperature=t)

        def pml_ntxent(x):
            n = x["z1"].shape[0]
            return loss(torch.cat([x["z1"], x["z2"]]), torch.arange(n).repeat(2))

        # [pairs, negatives] = [m, m * (m - 2)] tensors; measured ~22 bytes per element at m <= 256.
        impls.append(Impl("pytorch-metric-learning NTXentLoss", pml_ntxent, lambda m: 24.0 * m**3))
    return impls


def supcon_impls(with_labels: bool) -> list[Impl]:
    t = 0.1

    def labels(x):
        return x["labels"] if with_labels else None

    impls = [
        Impl("clbook supcon_loss", lambda x: supcon_loss(x["features"], labels(x), temperature=t), _sq(4)),
        Impl(
            "fused form (same rows)",
            lambda x: fused_nt_xent(x["features"][:, 0], x["features"][:, 1], t),
            _sq(4),
            same_value=not with_labels,
        ),
        Impl(
            "SupContrast reference",
            lambda x: supcontrast_loss(F.normalize(x["features"], dim=2), labels(x), temperature=t, base_temperature=t),
            _sq(12),
        ),
    ]
    pml = _pml()
    if pml is not None:
        loss = pml.SupConLoss(temperature=t)

        def pml_supcon(x):
            f = x["features"]
            n = f.shape[0]
            sample_labels = x["labels"] if with_labels else torch.arange(n)
            # View-major rows, as clbook and SupContrast order them.
            return loss(f.transpose(0, 1).reshape(2 * n, -1), sample_labels.repeat(2))

        # Float masks plus int64 index lists of every positive and negative pair.
        impls.append(Impl("pytorch-metric-learning SupConLoss", pml_supcon, _sq(22)))
    return impls


class untiled_path:
    """Context: clbook's losses never tile, whatever the size (what they did before block_size)."""

    def __enter__(self):
        self.saved = _tiled._UNTILED_MAX_LOGITS
        _tiled._UNTILED_MAX_LOGITS = float("inf")

    def __exit__(self, *exc):
        _tiled._UNTILED_MAX_LOGITS = self.saved


def tiled_block(m: int) -> int:
    """The block size clbook picks for m rows past its threshold (forced below it too)."""
    return min(m, _tiled._auto_block(m, m, None) or max(32, min(_tiled._TILE_LOGITS // m, -(-m // 4))))


def tiled_impls(kind: str) -> list[Impl]:
    def run(x, block):
        if kind == "nt_xent":
            return nt_xent_loss(x["z1"], x["z2"], 0.5, block_size=block)
        return supcon_loss(x["features"], x.get("labels"), temperature=0.1, block_size=block)

    def untiled(x):
        with untiled_path():
            return run(x, None)

    def rows(x):
        return 2 * len(x["z1"]) if kind == "nt_xent" else 2 * len(x["features"])

    # Tiled: the [M, D] rows and their gradients (a few float32 copies) plus up to three [B, M] blocks.
    return [
        Impl("clbook tiled", lambda x: run(x, tiled_block(rows(x))), lambda m: 12 * m * tiled_block(m) + 4000 * m),
        Impl("clbook untiled", untiled, _sq(4)),
    ]


def groups() -> list[dict]:
    """The benchmark groups; ``rows(n)`` is the side of the similarity matrix at size n."""
    return [
        {"key": "nt_xent", "title": "NT-Xent (z1, z2 [N, D]; 2N rows)", "classes": None, "rows": lambda n: 2 * n,
         "impls": nt_xent_impls},
        {"key": "supcon_10", "title": "SupCon, 10 classes (N rows = N/2 samples x 2 views)", "classes": 10,
         "rows": lambda n: n, "impls": lambda: supcon_impls(True)},
        {"key": "supcon_100", "title": "SupCon, 100 classes (N rows = N/2 samples x 2 views)", "classes": 100,
         "rows": lambda n: n, "impls": lambda: supcon_impls(True)},
        {"key": "supcon_unlabelled", "title": "SupCon, no labels (N rows = N/2 samples x 2 views)", "classes": 0,
         "rows": lambda n: n, "impls": lambda: supcon_impls(False)},
        # Tiled against untiled at larger sizes: N pairs, 2N rows, for both losses (the issue's
        # "N = 16,384 pairs (32,768 rows)"), so SupCon gets N samples with 2 views here.
        {"key": "nt_xent_tiled", "title": "NT-Xent, tiled against untiled (2N rows)", "classes": None,
         "rows": lambda n: 2 * n, "impls": lambda: tiled_impls("nt_xent"), "tiled": True},
        {"key": "supcon_10_tiled", "title": "SupCon, 10 classes, tiled against untiled (N samples x 2 views)",
         "classes": 10, "rows": lambda n: 2 * n, "impls": lambda: tiled_impls("supcon"), "tiled": True},
    ]


def make_inputs(group: dict, n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    if group["key"].startswith("nt_xent"):
        return {
            "z1": torch.randn(n, D, generator=g).requires_grad_(),
            "z2": torch.randn(n, D, generator=g).requires_grad_(),
        }
    samples = group["rows"](n) // 2
    x = {"features": torch.randn(samples, 2, D, generator=g).requires_grad_()}
    if group["classes"]:
        x["labels"] = torch.randint(group["classes"], (samples,), generator=g)
    return x


def step(impl: Impl, x: dict) -> float:
    """One forward plus backward; returns the loss value."""
    for t in x.values():
        if t.requires_grad:
            t.grad = None
    loss = impl.loss(x)
    loss.backward()
    return loss.item()


# ----------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: measure without tuning the allocator
    _LIBC = None
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def _memory_child(group_index: int, impl_index: int, n: int, max_bytes: float, threads: int, queue) -> None:
    try:
        torch.set_num_threads(threads)  # as in the timed runs (--threads)
        if _LIBC is not None:
            # A fixed threshold (which also turns off glibc's adaptive one): every block of 64 kB or
            # more is its own mapping, returned to the system when freed. Peak RSS then follows
            # the live tensors instead of whatever freed memory the heap happens to retain.
            _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
        group = groups()[group_index]
        impl = group["impls"]()[impl_index]
        step(impl, make_inputs(group, min(n, 64), seed=1))  # load code paths at a negligible size
        x = make_inputs(group, n)
        if _LIBC is not None:
            _LIBC.malloc_trim(0)  # hand freed heap pages back, so that reuse cannot hide growth
        # The data limit counts address space, which runs ahead of what is resident: leave headroom.
        limit = int(_status_kb("VmData") * 1024 + 1.5 * max_bytes + 512 * MB)
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        before = _status_kb("VmRSS")
        t0 = time.perf_counter()
        step(impl, x)
        took = time.perf_counter() - t0
        queue.put(("ok", ((_status_kb("VmHWM") - before) * 1024, took)))
    except Exception as e:  # an allocation refused by the limit lands here
        queue.put(("error", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))


def peak_memory(group_index: int, impl_index: int, n: int, max_bytes: float) -> tuple[tuple | None, str]:
    """(peak resident-set growth, seconds) of one forward plus backward, measured in a forked child."""
    # forkserver, not fork: children start from a clean server process, so they inherit neither
    # this process's heap nor its OpenMP thread pool (which deadlocks a child forked after use).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "clbook.losses", "clbook.reference"])
    queue = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(group_index, impl_index, n, max_bytes, torch.get_num_threads(), queue))
    p.start()
    p.join()
    if queue.empty():
        return None, f"child exited with code {p.exitcode}"
    status, value = queue.get()
    return (value, "") if status == "ok" else (None, value)


# ----------------------------------------------------------------------------- run


def run(sizes: list[int], repeats: int, warmup: int, max_gb: float, out: Path | None,
        tiled_sizes: list[int] = (), only: list[str] | None = None, slow_repeats: int = 3,
        time_max_n: int | None = None) -> dict:
    max_bytes = max_gb * GB
    result = {"machine": machine_info(), "settings": {"sizes": sizes, "tiled_sizes": list(tiled_sizes), "D": D,
              "dtype": "float32", "repeats": repeats, "warmup": warmup, "max_gb": max_gb,
              "torch_threads": torch.get_num_threads(), "groups": only}, "groups": []}
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
          f"{result['machine']['torch']} ({torch.get_num_threads()} threads), load average "
          f"{result['machine']['load_average_at_start']}")
    print(f"forward + backward, D = {D}, float32, median of {repeats} interleaved repeats after {warmup} warm-up; "
          "x clbook for time: median of same-round ratios\n")
    # Phase 1, memory: every case in its own forked child, before this process has run (and freed)
    # anything large whose pages the children would inherit.
    plan = []
    for gi, group in enumerate(groups()):
        if only is not None and group["key"] not in only:
            continue
        impls = group["impls"]()
        for n in tiled_sizes if group.get("tiled") else sizes:
            m = group["rows"](n)
            entries = []
            for ii, impl in enumerate(impls):
                e = {"impl": impl.name, "estimate_mb": round(impl.estimate(m) / MB, 1)}
                if impl.estimate(m) > max_bytes:
                    e["skipped"] = (f"estimated peak {impl.estimate(m) / GB:.1f} GB > --max-gb {max_gb:g} "
                                    f"({m} rows)")
                else:
                    print(f"  measuring peak memory: {group['key']}, N = {n}, {impl.name}", end="\r",
                          file=sys.stderr, flush=True)
                    measured, err = peak_memory(gi, ii, n, max_bytes)
                    if measured is None:
                        e["skipped"] = f"memory run failed: {err}"
                    else:
                        e["peak_mb"] = round(measured[0] / MB, 1)
                        # One cold call in the child: a rough time where the timed phase does not run.
                        e["memory_run_s"] = round(measured[1], 3)
                        if group.get("tiled"):  # slow sizes: say each figure as it comes
                            print(f"  peak memory: {group['key']}, N = {n}, {impl.name}: {e['peak_mb']:.1f} MB "
                                  f"(that call took {measured[1]:.1f} s)" + " " * 20, file=sys.stderr, flush=True)
                entries.append(e)
            plan.append((group, impls, n, m, entries))
    print(" " * 100, end="\r", file=sys.stderr, flush=True)
    # Phase 2, time: only the cases whose memory run succeeded.
    for group, impls, n, m, entries in plan:
        live = [(impl, e) for impl, e in zip(impls, entries) if "skipped" not in e]
        if group.get("tiled") and time_max_n is not None and n > time_max_n:
            for _, e in live:
                e["time_note"] = f"not timed (N > --time-max-n {time_max_n}); one call in the memory run took " \
                                 f"{e['memory_run_s']:.1f} s"
            live = []
        if not live:
            result["groups"].append({"group": group["key"], "title": group["title"], "n": n, "rows": m,
                                     "entries": entries})
            print_block(group["title"], n, m, entries)
            continue
        x = make_inputs(group, n)
        values, calls = {}, {}
        slowest = 0.0
        for impl, e in live:
            for _ in range(warmup):
                t0 = time.perf_counter()
                values[impl.name] = step(impl, x)
                took = time.perf_counter() - t0
            slowest = max(slowest, took)
            # A sample of a fast implementation averages several back-to-back calls, so that it lasts
            # at least SAMPLE_S: one call of a few milliseconds is at the mercy of a single hiccup.
            calls[impl.name] = max(1, min(MAX_CALLS, round(SAMPLE_S / max(took, 1e-6))))
            e["calls_per_sample"] = calls[impl.name]
        # Calls of many seconds (the tiled sizes) are steady on their own: fewer repeats, no untimed
        # call before each, so that N = 16,384 takes minutes rather than an hour.
        slow = slowest > SLOW_CALL_S
        times = {impl.name: [] for impl, _ in live}
        rng = random.Random(n)
        for _ in range(min(repeats, slow_repeats) if slow else repeats):
            order = live[:]
            rng.shuffle(order)
            for impl, _ in order:
                # Untimed call first: the timed one then starts from this implementation's own steady
                # state (allocator, caches), as in a training loop, not from the wreckage of whichever
                # implementation ran before it (pytorch-metric-learning frees gigabytes).
                if not slow:
                    step(impl, x)
                t0 = time.perf_counter()
                for _ in range(calls[impl.name]):
                    step(impl, x)
                times[impl.name].append((time.perf_counter() - t0) / calls[impl.name])
        base_value = values.get(impls[0].name)
        for impl, e in live:
            e["median_s"] = statistics.median(times[impl.name])
            e["times_s"] = [round(t, 6) for t in times[impl.name]]
            e["loss"] = values[impl.name]
            if impl.same_value and base_value is not None:
                e["abs_diff_to_clbook"] = abs(values[impl.name] - base_value)
        base = entries[0]
        for e in entries:
            if "median_s" in e and "median_s" in base:
                # Paired: the median over rounds of this round's time over clbook's time in the same
                # round. A load spike that slows a whole round then cancels out of the ratio, where a
                # ratio of medians can pair a slow-round median with a fast-round one.
                e["time_ratio"] = statistics.median(t / b for t, b in zip(e["times_s"], base["times_s"]))
            if "peak_mb" in e and "peak_mb" in base and base["peak_mb"] > 0:
                e["memory_ratio"] = e["peak_mb"] / base["peak_mb"]
        result["groups"].append({"group": group["key"], "title": group["title"], "n": n, "rows": m,
                                 "entries": entries})
        print_block(group["title"], n, m, entries)
    result["targets"] = check_targets(result, [n for n in sizes if n in TARGET_SIZES])
    result["tiled"] = tiled_summary(result)
    result["targets"] += result["tiled"]["targets"]
    print_targets(result["targets"])
    print_tiled(result["tiled"])
    print("\nMarkdown for the README:\n")
    print(markdown(result))
    if result["tiled"]["rows"]:
        print()
        print(tiled_markdown(result["tiled"]))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"\nwrote {out}")
    return result


def check_targets(result: dict, sizes: list[int]) -> list[dict]:
    """The issue's targets: within 1.1x of the fused form everywhere; 3x time, 2x memory vs PML SupCon."""
    checks = []
    for block in result["groups"]:
        if block["n"] not in sizes or block["group"].endswith("_tiled"):
            continue
        by = {e["impl"]: e for e in block["entries"]}
        clb = block["entries"][0]
        fused = next(e for name, e in by.items() if name.startswith("fused form"))
        for what, key in (("time", "time_ratio"), ("memory", "memory_ratio")):
            if key in clb and key in fused:
                ratio = clb[key] / fused[key]  # clbook's own ratio is 1
                checks.append({"group": block["group"], "n": block["n"], "target": f"{what} <= 1.1x fused form",
                               "value": round(ratio, 3), "ok": ratio <= 1.1})
        pml = by.get("pytorch-metric-learning SupConLoss")
        if pml is not None and block["n"] == max(TARGET_SIZES):
            for what, key, need in (("time", "time_ratio", 3.0), ("memory", "memory_ratio", 2.0)):
                if key in pml and key in clb:
                    ratio = pml[key] / clb[key]
                    checks.append({"group": block["group"], "n": block["n"],
                                   "target": f"PML SupConLoss {what} >= {need:g}x clbook", "value": round(ratio, 2),
                                   "ok": ratio >= need})
    return checks


def tiled_summary(result: dict) -> dict:
    """Tiled against untiled at every size; the issue's targets; the largest N that fits in 8 GB.

    Tiled memory is O(M D + M B) with B M held near ``_TILE_LOGITS``, so its peak grows linearly
    with the rows M: a straight line through the two largest measured sizes gives bytes per row,
    and (FIT_IN_GB - intercept) / slope the rows that fit. That is an estimate from the measured
    per-row memory, not a run: at that size one call would take days on 2 cores (time grows with M^2).
    """
    rows, targets, fits = [], [], {}
    for block in result["groups"]:
        if not block["group"].endswith("_tiled"):
            continue
        tiled, untiled = block["entries"]
        row = {"group": block["group"], "n": block["n"], "rows": block["rows"],
               "block_size": tiled_block(block["rows"])}
        for key, e in (("tiled", tiled), ("untiled", untiled)):
            if "median_s" in e:
                row[f"{key}_ms"] = e["median_s"] * 1e3
                row[f"{key}_ns_per_logit"] = e["median_s"] * 1e9 / block["rows"] ** 2
            elif "memory_run_s" in e:  # not timed: the one call of the memory run, marked as such
                row[f"{key}_one_call_ms"] = e["memory_run_s"] * 1e3
                row[f"{key}_ns_per_logit"] = e["memory_run_s"] * 1e9 / block["rows"] ** 2
            if "peak_mb" in e:
                row[f"{key}_mb"] = e["peak_mb"]
            if "skipped" in e:
                row[f"{key}_skipped"] = e["skipped"]
        if "time_ratio" in untiled:
            row["time_ratio"] = 1 / untiled["time_ratio"]  # tiled over untiled, paired per round
        rows.append(row)
        if block["n"] == TILED_TIME_N and "time_ratio" in row:
            targets.append({"group": block["group"], "n": block["n"], "target": "tiled time <= 1.2x untiled",
                            "value": round(row["time_ratio"], 3), "ok": row["time_ratio"] <= 1.2})
        if block["n"] == TILED_MEMORY_N and "tiled_mb" in row:
            targets.append({"group": block["group"], "n": block["n"],
                            "target": f"tiled peak <= {TILED_MEMORY_TARGET_MB} MB", "value": row["tiled_mb"],
                            "ok": row["tiled_mb"] <= TILED_MEMORY_TARGET_MB})
    for group in {r["group"] for r in rows}:
        measured = sorted((r["rows"], r["tiled_mb"]) for r in rows if r["group"] == group and "tiled_mb" in r)
        if len(measured) < 2:
            continue
        (m0, mb0), (m1, mb1) = measured[-2:]
        slope = max((mb1 - mb0) / (m1 - m0), 1e-9)  # MB per row
        intercept = mb1 - slope * m1
        # Past M = _TILE_LOGITS / 32 rows the blocks stop shrinking (32 rows at least), and each of
        # up to three [32, M] float32 buffers adds 128 bytes per row: counted, to stay on the safe side.
        slope += 3 * 32 * 4 / MB
        max_rows = int((FIT_IN_GB * 1024 - intercept) / slope)
        fits[group] = {"bytes_per_row": round(slope * MB), "from_rows": [m0, m1], "max_rows": max_rows,
                       "max_n": max_rows // 2, "estimated": True}
    return {"rows": rows, "targets": targets, "fits_in_8gb": fits}


# ----------------------------------------------------------------------------- output


def print_tiled(summary: dict) -> None:
    if not summary["rows"]:
        return
    print("\ntiled against untiled (time: median; x untiled: median of same-round ratios; ns per logit = time / M^2):")
    print(f"  {'loss':16s} {'N':>6s} {'rows':>6s} {'B':>5s} {'tiled':>11s} {'untiled':>11s} {'x untiled':>9s} "
          f"{'ns/logit':>17s} {'peak MB':>19s}")
    for r in summary["rows"]:
        def ms(key):
            if key in r:
                return f"{r[key]:9.0f} ms"
            one = key.replace("_ms", "_one_call_ms")
            return f"{r[one]:8.0f} ms*" if one in r else "          -"

        ratio = f"{r['time_ratio']:.2f}" if "time_ratio" in r else "-"
        ns = f"{r.get('tiled_ns_per_logit', float('nan')):.2f} / {r.get('untiled_ns_per_logit', float('nan')):.2f}"
        mb = f"{r.get('tiled_mb', float('nan')):.0f} / " + (f"{r['untiled_mb']:.0f}" if "untiled_mb" in r else "skipped")
        print(f"  {r['group']:16s} {r['n']:6d} {r['rows']:6d} {r['block_size']:5d} {ms('tiled_ms')} "
              f"{ms('untiled_ms')} {ratio:>9s} {ns:>17s} {mb:>19s}")
    if any("tiled_one_call_ms" in r for r in summary["rows"]):
        print("  * not timed: one cold call in the memory run (one sample, includes first-call costs)")
    for group, fit in summary["fits_in_8gb"].items():
        print(f"  {group}: {fit['bytes_per_row'] / 1024:.1f} kB per row (line through {fit['from_rows'][0]} and "
              f"{fit['from_rows'][1]} rows) -> about {fit['max_rows']:,} rows, N = {fit['max_n']:,} pairs, fit in "
              f"{FIT_IN_GB} GB (estimated from the measured per-row memory, not run)")


def tiled_markdown(summary: dict) -> str:
    lines = [
        "| loss | N | rows | block | tiled (ms) | untiled (ms) | tiled x untiled | tiled peak (MB) | untiled peak (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        def cell(key, fmt):
            return format(r[key], fmt) if key in r else "n/a"

        untiled_mb = cell("untiled_mb", ".0f") if "untiled_skipped" not in r else "not run (estimate > --max-gb)"
        tiled_ms = cell("tiled_ms", ".0f") if "tiled_ms" in r else cell("tiled_one_call_ms", ".0f") + " (one call)"
        lines.append(f"| {r['group']} | {r['n']} | {r['rows']} | {r['block_size']} | {tiled_ms} | "
                     f"{cell('untiled_ms', '.0f')} | {cell('time_ratio', '.2f')} | {cell('tiled_mb', '.0f')} | "
                     f"{untiled_mb} |")
    for group, fit in summary["fits_in_8gb"].items():
        lines.append(f"\n{group}: largest N in {FIT_IN_GB} GB about {fit['max_n']:,} pairs ({fit['max_rows']:,} rows), "
                     f"estimated from {fit['bytes_per_row'] / 1024:.1f} kB per row measured at "
                     f"{fit['from_rows'][0]} and {fit['from_rows'][1]} rows.")
    return "\n".join(lines)


def _fmt_time(e: dict) -> str:
    return f"{e['median_s'] * 1e3:9.1f} ms" if "median_s" in e else "        -   "


def print_block(title: str, n: int, m: int, entries: list[dict]) -> None:
    print(f"{title}, N = {n} ({m} x {m} similarities)")
    print(f"  {'implementation':36s} {'median':>12s} {'x clbook':>9s} {'peak MB':>9s} {'x clbook':>9s}  |loss diff|")
    for e in entries:
        if "skipped" in e:
            print(f"  {e['impl']:36s} skipped: {e['skipped']}")
            continue
        tr = f"{e['time_ratio']:.2f}" if "time_ratio" in e else "-"
        mr = f"{e['memory_ratio']:.2f}" if "memory_ratio" in e else "-"
        diff = f"{e['abs_diff_to_clbook']:.1e}" if "abs_diff_to_clbook" in e else "(other loss)"
        print(f"  {e['impl']:36s} {_fmt_time(e)} {tr:>9s} {e['peak_mb']:9.1f} {mr:>9s}  {diff}")
    print()


def print_targets(checks: list[dict]) -> None:
    if not checks:
        print(f"targets: stated for N = {', '.join(map(str, TARGET_SIZES))}; none of those sizes ran")
        return
    print("targets:")
    for c in checks:
        print(f"  [{'ok' if c['ok'] else 'MISSED'}] {c['group']:18s} N = {c['n']:5d}  {c['target']:34s} {c['value']}")


def markdown(result: dict) -> str:
    mach = result["machine"]
    s = result["settings"]
    lines = [
        f"Forward plus backward, D = {s['D']}, float32, median of {s['repeats']} interleaved repeats; "
        f"{mach['cpu']}, {mach['cores']} cores, torch {mach['torch']} ({s['torch_threads']} threads). "
        "Ratios are to clbook in the same run; a time ratio is the median of same-round ratios.",
        "",
        "| loss | N | rows | implementation | time (ms) | x clbook | peak memory (MB) | x clbook |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for block in result["groups"]:
        for e in block["entries"]:
            if "skipped" in e:
                row = [block["group"], block["n"], block["rows"], e["impl"], "skipped", "", "", ""]
            elif "median_s" not in e:  # measured for memory only
                row = [block["group"], block["n"], block["rows"], e["impl"], "not timed", "", f"{e['peak_mb']:.0f}", ""]
            else:
                row = [block["group"], block["n"], block["rows"], e["impl"], f"{e['median_s'] * 1e3:.1f}",
                       f"{e.get('time_ratio', float('nan')):.2f}", f"{e['peak_mb']:.0f}",
                       f"{e.get('memory_ratio', float('nan')):.2f}"]
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a few seconds; for CI)")
    parser.add_argument("--sizes", type=int, nargs="+", help="sizes N (default 256 1024 4096; quick: 64 128)")
    parser.add_argument("--repeats", type=int, help="timed repeats per implementation (default 7; quick: 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs per implementation first (at least 1: the last one sets the calls per sample)")
    parser.add_argument("--max-gb", type=float, default=3.5, help="skip cases whose estimated peak exceeds this")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice, one per core); "
                        "on a machine busy with other work, 1 gives far steadier ratios")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/losses[_quick].json)")
    parser.add_argument("--tiled-sizes", type=int, nargs="*",
                        help="sizes N (pairs) for tiled against untiled (default 1024 4096 16384; quick: 64 128)")
    parser.add_argument("--slow-repeats", type=int, default=3,
                        help=f"repeats for cases whose call takes over {SLOW_CALL_S:g} s (default 3)")
    parser.add_argument("--time-max-n", type=int,
                        help="tiled groups: above this N measure peak memory only (and one call's time)")
    parser.add_argument("--groups", nargs="+", choices=[g["key"] for g in groups()],
                        help="run only these groups (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([64, 128] if args.quick else [256, 1024, 4096])
    if any(n < 4 or n % 2 for n in sizes):
        parser.error("sizes must be even and at least 4 (SupCon uses N/2 samples with 2 views)")
    repeats = args.repeats or (3 if args.quick else 7)
    if repeats < 1 or args.warmup < 1:
        parser.error("--repeats and --warmup must be at least 1")
    out = args.out or REPO / "benchmarks" / "results" / ("losses_quick.json" if args.quick else "losses.json")
    tiled_sizes = args.tiled_sizes if args.tiled_sizes is not None else ([64, 128] if args.quick else list(TILED_SIZES))
    if any(n < 2 for n in tiled_sizes):
        parser.error("--tiled-sizes must be at least 2")
    if args.slow_repeats < 1:
        parser.error("--slow-repeats must be at least 1")
    return run(sizes, repeats, args.warmup, args.max_gb, out, tiled_sizes, args.groups, args.slow_repeats,
               args.time_max_n)


if __name__ == "__main__":
    main()
