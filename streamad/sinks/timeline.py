"""A timeline picture: frame score against presentation time, one line per source, the
threshold and the spans above it (PNG, or SVG/PDF by the suffix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamad import plots
from streamad.frames import ScoreMap
from streamad.io.outputs import Staged


class TimelineSink:
    """Collects (pts_s, score) per source (16 bytes a frame) and draws them on ``close()``, or
    with ``staged`` on :meth:`commit` only (a job that fails leaves the previous picture)."""

    def __init__(self, path: str | Path, *, threshold: float | None = None, staged: bool = False) -> None:
        self.path, self.threshold, self.staged = Path(path), threshold, staged
        self.series: dict[str, tuple[list[float], list[float]]] = {}

    def write(self, result: ScoreMap) -> None:
        times, values = self.series.setdefault(result.ref.source_id, ([], []))
        times.append(result.ref.pts_s)
        values.append(result.score)

    def _draw(self, path: Path) -> None:
        plots.timeline({k: (np.asarray(t), np.asarray(v)) for k, (t, v) in self.series.items()}, path, threshold=self.threshold)

    def commit(self) -> None:
        if self.staged and self.series:
            target = Staged(self.path)
            try:
                self._draw(target.writing)
                target.commit()
            finally:
                target.discard()

    def close(self) -> None:
        if not self.staged and self.series:
            self._draw(self.path)
