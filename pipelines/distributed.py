"""``fit --ray``: a fit spread over a Ray cluster (:mod:`streamad.engine.cluster` makes the calls).

A **fit** cuts its sources into shards (whole sources, and long ones into frame ranges), each
fitted by the local fit's own pass (:func:`~streamad.engine.fitting.fit_pass`) into a fresh
scorer on a worker. The shards' states merge exactly (Chan's pairwise formula) in a fixed tree;
the driver adds the result to its model (a resumed store's, or a new one), makes the factors and
the normalisation, and commits the store as a local fit would. Held-out frames to normalise on
are set aside in the shards as they decode and sent back (at most ``--calibration-frames``).

A score on Ray is :mod:`streamad.pipelines.cluster_score`'s.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from streamad.config import ClusterOptions, ModelConfig
from streamad.engine import cluster
from streamad.engine.assembly import Reading
from streamad.engine.fitting import Calibration, FitOptions, FitSummary, finish, fit_extra, fit_pass, holdout_of, open_fit
from streamad.engine.progress import Progress, graceful_interrupt, no_progress
from streamad.engine.runner import Runner
from streamad.engine.runtime import pick_device, tune_allocator
from streamad.errors import ClusterError, ConfigError
from streamad.features.extractor import Extractors
from streamad.frames import Frame
from streamad.io.sources import Source, resolve_sources
from streamad.model import Model
from streamad.scorers.base import ScorerState
from streamad.stores.array_store import ArrayStore
from streamad.stores.fit_progress import FitProgress
from streamad.stores.model_store import commit

logger = logging.getLogger(__name__)

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
        >>> import numpy as np
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
        add_drops(done.dropped, summary.dropped)
        done.drop_report += summary.drop_report
    done.frames_seen, done.next_index = state.frames_seen, dict(state.next_index)
    return done, model.state()


def add_drops(into: dict[str, dict[str, int]], dropped: dict[str, dict[str, int]]) -> None:
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
        kept = _on_cluster(job, sources, reading, _Driver(target, model, state, summary, progress, extra), on)
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


@dataclass(frozen=True, slots=True)
class _Driver:
    """The driver's side of a cluster fit: the model the rounds are added to, the store they are
    committed to, with what, and whom to tell."""

    target: ArrayStore
    model: Model
    state: FitProgress
    summary: FitSummary
    progress: Progress
    extra: dict[str, Any]


def _on_cluster(job: _FitJob, sources: Sequence[Source], reading: Reading, driver: _Driver, on: ClusterOptions) -> list[Frame]:
    """Connect, cut the shards for the cluster's task slots and run them (:func:`_run_shards`);
    a failure after some rounds were committed says so."""
    state = driver.state
    with cluster.connect(on.address):
        slots = cluster.slots(gpus=on.gpus_per_task)
        shards = plan_shards(sources, reading, shard_count(driver.summary.frames_read, slots, on.shard_frames))
        logger.info("%d shards on %d workers", len(shards), slots)
        committed = state.frames_seen
        try:
            return _run_shards(job, shards, driver, slots=slots, gpus=on.gpus_per_task)
        except ClusterError as exc:
            if state.frames_seen == committed:
                raise
            raise ClusterError(f"{exc}; the {state.frames_seen - committed} frames of the rounds before it are committed: continue with --resume") from None


def _in_order(frames: list[Frame], sources: Sequence[Source]) -> list[Frame]:
    """Frames the shards set aside, once each (a piece reads the frame before it again, for
    motion), in the order a local fit reads them."""
    order = {s.source_id: i for i, s in enumerate(sources)}
    unique = {(f.source_id, f.index): f for f in frames}
    return [unique[key] for key in sorted(unique, key=lambda k: (order[k[0]], k[1]))]


def _run_shards(job: _FitJob, shards: list[Shard], driver: _Driver, *, slots: int, gpus: float) -> list[Frame]:
    """The shards on the cluster, a round (as many as run at once) at a time added to ``model``
    and committed, so an interrupted cluster fit keeps the rounds it finished; returns the
    frames the shards set aside."""
    kept: list[Frame] = []
    if not shards:
        return kept
    progress = driver.progress
    progress.start("shards", len(shards))
    work, merge = functools.partial(_fit_shard, job), functools.partial(_merge, job)
    with graceful_interrupt(Runner()) as interrupted:  # Ctrl-C: stop after the round being added
        rounds = cluster.map_reduce(work, shards, merge, group=slots, on_done=lambda _: progress.advance(1), gpus=gpus, stopped=lambda: interrupted[0])
        done_shards = _add_rounds(rounds, driver, kept, last=shards[-1])
    driver.summary.interrupted = interrupted[0] and done_shards < len(shards)
    progress.finish()
    return kept


def _add_rounds(rounds: Iterator[tuple[list[tuple[Shard, ShardFit]], ScorerState]], driver: _Driver, kept: list[Frame], *, last: Shard) -> int:
    """Add each round's merged state to the driver's model and commit it (but the last round,
    committed with its factors next); returns how many shards were added."""
    model, state, summary, extra = driver.model, driver.state, driver.summary, driver.extra
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
            add_drops(summary.dropped, done.dropped)
            summary.drop_report += done.drop_report
            kept.extend(done.kept)
            extra["cluster"]["shards"] += 1
            added += 1
        if fitted[-1][0] is not last:  # the last round is committed with its factors, next
            commit(driver.target, model, state, extra=extra)
    return added
