"""The headless entry point: `python -m clbook reproduce --quick --json FILE`, on a small subset."""

import json
import math

import numpy as np
import pytest

import clbook.data
import clbook.experiments as experiments
from clbook.__main__ import main
from clbook.data import Split, load_shipped_mnist
from clbook.experiments import Result, format_table

KEYS = {"dataset", "encoder", "method", "linear_acc", "linear_std", "knn_acc", "knn_std", "n_seeds", "alignment",
        "uniformity", "std", "effective_rank", "steps", "samples", "seconds", "data", "notes_head_acc"}


def few_keys(sizes) -> set[str]:
    return {f"{m}_{n}{s}" for m in ("linear", "knn") for n in sizes for s in ("", "_std")}


@pytest.fixture
def small_mnist(monkeypatch):
    """1,200 training and 300 held-out digits, so the whole table runs in seconds."""
    full = load_shipped_mnist()
    small = Split(full.X_train[:1200], full.y_train[:1200], full.X_test[:300], full.y_test[:300],
                  full.source, full.classes)
    monkeypatch.setattr(clbook.data, "load_mnist", lambda root=None, **kw: small)
    monkeypatch.setattr(experiments, "MNIST_VAL_SIZE", 300)
    return small


def test_reproduce_quick_writes_json_rows(small_mnist, tmp_path, capsys):
    out = tmp_path / "results.json"
    plot = tmp_path / "few.png"
    assert main(["reproduce", "--quick", "--json", str(out), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the few-label figure was drawn
    rows = json.loads(out.read_text())
    got = [(r["dataset"], r["encoder"], r["method"]) for r in rows]
    # The rows follow the registry (clbook.methods.REGISTRY): per encoder its methods, then its twin.
    assert got == [("iris", "mlp", "supcon"), ("iris", "mlp", "random"),
                   *(("mnist", kind, method) for kind, method in experiments.MNIST_ROWS),
                   ("mnist", "notes-cnn", "notes-supcon"), ("mnist", "notes-cnn", "random")]
    assert set(got[2:-2]) == {
        ("mnist", "pixels", "raw"), ("mnist", "cnn", "supcon"), ("mnist", "cnn", "simclr"), ("mnist", "cnn", "random"),
        ("mnist", "fc", "supcon"), ("mnist", "fc", "random"), ("mnist", "cnn", "moco"),
        ("mnist", "cnn", "simsiam"), ("mnist", "cnn", "byol"), ("mnist", "cnn", "swav"),
    }
    assert got.index(("mnist", "cnn", "random")) > got.index(("mnist", "cnn", "swav"))  # twins after their methods
    for r in rows:
        # Sizes beyond the smallest class are skipped: Iris's training part and this small split
        # have fewer than 100 of some class.
        assert KEYS | few_keys((1, 10)) <= set(r) <= KEYS | few_keys((1, 10, 100))
        assert all(0.0 <= r[k] <= 1.0 for k in few_keys((1, 10)) if not k.endswith("_std"))
        # Pre-trained rows count their steps and samples; the random twins and pixels have none.
        trained = r["method"] not in ("random", "raw")
        assert (r["steps"] > 0 and r["samples"] >= r["steps"]) if trained else r["steps"] == r["samples"] == 0
        assert 0.0 <= r["linear_acc"] <= 1.0 and 0.0 <= r["knn_acc"] <= 1.0
        assert r["seconds"] > 0 and math.isfinite(r["seconds"])
        assert r["uniformity"] <= 0  # log of a mean of exp(-t d^2) <= 1
        # The notes' head scores the notes' rows only; the notes' protocol has no augmentation.
        assert (r["notes_head_acc"] is not None) == (r["encoder"] == "notes-cnn")
        if r["encoder"] == "notes-cnn":
            assert 0.0 <= r["notes_head_acc"] <= 1.0 and r["alignment"] is None
        elif r["dataset"] == "mnist":  # positive pairs need an augmentation: none for Iris
            assert 0 <= r["alignment"] <= 4
        else:
            assert r["alignment"] is None
    assert {r["data"] for r in rows if r["dataset"] == "mnist"} == {"mnist-t10k-shipped"}
    printed = capsys.readouterr().out
    assert "linear %" in printed and printed.count("mnist-t10k-shipped") == 12
    assert "the notes 98.89" in printed and "the notes 88.36" in printed
    assert "linear@10" in printed and "kNN@10" in printed
    assert "align" in printed and "unif" in printed


def test_result_row_and_table():
    r = Result("iris", "mlp", "supcon", 0.9, 0.8, 1.5, "iris-sklearn", 0.01, 0.02, 3, [0.9] * 3, [0.8] * 3)
    assert set(r.row()) == KEYS
    table = format_table([r])
    assert "90.0 +- 1.0" in table and "80.0 +- 2.0" in table
    r.alignment, r.uniformity = 0.4567, -3.21
    assert "0.46" in format_table([r]) and "-3.21" in format_table([r])


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="unknown method"):
        experiments.run_iris("no-such-method")
    for method in ("simclr", "simsiam", "byol"):  # MNIST methods: no Iris configuration
        with pytest.raises(ValueError, match="'supcon' and 'random' only"):
            experiments.run_iris(method)
    with pytest.raises(ValueError, match="no MNIST config"):
        experiments.train_mnist_encoder("mlp", "supcon", split=None)


def test_combine_seeds_means_and_spreads_against_numpy():
    runs = [Result("mnist", "cnn", "simclr", lin, knn, sec, "mnist-t10k-shipped", linear_all=[lin], knn_all=[knn],
                   alignment=al, uniformity=un)
            for lin, knn, sec, al, un in [(0.96, 0.94, 40.0, 0.5, -3.0), (0.97, 0.93, 42.0, 0.6, -3.3),
                                          (0.95, 0.95, 44.0, 0.4, -3.6)]]
    row = experiments.combine_seeds(runs)
    assert row.alignment == pytest.approx(0.5) and row.uniformity == pytest.approx(-3.3)
    assert row.n_seeds == 3 and row.seconds == pytest.approx(126.0)
    assert row.linear_acc == pytest.approx(0.96) and row.knn_acc == pytest.approx(0.94)
    assert row.linear_std == pytest.approx(float(np.std([0.96, 0.97, 0.95])))
    assert row.knn_all == [0.94, 0.93, 0.95]
    with pytest.raises(ValueError, match="different experiments"):
        experiments.combine_seeds(runs + [Result("mnist", "cnn", "random", 0.9, 0.9, 1.0, "mnist-t10k-shipped")])


def test_train_mnist_swav_keeps_head_and_prototypes_of_the_kept_epoch(small_mnist):
    """Same encoder as the reproduce row's, plus the head (with BatchNorm) and the prototypes."""
    import torch

    split = small_mnist
    encoder, history, head, method = experiments.train_mnist_swav("cnn", split, seed=0, progress=False, epochs=2,
                                                                 batch_size=128)
    same, _ = experiments.train_mnist_encoder("cnn", "swav", split, seed=0, progress=False, epochs=2, batch_size=128)
    for (name, a), b in zip(encoder.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) and not head.training
    assert len(history.loss) == 2 and 1 <= history.best_epoch <= 2
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(10))
    labels = method.assign(encoder, head, split.X_test)
    assert labels.shape == (len(split.y_test),) and int(labels.max()) < 10


