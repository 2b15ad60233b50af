"""Pre-training from the command line, on one process or several: ``python -m clbook pretrain``.

One process::

    python -m clbook pretrain --method simclr --epochs 15      # any method of clbook.methods.REGISTRY

K processes on one machine (gloo on the CPU, nccl when there are GPUs, chosen automatically)::

    torchrun --nproc_per_node=K -m clbook pretrain --method simclr --epochs 15

Every registered method runs here through the same per-step code as in a notebook,
:func:`clbook.training.train_step`; nothing about a method is written twice. Its settings
(temperature, augmentation, head, options) are its recipe in the registry, and the command line
overrides them.

Under ``torchrun`` every process trains a copy of the network on its own share of each global
batch: the batch order is drawn from the seed (the same on every rank) and rank r takes rows
``[r * B, (r + 1) * B)`` of each global batch of ``K * B``. After ``backward`` the gradients are
averaged over the processes (:func:`clbook.distributed.average_gradients`, what DDP does), and the
method's loss is computed with ``gather_distributed=True``: every process's embeddings are
negatives for every other's, so K processes with ``--batch-size B`` train like one process with a
batch of K * B (tests/test_distributed.py checks one step of every method against that).
``--sync-batchnorm`` computes the heads' batch norm over the global batch too. Rank 0 shows the
progress bar, writes the checkpoint after every epoch and runs the final linear probe;
``--resume`` continues from the checkpoint, also with another number of processes.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import time
from pathlib import Path

import torch
from torch import Tensor

from clbook.checks import check_int, check_probability, check_real
from clbook import data
from clbook.data import Split
from clbook.distributed import convert_sync_batchnorm
from clbook.encoders import ProjectionHead, make_encoder
from clbook.evaluation import evaluate_frozen, extract_features
from clbook.methods import REGISTRY, make_method
from clbook.runtime import progress_bar, resolve_device
from clbook.training import check_method_data, train_step

__all__ = ["load_image_folder", "setup_distributed", "check_arguments", "run_pretrain", "add_arguments"]


def _count(n: int, word: str, plural: str | None = None) -> str:
    """``"1 image"``, ``"3 images"``: a count and its noun in the right number (``plural`` if not word + "s")."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


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
    try:
        folder = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as err:  # no class folders, or no images in them
        raise ValueError(f"image folder {str(root)!r}: {' '.join(str(err).split())}") from None
    if len(folder) < 4:
        raise ValueError(f"image folder {str(root)!r} has {_count(len(folder), 'image')}; need at least 4")
    X = torch.stack([folder[i][0] for i in range(len(folder))])  # [N, 1, 28, 28]
    y = torch.tensor(folder.targets)
    X_tr, y_tr, X_te, y_te = train_val_split(X, y, val_size=test_size, seed=seed)
    return Split(X_tr, y_tr, X_te, y_te, f"image-folder:{root.name}", list(folder.classes))


def setup_distributed(device: str = "auto") -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group when launched by ``torchrun``.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. The device follows ``device``
    (:func:`clbook.runtime.resolve_device`); with CUDA each local rank takes its own GPU. The
    backend follows the device: nccl with CUDA, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local % torch.cuda.device_count()}")
    if world > 1 and not torch.distributed.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    return rank, world, dev


# Flags that set the method option of the same name, for the methods that have one (MoCo's queue
# and momentum, BYOL's momentum); unset, the method's recipe decides.
OPTION_FLAGS = ("queue_size", "momentum")


