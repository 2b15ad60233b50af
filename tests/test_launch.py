"""``python -m clbook pretrain``: two CPU processes under torchrun for a few steps, then a resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clbook.launch import load_image_folder

REPO = Path(__file__).resolve().parent.parent


def torchrun() -> str:
    found = Path(sys.executable).with_name("torchrun")
    return str(found) if found.exists() else shutil.which("torchrun")


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_pretrain_two_processes_then_resume(tmp_path):
    if torchrun() is None:
        pytest.skip("torchrun not found")
    ck, first, second = tmp_path / "ck.pt", tmp_path / "first.json", tmp_path / "second.json"
    common = ["--method", "supcon", "--offline", "--limit", "96", "--batch-size", "16", "--checkpoint", str(ck)]
    done = run([torchrun(), "--standalone", "--nproc_per_node=2", "-m", "clbook", "pretrain", *common,
                "--epochs", "1", "--json", str(first)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(first.read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 32
    assert summary["steps_per_epoch"] == 3  # 96 images / 2 processes / 16 per batch
    assert len(summary["losses"]) == 1 and np.isfinite(summary["losses"][0])
    assert 0.0 <= summary["linear_acc"] <= 1.0
    assert done.stdout.count("epoch 1/1") == 1  # progress from rank 0 only
    state = torch.load(ck, weights_only=False)
    assert state["epoch"] == 1 and state["world_size"] == 2 and len(state["generators"]) == 2

    done = run([sys.executable, "-m", "clbook", "pretrain", *common, "--epochs", "2", "--resume",
                "--json", str(second)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and "after epoch 1" in done.stdout
    summary = json.loads(second.read_text())
    assert len(summary["losses"]) == 2 and summary["losses"][0] == json.loads(first.read_text())["losses"][0]
    assert torch.load(ck, weights_only=False)["epoch"] == 2


def test_resume_without_checkpoint_is_an_error(tmp_path):
    done = run([sys.executable, "-m", "clbook", "pretrain", "--resume", "--checkpoint", str(tmp_path / "none.pt")],
               tmp_path)
    assert done.returncode != 0 and "--resume needs an existing --checkpoint" in done.stderr


def test_image_folder_becomes_28x28_grayscale(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    split = load_image_folder(tmp_path, test_size=0.2)
    assert split.X_train.shape[1:] == (1, 28, 28) and len(split.y_train) + len(split.y_test) == 10
    assert split.classes == ["cats", "dogs"]
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "missing")


def test_pretrain_moco_two_processes_share_one_queue(tmp_path):
    """MoCo under torchrun: every rank enqueues the global batch's keys; the run resumes with its queue."""
    if torchrun() is None:
        pytest.skip("torchrun not found")
    ck, out = tmp_path / "ck.pt", tmp_path / "moco.json"
    common = ["--method", "moco", "--offline", "--limit", "96", "--batch-size", "16", "--queue-size", "128",
              "--checkpoint", str(ck)]
    done = run([torchrun(), "--standalone", "--nproc_per_node=2", "-m", "clbook", "pretrain", *common,
                "--epochs", "1", "--json", str(out)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["method"] == "moco" and np.isfinite(summary["losses"][0])
    queue = torch.load(ck, weights_only=False)["method_state"]
    assert int(queue["queue.count"]) == 3 * 32  # 3 steps of a global batch of 2 x 16 keys
    keys = queue["queue.queue"][:96]
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(96))  # normalized keys, no empty rows
    done = run([sys.executable, "-m", "clbook", "pretrain", *common, "--epochs", "2", "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(torch.load(ck, weights_only=False)["method_state"]["queue.count"]) == 128  # + 6 steps of 16: full


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--epochs", "-1"], "--epochs must be a positive integer"),
    (["--batch-size", "1"], "--batch-size must be an integer >= 2"),
    (["--limit", "-5"], "--limit must be a positive integer"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--temperature", "0"], "--temperature must be a finite number > 0"),
    (["--momentum", "1"], "--momentum must be a number in [0, 1)"),
    (["--method", "moco", "--queue-size", "100"], "--queue-size must be at least the global batch (256)"),
    (["--method", "simclr", "--queue-size", "100"], "simclr has no queue_size option"),
    (["--images", "no/such/folder"], "--images no/such/folder: no such folder"),
    (["--data", "no/such/folder"], "--data no/such/folder: no such folder"),
    (["--resume"], "--resume needs an existing --checkpoint"),
    (["--resume", "--checkpoint", "none.pt"], "--resume needs an existing --checkpoint"),
    (["--json", "no/such/folder/out.json"], "the folder no/such/folder does not exist"),
    (["--device", "no-such-device"], "device must be"),
    (["--option", "no_such=1"], "--option no_such=1: give NAME=VALUE"),
    (["--method", "moco", "--option", "queue_size=0"], "must be a positive integer, got 0"),
])
def test_a_bad_argument_is_one_error_line_before_any_work(args, message, tmp_path, monkeypatch, capsys):
    import clbook.launch
    from clbook.__main__ import main

    def must_not_run(*a, **kw):
        raise AssertionError("pretrain started with a bad argument")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(clbook.launch, "run_pretrain", must_not_run)
    assert main(["pretrain", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m clbook pretrain: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_resuming_a_finished_run_trains_nothing_and_says_so(tmp_path):
    common = [sys.executable, "-m", "clbook", "pretrain", "--method", "simclr", "--offline", "--limit", "64",
              "--batch-size", "32", "--checkpoint", str(tmp_path / "ck.pt")]
    assert run([*common, "--epochs", "1"], tmp_path).returncode == 0
    done = run([*common, "--epochs", "1", "--resume", "--json", str(tmp_path / "out.json")], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "already trained 1 epoch;" in done.stderr and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("method, options", [("simsiam", []), ("byol", []), ("swav", []),
                                             ("memory_bank", ["--option", "num_negatives=16"])])
def test_every_registered_method_runs_from_the_command_line(method, options, tmp_path):
    """One epoch of each method not covered above, on 96 digits: the same per-step code as pretrain()."""
    out = tmp_path / "out.json"
    done = run([sys.executable, "-m", "clbook", "pretrain", "--method", method, "--offline", "--limit", "96",
                "--batch-size", "32", "--epochs", "1", "--json", str(out), *options], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["method"] == method and summary["steps"] == 3 and summary["samples_seen"] == 96
    assert np.isfinite(summary["losses"][0]) and 0.0 <= summary["linear_acc"] <= 1.0
