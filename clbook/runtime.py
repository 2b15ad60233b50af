"""Seeds, threads and devices: the settings every experiment starts with.

``device="auto"`` everywhere in clbook means :func:`resolve_device`: CUDA if present, then
Apple's MPS, then the CPU.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch

from clbook.checks import check_int

__all__ = ["set_seed", "single_thread", "resolve_device"]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so that a run can be repeated exactly on one machine."""
    # NumPy takes seeds in [0, 2**32): say so by name rather than with NumPy's own message.
    seed = check_int("seed", seed, 0, 2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def single_thread():
    """Run small tensor operations on one thread.

    A linear probe multiplies matrices of a few thousand by a hundred; splitting that across
    threads costs more than it saves, and on a busy machine (other processes on the cores)
    OpenMP's waiting threads made it 10-30 times slower in our measurements.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device to compute on: ``"auto"`` (or None) picks CUDA, then MPS, then the CPU.

    Any other value is passed to :class:`torch.device` (``"cpu"``, ``"cuda:1"``, ...); a device
    this machine does not have is a ``ValueError`` naming it.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use 'auto' or 'cpu')")
    return dev
