"""``scores.zarr``: results in the score store format (:mod:`streamad.stores.score_store`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamad.frames import ScoreMap
from streamad.stores.array_store import ArrayStore, ZarrStore
from streamad.stores.score_store import FORMAT_VERSION, KIND, MAP_CHUNK_FRAMES


@dataclass(slots=True)
class _Pending:
    index: list[int]
    pts_s: list[float]
    score: list[float]
    map_max: list[float]
    maps: list[np.ndarray]
    pooled: list[float] = field(default_factory=list)
    decision: list[bool] = field(default_factory=list)


class ScoreStoreSink:
    """Append results to a score store, buffering ``flush_every`` frames per source.

    With a ``threshold``, the store gains ``decision`` and ``mask`` arrays. Each flush ends by
    recording the source's row count in the root attributes (one atomic write): a reader takes
    only those rows, so a store left by a crash reads as the frames flushed before it.
    ``close()`` writes the buffered tail and releases the store. With ``publish=False`` a new
    store appears at its path only on :meth:`commit` (a job that fails leaves the previous
    one); else at once, so readers follow the job.

    Without ``attrs`` it writes a part: its sources' arrays only, never the root attributes,
    whose writer records the parts' row counts (:meth:`record`) once they are complete.
    """

    def __init__(
        self,
        store: ArrayStore,
        *,
        attrs: dict[str, Any] | None,
        write_maps: bool = True,
        flush_every: int = 64,
        threshold: float | None = None,
        publish: bool = True,
    ) -> None:
        self._threshold = threshold
        self._store = store
        self._write_maps = write_maps
        self._flush_every = flush_every
        self._pending: dict[str, _Pending] = {}
        self._counts: dict[str, int] = {}
        self._attrs = None if attrs is None else {"kind": KIND, "format_version": FORMAT_VERSION, **attrs, "sources": {}}
        if self._attrs is not None:
            store.set_attrs(self._attrs)
            if publish:
                store.publish()

    def record(self, counts: dict[str, int]) -> None:
        """Record rows another writer (a part) wrote, as this store's own."""
        self._counts.update(counts)
        self._commit_counts()

    def _commit_counts(self) -> None:
        if self._attrs is not None:
            self._attrs["sources"] = dict(self._counts)
            self._store.set_attrs(self._attrs)

    def write(self, result: ScoreMap) -> None:
        ref = result.ref
        pending = self._pending.setdefault(ref.source_id, _Pending([], [], [], [], []))
        if self._threshold is not None:
            pending.decision.append(result.score > self._threshold)
        pending.index.append(ref.index)
        pending.pts_s.append(ref.pts_s)
        pending.score.append(result.score)
        pending.map_max.append(result.map_max)
        pending.pooled.append(result.score if result.pooled is None else result.pooled)
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
        self._store.append(f"{prefix}/pooled", np.asarray(pending.pooled, np.float32))
        if pending.decision:
            self._store.append(f"{prefix}/decision", np.asarray(pending.decision, bool))
        if pending.maps:
            maps = np.stack(pending.maps)
            self._store.append(f"{prefix}/map", maps, chunks=(MAP_CHUNK_FRAMES, *maps.shape[1:]))
            if self._threshold is not None:
                self._store.append(f"{prefix}/mask", maps > np.float32(self._threshold), chunks=(MAP_CHUNK_FRAMES, *maps.shape[1:]))
        self._counts[source_id] = self._counts.get(source_id, 0) + len(pending.index)
        self._commit_counts()

    @property
    def folder(self) -> str:
        """Where the store's files are written now (beside its path until published)."""
        return str(self._store.folder) if isinstance(self._store, ZarrStore) else ""

    def _flush_all(self) -> None:
        for source_id in list(self._pending):
            self._flush(source_id)

    def commit(self) -> None:
        """Write the buffered tail and publish the store."""
        self._flush_all()
        self._store.publish()

    def close(self) -> None:
        self._flush_all()
        self._store.close()
