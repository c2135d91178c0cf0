"""``streamad fit``: stream frames through the backbone into running statistics in a store."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pipelines.common import Progress, embed_stage, expected_frames, frames_of, graceful_interrupt, no_progress
from streamad import stages
from streamad.errors import ConfigError, StoreError
from streamad.frames import FrameRef
from streamad.model import AnomalyModel, ModelConfig
from streamad.model_store import (
    Calibration,
    FitState,
    base_attrs,
    check_compatible,
    config_from_attrs,
    load_stats,
    open_store,
    read_state,
    write_checkpoint,
    write_factors,
)
from streamad.preprocess import default_input_hw
from streamad.runner import DropLog, Runner
from streamad.runtime import thread_plan
from streamad.sources import Source, resolve_sources
from streamad.store import ArrayStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FitOptions:
    """How a fit reads its sources and saves its progress."""

    every: int = 1
    start: int = 0
    stop: int | None = None
    batch_size: int = 8
    accumulate_frames: int = 32
    checkpoint_every: int = 500
    calibration_frames: int = 500
    holdout_every: int = 10
    device: str = "cpu"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"expected --every >= 1, got {self.every}")
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise ConfigError(f"expected 0 <= --start < --stop, got start={self.start}, stop={self.stop}")
        if self.holdout_every < 2:
            raise ConfigError(f"expected --holdout-every >= 2, got {self.holdout_every}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"expected --checkpoint-every >= 1, got {self.checkpoint_every}")


@dataclass(slots=True)
class FitSummary:
    store: str
    frames_added: int = 0
    frames_seen: int = 0
    interrupted: bool = False
    calibrated_on: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)


def _first_frame_hw(sources: Sequence[Source]) -> tuple[int, int]:
    for source in sources:
        for frame in source.frames():
            return frame.image.shape[0], frame.image.shape[1]
    raise ConfigError("expected at least one readable frame in the sources, got none")


def _prepare(
    specs: Sequence[str], store_path: str | Path, config: ModelConfig | None, *, resume: bool, overwrite: bool, device: str
) -> tuple[list[Source], ArrayStore, AnomalyModel, FitState]:
    sources = resolve_sources(specs)
    path = Path(store_path)
    exists = (path / "zarr.json").is_file()
    if resume:
        if not exists:
            raise StoreError(f"expected a store to resume at {path}, got none; hint: drop --resume to start a new fit")
        store = open_store(path, mode="a")
        attrs = store.attrs()
        stored = config_from_attrs(attrs, weights=config.weights if config else None)
        model = AnomalyModel(stored, device=device)
        check_compatible(attrs, config if config is not None else stored, model.weights_sha256, str(path))
        load_stats(store, model)
        state = read_state(store)
        return sources, store, model, state
    if exists and not overwrite:
        raise StoreError(f"expected a new store path, got an existing store {path}; hint: pass --resume to continue it or --overwrite to replace it")
    config = config or ModelConfig()
    if config.input_hw is None:
        config = replace(config, input_hw=default_input_hw(_first_frame_hw(sources)))
    model = AnomalyModel(config, device=device)
    store = open_store(path, mode="w")
    store.set_attrs(base_attrs(model))
    return sources, store, model, FitState()


def calibrate(
    model: AnomalyModel,
    sources: Sequence[Source],
    *,
    every: int,
    frame_config: stages.FrameScoreConfig,
    batch_size: int,
    workers: int | None = None,
    frame_range: tuple[int, int | None] = (0, None),
    keep: Callable[[int], bool] | None = None,
    progress: Progress = no_progress,
) -> Calibration:
    """Distances on normal frames: per-position mean/std, then the frame scores they give."""
    drops = DropLog()
    kept: list[tuple[tuple[FrameRef, ...], torch.Tensor]] = []

    plan = thread_plan(model.device, workers=workers)

    def distances() -> Iterator[torch.Tensor]:
        runner = Runner()
        frames = runner.source(
            lambda: frames_of(sources, every=every, start=None, drops=drops, should_stop=runner.stopping.is_set, frame_range=frame_range, keep=keep), maxsize=32
        )
        tensors = runner.stage(
            lambda fs: stages.preprocess(stages.batch_frames(fs, max_batch=batch_size), model), frames, name="preprocess", setup=plan.side_setup()
        )
        features = embed_stage(runner, tensors, model, plan)
        for batch in runner.consume(features):
            d = model.distances(batch.embeddings).cpu()
            kept.append((batch.refs, d))  # (B, P) float32: 25 KB a frame at 64x96 positions
            progress.advance(len(batch.refs))
            yield d

    progress.start("calibrating", expected_frames(sources, every=every, frame_range=frame_range, keep=keep))
    mean, std, count = stages.position_statistics(distances())
    progress.finish()
    partial = Calibration(mean, std, normal_scores=np.zeros(0, np.float32), frames=count)
    scores = [result.score for refs, d in kept for result in stages.score_distances(refs, d.to(model.device), model, calibration=partial, config=frame_config)]
    return Calibration(mean, std, normal_scores=np.asarray(scores, np.float32), frames=count)


def fit(
    specs: Sequence[str],
    store_path: str | Path,
    config: ModelConfig | None = None,
    *,
    options: FitOptions = FitOptions(),
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> FitSummary:
    """Fit (or continue fitting) a model store on the frames of ``specs``.

    Frames are counted per source in order; a checkpoint every ``options.checkpoint_every`` frames
    records how far each source got, so an interrupted fit resumes exactly where it stopped.
    """
    sources, store, model, state = _prepare(specs, store_path, config, resume=resume, overwrite=overwrite, device=options.device)
    summary = FitSummary(str(store_path))
    drops = DropLog()
    runner = Runner()
    plan = thread_plan(model.device, workers=options.workers)
    start = dict(state.next_index)
    since_checkpoint = 0
    extra = {"every": options.every}
    frame_range = (options.start, options.stop)
    period = options.every * options.holdout_every

    def held_out(index: int) -> bool:
        """Every ``holdout_every``-th used frame is kept out of the fit to calibrate on."""
        return index % period == period - options.every

    def fitted(index: int) -> bool:
        return not held_out(index)

    progress.start("fitting", expected_frames(sources, every=options.every, start=start, frame_range=frame_range, keep=fitted))
    with graceful_interrupt(runner) as interrupted:
        frames = runner.source(
            lambda: frames_of(sources, every=options.every, start=start, drops=drops, should_stop=runner.stopping.is_set, frame_range=frame_range, keep=fitted),
            maxsize=32,
            name="decode",
        )
        tensors = runner.stage(
            lambda fs: stages.preprocess(stages.batch_frames(fs, max_batch=options.batch_size, stopped=runner.stopping.is_set), model),
            frames,
            name="preprocess",
            setup=plan.side_setup(),
        )
        features = embed_stage(runner, tensors, model, plan)
        for batch in runner.consume(stages.rebatch(features, min_frames=options.accumulate_frames)):
            model.gaussian.update(batch.embeddings)
            for ref in batch.refs:
                state.next_index[ref.source_id] = ref.index + 1
            state.frames_seen += len(batch.refs)
            summary.frames_added += len(batch.refs)
            since_checkpoint += len(batch.refs)
            progress.advance(len(batch.refs))
            if since_checkpoint >= options.checkpoint_every:
                write_checkpoint(store, model, state, extra_attrs=extra)
                since_checkpoint = 0
        summary.interrupted = interrupted[0]
    progress.finish()
    write_checkpoint(store, model, state, extra_attrs=extra)
    summary.frames_seen = state.frames_seen
    summary.dropped = drops.by_reason()
    if summary.interrupted:
        logger.warning("fit interrupted after %d frames; continue with --resume", state.frames_seen)
        return summary
    if model.gaussian.n < 2:
        raise ConfigError(f"expected at least 2 frames to fit, got {model.gaussian.n}; hint: check the sources or lower --every")
    model.finalise()
    total = expected_frames(sources, every=options.every, frame_range=frame_range, keep=held_out)
    stride = max(1, math.ceil(total / max(1, options.calibration_frames)))

    def calibration_frame(index: int) -> bool:
        return held_out(index) and (index // period) % stride == 0

    calibration = None
    if total >= 2:
        calibration = calibrate(
            model,
            sources,
            every=options.every,
            frame_config=stages.FrameScoreConfig(),
            batch_size=options.batch_size,
            workers=options.workers,
            frame_range=frame_range,
            keep=calibration_frame,
            progress=progress,
        )
        summary.calibrated_on = calibration.frames
    else:
        logger.warning("only %d held-out frame(s): the model is not calibrated; score it with --raw or fit on more frames", total)
    write_factors(store, model, calibration)
    return summary
