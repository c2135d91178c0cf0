"""Fitting a model: the options, opening (or resuming) a model store, the fitting pass through the
engine into the :class:`~streamad.engine.fitter.Fitter`, a trainable scorer's epochs, and the
factors and normalisation committed at the end. ``streamad fit`` (:mod:`streamad.pipelines.fit`),
its Ray shards and the in-memory :class:`~streamad.api.Detector` all run these parts."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamad.calibration import Normalisation
from streamad.config import AUTO, ModelConfig
from streamad.engine import stages
from streamad.engine.assembly import Engine, Reading
from streamad.engine.feature_cache import CACHE_FRAMES
from streamad.engine.fitter import Fitter, checkpoints
from streamad.engine.normalising import normalise_on
from streamad.engine.progress import Progress, graceful_interrupt
from streamad.engine.resuming import resumed_model
from streamad.engine.runner import Runner
from streamad.engine.runtime import release_memory, torch_threads
from streamad.errors import ConfigError, EmptySourceError, Interrupted, StoreError
from streamad.features.preprocess import default_input_hw
from streamad.features.temporal import TOLERANCE
from streamad.frames import Frame
from streamad.holdout import HOLDOUT_EVERY, HoldOut
from streamad.io.sources import Source, untimed
from streamad.model import Model
from streamad.scorers.base import TrainRun, TrainStep
from streamad.scorers.registry import resolve
from streamad.scorers.trained import PAPER_STEPS, default_epochs
from streamad.stores.array_store import ArrayStore
from streamad.stores.fit_progress import FitProgress, read_progress
from streamad.stores.model_store import commit, create, open_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FitOptions:
    """How a fit reads its sources and saves its progress."""

    every: int = 1
    start: int = 0
    stop: int | None = None
    batch_size: int = 8
    accumulate_frames: int = 32
    checkpoint_every: int = 2000  # a Gaussian checkpoint writes P k^2 float64 (430 MB at 256x336, about 0.5 s)
    calibration_frames: int = 500
    holdout_every: int | None = None  # None: a resumed fit's own, else HOLDOUT_EVERY
    device: str = "cpu"
    workers: int | None = None
    epochs: int | None = None
    cache_frames: int | None = None
    train_batch_size: int = 16
    float64_stats: bool = False  # the statistics' float64 update (bit-reproducible) instead of float32 GEMMs

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"expected --every >= 1, got {self.every}")
        if self.start < 0 or (self.stop is not None and self.stop <= self.start):
            raise ConfigError(f"expected 0 <= --start < --stop, got start={self.start}, stop={self.stop}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"expected --checkpoint-every >= 1, got {self.checkpoint_every}")
        if self.calibration_frames < 1:
            raise ConfigError(f"expected --calibration-frames >= 1, got {self.calibration_frames}; hint: fit on fewer frames with --stop instead")
        if self.batch_size < 1:
            raise ConfigError(f"expected --batch-size >= 1, got {self.batch_size}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"expected --epochs >= 1, got {self.epochs}")
        if (self.cache_frames is not None and self.cache_frames < 1) or self.train_batch_size < 1:
            raise ConfigError(f"expected --cache-frames and --train-batch-size >= 1, got {self.cache_frames} and {self.train_batch_size}")
        HoldOut(self.holdout_every or HOLDOUT_EVERY, self.every)  # checks --holdout-every

    @property
    def holdout(self) -> HoldOut:
        return HoldOut(self.holdout_every or HOLDOUT_EVERY, self.every)


@dataclass(slots=True)
class FitSummary:
    store: str
    frames_added: int = 0
    frames_seen: int = 0
    interrupted: bool = False
    calibrated_on: int = 0
    epochs: int = 0
    loss: float | None = None
    frames_read: int = 0  # frames of the sources this run covers (fitted and held out)
    seconds: float = 0.0  # the whole job: model, fitting pass, factors, normalisation, commits
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    drop_report: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the fit did, for a person."""
        if self.interrupted:
            return [f"interrupted: {self.frames_seen} frames are in {self.store}; continue with `streamad fit ... -m {self.store} --resume`"]
        trained = f"; trained {self.epochs} epochs (loss {self.loss:.4g})" if self.loss is not None else ""
        rate = self.frames_read / self.seconds if self.seconds else 0.0
        return [
            f"fitted {self.store}: {self.frames_added} new frames, {self.frames_seen} in all{trained}; normalised on {self.calibrated_on} frames",
            f"  read {self.frames_read} frames (fitted and held out) in {self.seconds:.1f} s: {rate:.1f} frames/s",
        ]


