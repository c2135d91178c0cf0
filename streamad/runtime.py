"""Process-level settings for the command-line jobs (never applied on import)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import torch

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS.

    PyTorch's CPU kernels allocate fresh activations every forward pass; with glibc's defaults
    each large block is an mmap whose pages fault in again (about 5 us a page), which made the
    backbone up to 2x slower here. Raising the mmap and trim thresholds keeps the pages mapped.

    Returns:
        True when glibc accepted the settings.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError):
        return False
    return bool(ok)


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; other names are passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from streamad.errors import ConfigError

        raise ConfigError(f"expected a usable device, got {name!r} but CUDA is not available; hint: use --device cpu")
    return device


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op threads (None keeps torch's default)."""
    if threads is not None:
        torch.set_num_threads(max(1, threads))
