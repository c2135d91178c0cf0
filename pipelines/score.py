"""``streamad score``: anomaly maps and frame scores for every frame of the sources."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from streamad.calibration import decision_threshold, normal_threshold
from streamad.engine.exported import AUTO, Exported, open_exported, pick_runtime
from streamad.engine.progress import Progress, no_progress
from streamad.engine.runtime import thread_plan
from streamad.engine.scoring import ScoreOptions, ScoreSummary, load_model, score_frames
from streamad.errors import ConfigError
from streamad.io.decode import check_video_path
from streamad.io.outputs import check_outputs, input_paths
from streamad.io.sources import Source, resolve_sources
from streamad.model import Model
from streamad.publish.site import SiteOutputs, event_sinks
from streamad.sinks import Sink, Sinks
from streamad.sinks.csv import CsvSink
from streamad.sinks.overlay import OverlaySink
from streamad.sinks.score_writer import ScoreStoreSink
from streamad.sinks.timeline import TimelineSink
from streamad.stores.model_store import open_store
from streamad.stores.score_store import create_scores

logger = logging.getLogger(__name__)


def _store_attrs(loaded: Model, model: str | Path | Model, options: ScoreOptions, *, threshold: float | None, decision: float | None) -> dict[str, Any]:
    """The score store's root attributes: the model's definition, the frame-score settings and
    the thresholds."""
    return {
        "model": {**loaded.describe(), "frames_seen": loaded.frames_seen},
        "model_path": str(Path(model).resolve()) if isinstance(model, str | Path) else None,
        "input_hw": list(loaded.input_hw),
        "frame_score": options.frame_score.attrs(),
        "every": options.every,
        "threshold": threshold,
        "decision_threshold": decision,
    }


def check_layers(loaded: Model, layers: Sequence[str]) -> None:
    """``--overlay-layers`` names ``combined`` or the model's cues."""
    if set(layers) - {"combined", *loaded.cues} or not layers:
        raise ConfigError(f"expected --overlay-layers among {['combined', *loaded.cues]}, got {list(layers)}; hint: the model's cues are {list(loaded.cues)}")


def _outputs(
    loaded: Model,
    sources: Sequence[Source],
    out: Path | None,
    options: ScoreOptions,
    overlay: str | Path | None,
    layers: Sequence[str],
    plot: str | Path | None,
    threshold: float | None,
    decision: float | None,
    attrs: dict[str, Any],
    extra: Sequence[Sink],
) -> tuple[Sinks, OverlaySink | None]:
    """The sinks of a score: CSV, score store, overlay (its layers checked), timeline, extras;
    each written beside its path and swapped in only when frames were scored (a failed score
    leaves the previous outputs as they were)."""
    check_layers(loaded, layers)
    overlays = OverlaySink(overlay, fps={s.source_id: s.fps for s in sources}, threshold=threshold, layers=layers, staged=True) if overlay else None
    sinks = [
        CsvSink(out / "scores.csv", threshold=decision, staged=True) if out else None,
        ScoreStoreSink(create_scores(out / "scores.zarr"), attrs=attrs, write_maps=options.write_maps, threshold=decision, publish=False) if out else None,
        overlays,
        TimelineSink(plot, threshold=threshold, staged=True) if plot else None,
        *extra,
    ]
    return Sinks(sinks), overlays


@dataclass(slots=True)
class ScoreJob:
    """What a score settles before it reads a frame (a local score and a cluster one alike)."""

    sources: list[Source]
    model: Model
    out: Path | None
    summary: ScoreSummary
    decision: float | None  # the threshold frames are decided on, when one applies
    attrs: dict[str, Any]  # the score store's root attributes
    graph: Exported | None = None  # --runtime: the exported graph that scores


