"""Every error streamad raises on purpose.

Each error subclasses the builtin it resembles, so callers that catch ``FileNotFoundError`` or
``ValueError`` keep working, and reads "expected ..., got ...; hint: ...".
"""

from __future__ import annotations

import errno


class StreamadError(Exception):
    """Base class of the errors streamad raises for bad input or state."""


class SourceNotFoundError(StreamadError, FileNotFoundError):
    """A source path (video, folder, image set) does not exist."""


class EmptySourceError(StreamadError, ValueError):
    """A folder or glob matched no frames."""


class UnsupportedSourceError(StreamadError, ValueError):
    """A path exists but is not a video, an image or a folder of them."""


class DecodeError(StreamadError, OSError):
    """A video could not be opened or decoded at all."""


class StoreError(StreamadError, ValueError):
    """A store is missing, not a streamad store, or incompatible with the request."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """A store path does not exist."""


class WeightsError(StreamadError, FileNotFoundError):
    """Backbone weights are missing or do not fit the backbone."""


class ConfigError(StreamadError, ValueError):
    """An option value is out of range or inconsistent with another."""


class ShapeError(StreamadError, ValueError):
    """A tensor has the wrong shape for an op."""


def check_shape(name: str, shape: tuple[int, ...], expected: str, ok: bool) -> None:
    """Raise :class:`ShapeError` naming the tensor when ``ok`` is false."""
    if not ok:
        raise ShapeError(f"expected {name} of shape {expected}, got {tuple(shape)}")


class StoreLockedError(StreamadError, BlockingIOError):
    """Another process is writing the store."""


class Interrupted(StreamadError):
    """Ctrl-C stopped work whose partial result must not be kept (a normalisation pass)."""


class ClusterError(StreamadError, RuntimeError):
    """A cluster job could not start, or a shard of it kept failing."""


def one_line(exc: BaseException) -> str:
    """An exception as one line for the user: streamad's own message, or what happened to which
    path (file system), memory, or an unexpected error with the hint to rerun with --debug."""
    if isinstance(exc, StreamadError):
        text = str(exc)
    elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc) or "not enough memory" in str(exc):
        text = "expected the work to fit in memory, got an allocation failure; hint: lower --input-size or --batch-size, or use a machine with more memory"
    elif isinstance(exc, OSError):
        where = " ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
        hint = {errno.ENOSPC: "free space on that disk or write elsewhere", errno.EACCES: "check the permissions", errno.EROFS: "write elsewhere"}
        reason = exc.strerror or str(exc)
        text = f"could not use {where}: {reason}; hint: {hint.get(exc.errno or 0, 'check the path')}"
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        text = f"unexpected {type(exc).__name__}: {first}; hint: rerun with --debug for the traceback and report it"
    return " ".join(text.split())
