"""The normalisation pass: distances on held-out normal frames through the engine, then the
per-position statistics and the frame scores those frames get (stored with the frame-score
settings they were measured with)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from streamad.calibration import Normalisation, measure_normalisation
from streamad.config import VIDEO_SMOOTH_S, FrameScoreConfig
from streamad.engine import stages
from streamad.engine.assembly import Engine, Reading
from streamad.engine.progress import Progress, graceful_interrupt, no_progress
from streamad.engine.runner import Runner
from streamad.errors import Interrupted
from streamad.frames import Frame, FrameRef
from streamad.io.sources import Source, untimed
from streamad.maps import CausalSmoother
from streamad.model import Model


def normalise_on(
    model: Model,
    sources: Sequence[Source],
    reading: Reading,
    *,
    batch_size: int,
    workers: int | None = None,
    progress: Progress = no_progress,
    measured: Callable[[int], bool] | None = None,
    frames: Sequence[Frame] | None = None,
) -> Normalisation:
    """Distances on normal frames through the engine: per-position mean/std, then the default
    frame scores they give (:func:`streamad.calibration.measure_normalisation`).

    ``measured``: of the frames read, those measured (the others only give the motion cue the
    frame one lag before a measured one). ``frames``: the frames ``reading`` selects, already
    read (a fit sets them aside as it decodes), so the sources are not decoded again."""
    runner = Runner()
    engine = Engine(runner, model.device, batch_size=batch_size, workers=workers)
    kept: list[tuple[tuple[FrameRef, ...], torch.Tensor]] = []
    tracker = model.tracker()
    with graceful_interrupt(runner) as interrupted:
        progress.start("normalising", reading.expected(sources) if frames is None else len(frames))
        read = engine.read(sources, reading) if frames is None else engine.replay(frames)
        features = engine.features(read, model.extractor, prepare=model.prepare, keep_originals=model.needs_images)
        for batch in engine.consume(features):
            progress.advance(len(batch.refs))
            batch = tracker(batch) if tracker is not None else batch
            rows = [i for i, ref in enumerate(batch.refs) if measured is None or measured(ref.index)]
            if rows:
                batch = stages.select(batch, rows)
                kept.append((batch.refs, model.distances(batch.features).cpu()))  # (B, C, P) float32: 25 KB a frame and cue at 64x96
    progress.finish()
    if interrupted[0]:
        raise Interrupted("interrupted while normalising: the normalisation of part of the frames would be wrong")
    # Video models filter their frame scores by default, image models do not (no time axis).
    config = FrameScoreConfig(smooth_s=0.0 if untimed(sources) else VIDEO_SMOOTH_S)
    return measure_normalisation(kept, normal_scorer(model, config), config.attrs())


def normal_scorer(model: Model, config: FrameScoreConfig) -> Callable[[Sequence[FrameRef], torch.Tensor, Normalisation], list[float]]:
    """The frame scores of normal frames' distances with the settings ``config`` (settled),
    filtered in the order they come, for :func:`~streamad.calibration.measure_normalisation`."""
    smoother = CausalSmoother(config.smooth_s) if config.smooth_s else None

    def frame_scores(refs: Sequence[FrameRef], distances: torch.Tensor, normalisation: Normalisation) -> list[float]:
        results = model.results(refs, distances.to(model.device), frame_score=config, normalisation=normalisation)
        return [smoother(r.ref.source_id, r.ref.pts_s, r.score) if smoother else r.score for r in results]

    return frame_scores
