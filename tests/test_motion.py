"""The motion cue: where and how strongly features change, the lag logic in time, exact resume
and merge of its statistics, and the same scores live and offline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.engine.scoring import ScoreOptions
from streamad.errors import ConfigError
from streamad.features.temporal import HAS_MOTION, MOTION, MotionTracker
from streamad.frames import FeatureBatch, FrameRef
from streamad.io.cameras import Camera
from streamad.io.decode import VideoWriter
from streamad.model import Model
from streamad.pipelines.fit import fit
from streamad.pipelines.merge import merge
from streamad.pipelines.score import score
from streamad.pipelines.watch import WatchOptions, watch
from streamad.stores.model_store import config_from_attrs, open_store, read_state
from tests.conftest import assert_statistics_close, embed, scene

MOTION_CONFIG = ModelConfig(input_hw=(64, 96), k=16, motion="feat")


def square_frames(speed: int, frames: int = 4, *, size: tuple[int, int] = (128, 192)) -> list[np.ndarray]:
    """A static texture with a dark square moving right by ``speed`` pixels a frame from x=40."""
    rng = np.random.default_rng(3)
    base = cv2.resize(rng.uniform(80, 180, (size[0] // 8, size[1] // 8, 3)).astype(np.float32), (size[1], size[0])).astype(np.uint8)
    out = []
    for t in range(frames):
        image = base.copy()
        x = 40 + speed * t
        image[48:80, x : x + 32] = 20
        out.append(image)
    return out


def motion_energy(model: Model, frames: list[np.ndarray]) -> torch.Tensor:
    """Per-position norm of the motion features of the last frame, as (h, w)."""
    tracker = MotionTracker("embedding", lag_s=0.1)
    refs = tuple(FrameRef("c", i, i / 10) for i in range(len(frames)))
    batch = tracker(FeatureBatch(refs, embed(model, frames)))
    assert batch.features[HAS_MOTION].tolist() == [False] + [True] * (len(frames) - 1)
    return batch.features[MOTION][-1].norm(dim=-1).view(*model.extractor.feature_hw)


def test_motion_features_peak_where_the_square_moves_and_grow_with_its_speed() -> None:
    model = Model(ModelConfig(input_hw=(128, 192), k=32))
    slow, fast = motion_energy(model, square_frames(2)), motion_energy(model, square_frames(8))
    h, w = model.extractor.feature_hw
    stride = 128 // h
    row, col = divmod(int(fast.argmax()), w)
    x_now = 40 + 8 * 3
    assert 48 - stride <= row * stride <= 80 + stride and x_now - 12 - stride <= col * stride <= x_now + 32 + stride
    away = fast[:, : (x_now - 40) // stride].mean() if x_now > 60 else fast[h // 2 + 4 :].mean()
    assert fast.max() > 3 * away  # far from the square little changes
    assert fast.sum() > 1.5 * slow.sum()  # a faster square changes more


@pytest.mark.parametrize(
    ("pts", "lag", "expected"),
    [
        ([0.0, 0.3, 0.6, 0.9], 0.3, [False, True, True, True]),  # --every 3 at 10 fps, lag of one step
        ([0.0, 0.1, 0.22, 0.31, 0.45], 0.1, [False, True, True, True, True]),  # a variable rate within tolerance
        ([0.0, 0.1, 0.3, 0.4], 0.1, [False, True, False, True]),  # a dropped frame: no lag-long gap
        ([0.0, 0.1, 5.0, 5.1], 0.1, [False, True, False, True]),  # a long gap (a reconnect)
    ],
)
def test_lags_are_times(pts: list[float], lag: float, expected: list[bool]) -> None:
    tracker = MotionTracker("embedding", lag_s=lag)
    values = torch.arange(len(pts), dtype=torch.float32).view(-1, 1, 1)
    out = tracker(FeatureBatch(tuple(FrameRef("c", i, p) for i, p in enumerate(pts)), {"embedding": values}))
    assert out.features[HAS_MOTION].tolist() == expected
    for i in range(1, len(pts)):
        if expected[i]:  # one step of change per frame, rescaled to one lag
            assert float(out.features[MOTION][i]) == pytest.approx(lag / (pts[i] - pts[i - 1]))


def test_sources_keep_their_own_previous_frame_across_batches() -> None:
    tracker = MotionTracker("embedding", lag_s=1.0)
    first = tracker(FeatureBatch((FrameRef("a", 0, 0.0), FrameRef("b", 0, 0.0)), {"embedding": torch.tensor([[[1.0]], [[10.0]]])}))
    second = tracker(FeatureBatch((FrameRef("b", 1, 1.0), FrameRef("a", 1, 1.0)), {"embedding": torch.tensor([[[12.0]], [[4.0]]])}))
    assert not first.features[HAS_MOTION].any() and second.features[MOTION].flatten().tolist() == [2.0, 3.0]
    with pytest.raises(ConfigError, match="positive motion lag"):
        MotionTracker("embedding", lag_s=0)


def clip(path: Path, frames: int, *, fps: int = 10, anomaly_from: int | None = None) -> Path:
    with VideoWriter(path, fps=fps) as writer:
        for t in range(frames):
            writer.write(scene(t, anomaly=anomaly_from is not None and t >= anomaly_from))
    return path


def motion_stats(path: Path) -> dict[str, np.ndarray]:
    state = read_state(open_store(path))
    assert state is not None
    names = ("count", "mean", "m2", "motion_count", "motion_mean", "motion_m2", "flow_count", "flow_mean", "flow_m2")
    return {name: state.arrays[name] for name in names if name in state.arrays}


@pytest.mark.parametrize("kind", ["feat", "both"])
def test_resume_and_merge_of_motion_statistics_are_exact(kind: str, tmp_path: Path) -> None:
    a, b = clip(tmp_path / "a.mp4", 40), clip(tmp_path / "b.mp4", 30)
    config = replace(MOTION_CONFIG, motion=kind)
    fit([str(a), str(b)], tmp_path / "one.zarr", config)
    fit([str(a), str(b)], tmp_path / "two.zarr", config, options=FitOptions(stop=17))
    fit([str(a), str(b)], tmp_path / "two.zarr", resume=True)
    fit([str(a)], tmp_path / "pa.zarr", config)
    fit([str(b)], tmp_path / "pb.zarr", config)
    merge([tmp_path / "pa.zarr", tmp_path / "pb.zarr"], tmp_path / "merged.zarr")
    one = motion_stats(tmp_path / "one.zarr")
    assert int(one["motion_count"]) > 40  # motion fitted on frames whose previous frame was read
    # A resumed fit reads each source's last counted frame again to give the next one its
    # motion; it passes the backbone in another batch, so float32 rounding (~1e-7) differs.
    for name, array in motion_stats(tmp_path / "merged.zarr").items():
        assert_statistics_close(array, one[name], exact=False, err_msg=f"merged {name}")
    for name, array in motion_stats(tmp_path / "two.zarr").items():
        np.testing.assert_allclose(array, one[name], rtol=1e-5, atol=1e-5 * np.abs(one[name]).max(), err_msg=f"resumed {name}")


def test_motion_model_scores_live_as_offline_and_marks_the_anomaly(tmp_path: Path) -> None:
    train, test = clip(tmp_path / "train.mp4", 60), clip(tmp_path / "test.mp4", 40, anomaly_from=25)
    fit([str(train)], tmp_path / "m.zarr", MOTION_CONFIG)
    scored = score([str(test)], tmp_path / "m.zarr", tmp_path / "s", options=ScoreOptions(write_maps=False))
    offline = np.loadtxt(scored.csv, delimiter=",", skiprows=1, usecols=3)
    watch([Camera("test", str(test), str(tmp_path / "m.zarr"))], tmp_path / "w", options=WatchOptions(live=WatchOptions().live), print_stats=lambda line: None)
    live = np.loadtxt(tmp_path / "w" / "scores.csv", delimiter=",", skiprows=1, usecols=3)
    np.testing.assert_allclose(live, offline, rtol=1e-5)
    assert offline[25:].min() > offline[1:25].max()


def test_image_sets_keep_appearance_only(tmp_path: Path) -> None:
    folder = tmp_path / "cat" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:03d}.png"), scene(i))
    fit([str(tmp_path / "cat")], tmp_path / "m.zarr", MOTION_CONFIG, options=FitOptions(holdout_every=3))
    state = read_state(open_store(tmp_path / "m.zarr"))
    assert state is not None and "motion_mean" not in state.arrays and "motion_lag_s" not in state.attrs


def test_learning_a_camera_learns_motion_with_its_frame_step(tmp_path: Path) -> None:
    video = clip(tmp_path / "cam.mp4", 130, fps=10, anomaly_from=100)
    options = WatchOptions(learn_for_s=9.0, learn_config=MOTION_CONFIG, stats_every_s=1e9)
    summary = watch([Camera("cam", str(video), str(tmp_path / "m.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None)
    state = read_state(open_store(tmp_path / "m.zarr"))
    assert state is not None and state.attrs["motion_lag_s"] == pytest.approx(0.1) and int(state.arrays["motion_count"]) > 60
    scores = np.loadtxt(tmp_path / "w" / "scores.csv", delimiter=",", skiprows=1, usecols=3)
    learned = summary.streams["cam"].learned
    assert scores[100 - learned :].min() > scores[: 100 - learned].max()  # the anomaly stands out


def test_a_camera_learns_fits_video_default_unless_told_otherwise(tmp_path: Path) -> None:
    """``--learn-for`` alone learns what ``fit`` learns from video: knn with the feat and speed
    cues at the camera's frame step (the speed cue's tracker runs while learning)."""
    video = clip(tmp_path / "cam.mp4", 130, fps=10, anomaly_from=100)
    config = replace(WatchOptions().learn_config, input_hw=(64, 96), bank_size=300)
    options = WatchOptions(learn_for_s=9.0, learn_config=config, stats_every_s=1e9)
    summary = watch([Camera("cam", str(video), str(tmp_path / "m.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None)
    stored = config_from_attrs(open_store(tmp_path / "m.zarr").attrs(), where="m.zarr")
    assert (stored.method, stored.motion, stored.bank_size) == ("knn", "feat,speed", 300) and stored.motion_lag_s == pytest.approx(0.1)
    state = read_state(open_store(tmp_path / "m.zarr"))
    assert state is not None and any(name.startswith("speed") for name in state.arrays), sorted(state.arrays)
    scores = np.loadtxt(tmp_path / "w" / "scores.csv", delimiter=",", skiprows=1, usecols=3)
    learned = summary.streams["cam"].learned
    assert scores[100 - learned :].min() > scores[: 100 - learned].max()  # the anomaly stands out
    with pytest.raises(ConfigError, match="for --method knn"):
        WatchOptions(learn_for_s=9.0, learn_config=replace(config, motion="both"))  # refused before any camera opens


def test_overlay_shows_the_motion_map_beside_the_appearance_map(tmp_path: Path) -> None:
    from streamad.io.decode import probe

    train, test = clip(tmp_path / "train.mp4", 40), clip(tmp_path / "test.mp4", 12)
    fit([str(train)], tmp_path / "m.zarr", MOTION_CONFIG)
    layers = ("combined", "appearance", "motion")
    score([str(test)], tmp_path / "m.zarr", None, overlay=tmp_path / "o.mp4", overlay_layers=layers)
    info, frame = probe(tmp_path / "o.mp4"), probe(test)
    assert (info.width, info.height, info.frames) == (3 * frame.width, frame.height, 12)
    with pytest.raises(ConfigError, match="overlay-layers among"):
        score([str(test)], tmp_path / "m.zarr", None, overlay=tmp_path / "p.mp4", overlay_layers=("flow",))


def test_flow_features_measure_speed_and_direction_where_the_square_moves() -> None:
    from streamad.features.temporal import dense_flow, flow_features

    rng = np.random.default_rng(0)
    background = cv2.resize(rng.uniform(0, 255, (16, 24)).astype(np.float32), (192, 128), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    square = cv2.resize(rng.uniform(0, 255, (6, 6)).astype(np.float32), (40, 40), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    speeds = []
    for shift in (2, 4, 8):  # pixels to the right
        before, after = background.copy(), background.copy()
        before[44:84, 60:100] = square
        after[44:84, 60 + shift : 100 + shift] = square
        cells = flow_features(dense_flow(before, after, dis=dis), (32, 48)).view(32, 48, 9)
        moving, still = cells[14:18, 18:22], cells[:5, :8]
        assert float(still[..., 0].mean()) < 0.05 * shift  # the background stays
        assert int(moving[..., 1:].sum((0, 1)).argmax()) == 4  # the bin of direction 0 (rightwards)
        speeds.append(float(moving[..., 0].mean()))
    assert 0.5 * 2 < speeds[0] < speeds[1] < speeds[2] < 1.2 * 8  # grows with the speed, in pixels


@pytest.mark.parametrize(
    "config",
    [replace(MOTION_CONFIG, motion="both"), ModelConfig(method="knn", input_hw=(64, 96), motion="feat,speed", bank_size=300)],
    ids=["padim-feat-flow", "knn-feat-speed"],
)
def test_watch_realtime_gives_the_scores_of_score(config: ModelConfig, tmp_path: Path) -> None:
    """A file played at its native rate, as a camera, gets the offline scores, the causal
    filter of video models included. Live, a frame may be dropped when the machine is busy: the
    next then has no motion, and the filter's memory differs from then on; so unfiltered
    scores (``--smooth 0``) are compared on every frame whose predecessor was scored, filtered
    ones up to the first drop (all frames, when none was)."""
    from streamad.config import FrameScoreConfig
    from streamad.io.live import LiveOptions

    train, test = clip(tmp_path / "train.mp4", 60, fps=20), clip(tmp_path / "test.mp4", 30, fps=20, anomaly_from=20)
    fit([str(train)], tmp_path / "m.zarr", config)
    for smooth_s in (0.0, None):
        frame_score = FrameScoreConfig(smooth_s=smooth_s)
        offline = score([str(test)], tmp_path / "m.zarr", tmp_path / f"s{smooth_s}", options=ScoreOptions(write_maps=False, frame_score=frame_score)).csv
        options = WatchOptions(live=LiveOptions(realtime=True), queue_size=30, stats_every_s=1e9, frame_score=frame_score)
        watch([Camera("test", str(test), str(tmp_path / "m.zarr"))], tmp_path / f"w{smooth_s}", options=options, print_stats=lambda line: None)
        paths = (("offline", offline), ("live", tmp_path / f"w{smooth_s}" / "scores.csv"))
        read = {name: np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 3)) for name, path in paths}
        live = {int(i): s for i, s in read["live"]}
        if smooth_s == 0.0:
            compared = [(s, live[int(i)]) for i, s in read["offline"] if int(i) in live and int(i) - 1 in live]
            assert len(compared) >= 20
        else:
            first_drop = next((i for i in range(30) if i not in live), 30)
            compared = [(s, live[int(i)]) for i, s in read["offline"] if int(i) < first_drop]
            assert len(compared) >= 10
        np.testing.assert_allclose([b for _, b in compared], [a for a, _ in compared], rtol=1e-5)
