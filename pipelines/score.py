"""``streamad score``: anomaly maps and frame scores for every frame of the sources."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.common import Progress, embed_stage, expected_frames, frames_of, graceful_interrupt, no_progress
from streamad import pictures, stages
from streamad.decode import VideoWriter, probe
from streamad.errors import ConfigError
from streamad.frames import ScoreMap
from streamad.model_store import Calibration, load_model, open_store, read_threshold
from streamad.runner import DropLog, Runner
from streamad.runtime import thread_plan
from streamad.score_store import ScoreWriter
from streamad.sources import Source, VideoFile, resolve_sources
from streamad.store import ArrayStore, ZarrStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScoreOptions:
    every: int = 1
    start: int = 0
    stop: int | None = None
    batch_size: int = 8
    score_batch: int = 32
    frame_score: stages.FrameScoreConfig = stages.FrameScoreConfig()
    write_maps: bool = True
    device: str = "cpu"
    workers: int | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"expected --every >= 1, got {self.every}")
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise ConfigError(f"expected 0 <= --start < --stop, got start={self.start}, stop={self.stop}")


@dataclass(slots=True)
class ScoreSummary:
    out_dir: str
    csv: str
    store: str
    frames: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    overlays: list[str] = field(default_factory=list)
    plot: str | None = None
    interrupted: bool = False
    threshold: float | None = None
    decisions: bool = False
    anomalous: dict[str, int] = field(default_factory=dict)


def normal_threshold(calibration: Calibration | None, *, quantile: float = 0.99) -> float | None:
    """A display threshold: the ``quantile`` of frame scores on the model's normal frames."""
    if calibration is None or not len(calibration.normal_scores):
        return None
    return float(np.quantile(calibration.normal_scores, quantile))


def decision_threshold_for(model_store: ArrayStore, given: float | None, frame_score: dict[str, Any]) -> float | None:
    """``given`` (``--threshold``), else the model's stored threshold when it was set for these
    frame-score settings; None means no decisions are written."""
    if given is not None:
        return given
    stored = read_threshold(model_store)
    if stored is None:
        return None
    if stored.frame_score != frame_score:
        logger.warning(
            "the stored threshold was set for frame scores %s, not %s: no decisions written; hint: run `streamad calibrate` with these settings",
            stored.frame_score,
            frame_score,
        )
        return None
    return stored.value


class _Overlays:
    """One overlay video per source, written as results arrive."""

    def __init__(self, path: Path | None, sources: Sequence[Source], threshold: float | None) -> None:
        self.path, self.threshold = path, threshold
        self.fps = {s.source_id: (probe(s.path).fps if isinstance(s, VideoFile) else s.fps) for s in sources}
        self.many = len(sources) > 1
        self.writers: dict[str, VideoWriter] = {}
        self.paths: list[str] = []
        self.stack = contextlib.ExitStack()
        thr = threshold if threshold is not None and threshold > 0 else 1.0
        self.vmin, self.vmax = 0.5 * thr, 1.5 * thr

    def write(self, result: ScoreMap) -> None:
        if self.path is None or result.original is None:
            return
        sid = result.ref.source_id
        if sid not in self.writers:
            target = self.path.with_name(f"{self.path.stem}-{sid}{self.path.suffix}") if self.many else self.path
            self.writers[sid] = self.stack.enter_context(VideoWriter(target, fps=self.fps[sid]))
            self.paths.append(str(target))
        alert = self.threshold is not None and result.score > self.threshold
        frame = pictures.overlay(result.original, result.anomaly_map, vmin=self.vmin, vmax=self.vmax, score=result.score, alert=alert)
        self.writers[sid].write(frame)

    def close(self) -> None:
        self.stack.close()


def score(
    specs: Sequence[str | Path | Source],
    model_path: str | Path,
    out_dir: str | Path,
    *,
    options: ScoreOptions = ScoreOptions(),
    overlay: str | Path | None = None,
    plot: str | Path | None = None,
    weights: str | None = None,
    progress: Progress = no_progress,
) -> ScoreSummary:
    """Score every frame of ``specs`` against the model in ``model_path``.

    Writes ``out_dir/scores.csv`` and ``out_dir/scores.zarr``; optionally an overlay video and a
    timeline plot.
    """
    sources = resolve_sources(specs)
    model_store = open_store(model_path, mode="r")
    model, calibration = load_model(model_store, where=str(model_path), device=options.device, weights=weights)
    frame_config = options.frame_score
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = ScoreSummary(str(out), str(out / "scores.csv"), str(out / "scores.zarr"))
    frame_score = frame_config.attrs()
    decision_threshold = decision_threshold_for(model_store, options.threshold, frame_score)
    summary.decisions = decision_threshold is not None
    summary.threshold = decision_threshold if decision_threshold is not None else (normal_threshold(calibration) if frame_config.calibrated else None)
    attrs = {
        "model": {key: model_store.attrs()[key] for key in ("method", "backbone", "weights_sha256", "input_hw", "k", "seed", "frames_seen")},
        "model_path": str(Path(model_path).resolve()),
        "input_hw": list(model.config.input_hw),
        "frame_score": frame_score,
        "every": options.every,
        "threshold": summary.threshold,
        "decision_threshold": decision_threshold,
    }
    drops = DropLog()
    runner = Runner()
    plan = thread_plan(model.device, workers=options.workers)
    overlays = _Overlays(Path(overlay) if overlay else None, sources, summary.threshold)
    series: dict[str, tuple[list[float], list[float]]] = {}
    keep = overlay is not None
    progress.start("scoring", expected_frames(sources, every=options.every, frame_range=(options.start, options.stop)))
    with (
        graceful_interrupt(runner) as interrupted,
        overlays.stack,
        ScoreWriter(summary.csv, ZarrStore(summary.store, mode="w"), attrs=attrs, write_maps=options.write_maps, threshold=decision_threshold) as writer,
    ):
        frames = runner.source(
            lambda: frames_of(
                sources, every=options.every, start=None, drops=drops, should_stop=runner.stopping.is_set, frame_range=(options.start, options.stop)
            ),
            maxsize=32,
            name="decode",
        )
        tensors = runner.stage(
            lambda fs: stages.preprocess(stages.batch_frames(fs, max_batch=options.batch_size), model, keep_originals=keep),
            frames,
            name="preprocess",
            setup=plan.side_setup(),
        )
        features = embed_stage(runner, tensors, model, plan)
        results: Iterator[ScoreMap] = runner.stage(
            lambda fs: stages.score(stages.rebatch(fs, min_frames=options.score_batch), model, calibration=calibration, config=frame_config),
            features,
            maxsize=64,
            name="scorer",
            setup=plan.side_setup(),
        )
        for result in stages.smooth(runner.consume(results), window=frame_config.window):
            writer.write(result)
            overlays.write(result)
            times, values = series.setdefault(result.ref.source_id, ([], []))
            times.append(result.ref.pts_s)
            values.append(result.score)
            summary.frames[result.ref.source_id] = summary.frames.get(result.ref.source_id, 0) + 1
            if decision_threshold is not None and result.score > decision_threshold:
                summary.anomalous[result.ref.source_id] = summary.anomalous.get(result.ref.source_id, 0) + 1
            progress.advance(1)
        summary.interrupted = interrupted[0]
    progress.finish()
    summary.overlays = overlays.paths
    summary.dropped = drops.by_reason()
    if plot is not None:
        pictures.timeline({k: (np.asarray(t), np.asarray(v)) for k, (t, v) in series.items()}, plot, threshold=summary.threshold)
        summary.plot = str(plot)
    return summary
