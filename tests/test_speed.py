"""The object-speed cue: moving regions from dense flow, the perspective line and the density of
relative speeds, against independent references, and what it is for: a thing moving three
times faster than things walk is flagged wherever it moves, also where nothing ever moved in
training."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from streamad.config import ModelConfig
from streamad.features.regions import moving_regions
from streamad.features.temporal import REGIONS
from streamad.frames import FeatureBatch, FrameRef
from streamad.model import Model
from streamad.scorers.speed import RESERVOIR, K, SpeedModel
from tests.conftest import embed

SIZE = (128, 192)


def test_regions_are_the_connected_moving_blobs_with_their_median_speed() -> None:
    rng = np.random.default_rng(0)
    flow = rng.normal(0, 0.02, (60, 90, 2)).astype(np.float32)  # sensor noise
    flow[10:20, 5:25] = (2.0, 0.0)  # a thing moving right at 2 px per lag
    flow[40:52, 60:70] = (0.0, -5.0)  # one moving up at 5
    flow[30, 30] = (9.0, 0.0)  # a single fast pixel: noise, below the minimum area
    rows = moving_regions(flow)
    assert rows.shape == (2, 6)
    np.testing.assert_allclose(rows[:, 0], [5.0, 2.0], rtol=1e-3)  # fastest first
    np.testing.assert_allclose(rows[1, 1:5], [5 / 90, 10 / 60, 25 / 90, 20 / 60], atol=1e-6)
    np.testing.assert_allclose(rows[1, 5], 200 / (60 * 90), rtol=1e-6)


def _regions(rows: list[tuple[float, float]]) -> torch.Tensor:
    """Region rows (speed, bottom) as a batch of one frame each, boxes 0.1 wide ending at bottom."""
    out = torch.full((len(rows), 1, 6), float("nan"))
    for i, (speed, bottom) in enumerate(rows):
        out[i, 0] = torch.tensor([speed, 0.45, bottom - 0.1, 0.55, bottom, 0.01])
    return out


def test_perspective_line_and_ratios_match_a_slow_reference() -> None:
    """Things at one true speed move pixels in proportion to their row (a ground plane): the
    fitted line recovers it, and a region's ratio is exp of its log relative speed's distance
    to the K-th nearest normal one, computed here by brute force."""
    rng = np.random.default_rng(1)
    bottom = rng.uniform(0.2, 1.0, 3000)
    speed = 2.0 * bottom * np.exp(rng.normal(0, 0.1, bottom.size))  # true line: 2 * bottom
    model = SpeedModel()
    model.update(_regions(list(zip(speed, bottom, strict=True))))
    model.finalise()
    a, c = model.line
    assert a == pytest.approx(2.0, rel=0.05) and abs(c) < 0.05
    queries_speed, queries_bottom = np.array([0.4, 1.2, 3.0, 6.0]), np.array([0.2, 0.6, 0.5, 1.0])
    got = model.ratios(queries_speed, queries_bottom)
    floor = 0.25 * np.median(speed)
    normal = np.log(speed / np.maximum(a * bottom + c, floor))
    value = np.log(queries_speed / np.maximum(a * queries_bottom + c, floor))
    expected = [np.exp(np.sort(np.abs(normal - v))[K - 1]) if v > np.median(normal) else 1.0 for v in value]
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert got[2] > 2.0 and got[3] > 2.0  # 3x faster than normal at its height


def test_reservoir_is_bounded_deterministic_and_resumable() -> None:
    rng = np.random.default_rng(2)
    batches = [_regions([(float(s), 0.5) for s in rng.uniform(0.1, 3, 900)]) for _ in range(60)]
    whole, first, second = SpeedModel(), SpeedModel(), SpeedModel()
    for batch in batches:
        whole.update(batch)
    for batch in batches[:25]:
        first.update(batch)
    second.load(first.arrays(), first.attrs(), finalised=False)
    for batch in batches[25:]:
        second.update(batch)
    assert len(whole.regions) <= RESERVOIR and whole.seen == 60 * 900
    np.testing.assert_array_equal(second.regions, whole.regions)
    kept = np.concatenate([b[:, 0, [0, 4]].numpy() for b in batches])[:: whole.stride]  # the multiples of the stride
    np.testing.assert_array_equal(whole.regions, kept)


def square_clip(speed: int, x0: int, frames: int, *, seed: int = 0) -> list[np.ndarray]:
    """A textured still background and a 24-pixel textured square moving right by ``speed`` px
    a frame from column ``x0`` (wrapping within the frame)."""
    rng = np.random.default_rng(seed)
    background = cv2.resize(rng.uniform(60, 190, (SIZE[0] // 8, SIZE[1] // 8, 3)).astype(np.float32), (SIZE[1], SIZE[0])).astype(np.uint8)
    square = cv2.resize(rng.uniform(0, 255, (4, 4, 3)).astype(np.float32), (24, 24), interpolation=cv2.INTER_NEAREST).astype(np.uint8)
    out = []
    for t in range(frames):
        image = background.copy()
        x = x0 + (speed * t) % (SIZE[1] - 24 - x0)
        image[56:80, x : x + 24] = square
        out.append(image)
    return out


def speed_scores(model: Model, frames: list[np.ndarray], source: str) -> np.ndarray:
    """Each frame's speed cue peak (its most unusual region), frame one lag after another."""
    tracker = model.tracker()
    assert tracker is not None
    refs = tuple(FrameRef(source, i, i / 10) for i in range(len(frames)))
    batch = tracker(FeatureBatch(refs, embed(model, frames), tuple(frames)))
    distances = model.distances(batch.features)[:, model.cues.index("speed")]
    return distances[1:].amax(1).numpy()


