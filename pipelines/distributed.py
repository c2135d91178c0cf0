"""``--ray``: a fit or a score spread over a Ray cluster (:mod:`streamad.engine.cluster` makes the calls).

A **fit** cuts its sources into shards (whole sources, and long ones into frame ranges), each
fitted by the local fit's own pass (:func:`~streamad.pipelines.fit.fit_pass`) into a fresh
scorer on a worker. The shards' states merge exactly (Chan's pairwise formula) in a fixed tree;
the driver adds the result to its model (a resumed store's, or a new one), makes the factors and
the normalisation, and commits the store as a local fit would. Held-out frames to normalise on
are set aside in the shards as they decode and sent back (at most ``--calibration-frames``).

A **score** spreads its sources over actors that each load the model once. Each actor writes
its sources' arrays into the score store (on a file system every worker sees) and its overlays;
the driver, which holds the store's writer lock, records their row counts and writes the CSV
and the timeline from the frame scores the actors send back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from streamad.config import ModelConfig
from streamad.engine import cluster
from streamad.engine.assembly import Reading
from streamad.engine.progress import Progress, graceful_interrupt, no_progress
from streamad.engine.runner import Runner
from streamad.engine.runtime import pick_device, tune_allocator
from streamad.errors import ClusterError, ConfigError
from streamad.features.extractor import Extractors
from streamad.frames import Frame, FrameRef, ScoreMap
from streamad.io.sources import Source, resolve_sources
from streamad.model import Model
from streamad.pipelines.fit import Calibration, FitOptions, FitSummary, finish, fit_extra, fit_pass, holdout_of, open_fit
from streamad.pipelines.score import ScoreJob, ScoreOptions, ScoreSummary, begin, check_layers, load_model, score_frames
from streamad.scorers.base import ScorerState
from streamad.sinks import Sinks
from streamad.sinks.csv import CsvSink
from streamad.sinks.overlay import OverlaySink
from streamad.sinks.score_writer import ScoreStoreSink
from streamad.sinks.timeline import TimelineSink
from streamad.stores.array_store import ArrayStore, ZarrStore
from streamad.stores.model_store import Progress as FitProgress
from streamad.stores.model_store import commit
from streamad.stores.score_store import create_scores

logger = logging.getLogger(__name__)

SHARD_FRAMES = 2000  # at most this many frames a shard (a fit's checkpoint interval)


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Where and how a job runs on Ray.

    Attributes:
        address: ``auto`` (the cluster this node joined), ``HOST:PORT``, or None (a new local
            cluster on this machine's cores, for the job).
        gpus_per_task: GPUs each shard or actor asks for (0: CPU workers).
        shard_frames: at most this many frames a shard; shards are as many as the cluster runs
            at once, or a multiple of that.
    """

    address: str | None = None
    gpus_per_task: float = 0.0
    shard_frames: int = SHARD_FRAMES

    def __post_init__(self) -> None:
        if self.gpus_per_task < 0 or self.shard_frames < 1:
            raise ConfigError(f"expected --ray-gpus-per-task >= 0 and --ray-shard-frames >= 1, got {self.gpus_per_task} and {self.shard_frames}")


@dataclass(frozen=True, slots=True)
class Piece:
    """Frames ``[start, stop)`` of a source (``stop`` None: to its end)."""

    source: Source
    start: int
    stop: int | None

    def __str__(self) -> str:
        return f"{self.source.source_id} frames {self.start}-{'end' if self.stop is None else self.stop - 1}"


@dataclass(frozen=True, slots=True)
class Shard:
    number: int
    pieces: tuple[Piece, ...]

    def __str__(self) -> str:
        return f"shard {self.number} ({', '.join(map(str, self.pieces))})"