def _settings(args: argparse.Namespace) -> tuple[dict, dict, float | None, object]:
    """The method's options, the head's options, the temperature and the augmentation: its recipe, then the flags."""
    entry = REGISTRY[args.method]
    recipe = entry.recipes[0]
    accepted = inspect.signature(entry.cls).parameters
    options = dict(recipe.options)
    for name in OPTION_FLAGS:
        value = getattr(args, name)
        if value is not None:
            if name not in accepted:
                raise ValueError(f"--{name.replace('_', '-')}: {args.method} has no {name} option")
            options[name] = value
    for item in args.option or []:
        name, sep, text = item.partition("=")
        if not sep or name not in accepted or name == "temperature":
            known = sorted(set(accepted) - {"temperature"})
            raise ValueError(f"--option {item}: give NAME=VALUE with NAME one of {known} ({args.method})")
        try:
            options[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[name] = text  # a word, e.g. --option positive=bank
    temperature = args.temperature if args.temperature is not None else recipe.temperature
    return options, dict(recipe.head), temperature, recipe.augment


def check_arguments(args: argparse.Namespace, world: int = 1) -> None:
    """Every argument of ``pretrain``, before any work: a ``ValueError`` naming the first bad one.

    ``world`` is the number of processes (``WORLD_SIZE`` under torchrun).
    """
    check_int("--epochs", args.epochs, 1)
    if args.limit is not None:
        check_int("--limit", args.limit, 1)
    method = REGISTRY[args.method].cls
    # A contrastive loss needs another sample in every process's batch; the others need one.
    check_int("--batch-size", args.batch_size, 2 if method.needs_negatives else 1)
    check_real("--lr", args.lr)
    if args.temperature is not None:
        check_real("--temperature", args.temperature)
    if args.momentum is not None:
        check_probability("--momentum", args.momentum, high_open=True)
    if args.queue_size is not None:
        check_int("--queue-size", args.queue_size, 1)
    options, _, temperature, _ = _settings(args)
    try:
        make_method(args.method, temperature, **options)  # the method's own checks of its options
        method.check_batch(args.batch_size * world, options)
    except ValueError as err:  # name the flag the user typed, not the option behind it
        message = str(err)
        for name in OPTION_FLAGS:
            message = message.replace(name, f"--{name.replace('_', '-')}")
        raise ValueError(message) from None
    check_int("--seed", args.seed, 0, 2**32 - 1)
    if args.images is not None and not Path(args.images).is_dir():
        raise ValueError(f"--images {args.images}: no such folder")
    if args.data is not None and not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data}: no such folder")
    if args.resume and (args.checkpoint is None or not Path(args.checkpoint).is_file()):
        raise ValueError(f"--resume needs an existing --checkpoint, got {args.checkpoint!r}")
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise ValueError(f"--json {args.json}: the folder {Path(args.json).parent} does not exist")
    resolve_device(args.device)


def _shard(n: int, batch: int, world: int, rank: int, generator: torch.Generator) -> list[Tensor]:
    """This rank's batches of one epoch: rows ``[rank * batch, (rank + 1) * batch)`` of each global batch."""
    order = torch.randperm(n, generator=generator)
    span = batch * world
    return [order[i + rank * batch : i + (rank + 1) * batch] for i in range(0, n - span + 1, span)]


# What a checkpoint holds, in the order of the objects passed to _resume and _save_checkpoint.
_STATE_KEYS = ("encoder", "head", "method_state", "optimizer", "scheduler")


def _resume(checkpoint: Path, args: argparse.Namespace, rank: int, device: torch.device, parts: list,
            gen: torch.Generator) -> tuple[int, list[float]]:
    """Load ``parts`` (networks, method, optimizer, scheduler) and this rank's generator; (first epoch, losses)."""
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    if state["method"] != args.method:
        raise ValueError(f"checkpoint {str(checkpoint)!r} was trained with {state['method']!r}, not {args.method!r}")
    if state["epoch"] >= args.epochs:  # never report a run that trained nothing
        raise ValueError(f"--epochs {args.epochs}: the checkpoint has already trained "
                         f"{_count(state['epoch'], 'epoch')}; "
                         "ask for more to resume")
    for part, key in zip(parts, _STATE_KEYS):
        part.load_state_dict(state[key])
    gen.set_state(state["generators"][rank % len(state["generators"])])
    if rank == 0:
        print(f"resumed from {checkpoint} after epoch {state['epoch']}")
    return state["epoch"] + 1, state["losses"]


