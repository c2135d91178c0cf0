"""``streamad calibrate``: store a decision threshold in a model store.

A threshold is in frame-score units (and map pixels share them), so it holds for the frame-score
settings it was found with; ``score`` applies it only with the same settings.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from streamad.calibration import DEFAULT_QUANTILE, Threshold, quantile_threshold
from streamad.engine.progress import Progress, no_progress
from streamad.engine.scoring import ScoreOptions
from streamad.errors import ConfigError
from streamad.evaluation.ground_truth import GroundTruth
from streamad.evaluation.metrics import f1_threshold
from streamad.pipelines.evaluate import evaluate_model, evaluate_predictions
from streamad.pipelines.score import score
from streamad.stores.model_store import load, open_store, write_threshold
from streamad.stores.score_store import open_scores, read_source


def calibrate(
    model_path: str | Path,
    *,
    quantile: float | None = None,
    normal: Sequence[str] = (),
    labelled: GroundTruth | None = None,
    predictions: str | Path | None = None,
    fixed: float | None = None,
    options: ScoreOptions = ScoreOptions(),
    work_dir: str | Path | None = None,
    progress: Progress = no_progress,
) -> Threshold:
    """Find a threshold and store it in ``model_path``.

    Exactly one way: ``fixed``; ``labelled`` (F1-optimal on a labelled test set, scored now or
    read from ``predictions``); or a ``quantile`` (default 0.99) of frame scores on normal frames:
    the ``normal`` sources scored now, or else the frames ``fit`` held out.
    """
    if fixed is not None and (labelled is not None or normal or quantile is not None):
        raise ConfigError("expected one way to set the threshold, got --fixed with another")
    if labelled is not None and (normal or quantile is not None):
        raise ConfigError("expected one way to set the threshold, got --f1 with --quantile or --on")
    if quantile is not None and not 0 < quantile <= 1:
        raise ConfigError(f"expected a quantile in (0, 1], got {quantile}")
    # The store stays locked, so no fit changes the model meanwhile; the scratch folder goes at the end.
    with open_store(model_path, mode="a") as store, tempfile.TemporaryDirectory(prefix="streamad-calibrate-") as scratch:
        options = replace(options, frame_score=load(store, where=str(model_path)).settled(options.frame_score))
        threshold = _threshold(model_path, quantile, normal, labelled, predictions, fixed, options, Path(work_dir or scratch), progress)
        write_threshold(store, threshold)
    return threshold


def _threshold(
    model_path: str | Path,
    quantile: float | None,
    normal: Sequence[str],
    labelled: GroundTruth | None,
    predictions: str | Path | None,
    fixed: float | None,
    options: ScoreOptions,
    work: Path,
    progress: Progress,
) -> Threshold:
    frame_score = options.frame_score.attrs()
    if fixed is not None:
        threshold = Threshold(float(fixed), "fixed", {}, frame_score)
    elif labelled is not None:
        if predictions is None:
            evaluation = evaluate_model(labelled, model_path, work, options=replace(options, write_maps=False), progress=progress)
        else:
            evaluation = evaluate_predictions(predictions, labelled, pixels=False, progress=progress)
            stored = evaluation.metrics.get("frame_score")
            if stored != frame_score:
                raise ConfigError(f"expected predictions scored with frame scores {frame_score}, got {stored}; hint: pass the same frame-score options")
        scores, labels = evaluation.scores
        value, f1 = f1_threshold(scores, labels)
        threshold = Threshold(value, "f1", {"f1": round(f1, 6), "frames": int(labels.size), "anomalous": int(labels.sum())}, frame_score)
    else:
        scores = _normal_scores(model_path, normal, options, work, progress)
        on = list(normal) or "held-out fit frames"
        threshold = quantile_threshold(scores, frame_score, quantile=DEFAULT_QUANTILE if quantile is None else quantile, on=on)
    return threshold


def _normal_scores(model_path: str | Path, normal: Sequence[str], options: ScoreOptions, work: Path, progress: Progress) -> np.ndarray:
    if not normal:
        with open_store(model_path, mode="r") as store:  # noqa: SIM117  # read-only beside the lock calibrate holds
            normalisation = load(store, where=str(model_path)).normalisation
        if normalisation is None or not len(normalisation.normal_scores):
            raise ConfigError(f"expected held-out normal frames in {model_path}, got none; hint: pass normal frames with --on SOURCE")
        if normalisation.frame_score != options.frame_score.attrs():
            raise ConfigError(
                f"expected the frame-score settings the held-out fit frames were scored with ({normalisation.frame_score}), got {options.frame_score.attrs()}; "
                "hint: pass normal frames with --on SOURCE"
            )
        return np.asarray(normalisation.normal_scores, np.float64)
    summary = score(list(normal), model_path, work, options=replace(options, write_maps=False, threshold=None), progress=progress)
    store, _ = open_scores(summary.store)
    return np.concatenate([read_source(store, sid).score for sid in summary.frames]).astype(np.float64)