def begin(
    specs: Sequence[str | Path | Source],
    model: str | Path | Model,
    out_dir: str | Path | None,
    options: ScoreOptions,
    *,
    overlay: str | Path | None = None,
    plot: str | Path | None = None,
    weights: str | None = None,
    weights_b: str | None = None,
    layers: Sequence[str] = ("combined",),
) -> ScoreJob:
    """Check the outputs, resolve the sources, load the model, settle its thresholds and its
    runtime (``layers``: the overlay's, which only PyTorch gives)."""
    out = Path(out_dir) if out_dir is not None else None
    written = {"the score store": out / "scores.zarr" if out else None, "the CSV": out / "scores.csv" if out else None, "--overlay": overlay, "--plot": plot}
    check_outputs(written, input_paths([*specs, model]))
    if overlay is not None:
        check_video_path(overlay, "--overlay")
    sources = resolve_sources(specs)
    loaded = load_model(model, device=options.device, weights=weights, weights_b=weights_b)
    options = replace(options, frame_score=loaded.settled(options.frame_score))
    frame_score = options.frame_score
    summary = ScoreSummary(str(out or ""), str(out / "scores.csv") if out else "", str(out / "scores.zarr") if out else "")
    for folder in (out, Path(overlay).parent if overlay else None, Path(plot).parent if plot else None):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    decision = decision_threshold(loaded.threshold, options.threshold, frame_score.attrs())
    normal = normal_threshold(loaded.normalisation, frame_score.attrs(), on="held-out fit frames")
    summary.decisions = decision is not None
    summary.threshold = decision if decision is not None else (normal.value if normal else None)
    attrs = _store_attrs(loaded, model, options, threshold=summary.threshold, decision=decision)
    layered = list(layers) if overlay is not None and set(layers) != {"combined"} else []
    return ScoreJob(sources, loaded, out, summary, decision, attrs, _graph(model, loaded, options, layered=layered))


def _graph(model: str | Path | Model, loaded: Model, options: ScoreOptions, *, layered: Sequence[str]) -> Exported | None:
    """``--runtime``'s exported graph (made or checked beside the store), or None for PyTorch."""
    why_not = "--overlay-layers asks for maps only PyTorch gives" if layered else None
    runtime = pick_runtime(options.runtime, loaded, options.frame_score, stored=isinstance(model, str | Path), why_not=why_not)
    if runtime == "torch":
        return None
    if layered:
        raise ConfigError(f"expected --overlay-layers combined with --runtime {runtime} (its graph gives that map), got {list(layered)}; hint: --runtime torch")
    if not isinstance(model, str | Path):
        raise ConfigError(f"expected a model store path with --runtime {runtime} (its graph is cached beside it), got a model object")
    threads = thread_plan(loaded.device, workers=options.workers).threads
    return open_exported(runtime, model, loaded, options.frame_score, stored=open_store(model, mode="r"), threads=threads, named=options.runtime != AUTO)


def _event_sinks(events: SiteOutputs, job: ScoreJob) -> list[Sink]:
    """The alerts of a score (``events``' webhooks and MQTT), or none when it names neither."""
    if not events.webhooks and not events.mqtt:
        return []
    if job.out is None or job.decision is None:
        raise ConfigError("expected an output folder and a decision threshold to send events; hint: streamad calibrate -m MODEL, or pass --threshold")
    decision = job.decision
    alerts, messages = event_sinks(job.out, lambda _: decision, events)
    assert messages is not None  # it names webhooks or brokers
    return [alerts, messages]


def score(
    specs: Sequence[str | Path | Source],
    model: str | Path | Model,
    out_dir: str | Path | None,
    *,
    options: ScoreOptions = ScoreOptions(),
    overlay: str | Path | None = None,
    overlay_layers: Sequence[str] = ("combined",),
    plot: str | Path | None = None,
    weights: str | None = None,
    weights_b: str | None = None,
    progress: Progress = no_progress,
    sinks: Sequence[Sink] = (),
    events: SiteOutputs = SiteOutputs(),
) -> ScoreSummary:
    """Score every frame of ``specs`` against ``model`` (a fitted store or a loaded model).

    Writes ``out_dir/scores.csv`` and ``out_dir/scores.zarr`` (nothing when ``out_dir`` is
    None), optionally an overlay video (``overlay_layers``: its panels, ``combined`` and the
    model's cues) and a timeline, and hands every result to ``sinks``. ``events``: events
    (frames above the decision threshold, as ``watch`` opens them) to ``out_dir/events.jsonl``
    with snapshots, and their messages to webhooks and MQTT.
    """
    job = begin(specs, model, out_dir, options, overlay=overlay, plot=plot, weights=weights, weights_b=weights_b, layers=overlay_layers)
    summary = job.summary
    layers = overlay is not None and set(overlay_layers) != {"combined"}
    alerting = _event_sinks(events, job)  # their snapshots need the frames
    extra = [*sinks, *alerting]
    outputs, overlays = _outputs(job.model, job.sources, job.out, options, overlay, overlay_layers, plot, summary.threshold, job.decision, job.attrs, extra)
    kept = {"originals": overlay is not None or bool(alerting), "layers": layers}
    score_frames(job.model, job.sources, options, outputs, summary, decision=job.decision, **kept, progress=progress, graph=job.graph)
    summary.overlays = overlays.paths if overlays else []
    summary.plot = str(plot) if plot and summary.frames else None
    return summary
