"""Writing and reading per-frame results: ``scores.csv`` and ``scores.zarr``.

``scores.zarr`` layout (an :class:`~streamad.store.ArrayStore`)::

    attrs                 kind="streamad-scores", format_version, model (its attrs subset),
                          input_hw, frame_score (calibrated, topk_fraction, window), sources
    <source>/index        (T,) int64    0-based frame index within the source
    <source>/pts_s        (T,) float64  presentation time in seconds
    <source>/score        (T,) float32  the frame score used for decisions
    <source>/map_max      (T,) float32  maximum of the anomaly map
    <source>/map          (T, H, W) float16 at the model's input size, chunks of 16 frames
    <source>/decision     (T,) bool     score > threshold (only when a threshold applied)
    <source>/mask         (T, H, W) bool  map > threshold (only with a threshold and maps)

Anyone can write this layout (zarr v3) to have their predictions evaluated by streamad.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from streamad.errors import StoreError
from streamad.frames import ScoreMap
from streamad.store import ArrayStore, ZarrStore

FORMAT_VERSION = 1
CSV_COLUMNS = ("source", "index", "pts_s", "score")
MAP_CHUNK_FRAMES = 16  # a chunk per frame costs zarr ~1 ms of overhead each; 16 frames is ~0.1 ms


@dataclass(slots=True)
class _Pending:
    index: list[int]
    pts_s: list[float]
    score: list[float]
    map_max: list[float]
    maps: list[np.ndarray]
    decision: list[bool] = field(default_factory=list)


class ScoreWriter:
    """Append results to a CSV file and a score store, buffering ``flush_every`` frames.

    With a ``threshold``, the CSV gains a ``decision`` column (1 = anomalous frame) and the store
    ``decision`` and ``mask`` arrays. Use as a context manager; the buffered tail is written on
    exit, also after an error.
    """

    def __init__(
        self,
        csv_path: str | Path,
        store: ArrayStore,
        *,
        attrs: dict[str, Any],
        write_maps: bool = True,
        flush_every: int = 64,
        threshold: float | None = None,
    ) -> None:
        self._csv_file = open(csv_path, "w", newline="")
        self._csv = csv.writer(self._csv_file)
        self._threshold = threshold
        self._csv.writerow(CSV_COLUMNS + (("decision",) if threshold is not None else ()))
        self._store = store
        self._write_maps = write_maps
        self._flush_every = flush_every
        self._pending: dict[str, _Pending] = {}
        self._counts: dict[str, int] = {}
        self._attrs = {"kind": "streamad-scores", "format_version": FORMAT_VERSION, **attrs, "sources": {}}
        store.set_attrs(self._attrs)

    def __enter__(self) -> ScoreWriter:
        return self

    def write(self, result: ScoreMap) -> None:
        ref = result.ref
        row: tuple[object, ...] = (ref.source_id, ref.index, f"{ref.pts_s:.6f}", f"{result.score:.6g}")
        pending = self._pending.setdefault(ref.source_id, _Pending([], [], [], [], []))
        if self._threshold is not None:
            pending.decision.append(result.score > self._threshold)
            row += (int(result.score > self._threshold),)
        self._csv.writerow(row)
        pending.index.append(ref.index)
        pending.pts_s.append(ref.pts_s)
        pending.score.append(result.score)
        pending.map_max.append(result.map_max)
        if self._write_maps:
            pending.maps.append(result.anomaly_map.astype(np.float16))
        if len(pending.index) >= self._flush_every:
            self._flush(ref.source_id)

    def _flush(self, source_id: str) -> None:
        pending = self._pending.pop(source_id, None)
        if pending is None or not pending.index:
            return
        prefix = source_id
        self._store.append(f"{prefix}/index", np.asarray(pending.index, np.int64))
        self._store.append(f"{prefix}/pts_s", np.asarray(pending.pts_s, np.float64))
        self._store.append(f"{prefix}/score", np.asarray(pending.score, np.float32))
        self._store.append(f"{prefix}/map_max", np.asarray(pending.map_max, np.float32))
        if pending.decision:
            self._store.append(f"{prefix}/decision", np.asarray(pending.decision, bool))
        if pending.maps:
            maps = np.stack(pending.maps)
            self._store.append(f"{prefix}/map", maps, chunks=(MAP_CHUNK_FRAMES, *maps.shape[1:]))
            if self._threshold is not None:
                self._store.append(f"{prefix}/mask", maps > np.float32(self._threshold), chunks=(MAP_CHUNK_FRAMES, *maps.shape[1:]))
        self._counts[source_id] = self._counts.get(source_id, 0) + len(pending.index)

    def close(self) -> None:
        for source_id in list(self._pending):
            self._flush(source_id)
        self._csv_file.close()
        self._attrs["sources"] = dict(self._counts)
        self._store.set_attrs(self._attrs)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class SourceScores:
    """One source's results read back from a score store."""

    index: np.ndarray
    pts_s: np.ndarray
    score: np.ndarray
    map_max: np.ndarray
    maps: MapRows | None  # None when maps were not written


class MapRows:
    """A source's (T, H, W) maps, read from the store only when indexed: ``maps[i]``, ``maps[i:j]``."""

    def __init__(self, store: ArrayStore, name: str, length: int) -> None:
        self.store, self.name, self.length = store, name, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, rows: int | slice) -> np.ndarray:
        if isinstance(rows, int):
            row = rows + self.length if rows < 0 else rows
            if not 0 <= row < self.length:
                raise IndexError(f"map {rows} of {self.length}")
            return self.store.read_rows(self.name, row, row + 1)[0]
        start, stop, step = rows.indices(self.length)
        if step != 1:
            raise ValueError("expected a contiguous slice of maps")
        return self.store.read_rows(self.name, start, stop)


def open_scores(path: str | Path) -> tuple[ZarrStore, dict[str, Any]]:
    """Open a score store and check its format."""
    store = ZarrStore(path, mode="r")
    attrs = store.attrs()
    if attrs.get("kind") != "streamad-scores" or attrs.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"expected a streamad score store (format {FORMAT_VERSION}) at {path}, got kind={attrs.get('kind')!r} format={attrs.get('format_version')!r}"
        )
    return store, attrs


def read_source(store: ArrayStore, source_id: str, *, with_maps: bool = False) -> SourceScores:
    """A source's results; its maps (``with_maps``) are read lazily, a slice at a time.

    ``index`` and ``score`` are required; ``pts_s`` and ``map_max`` read as NaN when a store
    written by another tool lacks them.
    """
    index = store.read(f"{source_id}/index")
    scores = store.read(f"{source_id}/score")
    if scores.shape != index.shape:
        raise StoreError(f"expected one score per index for source {source_id!r}, got {scores.shape[0]} scores for {index.shape[0]} indices")
    maps = MapRows(store, f"{source_id}/map", len(index)) if with_maps and store.exists(f"{source_id}/map") else None

    def optional(name: str) -> np.ndarray:
        return store.read(f"{source_id}/{name}") if store.exists(f"{source_id}/{name}") else np.full(index.shape, np.nan)

    return SourceScores(index=index, pts_s=optional("pts_s"), score=scores, map_max=optional("map_max"), maps=maps)