def test_train_mnist_encoder_passes_encoder_head_and_epoch_to_on_epoch_end(small_mnist):
    """The callback sees every epoch, after the monitor, and what it returns is logged beside the monitor's."""
    import copy

    import torch

    seen, last = [], {}

    def keep_last(encoder, head, epoch):
        seen.append(epoch)
        last["encoder"], last["head"] = copy.deepcopy(encoder), copy.deepcopy(head)
        return {"head_weight_norm": sum(p.norm().item() for p in head.parameters())}

    encoder, history = experiments.train_mnist_encoder("cnn", "simsiam", small_mnist, seed=0, progress=False,
                                                       epochs=3, batch_size=128, monitor=True, on_epoch_end=keep_last)
    assert seen == [1, 2, 3]
    assert len(history.metrics["head_weight_norm"]) == 3 and len(history.metrics["effective_rank"]) == 3
    assert isinstance(last["head"], torch.nn.Module) and any(p.requires_grad for p in last["head"].parameters())
    # The returned encoder is the validation-chosen epoch's; the copy is the last epoch's.
    same = all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), last["encoder"].state_dict().values()))
    assert same == (history.best_epoch == 3)


@pytest.mark.parametrize("args, message", [
    (["--data", "no/such/folder"], "--data no/such/folder: no such folder"),
    (["--device", "no-such-device"], "device must be"),
])
def test_reproduce_refuses_a_bad_argument_in_one_line_and_creates_nothing(args, message, tmp_path, monkeypatch, capsys):
    def must_not_run(**kw):
        raise AssertionError("reproduce started with a bad argument")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(experiments, "reproduce", must_not_run)
    assert main(["reproduce", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m clbook reproduce: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_plot_path_checked_before_the_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--quick", "--plot", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--plot" in err and "is a directory" in err


def test_json_rows_read_back(tmp_path):
    """load_results inverts Result.row(): the same table, the few-label scores included."""
    import json

    from clbook.experiments import Result, format_table, load_results

    few = {1: {"linear": 0.41, "linear_std": 0.05, "knn": 0.44, "knn_std": 0.04},
           10: {"linear": 0.8, "linear_std": 0.01, "knn": 0.7, "knn_std": 0.02}}
    original = [Result("mnist", "cnn", "simsiam", 0.95, 0.91, 8.0, "mnist-t10k-shipped", linear_std=0.01,
                       n_seeds=3, uniformity=-0.1, std=0.014, effective_rank=10.6, steps=540, samples=69120, few=few),
                Result("mnist", "cnn", "random", 0.93, 0.95, 2.0, "mnist-t10k-shipped")]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([r.row() for r in original]))
    back = load_results(path)
    assert [r.row() for r in back] == [r.row() for r in original]
    assert format_table(back) == format_table(original)
    path.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="JSON list of rows"):
        load_results(path)


def test_saved_reproduce_rows_cover_every_row():
    """The clone's saved reproduce run (read by notebooks 08 and 10) has a row for every row of reproduce."""
    from clbook.experiments import MNIST_ROWS, SAVED_REPRODUCE, load_results

    saved = load_results()
    assert SAVED_REPRODUCE.is_file()
    mnist = {(r.encoder, r.method) for r in saved if r.dataset == "mnist"}
    assert set(MNIST_ROWS) <= mnist
    for r in saved:
        assert 0 <= r.linear_acc <= 1 and 0 <= r.knn_acc <= 1
        if r.dataset == "mnist":
            assert set(r.few) == {1, 10, 100}
    with pytest.raises(FileNotFoundError, match="reproduce --json"):
        load_results(SAVED_REPRODUCE.parent / "no_such_file.json")
