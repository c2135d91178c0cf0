"""A camera's model in ``watch``: loaded from its store, or learned from the stream first
(``--learn-for``), then scored and optionally adapted (``--adapt``) on frames judged normal."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from streamad import stages
from streamad.calibration import HoldOut, Normalisation, decision_threshold, measure_normalisation, quantile_threshold
from streamad.cameras import Camera
from streamad.engine import Scoring
from streamad.errors import ConfigError
from streamad.features import Extractors, FeatureExtractor, Features
from streamad.frames import FeatureBatch, Frame, FrameRef, ScoreMap
from streamad.model import Model
from streamad.model_store import Progress, commit, config_from_attrs, create, load, open_store, read_progress
from streamad.preprocess import default_input_hw
from streamad.store import ArrayStore

if TYPE_CHECKING:
    from streamad.pipelines.watch import WatchOptions

logger = logging.getLogger(__name__)

HOLDOUT = HoldOut(every_nth=10)  # while learning, every 10th frame is kept out to normalise on
MAX_HELD_OUT = 64  # held-out features kept while learning


class CameraModel:
    """The route of one camera's frames: learn while learning, else score (and adapt)."""

    def __init__(self, camera: Camera, options: WatchOptions, extractors: Extractors, *, device: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.camera, self.options, self.extractors, self.device, self.clock = camera, options, extractors, device, clock
        self.model: Model | None = None
        self.store: ArrayStore | None = None
        self.progress = Progress()
        self.learning_until: float | None = None
        self.learning_from_pts = 0.0
        self.held_out: list[tuple[FrameRef, Features]] = []
        self.adapted_since_refresh = 0
        self.dirty = False  # adapted since the store was written
        self.last_checkpoint = clock()
        self.scoring: Scoring | None = None
        self.threshold: float | None = None  # alerts; None while learning
        path = Path(camera.model)
        if (path / "zarr.json").is_file():
            self.store = open_store(path, mode="a")
            stored = config_from_attrs(self.store.attrs())
            extractor = extractors.get(stored.backbone, input_hw=stored.input_hw or (0, 0), weights=stored.weights)
            self._ready(load(self.store, where=str(path), device=device, extractor=extractor))
            self.progress = read_progress(self.store)  # adapting adds to it
        elif options.learn_for_s is None:
            raise ConfigError(f"expected a fitted model at {path} for camera {camera.name}, got none; hint: fit one, or pass --learn-for DURATION")

    @property
    def learning(self) -> bool:
        return self.model is None or self.learning_until is not None

    def _ready(self, model: Model) -> None:
        """Score from now on: the alert threshold is ``--threshold``, the stored one (for these
        frame-score settings), else the 0.99 quantile of the normal frames' scores."""
        self.model = model
        frame_score = self.options.frame_score
        self.scoring = Scoring(model, frame_score if model.normalisation is not None else replace(frame_score, normalised=False), prepared=False)
        self.threshold = decision_threshold(model.threshold, self.options.threshold, frame_score.attrs())
        if self.threshold is None:
            normal = quantile_threshold(model.normalisation, frame_score.attrs(), on="normal frames")
            self.threshold = normal.value if normal else None

    def extractor_for(self, frame: Frame) -> FeatureExtractor:
        """The camera's extractor; a camera that learns gets its model sized by its first frame."""
        if self.model is None:
            self._start_learning(frame)
        assert self.model is not None
        return self.model.extractor

    def _start_learning(self, frame: Frame) -> None:
        """A new model; learns for ``learn_for_s`` of wall time or of stream time (presentation
        times), whichever passes first (a file decodes faster than real time)."""
        config = self.options.learn_config
        if config.input_hw is None:
            config = replace(config, input_hw=default_input_hw(frame.image.shape[:2]))
        extractor = self.extractors.get(config.backbone, input_hw=config.input_hw or (0, 0), weights=config.weights)
        self.model = Model(config, device=self.device, extractor=extractor)
        self.store = open_store(self.camera.model, mode="w")
        create(self.store, self.model)
        self.learning_until = self.clock() + float(self.options.learn_for_s or 0)
        self.learning_from_pts = frame.pts_s
        logger.warning("%s: learning a model for %.0f s into %s", self.camera.name, self.options.learn_for_s, self.camera.model)

    def __call__(self, batch: FeatureBatch, *, hook: Callable[[Sequence[FrameRef]], None] | None = None, event_open: bool = False) -> list[ScoreMap]:
        assert self.model is not None
        if self.learning:
            self._learn(batch)
            return []
        assert self.scoring is not None
        if hook is not None:
            hook(batch.refs)
        results = self.scoring(batch)
        threshold = self.threshold
        if self.options.adapt and threshold is not None and not event_open:
            normal = [i for i, r in enumerate(results) if r.score <= threshold]
            if normal:
                self._adapt(stages.select(batch, normal))
        return results

    def _learn(self, batch: FeatureBatch) -> None:
        assert self.model is not None
        prepared = self.model.prepare(batch.features)
        fitted = [i for i, ref in enumerate(batch.refs) if HOLDOUT.fitted(ref.index)]
        part = stages.select(FeatureBatch(batch.refs, prepared), fitted)
        if fitted:
            self.model.update(part.features)
        for i, ref in enumerate(batch.refs):
            if HOLDOUT.held_out(ref.index) and len(self.held_out) < MAX_HELD_OUT:
                self.held_out.append((ref, {k: v[i : i + 1].clone() for k, v in prepared.items()}))
        self._advance(batch.refs)
        stream_time = batch.refs[-1].pts_s - self.learning_from_pts
        if self.learning_until is not None and (self.clock() >= self.learning_until or stream_time >= float(self.options.learn_for_s or 0)):
            self._finish_learning()

    def _advance(self, refs: Sequence[FrameRef]) -> None:
        assert self.model is not None
        self.progress.frames_seen = self.model.frames_seen
        for ref in refs:
            self.progress.next_index[ref.source_id] = ref.index + 1

    def _finish_learning(self) -> None:
        assert self.model is not None and self.store is not None
        if self.model.frames_seen < 2:
            logger.warning("%s: only %d frames learned; learning on", self.camera.name, self.model.frames_seen)
            return
        self.model.finalise()
        self.learning_until = None
        normalisation = None
        if len(self.held_out) >= 2:
            batches = [((ref,), self.model.distances(f)) for ref, f in self.held_out]
            normalisation = measure_normalisation(batches, self._normal_scores)
        self.held_out = []
        self.model.normalisation = normalisation
        threshold = None
        if self.options.threshold is None:
            threshold = quantile_threshold(normalisation, self.options.frame_score.attrs(), on="learned stream")
        self.model.threshold = threshold
        commit(self.store, self.model, self.progress, normalisation=normalisation, threshold=threshold)
        self._ready(self.model)
        logger.warning("%s: learned from %d frames; threshold %s", self.camera.name, self.model.frames_seen, self.threshold)

    def _normal_scores(self, refs: Sequence[FrameRef], distances: torch.Tensor, normalisation: Normalisation) -> list[float]:
        assert self.model is not None
        return [r.score for r in self.model.results(refs, distances, frame_score=self.options.frame_score, normalisation=normalisation)]

    def _adapt(self, batch: FeatureBatch) -> None:
        """Fold frames judged normal into the state; refinalise every ``refresh_every`` frames."""
        assert self.model is not None
        self.model.update(self.model.prepare(batch.features))
        self.dirty = True
        self._advance(batch.refs)
        self.adapted_since_refresh += len(batch.refs)
        if self.adapted_since_refresh >= self.options.refresh_every:
            self.model.finalise()
            self.adapted_since_refresh = 0
        if self.clock() - self.last_checkpoint >= self.options.checkpoint_every_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Save adapted state, finalised, carrying the normalisation and threshold over to it
        (they were measured on the same camera's normal frames)."""
        if self.model is None or self.store is None or self.learning or not self.dirty:
            return
        if not self.model.finalised:
            self.model.finalise()
        self.adapted_since_refresh = 0
        commit(self.store, self.model, self.progress, normalisation=self.model.normalisation, threshold=self.model.threshold)
        self.dirty = False
        self.last_checkpoint = self.clock()

    def close(self) -> None:
        """At the end: finish learning (when enough was learned) and save adapted state."""
        if self.model is not None and self.learning:
            self._finish_learning()
        self.checkpoint()
