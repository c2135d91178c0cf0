"""Scoring frames: the options, loading a fitted model, and the frames of sources through the
engine into sinks. ``streamad score`` (:mod:`streamad.pipelines.score`), eval, calibrate, Ray's
actors and the in-memory :class:`~streamad.api.Detector` run these parts."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamad.config import FrameScoreConfig
from streamad.engine.assembly import Engine, ExportedScoring, Reading, Scoring
from streamad.engine.exported import Exported
from streamad.engine.progress import Progress, graceful_interrupt, no_progress
from streamad.engine.runner import Runner
from streamad.engine.runtime import pick_device, seconds_since_start
from streamad.errors import ConfigError
from streamad.io.sources import Source
from streamad.model import Model
from streamad.sinks import Sinks
from streamad.stores.model_store import load, open_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScoreOptions:
    every: int = 1
    start: int = 0
    stop: int | None = None
    batch_size: int = 8
    score_batch: int = 32
    frame_score: FrameScoreConfig = FrameScoreConfig()
    write_maps: bool = True
    device: str = "cpu"
    workers: int | None = None
    threshold: float | None = None
    runtime: str = "auto"  # or torch, or an exported graph's (streamad.engine.exported.pick_runtime)

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
    frames: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    drop_report: list[str] = field(default_factory=list)
    overlays: list[str] = field(default_factory=list)
    plot: str | None = None
    interrupted: bool = False
    threshold: float | None = None
    decisions: bool = False
    anomalous: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        """What the score did and wrote, for a person."""
        frames, dropped = sum(self.frames.values()), sum(sum(r.values()) for r in self.dropped.values())
        said = [f"scored {frames} frames from {len(self.frames)} source(s), {dropped} dropped" + (" (interrupted)" if self.interrupted else "")]
        if self.decisions and self.threshold is not None:
            said.append(f"  {sum(self.anomalous.values())} frame(s) above the threshold {self.threshold:.4g} (CSV column decision, zarr decision/mask)")
        said += [f"  scores:  {self.csv}", f"  maps:    {self.store}", *(f"  overlay: {path}" for path in self.overlays)]
        return said + ([f"  plot:    {self.plot}"] if self.plot else [])


def load_model(model: str | Path | Model, *, device: str, weights: str | None, weights_b: str | None = None) -> Model:
    """A model given as a store path (loaded, fitted) or as it is."""
    if isinstance(model, Model):
        return model
    return load(open_store(model, mode="r"), where=str(model), device=str(pick_device(device)), weights=weights, weights_b=weights_b, scoring_only=True)


def score_frames(
    loaded: Model,
    sources: Sequence[Source],
    options: ScoreOptions,
    outputs: Sinks,
    summary: ScoreSummary,
    *,
    decision: float | None,
    originals: bool = False,
    layers: bool = False,
    progress: Progress = no_progress,
    graph: Exported | None = None,
) -> None:
    """The frames of ``sources`` through the engine into ``outputs`` (closed at the end), counted
    in ``summary``. ``originals``, ``layers``: results carry their frame, their cues' maps;
    ``graph``: an exported graph scores them in the backbone stage (``--runtime``)."""
    runner = Runner()
    engine = Engine(runner, loaded.device, batch_size=options.batch_size, workers=options.workers)
    reading = Reading(options.every, (options.start, options.stop))
    route = (ExportedScoring if graph is not None else Scoring)(loaded, options.frame_score, prepared=True, tracked=True, layers=layers)
    with graceful_interrupt(runner) as interrupted, outputs:
        progress.start("scoring", reading.expected(sources))
        keep = originals or loaded.needs_images
        features = engine.features(engine.read(sources, reading), loaded.extractor, prepare=loaded.prepare, keep_originals=keep, run=graph)
        for result in engine.consume(engine.scores(features, lambda _: route, min_frames=options.score_batch, tracker=route.tracker)):
            if not summary.frames:
                logger.info("first frame scored %.2f s after the process started", seconds_since_start() or float("nan"))
            outputs.write(result)
            summary.frames[result.ref.source_id] += 1
            if decision is not None and result.score > decision:
                summary.anomalous[result.ref.source_id] += 1
            progress.advance(1)
        summary.interrupted = interrupted[0]
        if summary.frames:
            outputs.commit()  # sinks that stage their files replace the previous ones now
    progress.finish()
    summary.dropped, summary.drop_report = engine.drops.by_reason(), engine.drops.lines()