def _save_checkpoint(checkpoint: Path | None, args: argparse.Namespace, epoch: int, losses: list[float],
                     parts: list, gen: torch.Generator, world: int, main: bool) -> None:
    """Rank 0 saves ``parts`` and every rank's generator state (all ranks must call this: it gathers)."""
    # Every rank's generator state, so that a resumed run draws the augmentations it would have drawn.
    states = [gen.get_state()]
    if world > 1:
        states = [None] * world
        torch.distributed.all_gather_object(states, gen.get_state())
    if not main or checkpoint is None:
        return
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint.with_suffix(checkpoint.suffix + ".tmp")
    torch.save({"method": args.method, "epoch": epoch, "losses": losses, "generators": states, "world_size": world,
                "args": vars(args), **{key: part.state_dict() for part, key in zip(parts, _STATE_KEYS)}}, tmp)
    tmp.replace(checkpoint)  # atomic: an interrupted save never leaves half a checkpoint


def _final_probe(encoder, X: Tensor, y: Tensor, split: Split, seed: int, device: torch.device,
                 seconds: float) -> dict:
    """Linear probe and kNN on frozen features of the held-out part, as in the notebooks."""
    train_f, test_f = extract_features(encoder, X), extract_features(encoder, split.X_test)
    probe = evaluate_frozen(train_f, y, test_f, split.y_test, seed=seed, device=device)
    print(f"linear probe {probe['linear_acc']:.1%}, kNN {probe['knn_acc']:.1%} on "
          f"{_count(len(split.y_test), 'held-out image')} ({seconds:.0f} s of training)")
    return {"linear_acc": probe["linear_acc"], "knn_acc": probe["knn_acc"]}


