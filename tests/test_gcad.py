"""GCAD: the local student sees a bounded patch, the global branch sees the whole image through
a latent vector, the two branches are cues scored together or alone (--branch), and gcad runs
through fit, eval (with overlays of each branch) and merge (refused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from streamad.cli import main
from streamad.config import FrameScoreConfig, ModelConfig
from streamad.errors import ConfigError
from streamad.model import Model
from streamad.scorers.gcad import LATENT, GcadNet
from streamad.scorers.registry import resolve
from tests.conftest import embed, scene
from tests.test_evaluate import mvtec


def _input_gradient(output: torch.Tensor, image: torch.Tensor, cell: tuple[int, int]) -> np.ndarray:
    """|d output[0, :, cell] / d image| summed over channels: which pixels the cell depends on."""
    (grad,) = torch.autograd.grad(output[0, :, cell[0], cell[1]].sum(), image)
    return grad[0].abs().sum(0).numpy()


def test_local_student_sees_a_patch_global_branch_the_whole_image() -> None:
    torch.manual_seed(0)
    net = GcadNet(channels=8, grid=(16, 16))
    image = torch.rand(1, 3, 128, 128, requires_grad=True)
    local = _input_gradient(net.student(image), image, (8, 8))  # the cell over pixels 64..71
    rows, cols = np.nonzero(local)
    assert rows.min() >= 64 - 16 and rows.max() <= 71 + 16 and cols.min() >= 64 - 16 and cols.max() <= 71 + 16  # 31-pixel field
    far = _input_gradient(net.autoencoder(image), image, (0, 0))
    assert far[100:, 100:].sum() > 0  # the top-left output depends on the bottom-right pixels
    assert net.autoencoder.encoder(image).shape == (1, LATENT)  # through a vector only


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = mvtec(tmp_path_factory.mktemp("gcad") / "toy")
    model = root.parent / "g.zarr"
    res = CliRunner().invoke(main, ["fit", str(root / "train"), "-m", str(model), "--method", "gcad", "--input-size", "64x96", "--epochs", "8", "-q"])
    assert res.exit_code == 0 and "trained 8 epochs" in res.output, res.output
    return root, model


def test_branches_are_cues_scored_together_or_alone(fitted: tuple[Path, Path]) -> None:
    from streamad.stores.model_store import load, open_store

    model = load(open_store(fitted[1]))
    assert model.cues == ("local", "global")
    frames = [scene(t) for t in range(4)] + [scene(1, anomaly=True)]
    distances = model.distances(embed(model, frames))
    assert distances.shape[1] == 2 and torch.isfinite(distances).all()
    refs = list(range(len(frames)))
    both = [r.score for r in model.results(refs, distances, frame_score=FrameScoreConfig())]  # type: ignore[arg-type]
    for c, cue in enumerate(model.cues):
        alone = [r.score for r in model.results(refs, distances, frame_score=FrameScoreConfig(branch=cue))]  # type: ignore[arg-type]
        only = distances.clone()
        only[:, 1 - c] = float("nan")
        expected = [r.score for r in model.results(refs, only, frame_score=FrameScoreConfig())]  # type: ignore[arg-type]
        np.testing.assert_allclose(alone, expected, rtol=1e-6)
        assert not np.allclose(alone, both)
    with pytest.raises(ConfigError, match="--branch among"):
        model.results(refs, distances, frame_score=FrameScoreConfig(branch="appearance"))  # type: ignore[arg-type]
    padim = Model(ModelConfig(input_hw=(64, 96), k=8))
    with pytest.raises(ConfigError, match=r"--branch among \['both'\]"):
        padim.branch(torch.zeros(1, 1, 4), "local")


def test_through_the_cli(fitted: tuple[Path, Path], tmp_path: Path) -> None:
    root, model = fitted
    runner = CliRunner()
    for branch in ("both", "local", "global"):
        res = runner.invoke(main, ["eval", str(root), "-m", str(model), "-o", str(tmp_path / branch), "--branch", branch, "-q"])
        assert res.exit_code == 0 and "**overall**" in res.output, res.output
    overlay = tmp_path / "o.mp4"
    res = runner.invoke(
        main,
        [
            "score",
            str(root / "test" / "red"),
            "-m",
            str(model),
            "-o",
            str(tmp_path / "s"),
            "--overlay",
            str(overlay),
            "--overlay-layers",
            "combined,local,global",
            "-q",
        ],
    )
    assert res.exit_code == 0 and overlay.stat().st_size > 0, res.output
    res = runner.invoke(main, ["merge", str(model), str(model), "-o", str(tmp_path / "m.zarr")])
    assert res.exit_code == 1, res.output
    res = runner.invoke(main, ["info", str(model)])
    assert res.exit_code == 0 and "gcad" in res.output and "epoch 8/8" in res.output, res.output


def test_refusals() -> None:
    assert resolve(ModelConfig(method="gcad")).backbone_b == "pixels"
    with pytest.raises(ConfigError, match="no --backbone-b for --method gcad"):
        Model(resolve(ModelConfig(method="gcad", backbone_b="lite2", input_hw=(64, 64))))
    with pytest.raises(ConfigError, match="--motion off"):
        resolve(ModelConfig(method="gcad", motion="feat"))


def test_watch_scores_a_file_as_score_does(fitted: tuple[Path, Path], tmp_path: Path) -> None:
    """A trained scorer runs in watch unchanged: the same frame scores as score on the file."""
    from streamad.engine.scoring import ScoreOptions
    from streamad.io.cameras import Camera
    from streamad.io.decode import VideoWriter
    from streamad.pipelines.score import score
    from streamad.pipelines.watch import WatchOptions, watch

    video = tmp_path / "cam.mp4"
    with VideoWriter(video, fps=10) as writer:
        for t in range(24):
            writer.write(scene(t, anomaly=t >= 16))
    model = fitted[1]
    summary = watch([Camera("cam", str(video), str(model))], tmp_path / "w", options=WatchOptions(), print_stats=lambda line: None)
    assert summary.streams["cam"].scored == 24
    watched = np.loadtxt(tmp_path / "w" / "scores.csv", delimiter=",", skiprows=1, usecols=3)
    scored = np.loadtxt(score([str(video)], model, tmp_path / "s", options=ScoreOptions(write_maps=False)).csv, delimiter=",", skiprows=1, usecols=3)
    np.testing.assert_allclose(watched, scored, rtol=1e-5)
