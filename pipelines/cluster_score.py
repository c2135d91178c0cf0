"""``score --ray``: a score spread over a Ray cluster (:mod:`streamad.engine.cluster` makes the calls).

The sources are spread over actors that each load the model once. Each actor writes its sources'
arrays into the score store (on a file system every worker sees) and its overlays; the driver,
which holds the store's writer lock, records their row counts and writes the CSV and the
timeline from the frame scores the actors send back.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from streamad.config import ClusterOptions
from streamad.engine import cluster
from streamad.engine.assembly import Reading
from streamad.engine.exported import AUTO
from streamad.engine.progress import Progress, graceful_interrupt, no_progress
from streamad.engine.runner import Runner
from streamad.engine.runtime import tune_allocator
from streamad.engine.scoring import ScoreOptions, ScoreSummary, load_model, score_frames
from streamad.errors import ClusterError, ConfigError
from streamad.frames import FrameRef, ScoreMap
from streamad.io.sources import Source
from streamad.model import Model
from streamad.pipelines.distributed import add_drops
from streamad.pipelines.score import ScoreJob, begin, check_layers
from streamad.publish.site import SiteOutputs
from streamad.sinks import Sinks
from streamad.sinks.csv import CsvSink
from streamad.sinks.overlay import OverlaySink
from streamad.sinks.score_writer import ScoreStoreSink
from streamad.sinks.timeline import TimelineSink
from streamad.stores.array_store import ZarrStore
from streamad.stores.score_store import create_scores


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
    overlays = OverlaySink(job.overlay, fps=job.fps, threshold=job.threshold, layers=job.layers, staged=True) if job.overlay else None
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
    events: SiteOutputs = SiteOutputs(),
) -> ScoreSummary:
    """:func:`streamad.pipelines.score.score` with its sources spread over Ray actors: the same
    CSV, store, overlays and timeline. The output folder must be one every worker sees.
    ``hook``: called in the actor after each frame is written (tests kill actors with it)."""
    options = _checked(model, options, events)
    job = begin(specs, model, out_dir, options, overlay=overlay, plot=plot, weights=weights, weights_b=weights_b)
    check_layers(job.model, overlay_layers)
    summary = job.summary
    root, rows = _driver_sinks(job, options, plot)
    store = root.folder if root is not None else None  # the new store, beside the old one until published
    told = _told(job, model, options, on, weights=(weights, weights_b), store=store, overlay=overlay, layers=overlay_layers, hook=hook)
    commits = [rows.commit, *([root.commit] if root is not None else [])]  # once frames were scored: the outputs replace the old
    scored: dict[str, SourceScored] = {}

    def done(source: Source, result: SourceScored) -> None:
        scored[source.source_id] = result
        if root is not None:
            root.record({source.source_id: len(result.refs)})
        progress.advance(len(result.refs))

    progress.start("scoring", Reading(options.every, (options.start, options.stop)).expected(job.sources))
    with contextlib.ExitStack() as stack:
        if root is not None:
            stack.callback(root.close)
        stack.enter_context(rows)
        with cluster.connect(on.address), graceful_interrupt(Runner()) as interrupted:  # Ctrl-C: the sources scored so far are written
            actors = functools.partial(cluster.actor_map, functools.partial(_load, told), _score_source, job.sources, gpus=on.gpus_per_task)
            actors(on_done=done, stopped=lambda: interrupted[0])
            summary.interrupted = len(scored) < len(job.sources)
        _write_rows(rows, job.sources, scored, summary)
        for commit in commits if summary.frames else []:
            commit()
    progress.finish()
    summary.plot = str(plot) if plot and summary.frames else None
    return summary


def _checked(model: str | Path | Model, options: ScoreOptions, events: SiteOutputs) -> ScoreOptions:
    """A model store (each worker loads it) scored by PyTorch (what the workers run), no events."""
    if events.webhooks or events.mqtt:
        raise ConfigError("expected no --events-webhook or --events-mqtt with --ray (events follow frames in order, on one machine); hint: score without --ray")
    if not isinstance(model, str | Path):
        raise ConfigError("expected a model store path with --ray (each worker loads it), got a model object")
    if options.runtime not in (AUTO, "torch"):
        raise ConfigError(f"expected --runtime torch with --ray (its workers run PyTorch), got {options.runtime}")
    return replace(options, runtime="torch")


def _driver_sinks(job: ScoreJob, options: ScoreOptions, plot: str | Path | None) -> tuple[ScoreStoreSink | None, Sinks]:
    """The driver holds the score store (its lock, root attributes and row counts) and writes the
    CSV and the timeline; the actors write the sources' arrays (into the new store, published
    with the CSV and the timeline once frames were scored) and the overlays (each moved into
    place when its source was scored whole)."""
    out, decision = job.out, job.decision
    root = None
    if out is not None:
        root = ScoreStoreSink(create_scores(out / "scores.zarr"), attrs=job.attrs, write_maps=options.write_maps, threshold=decision, publish=False)
    csv = CsvSink(out / "scores.csv", threshold=decision, staged=True) if out else None
    rows = Sinks([csv, TimelineSink(plot, threshold=job.summary.threshold, staged=True) if plot else None])
    return root, rows


def _write_rows(rows: Sinks, sources: Sequence[Source], scored: dict[str, SourceScored], summary: ScoreSummary) -> None:
    """The CSV and the timeline from the actors' frame scores, in the sources' order (as a local
    score writes them), and their counts into ``summary``."""
    for source in [s for s in sources if s.source_id in scored]:
        result = scored[source.source_id]
        for ref, value, top in zip(result.refs, result.scores, result.map_max, strict=True):
            rows.write(ScoreMap(ref, value, top, np.empty((0, 0), np.float32)))
        _add(summary, result)


def _told(
    job: ScoreJob,
    model: str | Path,
    options: ScoreOptions,
    on: ClusterOptions,
    *,
    weights: tuple[str | None, str | None],
    store: str | None,
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
        str(Path(store).resolve()) if store else None,
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
    add_drops(summary.dropped, result.summary.dropped)
    summary.drop_report += result.summary.drop_report
    summary.overlays += result.overlays