def run_pretrain(args: argparse.Namespace) -> dict:
    """Pre-train, checkpoint, resume, probe: the body of ``python -m clbook pretrain``.

    Returns the summary (also written to ``--json`` on rank 0): method, processes, global batch,
    epochs, steps, samples seen, final training loss, linear-probe and kNN accuracy on the
    held-out part.
    """
    check_arguments(args, int(os.environ.get("WORLD_SIZE", "1")))
    rank, world, device = setup_distributed(args.device)
    main = rank == 0
    options, head_options, temperature, augment = _settings(args)
    if args.images:
        split = load_image_folder(args.images)
    else:  # read through the module at call time, so that a test's stand-in is what runs
        split = data.load_mnist(root=args.data, download=not args.offline, verbose=main)
    X, y = split.X_train[: args.limit], split.y_train[: args.limit]
    if len(X) < args.batch_size * world:
        raise ValueError(f"{_count(len(X), 'training image')} {'is' if len(X) == 1 else 'are'} fewer than one "
                         f"global batch ({_count(world, 'process', 'processes')} x --batch-size {args.batch_size})")

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    encoder = make_encoder(REGISTRY[args.method].recipes[0].encoder)  # the recipe's: the CNN, or notebook 13's ViT
    head = ProjectionHead(encoder.out_dim, 128, 64, **head_options)
    method = make_method(args.method, temperature, **options)
    check_method_data(method, y, augment)
    method.num_samples, method.gather = len(X), world > 1
    method.setup(encoder, head)
    if args.sync_batchnorm:
        for module in (encoder, head, method):
            convert_sync_batchnorm(module)
    for module in (encoder, head, method):
        module.to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters(), *method.trainable_parameters()], lr=args.lr)
    steps_per_epoch = len(X) // (args.batch_size * world)
    total_steps = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)  # each rank draws its own augmentations

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    start_epoch, losses = 1, []
    if args.resume:
        start_epoch, losses = _resume(checkpoint, args, rank, device, [encoder, head, method, opt, sched], gen)
    if main:
        print(f"pretrain {args.method}: {_count(len(X), 'image')} ({split.source}), "
              f"{_count(world, 'process', 'processes')} on {device}, batch {args.batch_size} per process = "
              f"{args.batch_size * world} in all, {_count(steps_per_epoch, 'step')} per epoch"
              + (f", temperature {temperature}" if temperature is not None else ""))  # SimSiam and BYOL have none

    started = time.perf_counter()
    for epoch in range(start_epoch, args.epochs + 1):
        for module in (encoder, head, method):
            module.train()
        method.start_epoch(epoch, args.epochs)
        batches = _shard(len(X), args.batch_size, world, rank, torch.Generator().manual_seed(args.seed + epoch))
        total, step = 0.0, (epoch - 1) * steps_per_epoch
        for i, idx in enumerate(progress_bar(batches, f"epoch {epoch}/{args.epochs}", main and args.progress)):
            total += train_step(method, encoder, head, opt, sched, X[idx].to(device), y[idx].to(device), idx,
                                augment, gen, step + i, total_steps)
        losses.append(total / steps_per_epoch)
        method.end_epoch(encoder, head)
        if main:
            print(f"epoch {epoch}/{args.epochs}: loss {losses[-1]:.4f}")
        _save_checkpoint(checkpoint, args, epoch, losses, [encoder, head, method, opt, sched], gen, world, main)
    seconds = time.perf_counter() - started

    summary = {"method": args.method, "processes": world, "device": str(device), "data": split.source,
               "batch_per_process": args.batch_size, "global_batch": args.batch_size * world,
               "epochs": args.epochs, "steps_per_epoch": steps_per_epoch,
               "steps": total_steps, "samples_seen": total_steps * args.batch_size * world,
               "losses": losses, "seconds": seconds}
    if main:
        summary.update(_final_probe(encoder, X, y, split, args.seed, device, seconds))
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def _recipe_values(option: str) -> str:
    """``"moco 0.99, byol 0.99"``: the value of ``option`` in each registered method's MNIST recipe that sets it."""
    recipes = {name: entry.recipes[0] for name, entry in REGISTRY.items() if entry.recipes}
    if option == "temperature":
        values = {name: recipe.temperature for name, recipe in recipes.items()}
    else:
        values = {name: recipe.options.get(option) for name, recipe in recipes.items()}
    return ", ".join(f"{name} {value}" for name, value in values.items() if value is not None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m clbook pretrain``.

    Every help line states the default: written into the text where there is no single value
    (``--temperature``: each method's recipe), appended by the command's formatter
    (``argparse.ArgumentDefaultsHelpFormatter``) where there is one.
    """
    runnable = [name for name, entry in REGISTRY.items() if entry.recipes]  # notebook 12's methods have none
    parser.add_argument("--method", choices=runnable, default="simclr",
                        help="the pre-training method; its MNIST recipe (clbook.methods.REGISTRY) sets the "
                             "temperature and options")
    parser.add_argument("--images", metavar="DIR",
                        help="a folder of images, one subfolder per class (default: MNIST instead)")
    parser.add_argument("--data", metavar="DIR",
                        help="MNIST data folder (default: $CLBOOK_DATA, else the clone's data/)")
    parser.add_argument("--offline", action="store_true",
                        help="skip the official MNIST (no download attempt): use the split shipped in data/mnist_t10k")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use only the first N training images, for a quick run (default: all of them)")
    parser.add_argument("--epochs", type=int, default=15, metavar="N", help="passes over the training images")
    parser.add_argument("--batch-size", type=int, default=256, metavar="B",
                        help="images per process and step; under torchrun with K processes the global batch is K x B")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, decayed by a cosine schedule")
    parser.add_argument("--temperature", type=float, metavar="T",
                        help=f"of the loss (default: the method's recipe: {_recipe_values('temperature')})")
    parser.add_argument("--queue-size", type=int, metavar="N",
                        help=f"keys kept as negatives (default: the recipe's: {_recipe_values('queue_size')})")
    parser.add_argument("--momentum", type=float, metavar="M",
                        help="momentum of the key or target network, in [0, 1) "
                             f"(default: the recipe's: {_recipe_values('momentum')})")
    parser.add_argument("--option", action="append", metavar="NAME=VALUE",
                        help="set any option of the method, e.g. --option num_negatives=512; repeatable "
                             "(default: the method's recipe)")
    parser.add_argument("--sync-batchnorm", action="store_true",
                        help="batch norm over the global batch under torchrun (heads with batch norm)")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the initial weights, the order of the batches, the augmentations and the probe")
    parser.add_argument("--checkpoint", metavar="FILE", help="save after every epoch, from rank 0 (default: no file)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--json", metavar="FILE",
                        help="write the summary (losses, probe accuracy) to FILE (default: no file)")
    parser.add_argument("--progress", action="store_true", help="progress bar per epoch (rank 0)")