def plan_shards(sources: Sequence[Source], reading: Reading, count: int) -> list[Shard]:
    """Cut the frames ``reading`` covers into ``count`` shards of about equal length, in order
    (a source's last piece reads to its end, whatever its metadata said its length was).

    Example:
        >>> from streamad.io.sources import FrameArrays
        >>> clips = [FrameArrays(name, np.zeros((n, 2, 2, 3), np.uint8)) for name, n in (("a", 5), ("b", 3))]
        >>> [str(s) for s in plan_shards(clips, Reading(), 2)]
        ['shard 0 (a frames 0-3)', 'shard 1 (a frames 4-end, b frames 0-end)']
    """
    spans = []
    for source in sources:
        begin_at, stop = reading.begin(source), reading.frame_range[1]
        end = len(source) if stop is None else min(len(source), stop)
        if end > begin_at:
            spans.append((source, begin_at, end))
    size = math.ceil(sum(end - at for _, at, end in spans) / max(1, count))
    shards: list[Shard] = []
    pieces: list[Piece] = []
    room = size
    for source, at, end in spans:
        while at < end:
            take = min(room, end - at)
            pieces.append(Piece(source, at, reading.frame_range[1] if at + take >= end else at + take))
            at, room = at + take, room - take
            if room == 0:
                shards.append(Shard(len(shards), tuple(pieces)))
                pieces, room = [], size
    if pieces:
        shards.append(Shard(len(shards), tuple(pieces)))
    return shards


def shard_count(frames: int, slots: int, shard_frames: int) -> int:
    """As many shards as the cluster runs at once, or the next multiple of that which keeps
    each within ``shard_frames``."""
    rounds = max(1, math.ceil(frames / max(1, slots * shard_frames)))
    return max(1, min(frames, slots * rounds))


# --- in the workers -----------------------------------------------------------------------

_EXTRACTORS: dict[str, Extractors] = {}  # per device: a worker process builds its backbone once


def _model(config: ModelConfig, device: str) -> Model:
    """A fresh model (scorer unfitted) on this worker's backbone for ``config``."""
    extractors = _EXTRACTORS.setdefault(device, Extractors(device))
    return Model(config, device=device, extractor=extractors.for_config(config))


@dataclass(frozen=True, slots=True)
class _FitJob:
    """What every shard of a fit is told."""

    config: ModelConfig
    options: FitOptions
    aside: Callable[[int], bool] | None  # the held-out frames to set aside for the normalisation
    device: str
    hook: Callable[[Shard], None] | None = None  # run first in each shard (tests inject faults)


@dataclass(slots=True)
class ShardFit:
    """A shard's summary (its scorer state travels apart, to the merges)."""

    frames_seen: int = 0
    next_index: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    drop_report: list[str] = field(default_factory=list)
    kept: list[Frame] = field(default_factory=list)


def _fit_shard(job: _FitJob, shard: Shard) -> tuple[ShardFit, ScorerState]:
    if job.hook is not None:
        job.hook(shard)
    tune_allocator()
    model = _model(job.config, str(pick_device(job.device)))
    state, done = FitProgress(), ShardFit()
    for piece in shard.pieces:
        sid = piece.source.source_id
        state.next_index[sid] = piece.start
        summary = FitSummary(str(shard))
        options = replace(job.options, stop=piece.stop)
        # no store: a shard's work is redone whole, so it never checkpoints
        fit_pass([piece.source], None, model, state, options, summary, no_progress, aside=(job.aside, done.kept) if job.aside else None)
        if summary.interrupted:
            raise ClusterError(f"expected {shard} to run to its end, got it interrupted (the worker was told to stop)")
        _add_drops(done.dropped, summary.dropped)
        done.drop_report += summary.drop_report
    done.frames_seen, done.next_index = state.frames_seen, dict(state.next_index)
    return done, model.state()


def _add_drops(into: dict[str, dict[str, int]], dropped: dict[str, dict[str, int]]) -> None:
    """Add per-source, per-reason counts of dropped frames."""
    for sid, reasons in dropped.items():
        for reason, n in reasons.items():
            into.setdefault(sid, {})[reason] = into.get(sid, {}).get(reason, 0) + n


def _merge(job: _FitJob, a: ScorerState, b: ScorerState) -> ScorerState:
    left, right = _model(job.config, "cpu"), _model(job.config, "cpu")
    left.load_state(a)
    right.load_state(b)
    left.merge(right)
    return left.state()


# --- the driver ---------------------------------------------------------------------------


