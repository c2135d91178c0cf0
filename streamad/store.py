"""Array stores: a small protocol with a zarr v3 backend and an in-memory one.

This is the only module that imports zarr. A store holds named n-d arrays (``"stats/g1/m2"``)
and one JSON attribute dict at its root. Writing the root attributes is atomic (zarr's local
store writes a temporary file and renames it), which is what makes model checkpoints atomic: new
arrays are written under fresh names first and the attributes that point at them are replaced
last (see :mod:`streamad.model_store`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import zarr

from streamad.errors import StoreError, StoreNotFoundError


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

    def write(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        """Create or overwrite array ``name``."""
        ...

    def append(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        """Append along axis 0, creating the array on first use."""
        ...

    def exists(self, name: str) -> bool: ...

    def arrays(self, prefix: str = "") -> list[str]:
        """Names of the arrays under ``prefix`` (recursive, sorted)."""
        ...

    def delete(self, prefix: str) -> None:
        """Remove an array or a whole group; no error if absent."""
        ...


_STREAM_CODEC = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


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

    def write(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        self._arrays[name] = np.array(array, copy=True)

    def append(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        if name in self._arrays:
            self._arrays[name] = np.concatenate([self._arrays[name], np.asarray(array, self._arrays[name].dtype)])
        else:
            self.write(name, array)

    def exists(self, name: str) -> bool:
        return name in self._arrays

    def arrays(self, prefix: str = "") -> list[str]:
        root = prefix.rstrip("/") + "/" if prefix else ""
        return sorted(n for n in self._arrays if n.startswith(root) or n == prefix)

    def delete(self, prefix: str) -> None:
        for name in self.arrays(prefix):
            del self._arrays[name]


class ZarrStore:
    """A zarr v3 group on the local file system as an :class:`ArrayStore`.

    Args:
        path: the ``.zarr`` folder.
        mode: ``"r"`` (must exist), ``"a"`` (create if missing) or ``"w"`` (start empty).
    """

    def __init__(self, path: str | Path, *, mode: str = "a") -> None:
        self.path = Path(path)
        if mode == "r" and not (self.path / "zarr.json").is_file():
            if not self.path.exists():
                raise StoreNotFoundError(f"expected a store at {self.path}, got no such path; hint: run `streamad fit` first")
            raise StoreError(f"expected a zarr store at {self.path}, got a path without zarr.json; hint: is this a streamad store?")
        if mode == "w" and self.path.exists():
            if self.path.is_dir() and not (self.path / "zarr.json").is_file() and any(self.path.iterdir()):
                raise StoreError(f"expected a new or existing store at {self.path}, got a non-empty folder that is not a store; hint: choose another path")
            if self.path.is_file():
                raise StoreError(f"expected a store folder at {self.path}, got a file")
            shutil.rmtree(self.path)
        try:
            self._group = zarr.open_group(str(self.path), mode="r" if mode == "r" else "a")
        except (zarr.errors.ContainsArrayError, zarr.errors.GroupNotFoundError, ValueError, NotADirectoryError, FileExistsError) as exc:
            raise StoreError(f"expected a zarr group at {self.path}, got something else ({exc})") from exc
        self.read_only = mode == "r"

    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs.asdict())

    def set_attrs(self, attrs: dict[str, Any]) -> None:
        attrs = _check_json(attrs)
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
        return np.asarray(self._array(name)[...])

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._array(name)[start:stop])

    def write(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        array = np.asarray(array)
        target = self._group.create_array(name, shape=array.shape, dtype=array.dtype, chunks=chunks or "auto", overwrite=True)
        if array.size:
            target[...] = array

    def append(self, name: str, array: np.ndarray, *, chunks: tuple[int, ...] | None = None) -> None:
        """Appended arrays are streamed results: compressed with LZ4 after a byte shuffle, which
        writes float16 maps about 4x faster than zarr's default zstd for 25 % more bytes."""
        array = np.asarray(array)
        if not self.exists(name):
            self._group.create_array(name, shape=(0, *array.shape[1:]), dtype=array.dtype, chunks=chunks or (1024, *array.shape[1:]), compressors=_STREAM_CODEC)
        self._array(name).append(array, axis=0)

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