def _first_frame_hw(sources: Sequence[Source]) -> tuple[int, int]:
    """The first source's frame size with a readable frame (videos: from their metadata)."""
    for source in sources:
        try:
            return source.frame_hw()
        except EmptySourceError:
            continue
    raise ConfigError("expected at least one readable frame in the sources, got none")


def open_fit(
    sources: Sequence[Source], target: str | Path | ArrayStore, config: ModelConfig | None, *, resume: bool, overwrite: bool, options: FitOptions, device: str
) -> tuple[ArrayStore, Model, FitProgress]:
    """The store to write and the model to fit: a resumed one, or a new one (built before the
    store is touched, so a bad option leaves no store behind)."""
    path = Path(target) if isinstance(target, str | Path) else None
    exists = path is not None and (path / "zarr.json").is_file()
    if path is not None and resume and not exists:
        raise StoreError(f"expected a store to resume at {path}, got none; hint: drop --resume to start a new fit")
    if exists and not resume and not overwrite:
        raise StoreError(f"expected a new store path, got an existing store {path}; hint: pass --resume to continue it or --overwrite to replace it")
    if resume:
        store = open_store(path, mode="a") if path is not None else target
        assert not isinstance(store, str | Path)
        try:
            reading = {"every": options.every, "holdout_every": options.holdout_every, "epochs": options.epochs}
            model, state = resumed_model(store, config, reading, where=str(target), device=device), read_progress(store)
        except BaseException:
            if store is not target:
                store.close()
            raise
        state.claim(sources, options.start)
        return store, model, state
    config = _motion_for(sources, resolve((config or ModelConfig(method=AUTO, motion=AUTO)).for_sources(not untimed(sources))), options.every)
    if config.input_hw is None:
        config = replace(config, input_hw=default_input_hw(_first_frame_hw(sources)))
    model = Model(config, device=device)
    store = open_store(path, mode="w") if path is not None else target
    assert not isinstance(store, str | Path)
    create(store, model)
    state = FitProgress()
    state.claim(sources, options.start)
    return store, model, state


def _motion_for(sources: Sequence[Source], config: ModelConfig, every: int) -> ModelConfig:
    """Motion for video only (frame folders count as video; image sets have no time axis),
    with a lag of one frame step of the first source unless one was given."""
    if config.motion == "off":
        return config
    images = untimed(sources)
    if images:
        logger.info("appearance only: %s has no time axis", images[0])
        return replace(config, motion="off", motion_lag_s=None)
    config = config if config.motion_lag_s is not None else replace(config, motion_lag_s=every / sources[0].fps)
    lag = config.motion_lag_s or 0.0
    other = [s.source_id for s in sources if abs(every / s.fps - lag) > TOLERANCE * lag]
    if other:
        logger.warning("no motion is learned from %s: its frame step is not the lag of %.3f s (another frame rate); fit it apart", other, lag)
    return config


def holdout_of(options: FitOptions, target: ArrayStore) -> FitOptions:
    """``options`` with ``--holdout-every`` set: as given, else a resumed fit's own, else the default."""
    if options.holdout_every is not None:
        return options
    return replace(options, holdout_every=int(target.attrs().get("holdout_every") or HOLDOUT_EVERY))


def fit_extra(options: FitOptions) -> dict[str, Any]:
    """What a fit records beside the model from its first commit: how it read its frames and
    the epochs asked for (a resume must read and train alike, even after a kill -9 in the
    fitting pass), and that it is ``unfinished`` until its last commit (a score of it then
    says ``--resume``)."""
    recorded: dict[str, Any] = {"every": options.every, "holdout_every": options.holdout_every or HOLDOUT_EVERY, "unfinished": True}
    return recorded | ({"epochs": options.epochs} if options.epochs else {})


def finish(
    target: ArrayStore,
    model: Model,
    state: FitProgress,
    calibration: Calibration,
    sources: Sequence[Source],
    options: FitOptions,
    summary: FitSummary,
    progress: Progress,
    *,
    extra: dict[str, Any],
) -> None:
    """After the fitting pass: the factors, committed with the statistics, then the normalisation
    measured on the held-out frames, committed with them (the fit's last commit). Ctrl-C while
    normalising stops there (``summary.interrupted``): ``--resume`` measures it again.

    The statistics and factors are written while the held-out frames are scored (a Gaussian's
    are hundreds of MB: memory copies and file writes, where the scoring needs only the
    factors); the normalisation's commit waits for them."""
    release_memory()  # the fitting pass's buffers, before the factors are made
    try:
        model.finalise()
    except BaseException:  # the statistics, without factors
        commit(target, model, state, extra=extra)
        raise
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit") as writer:
        written = writer.submit(commit, target, model, state, extra=extra)
        try:
            normalisation = calibration.measure(model, sources, options, progress)
        except Interrupted:
            written.result()
            summary.interrupted = True
            logger.warning("fit interrupted while normalising; continue with --resume")
            return
        written.result()  # its error, if it failed (any other error waits for it as the pool closes)
    if model.release_statistics():  # committed: what follows needs only the factors
        release_memory()
    summary.calibrated_on = normalisation.frames if normalisation is not None else 0
    commit(target, model, state, normalisation=normalisation, extra={**extra, "unfinished": False})