def fit_on_cluster(
    specs: Sequence[str | Path | Source],
    store: str | Path,
    config: ModelConfig | None = None,
    *,
    options: FitOptions = FitOptions(),
    on: ClusterOptions = ClusterOptions(),
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress = no_progress,
    hook: Callable[[Shard], None] | None = None,
) -> FitSummary:
    """:func:`streamad.pipelines.fit.fit` on a Ray cluster: the same store, statistics equal to a
    local fit's to float64 rounding (merged in another order). Mergeable methods only.

    The shards run in rounds (as many as the cluster runs at once); each round's merged state is
    added and committed as it comes, while the next rounds run, so an interrupted or failed
    cluster fit keeps the rounds before it and ``--resume`` continues from there. ``hook``:
    called in the worker before each shard (tests kill workers with it).
    """
    began = time.perf_counter()
    sources = resolve_sources(specs)
    target, model, state = open_fit(sources, store, config, resume=resume, overwrite=overwrite, options=options, device=str(pick_device(options.device)))
    summary = FitSummary(str(store))
    try:
        if not model.mergeable:
            raise ConfigError(f"expected a mergeable method with --ray, got {model.config.method!r}, which trains; hint: fit it without --ray")
        options = holdout_of(options, target)
        calibration = Calibration.plan(sources, model, options, continued=bool(state.next_index))
        reading = Reading(options.every, (options.start, options.stop), start=dict(state.next_index))
        summary.frames_read = reading.expected(sources)
        device = "cuda" if on.gpus_per_task else "cpu"  # a worker takes a GPU only when its task was given one
        job = _FitJob(model.config, options, calibration.read if calibration.kept is not None else None, device, hook)
        shards_before = int((target.attrs().get("cluster") or {}).get("shards", 0))
        extra = {**fit_extra(options), "cluster": {"shards": shards_before, "address": on.address or "local"}}  # shards merged, over all runs
        with cluster.connect(on.address):
            slots = cluster.slots(gpus=on.gpus_per_task)
            shards = plan_shards(sources, reading, shard_count(summary.frames_read, slots, on.shard_frames))
            logger.info("%d shards on %d workers", len(shards), slots)
            committed = state.frames_seen
            try:
                kept = _run_shards(job, shards, target, model, state, summary, progress, extra=extra, slots=slots, gpus=on.gpus_per_task)
            except ClusterError as exc:
                if state.frames_seen == committed:
                    raise
                raise ClusterError(f"{exc}; the {state.frames_seen - committed} frames of the rounds before it are committed: continue with --resume") from None
        if summary.interrupted:  # Ctrl-C: the finished rounds are committed
            summary.frames_seen = state.frames_seen
            logger.warning("fit interrupted after %d frames; continue with --resume", state.frames_seen)
            return summary
        summary.frames_seen = state.frames_seen
        if calibration.kept is not None:
            calibration.kept = _in_order(kept, sources)
        finish(target, model, state, calibration, sources, options, summary, progress, extra=extra)
        summary.seconds = time.perf_counter() - began
        return summary
    finally:
        target.close()


def _in_order(frames: list[Frame], sources: Sequence[Source]) -> list[Frame]:
    """Frames the shards set aside, once each (a piece reads the frame before it again, for
    motion), in the order a local fit reads them."""
    order = {s.source_id: i for i, s in enumerate(sources)}
    unique = {(f.source_id, f.index): f for f in frames}
    return [unique[key] for key in sorted(unique, key=lambda k: (order[k[0]], k[1]))]


def _run_shards(
    job: _FitJob,
    shards: list[Shard],
    target: ArrayStore,
    model: Model,
    state: FitProgress,
    summary: FitSummary,
    progress: Progress,
    *,
    extra: dict[str, Any],
    slots: int,
    gpus: float,
) -> list[Frame]:
    """The shards on the cluster, a round (as many as run at once) at a time added to ``model``
    and committed, so an interrupted cluster fit keeps the rounds it finished; returns the
    frames the shards set aside."""
    kept: list[Frame] = []
    if not shards:
        return kept
    progress.start("shards", len(shards))
    work, merge = functools.partial(_fit_shard, job), functools.partial(_merge, job)
    with graceful_interrupt(Runner()) as interrupted:  # Ctrl-C: stop after the round being added
        rounds = cluster.map_reduce(work, shards, merge, group=slots, on_done=lambda _: progress.advance(1), gpus=gpus, stopped=lambda: interrupted[0])
        done_shards = _add_rounds(rounds, target, model, state, summary, extra, kept, last=shards[-1])
    summary.interrupted = interrupted[0] and done_shards < len(shards)
    progress.finish()
    return kept


