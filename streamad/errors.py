"""Every error streamad raises on purpose.

Each error subclasses the builtin it resembles, so callers that catch ``FileNotFoundError`` or
``ValueError`` keep working, and reads "expected ..., got ...; hint: ...".
"""

from __future__ import annotations


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


class ClusterError(StreamadError, RuntimeError):
    """A cluster job could not start, or a shard of it kept failing."""
