"""A second scorer plugs in without touching any job: a toy scorer (per-position mean,
Euclidean distance, not mergeable) registered here runs fit (checkpoint, resume), score, eval and
watch through the Python API and the CLI; merge refuses it; the built-in Gaussian scorer passes
the same protocol checks; watch and score give the same scores on the same file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

import streamad
from streamad.cli import main
from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.features.extractor import FeatureExtractor, Features
from streamad.io.cameras import Camera
from streamad.io.decode import VideoWriter
from streamad.model import Model
from streamad.pipelines.watch import WatchOptions, watch
from streamad.scorers.base import Mergeable, Scorer, ScorerState, Trainable
from streamad.scorers.registry import ScorerSpec, register_scorer, resolve, unregister_scorer
from streamad.stores.model_store import open_store, read_state
from tests.conftest import embed, scene
from tests.test_evaluate import mvtec

TOY = "toy-mean"


class MeanScorer:
    """Per-position mean of the finest map's channels; distance = Euclidean distance to it
    (declares no capability: not mergeable, not trainable, one cue)."""

    def __init__(self, config: ModelConfig, extractor: FeatureExtractor) -> None:
        self.layer = extractor.spec.layers[0]
        h, w = extractor.feature_hw
        self.total = torch.zeros(h * w, extractor.spec.channels[0], dtype=torch.float64)
        self.count = 0
        self.mean: Tensor | None = None

    @property
    def frames_seen(self) -> int:
        return self.count

    @property
    def finalised(self) -> bool:
        return self.mean is not None

    def attrs(self) -> dict[str, Any]:
        return {"layer": self.layer}

    def prepare(self, features: Features) -> Features:
        return {"x": features[self.layer].flatten(2).transpose(1, 2)}

    def update(self, prepared: Features) -> None:
        self.total += prepared["x"].double().sum(0)
        self.count += prepared["x"].shape[0]

    def finalise(self) -> None:
        self.mean = (self.total / self.count).float()

    def distances(self, prepared: Features) -> Tensor:
        assert self.mean is not None
        return (prepared["x"] - self.mean).norm(dim=-1)

    def state(self) -> ScorerState:
        arrays = {"total": self.total.numpy(), "count": np.asarray(self.count)}
        if self.mean is not None:
            arrays["mean"] = self.mean.numpy()
        return ScorerState(arrays, {"finalised": self.finalised, "layer": self.layer}, revision=f"{self.count}-{self.finalised}")

    def load_state(self, state: ScorerState) -> None:
        self.total = torch.from_numpy(state.arrays["total"]).clone()
        self.count = int(state.arrays["count"])
        self.mean = torch.from_numpy(state.arrays["mean"]) if "mean" in state.arrays else None


@pytest.fixture(autouse=True)
def toy() -> Iterator[None]:
    register_scorer(ScorerSpec(TOY, MeanScorer))
    yield
    unregister_scorer(TOY)


CONFIG = ModelConfig(method=TOY, input_hw=(64, 96))


def clip(path: Path, frames: int, *, anomaly_from: int | None = None) -> Path:
    with VideoWriter(path, fps=10) as writer:
        for t in range(frames):
            writer.write(scene(t, anomaly=anomaly_from is not None and t >= anomaly_from))
    return path


def scores_of(csv: str | Path) -> np.ndarray:
    return np.loadtxt(csv, delimiter=",", skiprows=1, usecols=3, ndmin=1)


@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        ModelConfig(input_hw=(64, 96), k=16),
        ModelConfig(method="soe", input_hw=(64, 96), k=16),
        ModelConfig(method="knn", input_hw=(64, 96), bank_size=50),
        resolve(ModelConfig(method="pfm", input_hw=(64, 96))),
        resolve(ModelConfig(method="pefm", input_hw=(64, 96))),
        resolve(ModelConfig(method="ae-l2", input_hw=(64, 96))),
        resolve(ModelConfig(method="ae-ssim", input_hw=(64, 96))),
        resolve(ModelConfig(method="gcad", input_hw=(64, 96))),
    ],
)
def test_protocol_conformance(config: ModelConfig) -> None:
    """What every scorer promises: capabilities declared, state round-trips exactly, distances
    have the patch grid's shape and survive a reload."""
    model = Model(config)
    assert isinstance(model.scorer, Scorer)
    assert model.mergeable == isinstance(model.scorer, Mergeable) == (config.method in ("padim", "soe", "knn"))
    assert model.trainable == isinstance(model.scorer, Trainable) == (config.method not in ("padim", "soe", "knn", TOY))
    frames = [scene(t) for t in range(6)]
    prepared = embed(model, frames)
    model.update(prepared)
    model.finalise()
    d = model.distances(prepared)
    h, w = model.extractor.feature_hw
    assert d.shape == (6, len(model.cues), h * w) and torch.isfinite(d).all()
    other = Model(config)
    other.scorer.load_state(model.scorer.state())
    assert other.finalised and other.frames_seen == 6
    torch.testing.assert_close(other.distances(prepared), d, rtol=0, atol=0)


