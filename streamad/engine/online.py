"""A camera's model in ``watch``: loaded from its store, or learned from the stream first
(``--learn-for``), then scored and optionally adapted (``--adapt``) on frames judged normal."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from streamad.calibration import decision_threshold, measure_normalisation, normal_threshold
from streamad.config import VIDEO_SMOOTH_S, FrameScoreConfig, ModelConfig
from streamad.engine import stages
from streamad.engine.assembly import ExportedScoring, Scoring
from streamad.engine.exported import AUTO, Exported, open_exported, pick_runtime
from streamad.engine.fitter import Fitter
from streamad.engine.normalising import normal_scorer
from streamad.errors import ConfigError
from streamad.features.extractor import Extractors, FeatureExtractor
from streamad.features.preprocess import default_input_hw
from streamad.frames import FeatureBatch, Frame, FrameRef, ScoreMap
from streamad.holdout import HoldOut
from streamad.io.cameras import Camera
from streamad.model import Model
from streamad.scorers.registry import resolve
from streamad.stores.array_store import ArrayStore
from streamad.stores.fit_progress import FitProgress, read_progress
from streamad.stores.model_store import commit, config_from_attrs, create, load, open_store

logger = logging.getLogger(__name__)

MAX_HELD_OUT = 64  # held-out features kept while learning
MIN_LEARNED = 20  # learning goes on past --learn-for until this many frames were fitted ...
MIN_HELD_OUT = 2  # ... and this many held out (the alert threshold is measured on them)
MAX_GAP_S = 5.0  # a longer gap between a camera's frames (an outage) counts as this much time


class LearningOptions(Protocol):
    """What a camera's route reads of the watch's options (``streamad watch``'s WatchOptions)."""

    @property
    def frame_score(self) -> FrameScoreConfig: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def learn_for_s(self) -> float | None: ...
    @property
    def learn_config(self) -> ModelConfig: ...
    @property
    def adapt(self) -> bool: ...
    @property
    def refresh_every(self) -> int: ...
    @property
    def checkpoint_every_s(self) -> float: ...
    @property
    def runtime(self) -> str: ...


class CameraModel:
    """The route of one camera's frames: learn while learning, else score (and adapt)."""

    def __init__(
        self, camera: Camera, options: LearningOptions, extractors: Extractors, *, device: str, threads: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.camera, self.options, self.extractors, self.device, self.clock = camera, options, extractors, device, clock
        self.model: Model | None = None
        self.store: ArrayStore | None = None
        self.progress = FitProgress()
        self.learning_left_s: float | None = None  # stream time still to learn
        self.last_pts_s: float | None = None
        self.learning_on = False  # learning past --learn-for for want of frames
        self.frame_rate: Callable[[], float | None] | None = None  # the camera's, for the motion lag
        self.fitter: Fitter | None = None  # learning, then adapting
        self.adapted_since_refresh = 0
        self.dirty = False  # adapted since the store was written
        self.last_checkpoint = clock()
        self.scoring: Scoring | None = None
        self.graph: Exported | None = None  # --runtime: the exported graph that scores the camera
        self.threshold: float | None = None  # alerts; None while learning
        path = Path(camera.model)
        if (path / "zarr.json").is_file():
            self.store = open_store(path, mode="a" if options.adapt else "r")  # only a writer takes the lock
            stored = config_from_attrs(self.store.attrs(), where=str(path))
            extractor = extractors.for_config(stored)
            self.progress = read_progress(self.store)  # adapting adds to it
            self._ready(load(self.store, where=str(path), device=device, extractor=extractor))
            self._use_runtime(threads)
        elif options.learn_for_s is None:
            raise ConfigError(f"expected a fitted model at {path} for camera {camera.name}, got none; hint: fit one, or pass --learn-for DURATION")

    @property
    def learning(self) -> bool:
        return self.model is None or self.learning_left_s is not None

    def _ready(self, model: Model) -> None:
        """Score from now on: the alert threshold is ``--threshold``, the stored one (for these
        frame-score settings), else the 0.99 quantile of the normal frames' scores."""
        self.model = model
        self.fitter = Fitter(model, self.progress, holdout=HoldOut())  # adapting: every frame judged normal
        frame_score = model.settled(self.options.frame_score)
        self.scoring = Scoring(model, frame_score if model.normalisation is not None else replace(frame_score, normalised=False), prepared=False)
        self.threshold = decision_threshold(model.threshold, self.options.threshold, frame_score.attrs())
        if self.threshold is None:
            normal = normal_threshold(model.normalisation, frame_score.attrs(), on="normal frames")
            self.threshold = normal.value if normal else None
            if normal is None and model.normalisation is not None:
                logger.warning("%s: no alerts: its normal frames were scored with other frame-score settings; hint: pass --threshold", self.camera.name)

    def _use_runtime(self, threads: int) -> None:
        """A stored model scored by another runtime (``--runtime``): its graph, exported and
        cached beside the store; a model that adapts stays with PyTorch, whose features it
        learns from."""
        assert self.model is not None and self.store is not None and self.scoring is not None
        frame_score = self.scoring.frame_score  # as PyTorch's route scores the camera
        adapting = "--adapt updates the model from PyTorch's features" if self.options.adapt else None
        runtime = pick_runtime(self.options.runtime, self.model, frame_score, stored=True, why_not=adapting)
        if runtime == "torch":
            return
        if adapting:
            raise ConfigError(f"expected --runtime auto or torch with --adapt ({adapting}), got {runtime}")
        self.graph = open_exported(runtime, self.camera.model, self.model, frame_score, stored=self.store, threads=threads, named=self.options.runtime != AUTO)
        self.scoring = ExportedScoring(self.model, frame_score, prepared=True)
        logger.info("%s: scored by %s (%s)", self.camera.name, runtime, self.graph.path)

    def describe(self) -> dict[str, str]:
        """The model, for the metrics: method, backbone and what runs it."""
        if self.model is None:
            return {"method": "learning", "backbone": "", "runtime": ""}
        return {"method": self.model.config.method, "backbone": self.model.config.backbone, "runtime": self.graph.runtime if self.graph else "torch"}

    def extractor_for(self, frame: Frame) -> FeatureExtractor:
        """The camera's extractor; a camera that learns gets its model sized by its first frame."""
        if self.model is None:
            self._start_learning(frame)
        assert self.model is not None
        return self.model.extractor

    def _start_learning(self, frame: Frame) -> None:
        """A new model, learning for ``learn_for_s`` of stream time: presentation times, which
        advance with the camera (frames dropped under load still let time pass) and run ahead
        of the wall clock for a file. The store is built beside its path and appears at the
        first commit, so a crash while learning leaves no half-learned store."""
        config = resolve(self.options.learn_config.for_sources(True))  # a camera is video: auto is fit's video default
        if config.motion != "off" and config.motion_lag_s is None:  # one frame step of the camera
            fps = self.frame_rate() if self.frame_rate is not None else None
            config = replace(config, motion_lag_s=1.0 / fps) if fps else replace(config, motion="off")
        if config.input_hw is None:
            config = replace(config, input_hw=default_input_hw(frame.image.shape[:2]))
        extractor = self.extractors.for_config(config)
        self.model = Model(config, device=self.device, extractor=extractor)
        self.fitter = Fitter(self.model, self.progress, holdout=HoldOut(), keep_held_out=MAX_HELD_OUT)
        self.store = open_store(self.camera.model, mode="w")
        create(self.store, self.model)
        self.learning_left_s = float(self.options.learn_for_s or 0)
        cues = f" with {config.motion}" if config.motion != "off" else ""
        logger.warning("%s: learning a %s model%s for %.0f s into %s", self.camera.name, config.method, cues, self.options.learn_for_s, self.camera.model)

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
        if self.options.adapt and threshold is not None and not event_open and self.scoring.last is not None:
            normal = [i for i, r in enumerate(results) if r.score <= threshold]
            if normal:
                self._adapt(stages.select(self.scoring.last, normal))
        return results

    def _learn(self, batch: FeatureBatch) -> None:
        assert self.model is not None and self.fitter is not None
        self.fitter.add(FeatureBatch(batch.refs, self.model.prepare(batch.features), batch.originals))
        for ref in batch.refs:
            if self.last_pts_s is not None and self.learning_left_s is not None:
                self.learning_left_s -= min(max(ref.pts_s - self.last_pts_s, 0.0), MAX_GAP_S)
            self.last_pts_s = ref.pts_s
        if self.learning_left_s is not None and self.learning_left_s <= 0:
            self._finish_learning(final=False)

    def _finish_learning(self, *, final: bool) -> None:
        """Finalise what was learned, measure the normalisation and threshold on the held-out
        frames and commit; too few frames: learn on (or, ``final``, leave no store)."""
        assert self.model is not None and self.store is not None and self.fitter is not None
        held_out = self.fitter.held_out
        enough = (MIN_LEARNED, MIN_HELD_OUT) if not final else (2, 0)
        if self.model.frames_seen < enough[0] or len(held_out) < enough[1]:
            if not final and not self.learning_on:
                logger.warning("%s: only %d frames learned (%d held out); learning on", self.camera.name, self.model.frames_seen, len(held_out))
                self.learning_on = True
            return
        self.model.finalise()
        self.learning_left_s = None
        normalisation = None
        frame_score = self.options.frame_score.settled(VIDEO_SMOOTH_S)  # a camera is video
        if len(held_out) >= 2:
            batches = [((ref,), self.model.distances(f)) for ref, f in held_out]
            normalisation = measure_normalisation(batches, normal_scorer(self.model, frame_score), frame_score.attrs())
        self.model.normalisation = normalisation
        threshold = None
        if self.options.threshold is None:
            threshold = normal_threshold(normalisation, frame_score.attrs(), on="learned stream")
        self.model.threshold = threshold
        commit(self.store, self.model, self.progress, normalisation=normalisation, threshold=threshold)
        self._ready(self.model)
        logger.warning("%s: learned from %d frames; threshold %s", self.camera.name, self.model.frames_seen, self.threshold)

    def _adapt(self, batch: FeatureBatch) -> None:
        """Fold frames judged normal (prepared, as scored) into the state; refinalise every
        ``refresh_every`` frames."""
        assert self.model is not None and self.fitter is not None
        self.fitter.adapt(batch)
        self.dirty = True
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

    def closer(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """:meth:`close` as an exit callback (``ExitStack.push``): told whether the watch failed."""
        self.close(failed=exc_type is not None and not issubclass(exc_type, KeyboardInterrupt))

    def close(self, *, failed: bool = False) -> None:
        """At the end: finish learning (when enough was learned; not after a failure, which
        leaves no half-learned store to restart from), save adapted state, release the store."""
        try:
            if self.model is not None and self.learning and not failed:
                self._finish_learning(final=True)
            self.checkpoint()
        finally:
            if self.store is not None:
                self.store.close()
