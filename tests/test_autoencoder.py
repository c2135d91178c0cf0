"""The MVTec AD paper's autoencoder baselines: SSIM against an independent implementation, the
architecture's shapes, a trained autoencoder reconstructs normal images better than defects,
and ae-l2/ae-ssim run through fit, eval, merge (refused) and resume."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import streamad
from streamad.cli import main
from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.errors import ConfigError
from streamad.model import Model
from streamad.scorers.autoencoder import LATENT, ConvAutoencoder, ssim_map
from streamad.scorers.registry import resolve
from streamad.stores.model_store import load, open_store, read_state
from tests.conftest import embed, scene
from tests.test_evaluate import mvtec


def test_ssim_map_equals_kornia_inside_the_border() -> None:
    """kornia's SSIM (same Gaussian window) is the reference; borders differ by padding."""
    import kornia

    rng = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 48, 40, generator=rng)
    b = (a + 0.2 * torch.rand(2, 3, 48, 40, generator=rng)).clamp(0, 1)
    ours, theirs = ssim_map(a, b), kornia.metrics.ssim(a, b, 11, max_val=1.0)
    torch.testing.assert_close(ours[..., 5:-5, 5:-5], theirs[..., 5:-5, 5:-5], atol=1e-5, rtol=0)
    assert torch.allclose(ssim_map(a, a), torch.ones_like(a), atol=1e-4)


@pytest.mark.parametrize("hw", [(128, 128), (64, 96)])
def test_architecture_bottleneck_is_a_latent_vector(hw: tuple[int, int]) -> None:
    net = ConvAutoencoder(hw)
    x = torch.rand(2, 3, *hw)
    assert net.encoder(x).shape == (2, LATENT, 1, 1)
    out = net(x)
    assert out.shape == x.shape and float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1


def test_defaults_and_refusals() -> None:
    config = resolve(ModelConfig(method="ae-ssim"))
    assert (config.backbone, config.input_hw) == ("pixels", (128, 128))
    assert resolve(ModelConfig(method="ae-l2", input_hw=(64, 96))).input_hw == (64, 96)
    with pytest.raises(ConfigError, match="no --backbone"):
        resolve(ModelConfig(method="ae-l2", backbone="lite2"))
    with pytest.raises(ConfigError, match="multiples of 16"):
        Model(resolve(ModelConfig(method="ae-l2", input_hw=(72, 64))))


PATCH = np.s_[4:20, 40:56]


def _pasted(image: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[PATCH] = (240, 30, 200)  # a magenta patch no training image has, away from the moving blob
    return out


@pytest.mark.parametrize("method", ["ae-l2", "ae-ssim"])
def test_reconstructs_normal_images_better_than_a_pasted_defect(tmp_path: Path, method: str) -> None:
    root = tmp_path / "train"
    root.mkdir()
    for i in range(16):
        cv2.imwrite(str(root / f"{i:03d}.png"), cv2.cvtColor(scene(i * 5, height=64, width=64), cv2.COLOR_RGB2BGR))
    config = ModelConfig(method=method, input_hw=(64, 64))
    summary = streamad.fit([str(root)], tmp_path / "ae.zarr", config, options=FitOptions(holdout_every=8, epochs=60, train_batch_size=8))
    assert summary.epochs == 60 and summary.loss is not None
    model = load(open_store(tmp_path / "ae.zarr"))
    normal = scene(10, height=64, width=64)  # a training image
    residual = model.distances(embed(model, [normal, _pasted(normal)]))[:, 0].reshape(2, 64, 64)
    inside = residual[(slice(None), *PATCH)]
    assert float(inside[1].mean()) > 2 * float(inside[0].mean())  # the defect is reconstructed worse than what it covers
    assert float(residual[1].mean()) > float(residual[0].mean())  # and the image with it worse than the normal one


def test_through_the_cli_resume_and_merge_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    root = mvtec(tmp_path / "toy")
    model = str(tmp_path / "a.zarr")
    res = runner.invoke(
        main, ["fit", str(root), "-m", model, "--method", "ae-l2", "--input-size", "64x64", "--epochs", "3", "--stop", "12", "--holdout-every", "4", "-q"]
    )
    assert res.exit_code == 0 and "trained 3 epochs" in res.output, res.output
    res = runner.invoke(main, ["fit", str(root), "-m", model, "--resume", "--method", "ae-l2", "--epochs", "3", "--stop", "12", "--holdout-every", "4", "-q"])
    assert res.exit_code == 0 and "0 new frames" in res.output, res.output  # nothing left to do
    res = runner.invoke(main, ["fit", str(root), "-m", model, "--resume", "-q"])
    assert res.exit_code == 1 and "only before training starts" in res.output, res.output  # a trained network takes no new frames
    state = read_state(open_store(model))
    assert state is not None and state.attrs["method"] == "ae-l2" and state.attrs["finalised"]
    res = runner.invoke(main, ["eval", str(root), "-m", model, "-o", str(tmp_path / "e"), "-q"])
    assert res.exit_code == 0 and "**overall**" in res.output, res.output
    other = str(tmp_path / "b.zarr")
    res = runner.invoke(
        main, ["fit", str(root), "-m", other, "--method", "ae-l2", "--input-size", "64x64", "--epochs", "1", "--stop", "8", "--holdout-every", "4", "-q"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["merge", model, other, "-o", str(tmp_path / "m.zarr")])
    assert res.exit_code == 1 and "cannot merge" in res.output, res.output
    res = runner.invoke(main, ["info", model])
    assert res.exit_code == 0 and "pixels" in res.output and "ae-l2" in res.output, res.output
