"""gather_distributed (issue 18): two processes with gloo on CPU against one process on the whole batch.

One spawn of two ranks runs every case (starting processes is the slow part). Each rank builds the
same whole batch from a seed, keeps its half, computes the loss with ``gather_distributed=True``
and saves its loss, its gradients and the one-process reference on the concatenated batch; the
test compares them here. Under DDP the gradient of each rank is ``world_size`` times its rows'
share of the whole batch's gradient (DDP divides by ``world_size``), so that is what is checked;
the last case runs one DDP training step and compares the parameters. The same spawn checks the
public helpers of ``clbook.distributed`` on their own.
"""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from clbook.distributed import all_gather_rows, gather_rows, global_mean, world_info
from clbook.losses import info_nce_loss, nt_xent_loss, supcon_loss

WORLD = 2
N, D = 6, 5  # samples per rank, feature size
TOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split(x: torch.Tensor, rank: int) -> torch.Tensor:
    n = x.shape[0] // WORLD
    return x[rank * n : (rank + 1) * n].detach().clone().requires_grad_(x.requires_grad)


def _grads(loss_fn, *inputs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss = loss_fn(*leaves)
    return loss.detach(), torch.autograd.grad(loss, leaves)


def _cases(rank: int) -> dict:
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(WORLD * N, D, generator=g), torch.randn(WORLD * N, D, generator=g)
    features = torch.randn(WORLD * N, 2, D, generator=g)
    labels = torch.randint(3, (WORLD * N,), generator=g)
    mask = torch.rand(WORLD * N, WORLD * N, generator=g) < 0.3
    queue = torch.randn(9, D, generator=g)
    cases = {
        "nt_xent": (lambda a, b, **kw: nt_xent_loss(a, b, 0.5, **kw), (z1, z2), {}),
        "nt_xent tiled": (lambda a, b, **kw: nt_xent_loss(a, b, 0.5, block_size=4, **kw), (z1, z2), {}),
        "supcon labels": (lambda f, y, **kw: supcon_loss(f, y, temperature=0.2, **kw), (features,), {"y": labels}),
        "supcon no labels": (lambda f, **kw: supcon_loss(f, temperature=0.2, **kw), (features,), {}),
        "supcon mask": (lambda f, m, **kw: supcon_loss(f, mask=m, temperature=0.2, **kw), (features,), {"m": mask}),
        "info_nce queue": (lambda q, k, **kw: info_nce_loss(q, k, queue, 0.2, **kw), (z1, z2), {}),
        "info_nce in-batch": (lambda q, k, **kw: info_nce_loss(q, k, None, 0.2, **kw), (z1, z2), {}),
    }
    out = {}
    for name, (fn, inputs, extra) in cases.items():
        whole = {k: v for k, v in extra.items()}
        # The mask's rows of this rank's samples (all columns); labels: this rank's part.
        local = {k: (v[rank * N : (rank + 1) * N]) for k, v in extra.items()}
        ref_loss, ref_grads = _grads(lambda *x: fn(*x, **whole), *inputs)
        loss, got = _grads(lambda *x: fn(*x, **local, gather_distributed=True), *(_split(x, rank) for x in inputs))
        out[name] = {
            "loss": loss.item(),
            "ref_loss": ref_loss.item(),
            "grad_error": max((g / WORLD - _split(r, rank)).abs().max().item() for g, r in zip(got, ref_grads)),
        }
    return out


def _ddp_step(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * N, 8, generator=g)
    views = x + 0.1 * torch.randn(WORLD * N, 8, generator=g), x + 0.1 * torch.randn(WORLD * N, 8, generator=g)
    labels = torch.randint(3, (WORLD * N,), generator=g)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, D))
    reference = copy.deepcopy(model)
    errors = {}
    for name in ("nt_xent", "supcon labels"):
        def loss_of(net, a, b, y, **kw):
            if name == "nt_xent":
                return nt_xent_loss(net(a), net(b), 0.5, **kw)
            return supcon_loss(torch.stack([net(a), net(b)], dim=1), y, temperature=0.2, **kw)

        single = copy.deepcopy(reference)
        opt = torch.optim.SGD(single.parameters(), lr=0.5)
        loss_of(single, *views, labels).backward()
        opt.step()
        ddp = DDP(copy.deepcopy(reference))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        part = [v[rank * N : (rank + 1) * N] for v in (*views, labels)]
        loss_of(ddp, *part, gather_distributed=True).backward()
        opt.step()
        errors[name] = max((p - q).abs().max().item() for p, q in zip(ddp.module.parameters(), single.parameters()))
        errors[name + " (moved)"] = max((p - q).abs().max().item()
                                        for p, q in zip(single.parameters(), reference.parameters()))
    del model
    return errors


