"""One epoch of SimCLR on every device this machine has: how much an accelerator buys.

Run from the repository root::

    python benchmarks/bench_device.py                 # the course's recipe: 8,000 digits, batch 512
    python benchmarks/bench_device.py --limit 2048    # a shorter epoch
    python benchmarks/bench_device.py --quick         # 1,024 digits (what CI runs)

For each device present (the CPU always; CUDA and Apple's MPS when torch sees them) it trains the
course's CNN with SimCLR's MNIST recipe (:data:`clbook.methods.REGISTRY`) through
:func:`clbook.training.pretrain`, the loop every notebook uses, for ``--epochs`` epochs (one by
default) after one untimed warm-up epoch, and reports the seconds per epoch, the images per second
and the speed-up over the CPU. Then it times the frozen-feature evaluation (features of the
training digits, linear probe and kNN) the same way. The figures go to stdout as a Markdown table
and to JSON (``benchmarks/results/device.json``).

A device whose run fails is reported with its error instead of a time; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_losses import machine_info  # noqa: E402

from clbook.data import load_shipped_mnist  # noqa: E402
from clbook.encoders import ProjectionHead, make_encoder  # noqa: E402
from clbook.evaluation import evaluate_frozen, extract_features  # noqa: E402
from clbook.methods import REGISTRY  # noqa: E402
from clbook.training import pretrain  # noqa: E402


def devices() -> list[str]:
    """The devices torch sees here: always the CPU, then CUDA and MPS if present."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def time_device(device: str, X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
                epochs: int) -> dict:
    """Seconds per SimCLR epoch and for the frozen evaluation on ``device`` (after a warm-up)."""
    cfg = REGISTRY["simclr"].recipes[0].config()
    cfg.pop("epochs")
    batch = min(cfg["batch_size"], len(X))

    def run(n_epochs: int) -> float:
        encoder, head = make_encoder("cnn", seed=0), ProjectionHead(128, 128, 64)
        _sync(device)
        start = time.perf_counter()
        pretrain(encoder, head, X, y, method="simclr", epochs=n_epochs, progress=False, device=device,
                 **{**cfg, "batch_size": batch})
        _sync(device)
        run.encoder = encoder
        return time.perf_counter() - start

    run(1)  # warm-up: kernels, allocator, cuDNN's choice of algorithms
    seconds = run(epochs) / epochs
    start = time.perf_counter()
    train_f = extract_features(run.encoder, X, device=device)
    test_f = extract_features(run.encoder, X_test, device=device)
    evaluate_frozen(train_f, y, test_f, y_test, device=device)
    _sync(device)
    steps = len(X) // batch
    return {"device": device, "seconds_per_epoch": seconds, "steps_per_epoch": steps,
            "images_per_second": steps * batch / seconds, "evaluation_seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="training digits (default: all 8,000 shipped)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per device")
    parser.add_argument("--quick", action="store_true", help="1,024 digits, one epoch: a smoke test")
    parser.add_argument("--json", help="where to write the figures (default: benchmarks/results/device.json, "
                                       "or device_quick.json with --quick)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.limit is not None and args.limit < 2:
        parser.error(f"--limit must be at least 2, got {args.limit}")
    limit = 1024 if args.quick else args.limit
    split = load_shipped_mnist()
    X, y = split.X_train[:limit], split.y_train[:limit]
    rows, failed = [], False
    for device in devices():
        try:
            rows.append(time_device(device, X, y, split.X_test, split.y_test, args.epochs))
        except Exception as err:  # report the device and go on with the others
            rows.append({"device": device, "error": " ".join(str(err).split())[:200]})
            failed = True
    cpu = next((r["seconds_per_epoch"] for r in rows if r["device"] == "cpu" and "error" not in r), None)
    batch = min(REGISTRY["simclr"].recipes[0].batch_size, len(X))
    print(f"SimCLR, the course's CNN, {len(X)} digits, batch {batch}; "
          f"torch {torch.__version__}, {machine_info()['cpu']}, {torch.get_num_threads()} threads\n")
    print("| device | s / epoch | steps | images / s | x CPU | evaluation s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['device']} | failed: {r['error']} | | | | |")
            continue
        speedup = cpu / r["seconds_per_epoch"] if cpu else float("nan")
        print(f"| {r['device']} | {r['seconds_per_epoch']:.2f} | {r['steps_per_epoch']} | "
              f"{r['images_per_second']:.0f} | {speedup:.1f} | {r['evaluation_seconds']:.2f} |")
    out = Path(args.json or REPO / "benchmarks" / "results" / f"device{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "digits": len(X), "epochs": args.epochs, "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
