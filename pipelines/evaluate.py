"""``streamad eval``: metrics of a model, or of anyone's saved predictions, on a labelled test set.

Evaluating a model is scoring the test set (:func:`pipelines.score.score`, which writes a score
store) and then evaluating that store, so ``eval --predictions scores.zarr`` on the same store
gives the same numbers by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamad.engine.progress import Progress, no_progress
from streamad.engine.scoring import ScoreOptions
from streamad.errors import ConfigError
from streamad.evaluation.ground_truth import GroundTruth, GroundTruthError, LabelledSource, image_hw, load_ground_truth, union
from streamad.evaluation.metrics import PixelMetrics, SproMetrics, auroc, papers_protocol, roc_curve
from streamad.evaluation.report import Case, Evaluation, markdown, rounded, summarise, write_report
from streamad.pipelines.score import score
from streamad.stores.score_store import open_scores, read_source

logger = logging.getLogger(__name__)

VIDEO_LAYOUTS = ("ucsd", "mstc")
MAX_FPR = {"loco": 0.05}  # each protocol's integration limit of its region metric (sPRO); AUPRO: 0.3
MAP_BLOCK = 16  # maps read per zarr request (the store's chunk)


@dataclass(slots=True)
class _Group:
    """Everything kept per reported row: scalar scores (small) and pixel histograms (constant)."""

    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # per source: scores before the temporal filters, labels
    pixels: PixelMetrics | None = None
    spro: SproMetrics | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate(self.scores) if self.scores else np.zeros(0)), (np.concatenate(self.labels) if self.labels else np.zeros(0, bool))


def max_fpr_for(layout: str, max_fpr: float | None) -> float:
    """The integration limit: the one given, else the layout's protocol (sPRO 0.05, AUPRO 0.3)."""
    return max_fpr if max_fpr is not None else MAX_FPR.get(layout, 0.3)


def _row(group: _Group, *, max_fpr: float, normal_pool: np.ndarray, normal_pixels: np.ndarray | None) -> dict[str, Any]:
    """One table row. A row of anomalies only is ranked against every normal frame of the set
    (the MVTec AD per-defect convention); a row of normal frames only has no AUROC. sPRO
    (LOCO) takes its false-positive rate from every defect-free image's pixels
    (``normal_pixels``) and replaces AUPRO."""
    scores, labels = group.arrays()
    row: dict[str, Any] = {"frames": int(labels.size), "anomalous": int(labels.sum())}
    if labels.any() and not labels.all():
        row["auroc"] = rounded(auroc(scores, labels))
    elif labels.size and labels.all() and normal_pool.size:
        row["auroc"] = rounded(auroc(np.r_[scores, normal_pool], np.r_[labels, np.zeros(normal_pool.size, bool)]))
    else:
        row["auroc"] = None
    if group.pixels is not None:
        result = group.pixels.result(max_fpr=max_fpr)
        row["pixel_auroc"] = rounded(result.auroc)
        if group.spro is None:
            row["aupro"], row["regions"] = rounded(result.aupro), result.regions
    if group.spro is not None:
        spro = group.spro.result(max_fpr=max_fpr, normal=normal_pixels)
        row["spro"], row["defects"] = rounded(spro.spro), spro.defects
    return row


def evaluate_predictions(
    store_path: str | Path,
    truth: GroundTruth,
    *,
    max_fpr: float | None = None,
    worst: int = 8,
    pixels: bool = True,
    progress: Progress = no_progress,
) -> Evaluation:
    """Metrics of the predictions in a score store (streamad's format) against ``truth``.

    Pixel metrics are computed when ``pixels`` and the ground truth has masks. Only frames
    present in the store are evaluated (a store scored with ``--every N`` holds every
    N-th frame; the metrics say how many frames were evaluated out of how many labelled).

    Raises:
        GroundTruthError: a source of the test set is missing from the store, or the store holds
            frames the ground truth has no label for.
    """
    store, attrs = open_scores(store_path)
    max_fpr = max_fpr_for(truth.layout, max_fpr)
    pixel_level = pixels and truth.has_masks
    regional = pixel_level and truth.has_defects
    groups: dict[str, _Group] = {}
    overall = _new_group(pixel_level, regional)
    progress.start("evaluating", sum(len(s.labels) for s in truth.sources))
    levels = (pixel_level, regional)
    frames = [case for labelled in truth.sources for case in _add_source(store, attrs, store_path, labelled, groups, overall, levels, progress)]
    progress.finish()
    all_scores, all_labels = overall.arrays()
    metrics = _metrics(truth, store_path, attrs, overall, groups, max_fpr)
    roc, pro = _curves(overall, metrics, max_fpr)
    normal_frames = sorted((f for f in frames if not f.label), key=lambda f: -f.score)[:worst]
    missed = sorted((f for f in frames if f.label), key=lambda f: f.score)[:worst]
    return Evaluation(metrics, roc, pro, (all_scores, all_labels), normal_frames, missed, str(store_path), truth)