def _helpers(rank: int) -> dict:
    """clbook.distributed's public functions on their own, as methods will call them."""
    world = world_info(True)
    x = (torch.arange(6.0).view(3, 2) + 10 * rank).requires_grad_()
    gathered = gather_rows(x, world)
    # Rank r's loss weights every gathered row by (r + 1) * w: x's gradient must be the sum over ranks.
    w = torch.arange(2.0 * 3 * WORLD).view(3 * WORLD, 2)
    ((rank + 1) * (gathered * w).sum()).backward()
    share = torch.tensor(float(rank + 1), requires_grad=True)
    mean = global_mean(share, world)
    mean.backward()
    try:
        gather_rows(torch.zeros(3 + rank, 2), world)
        unequal = ""
    except ValueError as e:
        unequal = str(e)
    return {"world": world, "no gather": world_info(False), "ranks": all_gather_rows(torch.tensor([rank])).tolist(),
            "gathered": gathered.detach(), "grad": x.grad, "mean": mean.item(), "share grad": share.grad.item(),
            "unequal": unequal}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=WORLD)
    try:
        torch.save({"cases": _cases(rank), "ddp": _ddp_step(rank), "helpers": _helpers(rank)}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", ["nt_xent", "nt_xent tiled", "supcon labels", "supcon no labels", "supcon mask",
                                  "info_nce queue", "info_nce in-batch"])
def test_two_processes_match_one_on_the_whole_batch(results, case):
    for rank in range(WORLD):
        r = results[rank]["cases"][case]
        print(f"{case}, rank {rank}: |loss - one process| = {abs(r['loss'] - r['ref_loss']):.1e}, "
              f"max |grad / {WORLD} - one process| = {r['grad_error']:.1e}")
        assert r["loss"] == pytest.approx(r["ref_loss"], abs=TOL)
        assert r["grad_error"] <= TOL


@pytest.mark.parametrize("case", ["nt_xent", "supcon labels"])
def test_one_ddp_step_matches_the_single_process_step(results, case):
    for rank in range(WORLD):
        errors = results[rank]["ddp"]
        print(f"{case}, rank {rank}: max |DDP parameter - single-process parameter| = {errors[case]:.1e}")
        assert errors[case + " (moved)"] > 1e-3  # the step really changed the parameters
        assert errors[case] <= TOL


def test_the_distributed_helpers_gather_in_rank_order_and_sum_gradients(results):
    whole = torch.cat([torch.arange(6.0).view(3, 2) + 10 * r for r in range(WORLD)])
    w = torch.arange(2.0 * 3 * WORLD).view(3 * WORLD, 2)
    for rank in range(WORLD):
        h = results[rank]["helpers"]
        assert h["world"] == (rank, WORLD) and h["no gather"] is None
        assert h["ranks"] == list(range(WORLD))
        assert torch.equal(h["gathered"], whole)
        # Every rank's loss reaches this rank's rows: the gradient is summed over ranks, not local.
        torch.testing.assert_close(h["grad"], sum(r + 1 for r in range(WORLD)) * w[rank * 3 : (rank + 1) * 3])
        # The whole batch's loss on every rank; the gradient scaled by the world size for DDP's average.
        assert h["mean"] == sum(r + 1 for r in range(WORLD)) and h["share grad"] == WORLD
        assert "same batch size on every process" in h["unequal"]


def test_one_process_gathers_nothing():
    assert world_info(True) is None and world_info(False) is None
    share = torch.tensor(2.0)
    assert global_mean(share, None) is share