def test_a_square_three_times_faster_is_flagged_wherever_it_moves() -> None:
    """Trained on a square walking at 3 px a frame in the left half, the speed cue flags it at 9
    px a frame in the right half (where nothing moved in training), and not at 3 px there."""
    model = Model(ModelConfig(method="knn", input_hw=SIZE, motion="speed", motion_lag_s=0.1, bank_size=200))
    tracker = model.tracker()
    assert tracker is not None
    train = square_clip(3, 4, 30)  # columns 4-94 of 192
    refs = tuple(FrameRef("train", i, i / 10) for i in range(len(train)))
    batch = tracker(FeatureBatch(refs, embed(model, train), tuple(train)))
    assert batch.features[REGIONS][1:, 0, 0].isnan().sum() == 0  # every frame after the first has its square
    model.update(batch.features)
    model.finalise()
    walking = speed_scores(model, square_clip(3, 100, 8, seed=0), "walk")  # columns 100-172, never visited
    fast = speed_scores(model, square_clip(9, 100, 8, seed=0), "fast")
    assert fast.min() > 2 and walking.max() < 1.2, (fast, walking)  # measured: 2.9-3.3 and 1.00-1.04


def test_footage_where_nothing_moves_leaves_the_cue_at_its_normal_level(caplog: pytest.LogCaptureFixture) -> None:
    model = SpeedModel()
    model.update(_regions([(1.0, 0.5)] * 2))
    model.finalise()
    assert "learned nothing" in caplog.text
    np.testing.assert_array_equal(model.ratios(np.array([0.5, 50.0]), np.array([0.5, 0.5])), [1.0, 1.0])


def test_scored_frames_carry_their_regions_in_frame_pixels_per_second_and_overlays_box_them() -> None:
    """A square moving 9 px a frame at 10 frames/s moves 90 px/s: the result says so (the
    tracker measures it at half the input size, per lag), and the overlay draws its box."""
    from streamad import pictures
    from streamad.config import FrameScoreConfig
    from streamad.engine.assembly import Scoring

    model = Model(ModelConfig(method="knn", input_hw=SIZE, motion="speed", motion_lag_s=0.1, bank_size=200))
    tracker = model.tracker()
    assert tracker is not None
    train = square_clip(3, 4, 30)
    model.update(tracker(FeatureBatch(tuple(FrameRef("train", i, i / 10) for i in range(30)), embed(model, train), tuple(train))).features)
    model.finalise()
    frames = square_clip(9, 100, 6)
    results = Scoring(model, FrameScoreConfig(normalised=False), prepared=False)(
        FeatureBatch(tuple(FrameRef("fast", i, i / 10) for i in range(6)), model.extractor.extract(frames), tuple(frames))
    )
    assert results[0].regions is not None and len(results[0].regions) == 0  # the first frame has no predecessor
    for result in results[1:]:
        assert result.regions is not None and len(result.regions) >= 1
        x0, y0, x1, y1, speed = result.regions[0]
        assert 60 < speed < 110  # 90 px/s
        assert y0 * SIZE[0] < 80 and y1 * SIZE[0] > 56  # around the square's rows 56-80
    drawn = pictures.boxes(frames[3], results[3].regions)
    assert (drawn != frames[3]).any(axis=-1).sum() > 50  # the box and its label
