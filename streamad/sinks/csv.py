"""``scores.csv``: one row per frame (source, index, pts_s, score[, decision])."""

from __future__ import annotations

import csv
from pathlib import Path

from streamad.frames import ScoreMap
from streamad.io.outputs import Staged

CSV_COLUMNS = ("source", "index", "pts_s", "score")


class CsvSink:
    """Rows of frame scores; with a ``threshold`` a ``decision`` column (1 = anomalous).

    ``staged``: written beside ``path`` and moved there by :meth:`commit` (a job that fails
    leaves the previous file); else written in place, row by row (a live log)."""

    def __init__(self, path: str | Path, *, threshold: float | None = None, staged: bool = False) -> None:
        self.path = Path(path)
        self._target = Staged(self.path, staged=staged)
        self._file = open(self._target.writing, "w", newline="")
        self._csv = csv.writer(self._file)
        self._threshold = threshold
        self._csv.writerow(CSV_COLUMNS + (("decision",) if threshold is not None else ()))

    def write(self, result: ScoreMap) -> None:
        ref = result.ref
        row: tuple[object, ...] = (ref.source_id, ref.index, f"{ref.pts_s:.6f}", f"{result.score:.6g}")
        if self._threshold is not None:
            row += (int(result.score > self._threshold),)
        self._csv.writerow(row)

    def commit(self) -> None:
        self._file.close()
        self._target.commit()

    def close(self) -> None:
        self._file.close()
        self._target.discard()
