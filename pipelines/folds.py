"""``streamad eval --folds K``: the KolektorSDD fold protocol (as the SOE paper reports it).

The ``kosNN`` folders, in order, are split into K contiguous folds. For each fold a model is
fitted on the defect-free parts of the *other* folds and evaluated on every part of the held-out
fold; each fold's metrics and their mean are reported. Models, scores and reports go under
``out_dir/fold<i>`` so every number can be traced back to its store.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.engine.progress import Progress, no_progress
from streamad.engine.scoring import ScoreOptions
from streamad.errors import ConfigError
from streamad.evaluation.ground_truth import GroundTruth, kolektor, kolektor_folders, kolektor_parts, read_mask
from streamad.evaluation.report import markdown, summarise, write_report
from streamad.io.sources import ImageSequence
from streamad.pipelines.evaluate import EvalRun, evaluate_model
from streamad.pipelines.fit import fit


@dataclass(frozen=True, slots=True)
class Fold:
    """One fold: the folders it holds out and the defect-free parts it fits on."""

    name: str
    held_out: tuple[Path, ...]
    train: tuple[Path, ...]

    def describe(self) -> str:
        return f"{self.name}: test {self.held_out[0].name}-{self.held_out[-1].name}, fit on {len(self.train)} defect-free parts of the other folds"


def split_folds(root: str | Path, k: int) -> list[Fold]:
    """The K folds of a KolektorSDD root: contiguous runs of its ``kos`` folders."""
    folders = kolektor_folders(Path(root))
    if not folders:
        raise ConfigError(f"expected --folds on a KolektorSDD folder (kos01, kos02, ...), got {root} without kos folders")
    if not 2 <= k <= len(folders):
        raise ConfigError(f"expected 2 <= --folds <= {len(folders)} (the kos folders of {root}), got {k}")
    chunks = [list(c) for c in np.array_split(np.arange(len(folders)), k)]
    good = {folder: _defect_free(folder) for folder in folders}
    folds = []
    for i, chunk in enumerate(chunks):
        held = tuple(folders[j] for j in chunk)
        train = tuple(p for folder in folders if folder not in held for p in good[folder])
        folds.append(Fold(f"fold{i + 1}", held, train))
    return folds


def _defect_free(folder: Path) -> list[Path]:
    images, labels = kolektor_parts(folder)
    return [image for image, label in zip(images, labels, strict=True) if not read_mask(label, image=image).any()]


def evaluate_folds(
    testset: str | Path,
    folds: int,
    *,
    config: ModelConfig = ModelConfig(),
    fit_options: FitOptions = FitOptions(),
    out_dir: str | Path = "eval",
    report_dir: str | Path | None = None,
    max_fpr: float | None = None,
    options: ScoreOptions = ScoreOptions(),
    weights: str | None = None,
    weights_b: str | None = None,
    progress: Progress = no_progress,
) -> EvalRun:
    """Fit and evaluate each fold (models in ``out_dir/<fold>.zarr``); the summary is their mean."""
    config = replace(config, weights=weights, weights_b=weights_b)
    results: dict[str, dict[str, Any]] = {}
    tables: dict[str, str] = {}
    reports: list[str] = []
    for fold in split_folds(testset, folds):
        model = Path(out_dir) / f"{fold.name}.zarr"
        train = ImageSequence(f"{fold.name}-train", fold.train, timed=False)
        fit([train], model, config, options=fit_options, overwrite=True, progress=progress)
        truth: GroundTruth = kolektor(Path(testset), fold.held_out)
        evaluation = evaluate_model(
            truth, model, Path(out_dir) / fold.name, options=options, weights=weights, weights_b=weights_b, max_fpr=max_fpr, progress=progress
        )
        evaluation.metrics["fold"] = {"held_out": [p.name for p in fold.held_out], "fit_parts": len(fold.train), "model": str(model)}
        results[fold.name], tables[fold.describe()] = evaluation.metrics, markdown(evaluation.metrics)
        if report_dir is not None:
            reports += write_report(evaluation, Path(report_dir) / fold.name)
    return EvalRun(tables, summarise(results, report_dir, kind="folds", column="fold"), reports, results)