def _metrics(truth: GroundTruth, store_path: str | Path, attrs: dict[str, Any], overall: _Group, groups: dict[str, _Group], max_fpr: float) -> dict[str, Any]:
    """The evaluation's numbers, JSON-ready: what was evaluated, then the overall and per-group rows."""
    all_scores, all_labels = overall.arrays()
    normal_pool = all_scores[~all_labels]
    normal_pixels = overall.spro.normal if overall.spro is not None else None
    return {
        "layout": truth.layout,
        "level": "frame" if truth.layout in VIDEO_LAYOUTS else "image",
        "predictions": str(Path(store_path).resolve()),
        "every": attrs.get("every", 1),
        "frames_evaluated": int(all_labels.size),
        "frames_labelled": int(sum(len(s.labels) for s in truth.sources)),
        "frame_score": attrs.get("frame_score"),
        "model": attrs.get("model"),
        "max_fpr": max_fpr,
        "normal_images": truth.normal_from,
        "overall": _row(overall, max_fpr=max_fpr, normal_pool=normal_pool, normal_pixels=normal_pixels),
        "groups": {name: _row(g, max_fpr=max_fpr, normal_pool=normal_pool, normal_pixels=normal_pixels) for name, g in groups.items()},
        **({"papers_protocol": papers_protocol(overall.pooled)} if truth.layout in VIDEO_LAYOUTS else {}),
    }


def _curves(overall: _Group, metrics: dict[str, Any], max_fpr: float) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray] | None]:
    """The report's ROC curves (image/frame, pixel) and its region curve: PRO, or sPRO for LOCO."""
    all_scores, all_labels = overall.arrays()
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if all_labels.any() and not all_labels.all():
        fpr, tpr, _ = roc_curve(all_scores, all_labels)
        roc[f"{metrics['level']} ({metrics['overall']['auroc']:.3f})"] = (fpr, tpr)
    pro = None
    if overall.pixels is not None:
        result = overall.pixels.result(max_fpr=max_fpr)
        if result.auroc is not None:
            roc[f"pixel ({result.auroc:.3f})"] = result.roc
            pro = result.pro
    if overall.spro is not None and overall.spro.defects and overall.spro.normal.any():
        pro = overall.spro.result(max_fpr=max_fpr).curve
    return roc, pro


def _new_group(pixel_level: bool, regional: bool) -> _Group:
    return _Group(pixels=PixelMetrics() if pixel_level else None, spro=SproMetrics() if regional else None)


def _add_source(
    store: Any,
    attrs: dict[str, Any],
    store_path: str | Path,
    labelled: LabelledSource,
    groups: dict[str, _Group],
    overall: _Group,
    levels: tuple[bool, bool],
    progress: Progress,
) -> list[Case]:
    """One labelled source's predictions into its group and the overall row; its frames as cases.
    ``levels``: (pixel metrics, per-defect sPRO)."""
    pixel_level, regional = levels
    sid = labelled.source_id
    if not store.exists(f"{sid}/score"):
        there = sorted(attrs.get("sources", {}))
        raise GroundTruthError(f"expected predictions for source {sid!r} in {store_path}, got none; hint: score the same test set (the store has {there})")
    pred = read_source(store, sid, with_maps=pixel_level)
    if pred.index.size and (pred.index.min() < 0 or pred.index.max() >= len(labelled.labels)):
        raise GroundTruthError(
            f"expected frame indices below {len(labelled.labels)} for source {sid!r} (its labelled frames), got {int(pred.index.max())} in {store_path}"
        )
    if pixel_level and pred.maps is None:
        raise GroundTruthError(f"expected anomaly maps for source {sid!r} in {store_path}, got none; hint: score without --no-maps")
    labels = labelled.labels[pred.index]
    group = groups.setdefault(labelled.group, _new_group(pixel_level, regional))
    for target in (group, overall):
        target.scores.append(pred.score.astype(np.float64))
        target.labels.append(labels)
    overall.pooled[sid] = (pred.pooled.astype(np.float64), labels)
    if pixel_level:
        _add_pixels(labelled, pred.index, pred.maps, (group, overall), progress)
    else:
        progress.advance(len(pred.index))
    return [Case(sid, int(i), float(s), bool(y), str(labelled.source.paths[i])) for i, s, y in zip(pred.index, pred.score, labels, strict=True)]


