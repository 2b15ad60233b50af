"""Every registered method under two processes (gloo, CPU) against one process on the concatenated batch.

One spawn of two ranks runs every method (starting processes is the slow part). Each rank builds
the same networks and the same whole batch from a seed, and runs one training step of the method
twice through :func:`clbook.training.train_step`, the per-step code of ``pretrain`` and of
``python -m clbook pretrain``:

* one process on the whole batch (the reference);
* this rank's half, with ``method.gather = True``, batch norm over the global batch
  (:func:`clbook.distributed.convert_sync_batchnorm`) and the gradients averaged over the ranks.

The parameters after the step, the batch norms' running statistics and the method's own state
(MoCo's queue and key networks, BYOL's target networks, SwAV's prototypes, the memory bank) must
agree. The comparison is exact for every method on this first step; for the memory bank only on
the first step (later each rank draws its own negatives from the bank).
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from clbook.distributed import convert_sync_batchnorm
from clbook.encoders import ProjectionHead
from clbook.methods import REGISTRY, make_method
from clbook.training import train_step

WORLD = 2
B, IN = 16, 12  # samples per rank, input size
TOL = 2e-5
# CPC trains on sequences (its encoder needs encode() and context()); its two-process test is in tests/test_cpc.py.
NAMES = [name for name in REGISTRY if name != "cpc"]
# Small options so that one step on 2 x 16 samples is meaningful (queue and bank larger than the batch).
OPTIONS = {"moco": {"queue_size": 64}, "memory_bank": {"num_negatives": 8}, "swav": {"n_prototypes": 4},
           # CLIP's texts: one caption of word ids per sample of the memory-sized training set (4 * WORLD * B).
           "clip": {"captions": torch.randint(2, 40, (4 * WORLD * B, 6), generator=torch.Generator().manual_seed(5))}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoViews:
    """A deterministic augmentation: the first call of a step gives view 1, the second view 2.

    Views depend only on the samples, so one process and two see the same views of every sample.
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.calls += 1
        return x + 0.3 * torch.sin((1 + self.calls % 2) * 3.0 * x)


def _one_step(name: str, rank: int | None) -> dict:
    """Parameters and state after one step of ``name``: the whole batch (rank None) or this rank's half."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(WORLD * B, IN, generator=g)
    y = torch.randint(3, (WORLD * B,), generator=g)
    torch.manual_seed(1)
    encoder = nn.Sequential(nn.Linear(IN, 16), nn.ReLU())
    head = ProjectionHead(16, 16, 8, batchnorm=True)
    recipes = REGISTRY[name].recipes  # methods without an MNIST recipe (notebook 12's) take their defaults
    temperature, options = (recipes[0].temperature, recipes[0].options) if recipes else (None, {})
    method = make_method(name, temperature, **{**options, **OPTIONS.get(name, {})})
    method.num_samples = 4 * WORLD * B  # a memory bank larger than the batch
    method.gather = rank is not None
    torch.manual_seed(2)  # the same predictor / prototypes / bank on every rank
    method.setup(encoder, head)
    if rank is not None:
        for module in (encoder, head, method):
            convert_sync_batchnorm(module)
    params = [*encoder.parameters(), *head.parameters(), *method.trainable_parameters()]
    opt = torch.optim.SGD(params, lr=0.5)
    idx = torch.arange(WORLD * B) if rank is None else torch.arange(rank * B, (rank + 1) * B)
    for module in (encoder, head, method):
        module.train()
    method.start_epoch(1, 1)
    before = [p.detach().clone() for p in params]
    loss = train_step(method, encoder, head, opt, None, X[idx], y[idx], idx, TwoViews(), torch.Generator(), 0, 10)
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(params, before))
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {f"head.{k}": v for k, v in head.state_dict().items()}
    state |= {f"method.{k}": v for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"loss": loss, "moved": moved, "state": {k: v.detach().clone() for k, v in state.items()}}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=WORLD)
    try:
        out = {name: {"two": _one_step(name, rank)} for name in NAMES}
    finally:
        torch.distributed.destroy_process_group()
    for name in NAMES:  # the reference, after the group is gone: one process on the whole batch
        out[name]["one"] = _one_step(name, None)
    torch.save(out, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_methods")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", NAMES)
def test_one_step_on_two_processes_matches_one_process_on_the_whole_batch(results, name):
    for rank in range(WORLD):
        one, two = results[rank][name]["one"], results[rank][name]["two"]
        assert one["moved"] > 1e-3  # the step really changed the parameters
        assert set(one["state"]) == set(two["state"])
        errors = {k: (one["state"][k].double() - two["state"][k].double()).abs().max().item()
                  for k in one["state"] if one["state"][k].numel() and one["state"][k].dtype != torch.bool}
        worst = max(errors, key=errors.get)
        print(f"{name}, rank {rank}: loss {two['loss']:.6f} vs {one['loss']:.6f}; "
              f"largest difference {errors[worst]:.1e} ({worst})")
        assert two["loss"] == pytest.approx(one["loss"], abs=TOL)
        assert errors[worst] <= TOL, worst
        for k in one["state"]:
            if one["state"][k].dtype == torch.bool:  # the memory bank's "seen": every rank's rows stored
                assert torch.equal(one["state"][k], two["state"][k])
