"""A timeline picture: frame score against presentation time, one line per source, the
threshold and the spans above it (PNG, or SVG/PDF by the suffix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamad import plots
from streamad.frames import ScoreMap


class TimelineSink:
    """Collects (pts_s, score) per source (16 bytes a frame) and draws them on ``close()``."""

    def __init__(self, path: str | Path, *, threshold: float | None = None) -> None:
        self.path, self.threshold = Path(path), threshold
        self.series: dict[str, tuple[list[float], list[float]]] = {}

    def write(self, result: ScoreMap) -> None:
        times, values = self.series.setdefault(result.ref.source_id, ([], []))
        times.append(result.ref.pts_s)
        values.append(result.score)

    def close(self) -> None:
        if self.series:
            plots.timeline({k: (np.asarray(t), np.asarray(v)) for k, (t, v) in self.series.items()}, self.path, threshold=self.threshold)
