"""Pre-training from the command line, on one process or several: ``python -m clbook pretrain``.

One process::

    python -m clbook pretrain --method simclr --epochs 15      # or supcon, or moco

K processes on one machine (gloo on CPU, nccl when there are GPUs, chosen automatically)::

    torchrun --nproc_per_node=K -m clbook pretrain --method simclr --epochs 15

Under ``torchrun`` every process trains a copy of the network on its own share of each epoch
(``DistributedSampler``), ``DistributedDataParallel`` averages the gradients, and the loss is
computed with ``gather_distributed=True``: every process's embeddings are negatives for every
other's, so K processes with ``--batch-size B`` train exactly like one process with a batch of
K * B (tests/test_distributed.py checks this to 1e-5). Rank 0 shows the progress bar, writes the
checkpoint after every epoch and runs the final linear probe; ``--resume`` continues from the
checkpoint. With ``--method moco`` the key network is a momentum copy of the network on every
rank (the ranks stay identical, since DDP keeps the online weights identical), the queries of every
rank meet the keys of every rank, and the queue receives the whole global batch's keys, so every
rank's queue holds the same negatives. Everything lives on the device of the data: ``cuda:LOCAL_RANK`` when CUDA is there,
else the CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from clbook.data import LIGHT_AUGMENT, SIMCLR_AUGMENT, Split, load_mnist
from clbook.encoders import ProjectionHead, make_encoder
from clbook.losses import info_nce_loss, nt_xent_loss, supcon_loss
from clbook.memory import FeatureQueue, momentum_update
from clbook.training import evaluate_frozen, extract_features

__all__ = ["METHOD_DEFAULTS", "load_image_folder", "setup_distributed", "run_pretrain", "add_arguments"]

# Per method: temperature and augmentation (those of clbook.experiments.MNIST_CONFIGS for the CNN).
METHOD_DEFAULTS = {
    "simclr": {"temperature": 0.2, "augment": SIMCLR_AUGMENT},
    "supcon": {"temperature": 0.1, "augment": LIGHT_AUGMENT},
    "moco": {"temperature": 0.2, "augment": SIMCLR_AUGMENT},
}


def load_image_folder(root: str | os.PathLike, test_size: float = 0.2, seed: int = 0) -> Split:
    """Images in ``root/<class>/*`` as 28 x 28 grayscale tensors, divided into train and held-out parts.

    The class of an image is the name of its folder (as torchvision's ``ImageFolder``); every
    image is converted to grayscale and resized to 28 x 28, so the course's CNN takes it.
    """
    from torchvision import datasets, transforms

    from clbook.data import train_val_split

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist")
    tf = transforms.Compose([transforms.Grayscale(), transforms.Resize((28, 28)), transforms.ToTensor()])
    folder = datasets.ImageFolder(str(root), transform=tf)
    if len(folder) < 4:
        raise ValueError(f"image folder {str(root)!r} has {len(folder)} images; need at least 4")
    X = torch.stack([folder[i][0] for i in range(len(folder))])  # [N, 1, 28, 28]
    y = torch.tensor(folder.targets)
    X_tr, y_tr, X_te, y_te = train_val_split(X, y, val_size=test_size, seed=seed)
    return Split(X_tr, y_tr, X_te, y_te, f"image-folder:{root.name}", list(folder.classes))


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group when launched by ``torchrun``.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. The backend follows the
    hardware: nccl with CUDA (one GPU per local rank), gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local % torch.cuda.device_count()}" if cuda else "cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return rank, world, device


class _Network(nn.Module):
    """Encoder and projection head as one module: what DDP wraps."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def _loss(method: str, z: Tensor, y: Tensor, temperature: float) -> Tensor:
    """Loss of projections ``z`` [B, 2, D] (two views per sample), every process's rows as negatives."""
    if method == "simclr":
        return nt_xent_loss(z[:, 0], z[:, 1], temperature, gather_distributed=True)
    return supcon_loss(z, y, temperature=temperature, gather_distributed=True)


def run_pretrain(args: argparse.Namespace) -> dict:
    """Pre-train, checkpoint, resume, probe: the body of ``python -m clbook pretrain``.

    Returns the summary (also written to ``--json`` on rank 0): method, processes, global batch,
    epochs, steps, final training loss, linear-probe and kNN accuracy on the held-out part.
    """
    if args.method == "moco" and not (0.0 <= args.momentum <= 1.0):
        raise ValueError(f"--momentum must be in [0, 1], got {args.momentum}")
    if args.method == "moco" and args.queue_size < 1:
        raise ValueError(f"--queue-size must be positive, got {args.queue_size}")
    rank, world, device = setup_distributed()
    main = rank == 0
    defaults = METHOD_DEFAULTS[args.method]
    temperature = args.temperature if args.temperature is not None else defaults["temperature"]
    augment = defaults["augment"]
    if args.images:
        split = load_image_folder(args.images)
    else:
        split = load_mnist(root=args.data, download=not args.offline, verbose=main)
    X, y = split.X_train, split.y_train
    if args.limit:
        X, y = X[: args.limit], y[: args.limit]
    if len(X) < args.batch_size * world:
        raise ValueError(f"{len(X)} training images are fewer than one global batch "
                         f"({world} processes x --batch-size {args.batch_size})")

    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    network = _Network(make_encoder("cnn"), ProjectionHead(128, 128, 64)).to(device)
    model = network
    if world > 1:
        model = nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)
    dataset = torch.utils.data.TensorDataset(X, y)
    sampler = (torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed, drop_last=True)
               if world > 1 else torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed)))
    # drop_last: every process gets full batches of the same size, which gather_distributed needs.
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    steps_per_epoch = len(loader)
    opt = torch.optim.Adam(network.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, args.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank draws its own augmentations
    # MoCo: a key network that follows the network by momentum, and a queue of earlier keys.
    key_network = copy.deepcopy(network).requires_grad_(False) if args.method == "moco" else None
    queue = FeatureQueue(args.queue_size, 64).to(device) if args.method == "moco" else None

    start_epoch, losses = 1, []
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if args.resume:
        if checkpoint is None or not checkpoint.is_file():
            raise ValueError(f"--resume needs an existing --checkpoint, got {args.checkpoint!r}")
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["method"] != args.method:
            raise ValueError(f"checkpoint {str(checkpoint)!r} was trained with {state['method']!r}, not {args.method!r}")
        network.load_state_dict(state["network"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generators"][rank % len(state["generators"])])
        if key_network is not None:
            key_network.load_state_dict(state["key_network"])
            queue.load_state_dict(state["queue"])
        start_epoch, losses = state["epoch"] + 1, state["losses"]
        if main:
            print(f"resumed from {checkpoint} after epoch {state['epoch']}")
    if main:
        print(f"pretrain {args.method}: {len(X)} images ({split.source}), {world} process(es) on {device}, "
              f"batch {args.batch_size} per process = {args.batch_size * world} in all, "
              f"{steps_per_epoch} steps per epoch, temperature {temperature}")

    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs + 1):
        if world > 1:
            sampler.set_epoch(epoch)
        model.train()
        total, batches = torch.zeros((), device=device), 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", disable=not (main and args.progress), leave=False,
                   mininterval=1.0)
        for xb, yb in bar:
            xb, yb = xb.to(device), yb.to(device)
            if key_network is None:
                views = torch.cat([augment(xb, gen), augment(xb, gen)])  # [2B, 1, 28, 28], one forward
                z = model(views).view(2, len(xb), -1).transpose(0, 1)  # [B, 2, D]
                loss = _loss(args.method, z, yb, temperature)  # the whole global batch's loss, on every rank
            else:
                q = model(augment(xb, gen))  # [B, D]
                with torch.no_grad():
                    key_network.train()
                    k = F.normalize(key_network(augment(xb, gen)), dim=1)  # [B, D], constants
                negatives = queue.features() if len(queue) else None
                loss = info_nce_loss(q, k, negatives, temperature, gather_distributed=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if key_network is not None:
                momentum_update(key_network, network, args.momentum)
                if world > 1:  # every rank enqueues the whole global batch's keys, in rank order
                    parts = [torch.empty_like(k) for _ in range(world)]
                    torch.distributed.all_gather(parts, k)
                    k = torch.cat(parts)
                queue.enqueue(k)
            total, batches = total + loss.detach(), batches + 1
            if main and args.progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        losses.append(total.item() / max(batches, 1))
        if main:
            print(f"epoch {epoch}/{args.epochs}: loss {losses[-1]:.4f}")
        # Every rank's generator state, so that a resumed run draws the augmentations it would have drawn.
        states = [gen.get_state()]
        if world > 1:
            states = [None] * world
            torch.distributed.all_gather_object(states, gen.get_state())
        if main and checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(checkpoint.suffix + ".tmp")
            torch.save({"method": args.method, "epoch": epoch, "losses": losses, "network": network.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generators": states,
                        "world_size": world, "args": vars(args),
                        "key_network": key_network.state_dict() if key_network is not None else None,
                        "queue": queue.state_dict() if queue is not None else None}, tmp)
            tmp.replace(checkpoint)  # atomic: an interrupted save never leaves half a checkpoint
    seconds = time.perf_counter() - started

    summary = {"method": args.method, "processes": world, "device": str(device), "data": split.source,
               "batch_per_process": args.batch_size, "global_batch": args.batch_size * world,
               "epochs": args.epochs, "steps_per_epoch": steps_per_epoch, "losses": losses, "seconds": seconds}
    if main:
        # Final linear probe (and kNN) on frozen features of the held-out part, as in the notebooks.
        encoder = network.encoder
        train_f = extract_features(encoder, X.to(device)).cpu()
        test_f = extract_features(encoder, split.X_test.to(device)).cpu()
        probe = evaluate_frozen(train_f, y, test_f, split.y_test, seed=args.seed)
        summary.update(linear_acc=probe["linear_acc"], knn_acc=probe["knn_acc"])
        print(f"linear probe {probe['linear_acc']:.1%}, kNN {probe['knn_acc']:.1%} on {len(split.y_test)} "
              f"held-out images ({seconds:.0f} s of training)")
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m clbook pretrain``."""
    parser.add_argument("--method", choices=sorted(METHOD_DEFAULTS), default="simclr",
                        help="simclr (NT-Xent, no labels), supcon (labels) or moco (queue and momentum encoder)")
    parser.add_argument("--images", metavar="DIR", help="a folder of images, one subfolder per class (default: MNIST)")
    parser.add_argument("--data", metavar="DIR", help="MNIST data directory (default: CLBOOK_DATA or <repo>/data)")
    parser.add_argument("--offline", action="store_true",
                        help="skip the official MNIST (no download attempt): use the split shipped in data/mnist_t10k")
    parser.add_argument("--limit", type=int, help="use only the first LIMIT training images (a quick run)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=256, help="per process; the global batch is K times it")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, help="default: 0.2 for simclr and moco, 0.1 for supcon")
    parser.add_argument("--queue-size", type=int, default=4096, help="moco: keys kept as negatives")
    parser.add_argument("--momentum", type=float, default=0.99, help="moco: momentum of the key network")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", metavar="FILE", help="save after every epoch (rank 0)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--json", metavar="FILE", help="write the summary (losses, probe accuracy) here")
    parser.add_argument("--progress", action="store_true", help="progress bar per epoch (rank 0)")
