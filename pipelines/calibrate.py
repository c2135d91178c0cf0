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

from streamad.calibration import DEFAULT_QUANTILE, Threshold
from streamad.config import FrameScoreConfig
from streamad.engine.progress import Progress, no_progress
from streamad.errors import ConfigError
from streamad.evaluation.ground_truth import GroundTruth
from streamad.evaluation.metrics import f1_threshold
from streamad.pipelines.evaluate import evaluate_model, evaluate_predictions
from streamad.pipelines.score import ScoreOptions, score
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
    with open_store(model_path, mode="a") as store:  # locked: no fit changes the model meanwhile
        threshold = _threshold(model_path, quantile, normal, labelled, predictions, fixed, options, work_dir, progress)
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
    work_dir: str | Path | None,
    progress: Progress,
) -> Threshold:
    frame_score = options.frame_score.attrs()
    work = Path(work_dir) if work_dir else None
    if fixed is not None:
        threshold = Threshold(float(fixed), "fixed", {}, frame_score)
    elif labelled is not None:
        if predictions is None:
            evaluation = evaluate_model(labelled, model_path, work or _scratch(), options=replace(options, write_maps=False), progress=progress)
        else:
            evaluation = evaluate_predictions(predictions, labelled, pixels=False, progress=progress)
            stored = evaluation.metrics.get("frame_score")
            if stored != frame_score:
                raise ConfigError(f"expected predictions scored with frame scores {frame_score}, got {stored}; hint: pass the same --raw/--topk/--window")
        scores, labels = evaluation.scores
        value, f1 = f1_threshold(scores, labels)
        threshold = Threshold(value, "f1", {"f1": round(f1, 6), "frames": int(labels.size), "anomalous": int(labels.sum())}, frame_score)
    else:
        q = DEFAULT_QUANTILE if quantile is None else quantile
        if not 0 < q <= 1:
            raise ConfigError(f"expected a quantile in (0, 1], got {q}")
        scores = _normal_scores(model_path, normal, options, work, progress)
        threshold = Threshold(
            float(np.quantile(scores, q)), "quantile", {"quantile": q, "frames": int(scores.size), "on": list(normal) or "held-out fit frames"}, frame_score
        )
    return threshold


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="streamad-calibrate-"))


def _normal_scores(model_path: str | Path, normal: Sequence[str], options: ScoreOptions, work: Path | None, progress: Progress) -> np.ndarray:
    if not normal:
        if options.frame_score.attrs() != FrameScoreConfig().attrs():
            raise ConfigError("expected the default frame scores to use the held-out fit frames, got other settings; hint: pass normal frames with --on SOURCE")
        normalisation = load(open_store(model_path, mode="r"), where=str(model_path)).normalisation
        if normalisation is None or not len(normalisation.normal_scores):
            raise ConfigError(f"expected held-out normal frames in {model_path}, got none; hint: pass normal frames with --on SOURCE")
        return np.asarray(normalisation.normal_scores, np.float64)
    summary = score(list(normal), model_path, work or _scratch(), options=replace(options, write_maps=False, threshold=None), progress=progress)
    store, _ = open_scores(summary.store)
    return np.concatenate([read_source(store, sid).score for sid in summary.frames]).astype(np.float64)