def _add_rounds(
    rounds: Iterator[tuple[list[tuple[Shard, ShardFit]], ScorerState]],
    target: ArrayStore,
    model: Model,
    state: FitProgress,
    summary: FitSummary,
    extra: dict[str, Any],
    kept: list[Frame],
    *,
    last: Shard,
) -> int:
    """Add each round's merged state to ``model`` and commit it (but the last round, committed
    with its factors next); returns how many shards were added."""
    added = 0
    for fitted, merged in rounds:
        if model.frames_seen:  # a resumed store, or the rounds before: add to it
            other = Model(model.config, device=model.device, extractor=model.extractor)
            other.load_state(merged)
            model.merge(other)
        else:
            model.load_state(merged)
        del merged
        for _, done in fitted:
            for sid, n in done.next_index.items():
                state.next_index[sid] = max(state.next_index.get(sid, 0), n)
            state.frames_seen += done.frames_seen
            summary.frames_added += done.frames_seen
            _add_drops(summary.dropped, done.dropped)
            summary.drop_report += done.drop_report
            kept.extend(done.kept)
            extra["cluster"]["shards"] += 1
            added += 1
        if fitted[-1][0] is not last:  # the last round is committed with its factors, next
            commit(target, model, state, extra=extra)
    return added


# --- score --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ScoreJob:
    """What every actor of a score is told."""

    model: str
    options: ScoreOptions
    weights: tuple[str | None, str | None]
    store: str | None  # the score store the driver opened (None: none is written)
    decision: float | None
    overlay: str | None
    layers: tuple[str, ...]
    fps: dict[str, float]  # every source's, so overlays are named as a local score names them
    threshold: float | None  # the overlays' (the decision threshold, else the normal frames')
    hook: Callable[[FrameRef], None] | None = None  # after each frame is written (tests inject faults)


@dataclass(slots=True)
class SourceScored:
    """An actor's results for one source: the counts, and the frame scores for the CSV."""

    summary: ScoreSummary
    refs: list[FrameRef]
    scores: list[float]
    map_max: list[float]
    overlays: list[str]


class _Rows:
    """A sink keeping what the CSV and the timeline need of each result (no maps, no pixels)."""

    def __init__(self) -> None:
        self.refs: list[FrameRef] = []
        self.scores: list[float] = []
        self.map_max: list[float] = []

    def write(self, result: ScoreMap) -> None:
        self.refs.append(result.ref)
        self.scores.append(result.score)
        self.map_max.append(result.map_max)

    def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Hook:
    """A sink calling ``call`` with each frame written."""

    call: Callable[[FrameRef], None]

    def write(self, result: ScoreMap) -> None:
        self.call(result.ref)

    def close(self) -> None:
        return None


def _load(job: _ScoreJob) -> tuple[_ScoreJob, Model]:
    tune_allocator()
    return job, load_model(job.model, device=job.options.device, weights=job.weights[0], weights_b=job.weights[1])


def _score_source(actor: tuple[_ScoreJob, Model], source: Source) -> SourceScored:
    job, model = actor
    summary = ScoreSummary("", "", "")
    rows = _Rows()
    part = None
    if job.store:
        store = ZarrStore(job.store, delegate=True)
        store.delete(source.source_id)  # a retried attempt (its worker died) starts the source's arrays again
        part = ScoreStoreSink(store, attrs=None, write_maps=job.options.write_maps, threshold=job.decision)
    overlays = OverlaySink(job.overlay, fps=job.fps, threshold=job.threshold, layers=job.layers) if job.overlay else None
    layers = overlays is not None and set(job.layers) != {"combined"}
    hook = _Hook(job.hook) if job.hook is not None else None
    score_frames(
        model, [source], job.options, Sinks([rows, part, overlays, hook]), summary, decision=job.decision, originals=overlays is not None, layers=layers
    )
    if summary.interrupted:
        raise ClusterError(f"expected {source.source_id} to be scored to its end, got it interrupted (the worker was told to stop)")
    return SourceScored(summary, rows.refs, rows.scores, rows.map_max, overlays.paths if overlays else [])


