"""PFM / PEFM: the mapping learns what is learnable, the position encoding is the paper's, the
feature cache samples uniformly, and a fit interrupted by SIGINT mid-epoch resumes to the very
weights of an uninterrupted one."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import streamad
from streamad.cli import main
from streamad.config import ModelConfig
from streamad.engine.feature_cache import FeatureCache, reservoir_slot
from streamad.engine.fitting import FitOptions
from streamad.engine.progress import NoProgress
from streamad.errors import ConfigError
from streamad.model import Model
from streamad.scorers.pfm import MappingScorer, position_encoding
from streamad.scorers.registry import resolve
from streamad.scorers.trained import default_epochs, epoch_order
from streamad.stores.array_store import MemoryStore
from streamad.stores.model_store import open_store, read_state
from tests.conftest import scene
from tests.test_evaluate import mvtec


def paper_encoding(d: int, h: int, w: int) -> np.ndarray:
    """The PEFM paper's formula, one element at a time: for i < d/4, channel 2i is
    sin(x / 10000^(4i/d)), 2i+1 its cos; d/2 + 2i and d/2 + 2i + 1 the same of the row y."""
    out = np.zeros((d, h, w))
    half = d // 2
    for i in range(half // 2):
        rate = 10000 ** (-(2 * i) / half)
        for y in range(h):
            for x in range(w):
                out[2 * i, y, x] = math.sin(x * rate)
                out[2 * i + 1, y, x] = math.cos(x * rate)
                out[half + 2 * i, y, x] = math.sin(y * rate)
                out[half + 2 * i + 1, y, x] = math.cos(y * rate)
    return out


@pytest.mark.parametrize(("d", "h", "w"), [(4, 3, 5), (24, 16, 16), (112, 4, 6)])
def test_position_encoding_is_the_papers_formula(d: int, h: int, w: int) -> None:
    np.testing.assert_allclose(position_encoding(d, h, w).numpy(), paper_encoding(d, h, w), atol=1e-6)
    with pytest.raises(ConfigError, match="divisible by 4"):
        position_encoding(6, 2, 2)


def test_an_exactly_learnable_mapping_is_learned_to_the_noise_floor() -> None:
    """B = Q A + noise, Q (8 x 4) with orthonormal columns (so A = Q^T (B - noise)), through
    a latent width (6) that holds A's 4 dimensions: both directions' errors fall to the noise
    floor, from a data variance of 1 per channel."""
    gen = torch.Generator().manual_seed(0)
    channels, channels_b, grid, sigma = (4, 4, 4), (8, 8, 8), ((4, 4), (2, 2), (1, 1)), 0.1
    qs = [torch.linalg.qr(torch.randn(b, a, generator=gen))[0] for a, b in zip(channels, channels_b, strict=True)]
    layers, layers_b = ("l1", "l2", "l3"), ("m1", "m2", "m3")
    scorer = MappingScorer(method="pfm", layers=layers, layers_b=layers_b, channels=channels, channels_b=channels_b, grids=grid, seed=0)

    def batch(n: int) -> dict[str, torch.Tensor]:
        out = {}
        for q, a_name, b_name, (h, w) in zip(qs, layers, scorer.layers_b, grid, strict=True):
            a = torch.randn(n, q.shape[1], h, w, generator=gen)
            out[a_name], out[b_name] = a, torch.einsum("ij,bjhw->bihw", q, a) + sigma * torch.randn(n, q.shape[0], h, w, generator=gen)
        return out

    for group in scorer.optimiser.param_groups:
        group["lr"] = 3e-3  # the papers' 3e-4 gets there too, in many more steps
    first = scorer.train_step(batch(64))
    for _ in range(1200):
        scorer.train_step(batch(64))
    scorer.finalise()
    test = batch(256)
    errors = scorer.distances(test)  # per position: half the summed squared errors of both directions
    floor = sigma**2 * (channels_b[0] + channels[0]) / 2  # noise summed over channels, averaged over directions
    assert first > 1.0 and errors.mean().item() < 1.5 * floor, (first, errors.mean().item(), floor)


def test_reservoir_keeps_a_uniform_sample() -> None:
    capacity, offered, runs = 10, 50, 2000
    counts = np.zeros(offered)
    for seed in range(runs):
        slots: dict[int, int] = {}
        for n in range(offered):
            slot = reservoir_slot(seed, n, capacity)
            if slot is not None:
                slots[slot] = n
        counts[list(slots.values())] += 1
    expected = runs * capacity / offered  # each frame kept with probability 10/50
    assert np.abs(counts - expected).max() < 5 * math.sqrt(expected)  # binomial, 5 sigma


def test_cache_rows_and_orders() -> None:
    store = MemoryStore()
    cache = FeatureCache(store, 3, seed=1, names=["x"])
    cache.add({"x": torch.arange(5.0).view(5, 1, 1, 1)}, offered=0)
    assert cache.size(5) == 3
    kept = {float(v) for v in store.read("cache/f0").ravel()}
    assert len(kept) == 3 and kept <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert sorted(epoch_order(1, 0, 7)) == list(range(7)) and not np.array_equal(epoch_order(1, 0, 7), epoch_order(1, 1, 7))
    assert default_epochs(200, 16) == 200 and default_epochs(100_000, 16) == 5


def test_backbone_pair_defaults_and_refusals() -> None:
    assert resolve(ModelConfig(method="pfm")).backbone_b == "lite2"
    assert resolve(ModelConfig(method="pefm", backbone="lite2")).backbone_b == "lite0"
    with pytest.raises(ConfigError, match="no second backbone for --method padim"):
        resolve(ModelConfig(backbone_b="lite2"))
    with pytest.raises(ConfigError, match="--motion off"):
        resolve(ModelConfig(method="pfm", motion="feat"))
    with pytest.raises(ConfigError, match="two different backbones"):
        Model(ModelConfig(method="pfm", backbone_b="lite0", input_hw=(64, 64)))


class Interrupter(NoProgress):
    """Sends this process a real SIGINT after the n-th training step."""

    def __init__(self, after: int) -> None:
        self.after, self.steps = after, 0

    def note(self, text: str) -> None:  # called once per training step
        self.steps += 1
        if self.steps == self.after:
            os.kill(os.getpid(), signal.SIGINT)


def _images(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        cv2.imwrite(str(root / f"{i:03d}.png"), cv2.cvtColor(scene(i * 7, height=64, width=64), cv2.COLOR_RGB2BGR))
    return root


@pytest.mark.parametrize("method", ["pefm", "gcad", "ae-ssim"])
def test_sigint_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path: Path, method: str) -> None:
    images = _images(tmp_path / "imgs", 24)
    config = ModelConfig(method=method, input_hw=(64, 64))
    options = FitOptions(holdout_every=6, epochs=3, train_batch_size=4, cache_frames=12)
    whole = streamad.fit([str(images)], tmp_path / "whole.zarr", config, options=options)
    assert whole.epochs == 3 and not whole.interrupted
    part = streamad.fit([str(images)], tmp_path / "part.zarr", config, options=options, progress=Interrupter(after=5))
    assert part.interrupted
    stopped = read_state(open_store(tmp_path / "part.zarr"))
    assert stopped is not None and (stopped.attrs["epoch"], stopped.attrs["position"]) == (1, 8)  # 3 steps of 4 per epoch
    with pytest.raises(streamad.StoreError, match="training did not finish"):
        streamad.score([str(images)], tmp_path / "part.zarr", tmp_path / "early")
    resumed = streamad.fit([str(images)], tmp_path / "part.zarr", None, options=FitOptions(holdout_every=6, train_batch_size=4), resume=True)
    assert not resumed.interrupted and resumed.frames_added == 0
    a, b = read_state(open_store(tmp_path / "whole.zarr")), read_state(open_store(tmp_path / "part.zarr"))
    assert a is not None and b is not None and a.attrs["steps"] == b.attrs["steps"] == 9
    assert set(a.arrays) == set(b.arrays) and any(name.startswith("adam_") for name in a.arrays)
    for name in a.arrays:
        np.testing.assert_array_equal(b.arrays[name], a.arrays[name], err_msg=name)
    assert not open_store(tmp_path / "whole.zarr").arrays("cache")  # trained: the cache is gone


def test_pfm_through_the_cli_score_eval_merge(tmp_path: Path) -> None:
    runner = CliRunner()
    root = mvtec(tmp_path / "toy")
    model = str(tmp_path / "p.zarr")
    res = runner.invoke(main, ["fit", str(root), "-m", model, "--method", "pfm", "--input-size", "64x96", "--epochs", "20", "-q"])
    assert res.exit_code == 0 and "trained 20 epochs" in res.output, res.output
    res = runner.invoke(main, ["info", model])
    assert res.exit_code == 0 and "pfm" in res.output and "epoch 20" in res.output, res.output
    res = runner.invoke(main, ["eval", str(root), "-m", model, "-o", str(tmp_path / "e"), "-q"])
    assert res.exit_code == 0 and "**overall**" in res.output, res.output
    res = runner.invoke(main, ["merge", model, model, "-o", str(tmp_path / "merged.zarr")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(main, ["fit", str(root), "-m", str(tmp_path / "x.zarr"), "--backbone-b", "lite2", "-q"])
    assert res.exit_code == 1 and "no second backbone" in res.output, res.output


def test_a_torchvision_second_backbone_with_its_weights_file(tmp_path: Path) -> None:
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    runner = CliRunner()
    root, model = mvtec(tmp_path / "toy"), str(tmp_path / "p.zarr")
    fit = ["fit", str(root), "-m", model, "--method", "pefm", "--backbone-b", "resnet18", "--weights-b", str(weights), "--input-size", "64x64"]
    assert (res := runner.invoke(main, [*fit, "--epochs", "2", "-q"])).exit_code == 0, res.output
    res = runner.invoke(main, ["score", str(root / "test"), "-m", model, "-o", str(tmp_path / "s"), "-q"])
    assert res.exit_code == 1 and "expected --weights-b FILE for backbone resnet18" in res.output, res.output
    res = runner.invoke(main, ["score", str(root / "test"), "-m", model, "-o", str(tmp_path / "s"), "--weights-b", str(weights), "-q"])
    assert res.exit_code == 0, res.output


def test_a_live_camera_learns_pefm_in_one_pass(tmp_path: Path) -> None:
    from streamad.io.cameras import Camera
    from streamad.io.decode import VideoWriter
    from streamad.pipelines.watch import WatchOptions, watch

    video = tmp_path / "cam.mp4"
    with VideoWriter(video, fps=10) as writer:
        for t in range(130):
            writer.write(scene(t))
    options = WatchOptions(learn_for_s=9.0, learn_config=ModelConfig(method="pefm", input_hw=(64, 96)))
    summary = watch([Camera("cam", str(video), str(tmp_path / "m.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None)
    state = read_state(open_store(tmp_path / "m.zarr"))
    assert summary.streams["cam"].learned >= 80 and state is not None
    assert state.attrs["finalised"] and state.attrs["steps"] > 0 and state.attrs["epoch"] == 0  # streamed steps, no epochs