def test_toy_scorer_through_the_api(tmp_path: Path) -> None:
    video = clip(tmp_path / "train.mp4", 40)
    one = streamad.fit([str(video)], tmp_path / "one.zarr", CONFIG, options=FitOptions(holdout_every=4))
    assert one.frames_added == 30 and one.calibrated_on == 10
    part = streamad.fit([str(video)], tmp_path / "part.zarr", CONFIG, options=FitOptions(holdout_every=4, stop=20, checkpoint_every=4))
    resumed = streamad.fit([str(video)], tmp_path / "part.zarr", None, options=FitOptions(holdout_every=4), resume=True)
    assert part.frames_added + resumed.frames_added == 30
    a, b = read_state(open_store(tmp_path / "one.zarr")), read_state(open_store(tmp_path / "part.zarr"))
    assert a is not None and b is not None
    np.testing.assert_allclose(b.arrays["total"], a.arrays["total"], rtol=1e-12)
    test = clip(tmp_path / "test.mp4", 20, anomaly_from=10)
    scored = streamad.score([str(test)], tmp_path / "one.zarr", tmp_path / "out")
    scores = scores_of(scored.csv)
    assert scores.shape == (20,) and scores[10:].min() > scores[:10].max()
    run = streamad.evaluate(mvtec(tmp_path / "toy"), model=_fitted_on(tmp_path / "toy", tmp_path / "cat.zarr"), out_dir=tmp_path / "ev")
    assert run.metrics[""]["overall"]["auroc"] > 0.9
    summary = watch([Camera("cam", str(test), str(tmp_path / "one.zarr"))], tmp_path / "w", print_stats=lambda line: None)
    np.testing.assert_allclose(scores_of(tmp_path / "w" / "scores.csv"), scores, rtol=1e-3)  # other batches: float rounding, amplified
    assert summary.streams["cam"].scored == 20  # where the normalisation's floor divides


def _fitted_on(root: Path, model: Path) -> Path:
    streamad.fit([str(root)], model, CONFIG, options=FitOptions(holdout_every=4))
    return model


def test_toy_scorer_through_the_cli_and_merge_refuses_it(tmp_path: Path) -> None:
    runner = CliRunner()
    video, test = clip(tmp_path / "train.mp4", 40), clip(tmp_path / "test.mp4", 20, anomaly_from=10)
    model = str(tmp_path / "m.zarr")
    fit = ["fit", str(video), "-m", model, "--method", TOY, "--input-size", "64x96", "--holdout-every", "4", "-q"]
    assert (res := runner.invoke(main, [*fit, "--stop", "20", "--checkpoint-every", "4"])).exit_code == 0, res.output
    assert (res := runner.invoke(main, ["fit", str(video), "-m", model, "--holdout-every", "4", "--resume", "-q"])).exit_code == 0, res.output
    assert "30 in all" in res.output
    assert (res := runner.invoke(main, ["score", str(test), "-m", model, "-o", str(tmp_path / "s"), "-q"])).exit_code == 0, res.output
    api = streamad.score([str(test)], model, tmp_path / "api")
    np.testing.assert_allclose(scores_of(tmp_path / "s" / "scores.csv"), scores_of(api.csv), rtol=1e-5)
    root = mvtec(tmp_path / "toy")
    assert runner.invoke(main, ["fit", str(root), "-m", str(tmp_path / "c.zarr"), "--method", TOY, "--input-size", "64x96", "-q"]).exit_code == 0
    res = runner.invoke(main, ["eval", str(root), "-m", str(tmp_path / "c.zarr"), "-o", str(tmp_path / "e"), "-q"])
    assert res.exit_code == 0 and "**overall**" in res.output, res.output
    res = runner.invoke(main, ["watch", str(test), "-m", model, "-o", str(tmp_path / "w")])
    assert res.exit_code == 0 and "received 20 = scored 20" in res.output, res.output
    res = runner.invoke(main, ["merge", model, str(tmp_path / "c.zarr"), "-o", str(tmp_path / "merged.zarr")])
    assert res.exit_code == 1 and "cannot merge" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "merged.zarr").exists()
    res = runner.invoke(main, ["fit", str(video), "-m", str(tmp_path / "x.zarr"), "--method", "nope", "-q"])
    assert res.exit_code == 1 and "expected --method in" in res.output and TOY in res.output


def test_watch_on_a_file_scores_as_score_does(tmp_path: Path) -> None:
    video = clip(tmp_path / "train.mp4", 40)
    model = tmp_path / "m.zarr"
    streamad.fit([str(video)], model, ModelConfig(input_hw=(64, 96), k=16), options=FitOptions(holdout_every=4))
    test = clip(tmp_path / "test.mp4", 30, anomaly_from=15)
    scored = scores_of(streamad.score([str(test)], model, tmp_path / "s").csv)
    watch([Camera("cam", str(test), str(model))], tmp_path / "w", options=WatchOptions(max_batch=3), print_stats=lambda line: None)
    np.testing.assert_allclose(scores_of(tmp_path / "w" / "scores.csv"), scored, rtol=1e-5)