def score_on_cluster(
    specs: Sequence[str | Path | Source],
    model: str | Path,
    out_dir: str | Path | None,
    *,
    options: ScoreOptions = ScoreOptions(),
    on: ClusterOptions = ClusterOptions(),
    overlay: str | Path | None = None,
    overlay_layers: Sequence[str] = ("combined",),
    plot: str | Path | None = None,
    weights: str | None = None,
    weights_b: str | None = None,
    progress: Progress = no_progress,
    hook: Callable[[FrameRef], None] | None = None,
) -> ScoreSummary:
    """:func:`streamad.pipelines.score.score` with its sources spread over Ray actors: the same
    CSV, store, overlays and timeline. The output folder must be one every worker sees.
    ``hook``: called in the actor after each frame is written (tests kill actors with it)."""
    if not isinstance(model, str | Path):
        raise ConfigError("expected a model store path with --ray (each worker loads it), got a model object")
    job = begin(specs, model, out_dir, options, overlay=overlay, plot=plot, weights=weights, weights_b=weights_b)
    check_layers(job.model, overlay_layers)
    summary = job.summary
    # The driver holds the score store (its lock, root attributes and row counts) and writes the
    # CSV and the timeline; the actors write the sources' arrays and the overlays.
    root = ScoreStoreSink(create_scores(job.out / "scores.zarr"), attrs=job.attrs, write_maps=options.write_maps, threshold=job.decision) if job.out else None
    told = _told(job, model, options, on, weights=(weights, weights_b), stored=root is not None, overlay=overlay, layers=overlay_layers, hook=hook)
    scored: dict[str, SourceScored] = {}

    def done(source: Source, result: SourceScored) -> None:
        scored[source.source_id] = result
        if root is not None:
            root.record({source.source_id: len(result.refs)})
        progress.advance(len(result.refs))

    rows = Sinks(
        [CsvSink(job.out / "scores.csv", threshold=job.decision) if job.out else None, TimelineSink(plot, threshold=summary.threshold) if plot else None]
    )
    progress.start("scoring", Reading(options.every, (options.start, options.stop)).expected(job.sources))
    with contextlib.ExitStack() as stack:
        if root is not None:
            stack.callback(root.close)
        stack.enter_context(rows)
        with cluster.connect(on.address), graceful_interrupt(Runner()) as interrupted:  # Ctrl-C: the sources scored so far are written
            actors = functools.partial(cluster.actor_map, functools.partial(_load, told), _score_source, job.sources, gpus=on.gpus_per_task)
            actors(on_done=done, stopped=lambda: interrupted[0])
            summary.interrupted = len(scored) < len(job.sources)
        for source in [s for s in job.sources if s.source_id in scored]:  # the CSV and the timeline in the sources' order, as locally
            result = scored[source.source_id]
            for ref, value, top in zip(result.refs, result.scores, result.map_max, strict=True):
                rows.write(ScoreMap(ref, value, top, np.empty((0, 0), np.float32)))
            _add(summary, result)
    progress.finish()
    summary.plot = str(plot) if plot and summary.frames else None
    return summary


def _told(
    job: ScoreJob,
    model: str | Path,
    options: ScoreOptions,
    on: ClusterOptions,
    *,
    weights: tuple[str | None, str | None],
    stored: bool,
    overlay: str | Path | None,
    layers: Sequence[str],
    hook: Callable[[FrameRef], None] | None,
) -> _ScoreJob:
    """What the actors are told: paths made absolute (their working folder is Ray's)."""
    device = "cuda" if on.gpus_per_task else "cpu"  # a worker takes a GPU only when its actor was given one
    return _ScoreJob(
        str(Path(model).resolve()),
        replace(options, device=device),
        weights,
        str(Path(job.summary.store).resolve()) if stored else None,
        job.decision,
        str(Path(overlay).resolve()) if overlay else None,
        tuple(layers),
        {s.source_id: s.fps for s in job.sources},
        job.summary.threshold,
        hook,
    )


def _add(summary: ScoreSummary, result: SourceScored) -> None:
    summary.frames.update(result.summary.frames)
    summary.anomalous.update(result.summary.anomalous)
    _add_drops(summary.dropped, result.summary.dropped)
    summary.drop_report += result.summary.drop_report
    summary.overlays += result.overlays
