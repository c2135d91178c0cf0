"""Checks on the real data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from streamad.engine.fitting import FitOptions
from streamad.pipelines.fit import fit
from streamad.pipelines.score import score
from tests.conftest import SHARED_DATA


@pytest.mark.real_data
def test_hazelnut_toy_defects_score_higher(tmp_path: Path) -> None:
    root = SHARED_DATA / "hazelnut_toy"
    summary = fit([str(root)], tmp_path / "m.zarr", options=FitOptions(holdout_every=7))
    assert summary.frames_added == 24 and summary.calibrated_on == 4
    result = score([str(root / "test" / "good"), str(root / "test" / "colour")], tmp_path / "m.zarr", tmp_path / "out")
    assert result.frames == {"good": 6, "colour": 17}
    import csv

    rows = list(csv.DictReader(open(result.csv)))
    labels = [int(r["source"] == "colour") for r in rows]
    auroc = roc_auc_score(labels, [float(r["score"]) for r in rows])
    assert auroc > 0.8, auroc
    assert np.isfinite([float(r["score"]) for r in rows]).all()
