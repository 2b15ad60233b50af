"""The method registry: the one place a method is named, and all it takes to add one."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import pytest
import torch

import clbook.experiments
import clbook.methods
from clbook.data import SIMCLR_AUGMENT, load_shipped_mnist
from clbook.encoders import ProjectionHead, make_encoder
from clbook.methods import METHODS, REGISTRY, Entry, Method, Recipe
from clbook.training import pretrain

PACKAGE = Path(clbook.methods.__file__).parent


def test_every_method_has_one_file_and_one_entry():
    files = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "base"}
    homes = {entry.cls.__module__.rpartition(".")[2] for entry in REGISTRY.values()}
    assert homes == files  # one file per method, and no file without an entry
    assert set(METHODS) == set(REGISTRY)
    for name, entry in REGISTRY.items():
        assert entry.cls.name == name and issubclass(entry.cls, Method)
        assert len({r.encoder for r in entry.recipes}) == len(entry.recipes)  # one recipe per encoder


def test_a_method_name_is_written_only_in_the_registry():
    """The code that runs methods (the loop, the command line, the methods) never dispatches on a name.

    (Experiments may choose a method by name: that is what an experiment is.)
    """
    root = PACKAGE.parent
    files = [root / "training.py", root / "launch.py", root / "__main__.py",
             *(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")]
    for path in files:
        text = path.read_text()
        for name in REGISTRY:
            for pattern in (f'== "{name}"', f"== '{name}'", f'["{name}"]', f'"{name}":', f'name = "{name}"'):
                assert pattern not in text, f"{path.name} writes the method name {name!r} ({pattern})"


def test_recipes_are_the_experiments_tables():
    recipes = clbook.experiments.RECIPES
    for (kind, name), recipe in recipes.items():
        assert recipe in REGISTRY[name].recipes and recipe.encoder == kind
        cfg = clbook.experiments.MNIST_CONFIGS[kind, name]
        assert cfg["epochs"] == recipe.epochs and cfg["augment"] is recipe.augment
        accepted = inspect.signature(REGISTRY[name].cls).parameters
        assert set(cfg.get("method_options", {})) <= set(accepted)
    # Every reproduce row has its random twin after it, with as many seeds as the longest row it meets.
    rows = clbook.experiments.MNIST_ROWS
    assert rows[0] == clbook.experiments.PIXELS  # raw pixels first: the baseline with nothing learned
    for kind in {k for k, _ in rows[1:]}:
        twin = rows.index((kind, "random"))
        assert all(rows.index(key) < twin for key in rows if key[0] == kind and key[1] != "random")


class Toy(Method):
    """A made-up method: pull the two views together, keep the batch spread (no negatives)."""

    needs_negatives = False

    def loss(self, encoder, head, views, y, index):
        z = self.project(encoder, head, views)  # [B, 2, D]
        return (z[:, 0] - z[:, 1]).pow(2).sum(1).mean() - z.std(0).mean()


@pytest.fixture
def toy_registered(monkeypatch):
    """Toy as one registry entry, the way a new method file would be added."""
    monkeypatch.setitem(REGISTRY, "toy", Entry(Toy, Recipe("cnn", epochs=1, augment=SIMCLR_AUGMENT, quick_epochs=1)))
    monkeypatch.setitem(METHODS, "toy", Toy)
    monkeypatch.setattr(Toy, "name", "toy", raising=False)
    yield
    monkeypatch.undo()
    importlib.reload(clbook.experiments)  # back to the real registry's tables


def test_a_new_method_is_one_class_and_one_entry(toy_registered, tmp_path, capsys):
    split = load_shipped_mnist()
    X, y = split.X_train[:128], split.y_train[:128]
    history = pretrain(make_encoder("cnn", seed=0), ProjectionHead(), X, y, method="toy", epochs=1, batch_size=64,
                       augment=SIMCLR_AUGMENT, progress=False)
    assert history.steps == 2 and history.samples == 128 and torch.isfinite(torch.tensor(history.loss)).all()

    from clbook.__main__ import main

    out = tmp_path / "toy.json"
    assert main(["pretrain", "--method", "toy", "--offline", "--limit", "64", "--batch-size", "32", "--epochs", "1",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["method"] == "toy"

    experiments = importlib.reload(clbook.experiments)
    assert ("cnn", "toy") in experiments.MNIST_ROWS and experiments.QUICK_EPOCHS["cnn", "toy"] == 1
