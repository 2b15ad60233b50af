"""Mutation check: do the tests catch realistic bugs? Not run in CI (a few minutes).

Each mutation is a small, plausible bug: a piece of text in one file of the repository replaced by
another (or, for a notebook, a small edit of its cells). For each one, in turn, the script copies
the repository to a temporary folder once, applies the mutation there, runs only the listed test
files on the copy (``pytest -x -q -p no:cacheprovider``, ``PYTHONPATH`` pointing at the copy),
and restores the file. A mutation is *caught* when pytest fails, *missed* when it passes. The
score is the fraction caught.

A mutation whose text no longer occurs exactly once in its file is *stale*: the code moved on and
the mutation must be updated (the script says which and exits non-zero). So is one whose mutated
Python file does not compile, or whose edit changes nothing.

Usage::

    python benchmarks/mutation_check.py                 # every mutation
    python benchmarks/mutation_check.py --list          # names, files and test selections
    python benchmarks/mutation_check.py --only NAME     # one mutation (repeatable)
    python benchmarks/mutation_check.py --tests-from DIR  # run DIR's tests instead of tests/

``--tests-from`` replaces the copy's ``tests/`` by the folder given, e.g. an older version of the
tests (``git archive main tests | tar -x -C /tmp/old``, then ``--tests-from /tmp/old/tests``), to
measure what they catch. Listed test files absent from that folder are left out; a mutation with
none left is reported as missed.

Exit status: 0 when every mutation is caught, 1 when some are missed, 2 when some are stale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """One injected bug.

    Attributes
    ----------
    name : str
        Short and unique; ``--only`` selects by it.
    file : str
        Path relative to the repository root.
    old, new : str
        ``old`` must occur exactly once in ``file``; it is replaced by ``new``.
    tests : tuple of str
        Test files (relative to the root) to run, each optionally with ``::name`` selections.
    k : str, optional
        A ``pytest -k`` expression narrowing the run.
    edit : callable, optional
        Instead of ``old``/``new``: ``edit(text) -> text`` (for notebooks, whose cells are JSON).
    """

    name: str
    file: str
    old: str = ""
    new: str = ""
    tests: tuple[str, ...] = ()
    k: str | None = None
    edit: Callable[[str], str] | None = None


def drop_exercise_cells(text: str) -> str:
    """A notebook without its exercise cells (code cells holding a ``# BEGIN SOLUTION`` marker)."""
    nb = json.loads(text)

    def is_exercise(cell):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        return cell["cell_type"] == "code" and any(line.strip() == "# BEGIN SOLUTION" for line in source.splitlines())

    nb["cells"] = [c for c in nb["cells"] if not is_exercise(c)]
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


M = Mutation
MUTATIONS: list[Mutation] = [
    # ----------------------------------------------------------------- losses: temperature, core
    M("loss temperature dropped (nt_xent, supcon)", "clbook/losses/_checks.py",
      "return z * (norm * temperature**0.5).reciprocal()", "return z * norm.reciprocal()",
      ("tests/test_losses.py",)),
    M("info_nce temperature square-rooted", "clbook/losses/info_nce.py",
      "q = prepared(query) / temperature  # [N, D]", "q = prepared(query) / temperature**0.5  # [N, D]",
      ("tests/test_info_nce.py",)),
    M("swav_loss multiplies by the temperature", "clbook/losses/swav.py",
      "log_p = F.log_softmax(scores / temperature, dim=1)", "log_p = F.log_softmax(scores * temperature, dim=1)",
      ("tests/test_swav.py",)),
    M("nt_xent positive column off by one", "clbook/losses/nt_xent.py",
      "targets = torch.arange(2 * n, device=z1.device).roll(n)",
      "targets = torch.arange(2 * n, device=z1.device).roll(n + 1)",
      ("tests/test_losses.py",)),
    M("triplet loss without its hinge", "clbook/losses/margin.py",
      "return _result(F.relu(margin + d_ap - d_an).mean(), dtype, \"triplet_margin_loss\")",
      "return _result((margin + d_ap - d_an).mean(), dtype, \"triplet_margin_loss\")",
      ("tests/test_losses.py",)),
    M("reliability guard: non-finite loss returned", "clbook/losses/_checks.py",
      "    if not math.isfinite(value):\n        raise ValueError(f\"{name} overflowed",
      "    if False:\n        raise ValueError(f\"{name} overflowed",
      ("tests/test_reliability.py",), k="overflow or finite or nan"),
    # ----------------------------------------------------------------- tiled and distributed backward
    M("tiled self-LSE backward drops the later rows' share", "clbook/losses/_tiled.py",
      "g[:, e - s :] += logits[:, e - s :].sub_(shift[None, e:]).exp_()",
      "g[:, e - s :] += 0.0",
      ("tests/test_tiled.py",)),
    M("tiled cross-LSE backward gives the columns no gradient", "clbook/losses/_tiled.py",
      "grad_cols.addmm_(prob.T, rows[s:e])", "grad_cols.addmm_(prob.T, rows[s:e], alpha=0.0)",
      ("tests/test_tiled.py",)),
    M("gather backward without all-reduce (pytorch#120386)", "clbook/distributed.py",
      "        grad = grad.contiguous().clone()\n        torch.distributed.all_reduce(grad)\n",
      "        grad = grad.contiguous().clone()\n",
      ("tests/test_distributed.py",)),
    M("global_mean not scaled by the world size", "clbook/distributed.py",
      "scaled = share * world[1]", "scaled = share",
      ("tests/test_distributed.py",)),
    # ----------------------------------------------------------------- Sinkhorn
    M("sinkhorn one iteration short", "clbook/sinkhorn.py",
      "for _ in range(int(n_iter)):", "for _ in range(max(int(n_iter) - 1, 0)):",
      ("tests/test_sinkhorn.py",)),
    M("sinkhorn rows before columns", "clbook/sinkhorn.py",
      "        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + log_mass\n"
      "        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)\n",
      "        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)\n"
      "        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + log_mass\n",
      ("tests/test_sinkhorn.py",)),
    M("SwAV method ignores its Sinkhorn iterations", "clbook/methods/swav.py",
      "return sinkhorn_knopp(scores.detach(), self.epsilon, self.sinkhorn_iterations)",
      "return sinkhorn_knopp(scores.detach(), self.epsilon, 1)",
      ("tests/test_swav.py",)),
    # ----------------------------------------------------------------- metrics
    M("uniformity with unsquared distances", "clbook/metrics.py",
      "sq = torch.pdist(_unit_rows(z)).pow(2)", "sq = torch.pdist(_unit_rows(z)).pow(1)",
      ("tests/test_metrics.py",)),
    M("effective rank of squared singular values", "clbook/metrics.py",
      "p = s / s.sum()", "p = s**2 / (s**2).sum()",
      ("tests/test_metrics.py",)),
    M("feature_std with the sample std", "clbook/metrics.py",
      "std(dim=0, correction=0)", "std(dim=0, correction=1)",
      ("tests/test_metrics.py",)),
    M("alignment on unnormalized features", "clbook/metrics.py",
      "dist = (_unit_rows(z1) - _unit_rows(z2)).norm(dim=1)", "dist = (z1.double() - z2.double()).norm(dim=1)",
      ("tests/test_metrics.py",)),
    # ----------------------------------------------------------------- stop-gradients
    M("negative cosine without stop-gradient", "clbook/losses/no_negatives.py",
      "        z = z.detach()\n    return _result(-F.cosine_similarity",
      "        pass\n    return _result(-F.cosine_similarity",
      ("tests/test_no_negatives.py",)),
    M("SimSiam method ignores its stop-gradient", "clbook/methods/simsiam.py",
      "negative_cosine_loss(p1, z2, self.stop_gradient)", "negative_cosine_loss(p1, z2, False)",
      ("tests/test_method_state.py", "tests/test_no_negatives.py"), k="simsiam"),
    M("info_nce lets gradient into the queue", "clbook/losses/info_nce.py",
      "cols = prepared(negatives.detach())", "cols = prepared(negatives)",
      ("tests/test_info_nce.py",)),
    M("swav_loss lets gradient into the codes", "clbook/losses/swav.py",
      "return -(code.detach().to(log_p.dtype) * log_p)", "return -(code.to(log_p.dtype) * log_p)",
      ("tests/test_swav.py",)),
    # ----------------------------------------------------------------- EMA and momentum networks
    M("EMA with m and 1 - m swapped", "clbook/memory.py",
      "p.mul_(m).add_(o_params[name].detach(), alpha=1.0 - m)",
      "p.mul_(1.0 - m).add_(o_params[name].detach(), alpha=m)",
      ("tests/test_memory.py",)),
    M("EMA leaves the buffers behind", "clbook/memory.py",
      "        b.copy_(o_bufs[name])", "        pass",
      ("tests/test_memory.py", "tests/test_method_state.py"), k="momentum or ema"),
    M("queue drops the keys that wrap around", "clbook/memory.py",
      "        self.queue[: b - first] = keys[first:]\n", "",
      ("tests/test_memory.py",)),
    M("MoCo key head never momentum-updated", "clbook/methods/moco.py",
      "        momentum_update(self.key_head, head, self.momentum)\n", "",
      ("tests/test_method_state.py", "tests/test_moco.py"), k="moco"),
    M("BYOL target head never updated", "clbook/methods/byol.py",
      "        momentum_update(self.target_head, head, self.momentum)\n", "",
      ("tests/test_method_state.py", "tests/test_no_negatives.py"), k="byol"),
    M("BYOL momentum schedule linear", "clbook/methods/byol.py",
      "(math.cos(math.pi * frac) + 1) / 2", "(1 - frac)",
      ("tests/test_method_state.py", "tests/test_no_negatives.py"), k="byol"),
    # ----------------------------------------------------------------- evaluation: kNN, probe, selection
    M("kNN by dot product instead of cosine", "clbook/evaluation.py",
      "ref = F.normalize(train_feats.to(dev).float(), dim=1)", "ref = train_feats.to(dev).float()",
      ("tests/test_training.py",), k="knn"),
    M("kNN ties go to the largest label", "clbook/evaluation.py",
      "preds.append(votes.argmax(dim=1))", "preds.append(n_classes - 1 - votes.flip(1).argmax(dim=1))",
      ("tests/test_evaluation_protocol.py", "tests/test_training.py"), k="knn"),
    M("linear probe skips standardization", "clbook/evaluation.py",
      "    mean = train_feats.mean(dim=0)\n    std = train_feats.std(dim=0)\n",
      "    mean = torch.zeros(train_feats.shape[1])\n    std = torch.ones(train_feats.shape[1])\n",
      ("tests/test_evaluation_protocol.py", "tests/test_training.py"), k="probe"),
    M("evaluate_frozen chooses the weight decay on the test features", "clbook/evaluation.py",
      ".accuracy(f_val, y_val)", ".accuracy(test_feats, test_y)",
      ("tests/test_evaluation_protocol.py", "tests/test_training.py"), k="evaluate_frozen"),
    M("evaluate_frozen chooses k on the test features", "clbook/evaluation.py",
      "knn_accuracy(f_fit, y_fit, f_val, y_val, k, device)",
      "knn_accuracy(f_fit, y_fit, test_feats, test_y, k, device)",
      ("tests/test_evaluation_protocol.py", "tests/test_training.py"), k="evaluate_frozen"),
    M("pretrain keeps the last epoch's weights", "clbook/training.py",
      "        encoder.load_state_dict(best_state)\n", "        pass\n",
      ("tests/test_method_state.py", "tests/test_training.py"), k="pretrain"),
    # ----------------------------------------------------------------- learnable temperature
    M("learnable temperature detached in info_nce", "clbook/losses/info_nce.py",
      "q = prepared(query) / temperature  # [N, D]", "q = prepared(query) / float(temperature)  # [N, D]",
      ("tests/test_temperature_gradient.py", "tests/test_info_nce.py")),
    M("learnable temperature detached in swav_loss", "clbook/losses/swav.py",
      "log_p = F.log_softmax(scores / temperature, dim=1)", "log_p = F.log_softmax(scores / float(temperature), dim=1)",
      ("tests/test_temperature_gradient.py", "tests/test_swav.py")),
    # ----------------------------------------------------------------- data leakage
    M("Iris standardized with test statistics", "clbook/data.py",
      "mean, std = X_tr.mean(axis=0), X_tr.std(axis=0)",
      "mean, std = np.vstack([X_tr, X_te]).mean(axis=0), np.vstack([X_tr, X_te]).std(axis=0)",
      ("tests/test_data.py",), k="iris"),
    M("train/val split fits on the validation rows too", "clbook/data.py",
      "return X[idx_fit], y[idx_fit], X[idx_val], y[idx_val]", "return X, y, X[idx_val], y[idx_val]",
      ("tests/test_data.py",)),
    # ----------------------------------------------------------------- exercise checkers
    M("checker compares the answer with itself", "clbook/exercises/core.py",
      "probe(self.reference, a, k)", "probe(answer, a, k)",
      ("tests/test_exercises.py",)),
    M("checker tolerances loosened 100x", "clbook/exercises/core.py",
      "np.allclose(g, e, rtol=rtol, atol=atol, equal_nan=True)",
      "np.allclose(g, e, rtol=100 * rtol, atol=100 * atol, equal_nan=True)",
      ("tests/test_checker_strictness.py", "tests/test_exercises.py")),
    M("02.3's tolerance loosened 100x", "clbook/exercises/nb02_nt_xent.py",
      "rtol=1e-6, atol=1e-9,", "rtol=1e-4, atol=1e-7,",
      ("tests/test_checker_strictness.py", "tests/test_exercises.py")),
    M("notebook 08's exercise cells deleted", "notebooks/08_byol_simsiam_collapse.ipynb",
      tests=("tests/test_exercises.py", "tests/test_student.py"), edit=drop_exercise_cells),
    # ----------------------------------------------------------------- the student edition
    M("student edition keeps the solution lines", "clbook/student.py",
      "        elif not inside:\n            out.append(line)", "        else:\n            out.append(line)",
      ("tests/test_student.py",)),
    M("student edition keeps the saved verdicts", "clbook/student.py",
      "        cell.outputs = []\n", "",
      ("tests/test_student.py",)),
]


# ----------------------------------------------------------------------------- running


def copy_repository(dest: Path, tests_from: Path | None) -> None:
    """The working tree without caches, environments and build outputs; ``tests_from`` as its tests/."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".venv*", "*.egg-info", "_build", ".ipynb_checkpoints",
                                    ".pytest_cache")
    shutil.copytree(ROOT, dest, ignore=ignore)
    if tests_from is not None:
        shutil.rmtree(dest / "tests")
        shutil.copytree(tests_from, dest / "tests", ignore=ignore)


def mutated(mutation: Mutation, text: str) -> str | None:
    """The mutated text, or None when the mutation is stale."""
    if mutation.edit is not None:
        new = mutation.edit(text)
        return None if new == text else new
    if text.count(mutation.old) != 1:
        return None
    return text.replace(mutation.old, mutation.new)


def run_one(mutation: Mutation, copy: Path, timeout: float) -> tuple[str, float, str]:
    """Apply, test, restore: ``(status, seconds, detail)``; status in caught/missed/stale/broken."""
    path = copy / mutation.file
    original = path.read_text(encoding="utf-8")
    new = mutated(mutation, original)
    if new is None:
        what = "the edit changes nothing" if mutation.edit else f"old text found {original.count(mutation.old)} times"
        return "stale", 0.0, what
    tests = [t for t in mutation.tests if (copy / t.split("::")[0]).exists()]
    if not tests:
        return "missed", 0.0, "none of its test files exist"
    path.write_text(new, encoding="utf-8")
    try:
        if path.suffix == ".py":
            try:
                compile(new, str(path), "exec")
            except SyntaxError as err:
                return "broken", 0.0, f"does not compile: {err.msg} (line {err.lineno})"
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        if mutation.k:
            cmd += ["-k", mutation.k]
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "caught", time.perf_counter() - start, f"timed out after {timeout:.0f} s"
        seconds = time.perf_counter() - start
        lines = (done.stdout + done.stderr).strip().splitlines()
        summary = lines[-1] if lines else ""
        if done.returncode in (0, 5):  # 5: no test selected
            return "missed", seconds, summary
        if done.returncode == 1:
            failed = next((line for line in lines if line.startswith(("FAILED", "ERROR"))), summary)
            return "caught", seconds, failed
        return "caught", seconds, f"pytest exit {done.returncode}: {summary}"
    finally:
        path.write_text(original, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    parser.add_argument("--tests-from", type=Path, metavar="DIR", help="use DIR as the copy's tests/ folder")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation (default 600)")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTATIONS]
    if len(set(names)) != len(names):
        raise SystemExit("mutation names must be unique")
    if args.list:
        stale = 0
        for m in MUTATIONS:
            sel = " ".join(m.tests) + (f" -k {m.k!r}" if m.k else "")
            fresh = mutated(m, (ROOT / m.file).read_text(encoding="utf-8")) is not None
            stale += not fresh
            print(f"{m.name}{'' if fresh else '  [STALE]'}\n    {m.file}  ->  {sel}")
        print(f"{len(MUTATIONS)} mutations, {stale} stale")
        return 2 if stale else 0
    chosen = MUTATIONS
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"unknown mutation(s) {unknown}; see --list")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    if args.tests_from is not None and not args.tests_from.is_dir():
        raise SystemExit(f"--tests-from {args.tests_from}: not a folder")

    counts = {"caught": 0, "missed": 0, "stale": 0, "broken": 0}
    missed = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clbook-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        copy_repository(copy, args.tests_from)
        width = max(len(m.name) for m in chosen)
        for m in chosen:
            status, seconds, detail = run_one(m, copy, args.timeout)
            counts[status] += 1
            if status != "caught":
                missed.append((m.name, status))
            print(f"{status.upper():7} {m.name:{width}}  {seconds:5.1f} s  {detail[:110]}", flush=True)
    scored = counts["caught"] + counts["missed"]
    score = counts["caught"] / scored if scored else 0.0
    print(f"\n{counts['caught']}/{scored} caught ({100 * score:.1f}%), {counts['stale']} stale, "
          f"{counts['broken']} broken, in {time.perf_counter() - start:.0f} s"
          + (f" (tests from {args.tests_from})" if args.tests_from else ""))
    for name, status in missed:
        print(f"  {status}: {name}")
    if counts["stale"] or counts["broken"]:
        return 2
    return 0 if counts["missed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