def _add_pixels(labelled: LabelledSource, indices: np.ndarray, maps: Any, targets: tuple[_Group, ...], progress: Progress) -> None:
    """Each map, resized to its frame's original size, against that frame's mask (and its
    annotated defects, for sPRO)."""
    assert labelled.mask_of is not None  # pixel_level guarantees it
    for start in range(0, len(indices), MAP_BLOCK):
        block = np.asarray(maps[start : start + MAP_BLOCK])
        for offset, anomaly_map in enumerate(block):
            index = int(indices[start + offset])
            if labelled.defects_of is not None:  # LOCO: the defect files are read once, for sPRO and for their union as the mask
                defects = labelled.defects_of(index)
                mask = union(defects)
            else:
                defects, mask = [], labelled.mask_of(index)
            if mask is None:
                mask = np.zeros(image_hw(labelled.source.paths[index]), bool)
            resized = cv2.resize(anomaly_map.astype(np.float32), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
            for target in targets:
                if target.pixels is not None:
                    target.pixels.add(resized, mask)
                if target.spro is not None:
                    target.spro.add(resized, defects)
        progress.advance(len(block))


def evaluate_model(
    truth: GroundTruth,
    model_path: str | Path,
    out_dir: str | Path,
    *,
    options: ScoreOptions = ScoreOptions(),
    weights: str | None = None,
    weights_b: str | None = None,
    max_fpr: float | None = None,
    progress: Progress = no_progress,
) -> Evaluation:
    """Score the test set with the model (writing ``out_dir/scores.zarr``), then evaluate it."""
    if not truth.has_masks:
        options = replace(options, write_maps=False)
    score([s.source for s in truth.sources], model_path, out_dir, options=options, weights=weights, weights_b=weights_b, progress=progress)
    return evaluate_predictions(Path(out_dir) / "scores.zarr", truth, max_fpr=max_fpr, pixels=options.write_maps, progress=progress)


@dataclass(frozen=True, slots=True)
class EvalRun:
    """What ``streamad eval`` prints: one Markdown table per category (or one), the summary
    table over categories, and the report files written."""

    tables: dict[str, str]
    summary: str | None
    reports: list[str]
    metrics: dict[str, dict[str, Any]]


def evaluate(
    testset: str | Path,
    *,
    model: str | Path | None = None,
    predictions: str | Path | None = None,
    out_dir: str | Path = "eval",
    report_dir: str | Path | None = None,
    categories: Sequence[str] = (),
    masks: str | Path | None = None,
    labels: str | Path | None = None,
    max_fpr: float | None = None,
    options: ScoreOptions = ScoreOptions(),
    weights: str | None = None,
    weights_b: str | None = None,
    progress: Progress = no_progress,
) -> EvalRun:
    """Evaluate ``model`` (a store, or with ``categories`` a template such as
    ``models/{category}.zarr``), or saved ``predictions``, on a labelled test set; each category
    is a subfolder of ``testset``. Writes reports (``report_dir``) per category and a summary."""
    if (model is None) == (predictions is None):
        raise ConfigError("expected exactly one of --model (run a model) or --predictions (evaluate a score store)")
    if categories and predictions is not None:
        raise ConfigError("expected --categories with --model 'models/{category}.zarr', got --predictions")
    results: dict[str, dict[str, Any]] = {}
    tables: dict[str, str] = {}
    reports: list[str] = []
    for name in categories or [""]:
        truth = load_ground_truth(Path(testset) / name, masks=masks, labels=labels)
        if predictions is not None:
            evaluation = evaluate_predictions(predictions, truth, max_fpr=max_fpr, progress=progress)
        else:
            assert model is not None
            target = model_for(str(model), name) if name else model
            evaluation = evaluate_model(
                truth, target, Path(out_dir) / name, options=options, weights=weights, weights_b=weights_b, max_fpr=max_fpr, progress=progress
            )
        results[name], tables[name] = evaluation.metrics, markdown(evaluation.metrics)
        if report_dir is not None:
            reports += write_report(evaluation, Path(report_dir) / name)
    summary = summarise(results, report_dir) if categories else None
    return EvalRun(tables, summary, reports, results)


def model_for(template: str, category: str) -> str:
    """``models/{category}.zarr`` -> ``models/hazelnut.zarr``; a template without the field
    names a folder holding ``<category>.zarr``."""
    if "{category}" in template:
        return template.replace("{category}", category)
    return str(Path(template) / f"{category}.zarr")
