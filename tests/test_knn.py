"""The memory-bank scorer: its coreset and nearest neighbours against slow exact references,
its bounds (budget, covering radius), determinism of resume and merge, and what it is for:
a thing seen in one place is normal in another."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from streamad.config import ModelConfig
from streamad.model import Model
from streamad.scorers.bank import greedy_coreset, nearest_distances
from streamad.scorers.base import Mergeable
from streamad.scorers.knn import SAMPLE_EVERY, KnnScorer
from tests.conftest import embed, scene

RNG = np.random.default_rng(0)


def slow_greedy(x: np.ndarray, k: int) -> tuple[list[int], float]:
    chosen = [0]
    while len(chosen) < k:
        nearest = cdist(x, x[chosen]).min(1)
        chosen.append(int(nearest.argmax()))
    return chosen, float(cdist(x, x[chosen]).min(1).max())


class TestMath:
    @pytest.mark.parametrize(("n", "k"), [(50, 7), (300, 40), (10, 10)])
    def test_greedy_coreset_matches_a_slow_exact_greedy(self, n: int, k: int) -> None:
        x = RNG.normal(size=(n, 5))
        chosen, radius = greedy_coreset(torch.from_numpy(x), k)
        expected, expected_radius = slow_greedy(x, k) if n > k else (list(range(n)), 0.0)
        assert chosen.tolist() == expected
        assert radius == pytest.approx(expected_radius, rel=1e-9)

    def test_nearest_distances_match_cdist(self) -> None:
        queries, bank = RNG.normal(size=(5000, 9)), RNG.normal(size=(300, 9))
        got = nearest_distances(torch.from_numpy(queries), torch.from_numpy(bank), torch.from_numpy((bank**2).sum(1)))
        np.testing.assert_allclose(got.numpy(), cdist(queries, bank).min(1), rtol=1e-6, atol=1e-6)


def scorer(bank_size: int, channels: int = 16, seed: int = 0) -> KnnScorer:
    return KnnScorer(layers=("a", "b"), channels=channels, grid=(4, 5), finest=(8, 10), bank_size=bank_size, seed=seed)


def batches(count: int, channels: int = 16, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, channels)) * 3
    out = []
    for _ in range(count):
        rows = centres[rng.integers(0, 30, size=(2, 20))] + rng.normal(size=(2, 20, channels)) * 0.3
        out.append({"patches": torch.from_numpy(rows.astype(np.float32))})
    return out


class TestBank:
    def test_bounded_and_covering(self) -> None:
        """However many patches stream by, the bank keeps the budget, and every patch offered to it
        (every SAMPLE_EVERY-th of a frame) is within twice the covering radius of it in the
        selection space."""
        knn = scorer(bank_size=60)
        offered = batches(40)
        for batch in offered:
            knn.update(batch)
            assert len(knn.appearance.rows) + len(knn.appearance.buffer) <= 2 * 60 + 40
        knn.finalise()
        assert len(knn.appearance.rows) <= 60 and knn.appearance.radius > 0
        patches = torch.cat([b["patches"] for b in offered])  # (frames, P, C)
        frame, patch = torch.meshgrid(torch.arange(patches.shape[0]), torch.arange(patches.shape[1]), indexing="ij")
        rows = patches[(frame + patch) % SAMPLE_EVERY == 0] @ knn.appearance.selection  # the patches each frame offers
        bank = knn.appearance.rows @ knn.appearance.selection
        worst = cdist(rows.numpy(), bank.numpy()).min(1).max()
        assert worst <= 2 * knn.appearance.radius + 1e-4

    def test_coreset_distances_stay_close_to_the_full_banks(self) -> None:
        """Held-out normal patches: their nearest distance to the bounded bank is within 1.5x
        (on average) of their distance to a bank that kept every patch."""
        train, held = batches(60, seed=2), batches(10, seed=3)
        small, full = scorer(bank_size=100), scorer(bank_size=10**6)
        for batch in train:
            small.update(batch)
            full.update(batch)
        small.finalise()
        full.finalise()
        assert len(small.appearance.rows) <= 100 < len(full.appearance.rows)
        ratio = [float(small.distances(b).mean() / full.distances(b).mean()) for b in held]
        assert 1.0 <= np.mean(ratio) <= 1.5, ratio

    def test_resume_and_merge_are_deterministic(self) -> None:
        parts = batches(30)
        whole = scorer(bank_size=50)
        for batch in parts:
            whole.update(batch)
        cut = scorer(bank_size=50)
        for batch in parts[:13]:
            cut.update(batch)
        resumed = scorer(bank_size=50)
        resumed.load_state(cut.state())
        for batch in parts[13:]:
            resumed.update(batch)
        assert (
            torch.equal(resumed.appearance.rows, whole.appearance.rows)
            and torch.equal(resumed.appearance.buffer, whole.appearance.buffer)
            and resumed.appearance.radius == whole.appearance.radius
        )

        def merged() -> KnnScorer:
            a, b = scorer(bank_size=50), scorer(bank_size=50)
            for batch in parts[:15]:
                a.update(batch)
            for batch in parts[15:]:
                b.update(batch)
            a.merge(b)
            return a

        first, second = merged(), merged()
        assert isinstance(first, Mergeable)
        assert torch.equal(first.appearance.rows, second.appearance.rows) and first.appearance.radius == second.appearance.radius and first.frames_seen == 60
        assert len(first.appearance.rows) <= 50


def square_at(t: int, x: int) -> np.ndarray:
    """A plain grey frame with sensor noise and a bright square at column ``x``."""
    image = np.random.default_rng(t).normal(120, 4, (64, 128, 3)).clip(0, 255).astype(np.uint8)
    image[24:40, x : x + 16] = (250, 200, 40)
    return image


def test_a_thing_seen_in_one_place_is_normal_in_another() -> None:
    """Trained on a square at the left, the memory bank finds the square at the right about as
    normal as at the left; a per-position Gaussian (padim) calls it anomalous there."""
    ratio = {}
    for method in ("knn", "padim"):
        model = Model(ModelConfig(method=method, input_hw=(64, 128), k=16))
        for at in range(0, 40, 8):
            model.update(embed(model, [square_at(t, 8) for t in range(at, at + 8)]))
        model.finalise()
        seen = model.maps(model.distances(embed(model, [square_at(50, 8)]))[:, 0]).max()  # the map's peak: where the square is
        moved = model.maps(model.distances(embed(model, [square_at(50, 88)]))[:, 0]).max()
        ratio[method] = float(moved / seen)
    assert ratio["knn"] < 2 and ratio["padim"] > 3 * ratio["knn"], ratio  # measured: 1.7 and 8.4


def test_fit_merge_and_info_on_the_command_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from streamad.cli import main
    from streamad.io.decode import VideoWriter

    for name, seed in (("a", 0), ("b", 1)):
        with VideoWriter(tmp_path / f"{name}.mp4", fps=10) as writer:
            for t in range(30):
                writer.write(scene(t, seed=seed))
    runner = CliRunner()
    for name in "ab":
        args = ["fit", str(tmp_path / f"{name}.mp4"), "-m", str(tmp_path / f"{name}.zarr"), "--method", "knn", "--bank-size", "300", "-q"]
        fitted = runner.invoke(main, args)
        assert fitted.exit_code == 0, fitted.output
    merged = runner.invoke(main, ["merge", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), "-o", str(tmp_path / "ab.zarr"), "-q"])
    assert merged.exit_code == 0, merged.output
    info = runner.invoke(main, ["info", str(tmp_path / "ab.zarr"), "--json"])
    assert info.exit_code == 0 and '"bank_size": 300' in info.output and '"bank_rows"' in info.output, info.output
    scored = runner.invoke(main, ["score", str(tmp_path / "a.mp4"), "-m", str(tmp_path / "a.zarr"), "-o", str(tmp_path / "s"), "-q"])
    assert scored.exit_code == 0, scored.output


def test_a_store_from_before_the_patch_stride_was_recorded_still_loads(tmp_path: Path) -> None:
    """Stores fitted before ``patch_stride`` existed used stride 8 and do not record it."""
    import json

    import streamad
    from streamad.io.sources import FrameArrays
    from streamad.stores.model_store import load, open_store
    from tests.conftest import scene

    store = tmp_path / "old.zarr"
    streamad.fit([FrameArrays("clip", [scene(t, height=64, width=96) for t in range(12)], fps=10)], store, ModelConfig(method="knn", input_hw=(64, 96)))
    meta = json.loads((store / "zarr.json").read_text())
    assert "patch_stride" not in meta["attributes"]["scorer"]  # 8: not recorded, as before
    model = load(open_store(store), where="old")
    assert model.scorer.patch_stride == 8
