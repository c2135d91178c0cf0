"""The score store format (``scores.zarr``) and reading it back; :mod:`streamad.sinks.score_writer` writes it.

``scores.zarr`` layout (an :class:`~streamad.stores.array_store.ArrayStore`)::

    attrs                 kind="streamad-scores", format_version, model (its attrs subset),
                          input_hw, frame_score (normalised, topk_fraction, window), sources
    <source>/index        (T,) int64    0-based frame index within the source
    <source>/pts_s        (T,) float64  presentation time in seconds
    <source>/score        (T,) float32  the frame score used for decisions
    <source>/map_max      (T,) float32  maximum of the anomaly map
    <source>/pooled       (T,) float32  the frame score before the temporal filters (optional)
    <source>/map          (T, H, W) float16 at the model's input size, chunks of 16 frames
    <source>/decision     (T,) bool     score > threshold (only when a threshold applied)
    <source>/mask         (T, H, W) bool  map > threshold (only with a threshold and maps)

Anyone can write this layout (zarr v3) to have their predictions evaluated by streamad.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamad.errors import StoreError
from streamad.stores.array_store import ArrayStore, ZarrStore

KIND = "streamad-scores"
FORMAT_VERSION = 1
MAP_CHUNK_FRAMES = 16  # a chunk per frame costs zarr ~1 ms of overhead each; 16 frames is ~0.1 ms


@dataclass(frozen=True, slots=True)
class SourceScores:
    """One source's results read back from a score store."""

    index: np.ndarray
    pts_s: np.ndarray
    score: np.ndarray
    map_max: np.ndarray
    pooled: np.ndarray  # before the temporal filters (the score itself when a store lacks it)
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


def create_scores(path: str | Path) -> ZarrStore:
    """A new score store at ``path`` (locked; published by its writer): it may replace a score
    store, never another kind of store."""
    if (Path(path) / "zarr.json").is_file():
        kind = ZarrStore(path, mode="r").attrs().get("kind")
        if kind != KIND:
            raise StoreError(f"expected {path} to be a score store to replace, got a store of kind {kind!r}; hint: write the scores to another folder (-o)")
    return ZarrStore(path, mode="w")


def open_scores(path: str | Path) -> tuple[ZarrStore, dict[str, Any]]:
    """Open a score store and check its format."""
    store = ZarrStore(path, mode="r")
    attrs = store.attrs()
    if attrs.get("kind") != KIND or attrs.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"expected a streamad score store (format {FORMAT_VERSION}) at {path}, got kind={attrs.get('kind')!r} format={attrs.get('format_version')!r}"
        )
    return store, attrs


def read_source(store: ArrayStore, source_id: str, *, with_maps: bool = False) -> SourceScores:
    """A source's results; its maps (``with_maps``) are read lazily, a slice at a time.

    ``index`` and ``score`` are required; ``pts_s`` and ``map_max`` read as NaN when a store
    written by another tool lacks them. Rows beyond the count in the ``sources`` attribute (a
    writer that crashed between appends) are left out.
    """
    committed = (store.attrs().get("sources") or {}).get(source_id)  # rows a writer finished
    rows = slice(None) if committed is None else slice(0, int(committed))
    index = store.read(f"{source_id}/index")[rows]
    scores = store.read(f"{source_id}/score")[rows]
    if scores.shape != index.shape:
        raise StoreError(f"expected one score per index for source {source_id!r}, got {scores.shape[0]} scores for {index.shape[0]} indices")
    maps = MapRows(store, f"{source_id}/map", len(index)) if with_maps and store.exists(f"{source_id}/map") else None

    def optional(name: str) -> np.ndarray:
        return store.read(f"{source_id}/{name}")[rows] if store.exists(f"{source_id}/{name}") else np.full(index.shape, np.nan)

    pooled = store.read(f"{source_id}/pooled")[rows] if store.exists(f"{source_id}/pooled") else scores
    return SourceScores(index=index, pts_s=optional("pts_s"), score=scores, map_max=optional("map_max"), pooled=pooled, maps=maps)
