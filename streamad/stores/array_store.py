"""Array stores: a small protocol with a zarr v3 backend and an in-memory one.

This is the only module that imports zarr. A store holds named n-d arrays (``"stats/g1/m2"``)
and one JSON attribute dict at its root. Writing the root attributes is atomic (zarr's local
store writes a temporary file and renames it), which is what makes model checkpoints atomic: new
arrays are written under fresh names first and the attributes that point at them are replaced
last (see :mod:`streamad.stores.model_store`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from streamad.errors import StoreError, StoreNotFoundError
from streamad.stores.locking import WriterLock, lock_path, readers


@runtime_checkable
class ArrayStore(Protocol):
    """What streamad needs from a store."""

    def attrs(self) -> dict[str, Any]:
        """The root attributes (a JSON-compatible dict)."""
        ...

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        """Replace the root attributes in one atomic write."""
        ...

    def read(self, name: str) -> np.ndarray:
        """The whole array ``name``; :class:`StoreError` if absent."""
        ...

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (along axis 0) of array ``name``, reading only those."""
        ...

    def write(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None, compressed: bool = True) -> None:
        """Create or overwrite array ``name`` (``compressed``: with the backend's default codec)."""
        ...

    def append(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        """Append along axis 0, creating the array on first use."""
        ...

    def reserve(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        """Create array ``name`` (one chunk per row, uncompressed) unless it exists with this shape."""
        ...

    def write_row(self, name: str, row: int, array: np.ndarray) -> None:
        """Overwrite row ``row`` of a reserved array."""
        ...

    def exists(self, name: str) -> bool: ...

    def arrays(self, prefix: str = "") -> list[str]:
        """Names of the arrays under ``prefix`` (recursive, sorted)."""
        ...

    def delete(self, prefix: str) -> None:
        """Remove an array or a whole group; no error if absent."""
        ...

    def reading(self, *, exclusive: bool = False) -> contextlib.AbstractContextManager[None]:
        """Shared: files read inside are not deleted meanwhile; exclusive: a writer deleting."""
        ...

    def publish(self) -> None:
        """Make a newly written store visible at its path (see :class:`ZarrStore`)."""
        ...

    def close(self) -> None:
        """Release what the store holds (its writer lock)."""
        ...


_STREAM_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _check_json(attrs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(attrs))  # copies, and fails early on non-JSON values


class MemoryStore:
    """An in-memory :class:`ArrayStore` (tests, and scoring without writing to disk)."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._attrs: dict[str, Any] = {}

    def attrs(self) -> dict[str, Any]:
        return _check_json(self._attrs)

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        self._attrs = _check_json(attrs)

    def read(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            raise StoreError(f"expected array {name!r} in the store, got none")
        return self._arrays[name].copy()

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.read(name)[start:stop]

    def write(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None, compressed: bool = True) -> None:
        self._arrays[name] = np.array(array, copy=True)

    def append(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        if name in self._arrays:
            self._arrays[name] = np.concatenate([self._arrays[name], np.asarray(array, self._arrays[name].dtype)])
        else:
            self.write(name, array)

    def reserve(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        if name not in self._arrays or self._arrays[name].shape != tuple(shape):
            self._arrays[name] = np.zeros(shape, dtype)

    def write_row(self, name: str, row: int, array: np.ndarray) -> None:
        self._arrays[name][row] = array

    def exists(self, name: str) -> bool:
        return name in self._arrays

    def arrays(self, prefix: str = "") -> list[str]:
        root = prefix.rstrip("/") + "/" if prefix else ""
        return sorted(n for n in self._arrays if n.startswith(root) or n == prefix)

    def delete(self, prefix: str) -> None:
        for name in self.arrays(prefix):
            del self._arrays[name]

    def reading(self, *, exclusive: bool = False) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def publish(self) -> None:
        pass

    def close(self) -> None:
        pass


class ZarrStore:
    """A zarr v3 group on the local file system as an :class:`ArrayStore`.

    A store opened to write holds its writer lock (:class:`~streamad.stores.locking.WriterLock`) until
    :meth:`close`: a second writer gets :class:`~streamad.errors.StoreLockedError`.
    A new store (mode ``"w"``) is built beside its path (``.NAME.new``) and appears there only
    when :meth:`publish` swaps it in, so a crash before then leaves the old store (or none),
    never a half-written one.

    Args:
        path: the ``.zarr`` folder.
        mode: ``"r"`` (must exist), ``"a"`` (create if missing) or ``"w"`` (a new store,
            replacing the one at ``path`` once published).
        delegate: write an existing store without its writer lock, for a worker of the job that
            holds it (a cluster score's actors, each writing only its own sources' arrays).
    """

    def __init__(self, path: str | Path, *, mode: str = "a", delegate: bool = False) -> None:
        self.path = Path(path)
        self.read_only = mode == "r"
        self._lock: WriterLock | None = None
        self._building: Path | None = None
        if mode == "r" and not (self.path / "zarr.json").is_file():
            if not self.path.exists():
                raise StoreNotFoundError(f"expected a store at {self.path}, got no such path; hint: run `streamad fit` first")
            raise StoreError(f"expected a zarr store at {self.path}, got a path without zarr.json; hint: is this a streamad store?")
        if mode == "w" and self.path.exists():
            if self.path.is_dir() and not (self.path / "zarr.json").is_file() and any(self.path.iterdir()):
                raise StoreError(f"expected a new or existing store at {self.path}, got a non-empty folder that is not a store; hint: choose another path")
            if self.path.is_file():
                raise StoreError(f"expected a store folder at {self.path}, got a file")
        if delegate and (mode != "a" or not (self.path / "zarr.json").is_file()):
            raise StoreError(f"expected an existing store at {self.path} to write as a delegate, got none")
        if mode != "r" and not delegate:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = WriterLock(self.path)
            _recover(self.path)
        if mode == "w":
            self._building = lock_path(self.path, "new")
        self._group = self._open(self._building or self.path, "r" if mode == "r" else "a")

    def _open(self, where: Path, mode: Literal["r", "a"]) -> zarr.Group:
        try:
            return zarr.open_group(str(where), mode=mode)
        except (zarr.errors.ContainsArrayError, zarr.errors.GroupNotFoundError, ValueError, NotADirectoryError, FileExistsError) as exc:
            raise StoreError(f"expected a zarr group at {self.path}, got something else ({exc}); hint: is this a streamad store?") from exc

    @property
    def folder(self) -> Path:
        """Where the store's files are: beside its path (``.NAME.new``) until a new store is
        published (delegates of the job that holds it write there)."""
        return self._building or self.path

    def publish(self) -> None:
        """Make a new store (mode ``"w"``) appear at its path, replacing what was there in one
        step; a no-op once published and for stores opened otherwise."""
        if self._building is None:
            return
        if not self.path.exists():  # nothing to replace, no reader to wait for
            os.rename(self._building, self.path)
        else:
            self._replace(self._building)
        self._building = None
        self._group = self._open(self.path, "a")

    def _replace(self, building: Path) -> None:
        with readers(self.path, exclusive=True):
            if _exchange(building, self.path):
                shutil.rmtree(building)  # now the replaced store
            else:
                old = lock_path(self.path, "old")
                os.rename(self.path, old)
                os.rename(building, self.path)
                shutil.rmtree(old)

    def close(self) -> None:
        """Release the writer lock; a new store never published is discarded."""
        if self._building is not None:
            shutil.rmtree(self._building, ignore_errors=True)
            self._building = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ZarrStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.publish()
        self.close()

    def reading(self, *, exclusive: bool = False) -> contextlib.AbstractContextManager[None]:
        """Hold the readers lock: while it is held shared, no writer deletes or replaces files."""
        return readers(self.path, exclusive=exclusive)

    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs.asdict())

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        """An OS error while writing (a full disk) names the array it was writing."""
        try:
            yield
        except OSError as exc:
            if exc.filename:
                raise
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path / name)) from exc

    @contextlib.contextmanager
    def _damage(self, name: str) -> Iterator[None]:
        """A chunk that fails to decode (truncated, emptied) is a store error naming the array."""
        try:
            yield
        except StoreError:
            raise
        except (ValueError, RuntimeError, TypeError, OSError) as exc:
            raise StoreError(
                f"expected readable data in {self.path / name}, got a damaged chunk ({type(exc).__name__}: {exc}); "
                "hint: the store was damaged outside streamad; refit it or restore it from a copy"
            ) from exc

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        attrs = _check_json(attrs)
        with self._writing("zarr.json"):
            self._group.attrs.put(attrs)

    def _array(self, name: str) -> zarr.Array:
        try:
            node = self._group[name]
        except KeyError as exc:
            raise StoreError(f"expected array {name!r} in store {self.path}, got none; hint: the store may be incomplete or from another version") from exc
        if not isinstance(node, zarr.Array):
            raise StoreError(f"expected {name!r} in {self.path} to be an array, got a group")
        return node

    def read(self, name: str) -> np.ndarray:
        with self._damage(name):
            return np.asarray(self._array(name)[...])

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        with self._damage(name):
            return np.asarray(self._array(name)[start:stop])

    def write(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None, compressed: bool = True) -> None:
        array = np.asarray(array)
        with self._writing(name):
            target = self._group.create_array(
                name,
                shape=array.shape,
                dtype=array.dtype,
                chunks=chunks or "auto",
                overwrite=True,
                compressors="auto" if compressed else None,
                config={"write_empty_chunks": True},  # not compared with the fill value first: a pass over every chunk
            )
            rows = target.chunks[0] if array.ndim else 0
            if array.ndim and array.shape[0] > rows:  # a chunk at a time: zarr's concurrent writes would hold ten encoded chunks at once
                for start in range(0, array.shape[0], rows):
                    target[start : start + rows] = array[start : start + rows]
            elif array.size:
                target[...] = array

    def append(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        """Appended arrays are streamed results: compressed with LZ4 after a byte shuffle, which
        writes float16 maps about 4x faster than zarr's default zstd for 25 % more bytes."""
        array = np.asarray(array)
        with self._writing(name):
            if not self.exists(name):
                shape, rows = (0, *array.shape[1:]), (1024, *array.shape[1:])
                self._group.create_array(name, shape=shape, dtype=array.dtype, chunks=chunks or rows, compressors=_STREAM_CODEC)
            self._array(name).append(array, axis=0)

    def reserve(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        if self.exists(name) and self._array(name).shape == tuple(shape):
            return
        with self._writing(name):
            self._group.create_array(name, shape=shape, dtype=dtype, chunks=(1, *shape[1:]), compressors=None, fill_value=0, overwrite=True)

    def write_row(self, name: str, row: int, array: np.ndarray) -> None:
        with self._writing(name):
            self._array(name)[row] = array

    def exists(self, name: str) -> bool:
        try:
            return isinstance(self._group[name], zarr.Array)
        except KeyError:
            return False

    def arrays(self, prefix: str = "") -> list[str]:
        try:
            group = self._group[prefix] if prefix else self._group
        except KeyError:
            return []
        if isinstance(group, zarr.Array):
            return [prefix]
        base = prefix.rstrip("/") + "/" if prefix else ""
        return sorted(base + name for name, _ in group.arrays()) + sorted(name for sub, _ in group.groups() for name in self.arrays(base + sub))

    def delete(self, prefix: str) -> None:
        try:
            del self._group[prefix]
        except KeyError:
            pass


def _recover(path: Path) -> None:
    """With the writer lock held: finish a swap a crash interrupted, and drop a dead writer's
    unpublished store."""
    new, old = lock_path(path, "new"), lock_path(path, "old")
    if old.exists() and not path.exists():
        os.rename(new if new.exists() else old, path)
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
