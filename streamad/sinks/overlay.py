"""Overlay videos: each frame with its anomaly map as a heatmap, one video per source."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from streamad import pictures
from streamad.frames import ScoreMap
from streamad.io.decode import VideoWriter
from streamad.io.outputs import Staged


def display_range(threshold: float | None) -> tuple[float, float]:
    """The heatmap's colour range around a threshold (maps share the frame scores' units)."""
    thr = threshold if threshold is not None and threshold > 0 else 1.0
    return 0.5 * thr, 1.5 * thr


class OverlaySink:
    """Writes ``path`` (or ``<stem>-<source><suffix>`` per source when there are several).

    Results need their ``original`` frame (the job keeps originals when this sink is used).

    Args:
        path: the video to write.
        fps: each source's frame rate.
        threshold: frames above it get a red border; it also centres the colour range.
        staged: each video written beside its path and moved there by :meth:`commit` (a job
            that fails leaves the previous videos).
        layers: the panels side by side, each a heat map of ``combined`` (the anomaly map) or of
            one cue (``appearance``, ``motion``, ``speed``), labelled; the moving regions of a
            model with the speed cue are boxed, with their speed, on ``combined`` and ``speed``.
    """

    def __init__(
        self, path: str | Path, *, fps: Mapping[str, float], threshold: float | None, layers: Sequence[str] = ("combined",), staged: bool = False
    ) -> None:
        self.path, self.fps, self.threshold, self.staged = Path(path), dict(fps), threshold, staged
        self._targets: list[Staged] = []
        self.layers = tuple(layers)
        self.many = len(self.fps) > 1
        self.writers: dict[str, VideoWriter] = {}
        self.paths: list[str] = []
        self._stack = contextlib.ExitStack()
        self.vmin, self.vmax = display_range(threshold)

    def write(self, result: ScoreMap) -> None:
        if result.original is None:
            return
        sid = result.ref.source_id
        if sid not in self.writers:
            target = self.path.with_name(f"{self.path.stem}-{sid}{self.path.suffix}") if self.many else self.path
            self._targets.append(Staged(target, staged=self.staged))
            self.writers[sid] = self._stack.enter_context(VideoWriter(self._targets[-1].writing, fps=self.fps.get(sid, 25.0)))
            self.paths.append(str(target))
        alert = self.threshold is not None and result.score > self.threshold
        panels: list[np.ndarray] = []
        for layer in self.layers:
            shown = result.anomaly_map if layer == "combined" else (result.layers or {})[layer]
            panel = pictures.overlay(result.original, shown, vmin=self.vmin, vmax=self.vmax, score=result.score if not panels else None, alert=alert)
            if result.regions is not None and layer in ("combined", "speed"):
                panel = pictures.boxes(panel, result.regions)
            panels.append(pictures.label(panel, layer) if len(self.layers) > 1 else panel)
        self.writers[sid].write(np.hstack(panels))

    def commit(self) -> None:
        self._stack.close()
        for target in self._targets:
            target.commit()

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            for target in self._targets:
                target.discard()
