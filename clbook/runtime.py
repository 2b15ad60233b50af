"""Seeds, threads, devices and progress: the settings every experiment starts with.

``device="auto"`` everywhere in clbook means :func:`resolve_device`: CUDA if present, then
Apple's MPS, then the CPU.
"""

from __future__ import annotations

import random
import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import torch

from clbook.checks import check_int

__all__ = ["set_seed", "single_thread", "resolve_device", "progress_bar"]


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


class _LineBar:
    """Progress as one line that is rewritten in place: a live line in a notebook, one clean line saved.

    In a Jupyter kernel the line is one display that later updates replace (``display_id``), so a
    saved notebook keeps exactly the final line, not every intermediate redraw. Elsewhere (a log
    file, CI) nothing is written until the end, and then one line on stderr.
    """

    def __init__(self, iterable: Iterable, desc: str, mininterval: float = 1.0) -> None:
        self.iterable, self.desc, self.mininterval = iterable, desc, mininterval
        self.total = len(iterable) if hasattr(iterable, "__len__") else None
        self.n, self.postfix, self._handle = 0, {}, None
        self._start = self._shown = time.perf_counter()
        try:
            from IPython import get_ipython
            from IPython.display import Pretty, display

            if get_ipython() is not None:
                self._pretty = Pretty
                self._handle = display(Pretty(self._text()), display_id=True)
        except ImportError:
            pass

    def _text(self) -> str:
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        extra = "".join(f", {key} {value}" for key, value in self.postfix.items())
        return f"{self.desc}: {done} [{time.perf_counter() - self._start:.1f} s]{extra}"

    def set_postfix(self, postfix: dict, refresh: bool = False) -> None:
        """Figures shown after the count (tqdm's name and signature)."""
        self.postfix = dict(postfix)

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
            if self._handle is not None and time.perf_counter() - self._shown >= self.mininterval:
                self._handle.update(self._pretty(self._text()))
                self._shown = time.perf_counter()
        if self._handle is not None:
            self._handle.update(self._pretty(self._text()))
        else:
            print(self._text(), file=sys.stderr, flush=True)


def progress_bar(iterable: Iterable, desc: str, enabled: bool = True) -> Iterable:
    """Progress over ``iterable``: tqdm's bar in a terminal, one line rewritten in place elsewhere.

    The object returned iterates like ``iterable`` and has ``set_postfix(dict)``. In a notebook the
    line is updated at most once a second and the saved notebook keeps only its final state; in a
    terminal tqdm draws its usual bar (and erases it at the end).
    """
    if not enabled:
        return _Quiet(iterable)
    if sys.stderr.isatty():
        from tqdm import tqdm  # plain text bar: no ipywidgets needed

        return tqdm(iterable, desc=desc, leave=False, mininterval=1.0)
    return _LineBar(iterable, desc)


class _Quiet:
    """``iterable`` with a ``set_postfix`` that does nothing: progress switched off."""

    def __init__(self, iterable: Iterable) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable)

    def set_postfix(self, postfix: dict, refresh: bool = False) -> None:
        pass
