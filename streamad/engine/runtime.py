"""Process-level settings for the command-line jobs (never applied on import)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def tune_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS.

    PyTorch's CPU kernels allocate fresh activations every forward pass; with glibc's defaults
    each large block is an mmap whose pages fault in again (about 5 us a page): a third of the
    backbone's CPU time went to the kernel here. So no block is an mmap and all threads share
    the main heap (a thread's own arena would mmap blocks over 64 MiB anyway).

    Every job runs so, fits included: a fit once kept mmaps for blocks over 32 MiB to hold its
    heap flat, but with its buffers bounded (micro-batched backbone, one reused accumulation
    buffer, statistics updated a block of positions at a time) and the heap trimmed between its
    phases (:func:`release_memory`), the shared heap measured as fast and smaller (vtest.avi,
    backbone 4 frames at a time: 23.5 s and 1.72 GB peak, against 23.4 s and 2.04 GB).

    Returns:
        True when glibc accepted the settings.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        ok &= libc.mallopt(_M_ARENA_MAX, 1) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        return False
    return bool(ok)


def release_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``; on a GPU, torch's cached
    blocks back to the driver) between the phases of a job: the allocator settings above keep
    freed blocks for speed, and a later phase that needs one large block (a fit's factors)
    would otherwise add it on top of them.

    Returns:
        True when glibc released something.
    """
    gc.collect()
    if torch.cuda.is_initialized():  # the caching allocator's free blocks, on a GPU
        torch.cuda.empty_cache()
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def seconds_since_start() -> float | None:
    """Seconds since this process started (Linux: from /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            return float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; other names are passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from streamad.errors import ConfigError

        raise ConfigError(f"expected a usable device, got {name!r} but CUDA is not available; hint: use --device cpu")
    return device


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op threads in the calling thread for a while (a consumer doing heavy work
    beside single-threaded backbone workers: its own thread team would wait at barriers for
    cores they hold)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (None keeps torch's default)."""
    if threads is not None:
        torch.set_num_threads(max(1, threads))


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    """How a pipeline spends the CPU: ``workers`` backbone passes at once, ``threads`` each.

    On a CPU, torch's intra-op threads meet at a barrier after every layer, and the small layers
    of a light backbone leave them waiting: here one pass on 2 threads ran at 34 frames/s, two
    single-threaded passes side by side at 40. The other stages then run single-threaded, so no
    thread team is stalled by another stage holding one of its cores.
    """

    workers: int
    threads: int
    side_threads: int

    def worker_setup(self) -> Callable[[], None]:
        return lambda: torch.set_num_threads(self.threads)

    def side_setup(self) -> Callable[[], None]:
        return lambda: torch.set_num_threads(self.side_threads)


def thread_plan(device: torch.device, *, workers: int | None = None) -> ThreadPlan:
    """The default plan: on CUDA one backbone worker; on a CPU one worker per core, up to 2.

    Args:
        device: where the backbone runs.
        workers: concurrent backbone passes (None: the default above).
    """
    total = torch.get_num_threads()
    if workers is None:
        workers = 1 if device.type == "cuda" else max(1, min(2, total))
    if workers < 1:
        from streamad.errors import ConfigError

        raise ConfigError(f"expected --workers >= 1, got {workers}")
    if workers == 1:
        return ThreadPlan(1, total, total)
    return ThreadPlan(workers, max(1, total // workers), 1)