@dataclass(slots=True)
class Calibration:
    """The held-out frames a fit normalises on (at most ``--calibration-frames``, spread evenly;
    with motion, each with the frame one lag before it).

    A fit that reads every source from its start sets them aside as it decodes (resized to the
    input size), so nothing is decoded twice; a resumed fit, which did not see the start, and a
    flow model, which needs the frames at their own size, read them again after finalising.
    """

    total: int
    sampled: Callable[[int], bool] | None = None
    read: Callable[[int], bool] | None = None
    kept: list[Frame] | None = None

    @classmethod
    def plan(cls, sources: Sequence[Source], model: Model, options: FitOptions, *, continued: bool) -> Calibration:
        total = Reading(options.every, (options.start, options.stop), keep=options.holdout.held_out).expected(sources)
        if total < 2:
            return cls(total)
        sampled = options.holdout.sampler(total, options.calibration_frames)
        read = (lambda i: sampled(i) or sampled(i + options.every)) if model.has_motion else sampled  # with each, its motion reference
        return cls(total, sampled, read, None if continued or model.needs_images else [])

    def aside(self) -> tuple[Callable[[int], bool], list[Frame]] | None:
        return (self.read, self.kept) if self.read is not None and self.kept is not None else None

    def measure(self, model: Model, sources: Sequence[Source], options: FitOptions, progress: Progress) -> Normalisation | None:
        if self.sampled is None:
            logger.warning("only %d held-out frame(s): the model is not normalised; score it with --raw or fit on more frames", self.total)
            return None
        reading = Reading(options.every, (options.start, options.stop), keep=self.read)
        try:
            return normalise_on(
                model, sources, reading, batch_size=options.batch_size, workers=options.workers, progress=progress, measured=self.sampled, frames=self.kept
            )
        finally:
            self.kept = None


def fit_pass(
    sources: Sequence[Source],
    target: ArrayStore | None,
    model: Model,
    state: FitProgress,
    options: FitOptions,
    summary: FitSummary,
    progress: Progress,
    *,
    aside: tuple[Callable[[int], bool], list[Frame]] | None = None,
) -> None:
    """The fitting pass: the sources through the engine into a :class:`Fitter`, a checkpoint
    every so often and at the end (``target`` None: none, as in a Ray shard, redone whole).
    ``aside``: which frames to keep, resized, in which list (the calibration's)."""
    runner = Runner()
    engine = Engine(runner, model.device, batch_size=options.batch_size, workers=options.workers)
    temporal = model.has_motion
    primed = dict(state.next_index)
    reading, then = _fit_reading(model, options, primed, aside)
    extra = fit_extra(options)
    progress.start("fitting", Reading(options.every, (options.start, options.stop), start=primed, keep=options.holdout.fitted).expected(sources))
    every = options.checkpoint_every if target is not None else None
    model.exact_statistics(options.float64_stats)
    fitter = Fitter(model, state, holdout=options.holdout, primed=primed, checkpoint_every=every, bar=progress)
    with graceful_interrupt(runner) as interrupted, torch_threads(engine.plan.side_threads):
        features = engine.features(
            engine.read(sources, reading, then=then), model.extractor, prepare=model.prepare, whole_batches=True, keep_originals=model.needs_images, depth=1
        )
        # Without motion nothing keeps a batch's features past its update: one reused buffer.
        gathered = (
            stages.gather(features, frames=options.accumulate_frames) if not temporal else stages.rebatch(features, min_frames=options.accumulate_frames)
        )
        for _ in checkpoints(fitter, engine.consume(gathered)):
            assert target is not None  # due only with a store
            commit(target, model, state, extra=extra)
        summary.interrupted = interrupted[0]
    progress.finish()
    summary.frames_added += fitter.added
    if target is not None and (summary.interrupted or model.trainable):  # else the caller commits the statistics with their factors, next
        commit(target, model, state, extra=extra)
    summary.frames_seen, summary.dropped, summary.drop_report = state.frames_seen, engine.drops.by_reason(), engine.drops.lines()


def _fit_reading(
    model: Model, options: FitOptions, primed: dict[str, int], aside: tuple[Callable[[int], bool], list[Frame]] | None
) -> tuple[Reading, Callable[[Iterator[Frame]], Iterator[Frame]] | None]:
    """Which frames the fitting pass reads, and the stage setting the calibration's aside as
    they are decoded (None: nothing to set aside)."""
    temporal = model.has_motion
    # A resumed fit with motion reads each source's last counted frame again, only to give the
    # next frame its motion as an uninterrupted fit would.
    start = {sid: max(0, n - options.every) for sid, n in primed.items()} if temporal else primed
    # With motion, held-out frames are read too, only as the motion reference of the next
    # frame: otherwise the motion after every held-out frame would be missing from the fit
    # (and a camera whose keyframes fall on them would never show the fit a keyframe's change).
    passed: Callable[[int], bool] | None = None if temporal else options.holdout.fitted
    then = None
    if aside is not None:
        wanted, into = aside
        then = functools.partial(stages.set_aside, wanted=wanted, into=into, resize=model.extractor.resize, passed=passed)
        passed = None if passed is None else (lambda i: options.holdout.fitted(i) or wanted(i))
    return Reading(options.every, (options.start, options.stop), start=start, keep=passed), then


def _use_cache(target: ArrayStore, model: Model, given: int | None) -> None:
    """Give a trainable model its feature cache: as large as the store's (a resumed fit) or
    ``--cache-frames`` (a new one), recorded in the store."""
    attrs = target.attrs()
    stored = attrs.get("cache_frames")
    if stored is not None and given is not None and given != stored:
        raise ConfigError(f"expected --cache-frames {stored}, as the store was fitted with, got {given}; hint: leave it out to continue")
    capacity = int(stored or given or CACHE_FRAMES)
    model.use_cache(target, capacity)
    if stored is None:
        target.set_attrs({**attrs, "cache_frames": capacity})


def _train(target: ArrayStore, model: Model, state: FitProgress, options: FitOptions, summary: FitSummary, progress: Progress) -> bool:
    """A trainable scorer's epochs over the feature cache the fitting pass filled, with a
    progress bar per epoch showing the loss, a checkpoint every ``checkpoint_every`` frames
    trained on and on Ctrl-C."""
    assert model.cache is not None
    size = model.cache.size(model.frames_seen)
    epochs = options.epochs or int(target.attrs().get("epochs") or 0) or default_epochs(size, options.train_batch_size, model.spec.steps or PAPER_STEPS)
    extra = {**fit_extra(options), "epochs": epochs}
    shown = [-1]

    def on_step(step: TrainStep) -> None:
        if shown[0] != step.epoch:
            shown[0] = step.epoch
            progress.start(f"epoch {step.epoch + 1}/{epochs}", size)
            progress.advance(step.position - step.frames)
        progress.advance(step.frames)
        progress.note(f"loss {step.loss:.4g}")

    with graceful_interrupt(Runner()) as interrupted:
        checkpoint = functools.partial(commit, target, model, state, extra=extra)
        done = model.train(TrainRun(epochs, options.train_batch_size, on_step, lambda: interrupted[0], checkpoint, options.checkpoint_every))
    progress.finish()
    trained = model.trained
    assert trained is not None
    summary.epochs, summary.loss = trained.epoch, trained.loss
    return done


def run_fit(
    sources: Sequence[Source], target: ArrayStore, model: Model, state: FitProgress, options: FitOptions, summary: FitSummary, progress: Progress
) -> None:
    """Fit an opened model on ``sources`` (:func:`open_fit`): the fitting pass, a trainable
    scorer's epochs, then the factors and the normalisation, each committed to ``target``.
    Stops early (``summary.interrupted``) on Ctrl-C, after a checkpoint."""
    options = holdout_of(options, target)
    calibration = Calibration.plan(sources, model, options, continued=bool(state.next_index))
    summary.frames_read = Reading(options.every, (options.start, options.stop), start=dict(state.next_index)).expected(sources)
    if model.trainable:
        _use_cache(target, model, options.cache_frames)
    fit_pass(sources, target, model, state, options, summary, progress, aside=calibration.aside())
    if summary.interrupted:
        logger.warning("fit interrupted after %d frames; continue with --resume", state.frames_seen)
        return
    if model.trainable and not model.finalised and not _train(target, model, state, options, summary, progress):
        summary.interrupted = True
        logger.warning("training interrupted; continue with --resume")
        return
    finish(target, model, state, calibration, sources, options, summary, progress, extra=fit_extra(options))
    if model.cache is not None:
        model.cache.clear()  # trained: the cache has done its work
