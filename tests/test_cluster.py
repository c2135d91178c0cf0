"""``--ray`` on a local Ray instance: a cluster fit equals the local fit for any shard split
(padim, soe, with motion), resumes across cluster runs, survives a worker killed mid-shard and
names a shard that fails; a cluster score writes the local score's CSV, store and overlays."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from streamad.cli import main
from streamad.config import ClusterOptions, ModelConfig
from streamad.engine.assembly import Reading
from streamad.engine.fitting import FitOptions
from streamad.errors import ClusterError, ConfigError
from streamad.io.decode import VideoWriter
from streamad.io.sources import FrameArrays
from streamad.pipelines.cluster_score import score_on_cluster
from streamad.pipelines.distributed import Shard, fit_on_cluster, plan_shards, shard_count
from streamad.pipelines.fit import fit
from streamad.pipelines.score import score
from streamad.stores.model_store import open_store, read_state
from streamad.stores.score_store import open_scores, read_source
from tests.conftest import assert_statistics_close, scene

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(input_hw=(64, 96), k=16)
OPTIONS = FitOptions(calibration_frames=9)


@pytest.fixture(scope="module")
def local_ray() -> object:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """UCSD-style training clips (frame folders of 23, 31 and 17 frames) and a 40-frame video,
    which shards cut into frame ranges."""
    root = tmp_path_factory.mktemp("cluster")
    for clip, frames in (("01", 23), ("02", 31), ("03", 17)):
        folder = root / "training" / "frames" / clip
        folder.mkdir(parents=True)
        for t in range(frames):
            cv2.imwrite(str(folder / f"{t:03d}.png"), cv2.cvtColor(scene(t, seed=int(clip)), cv2.COLOR_RGB2BGR))
    with VideoWriter(root / "street.mp4", fps=10) as writer:
        for t in range(40):
            writer.write(scene(t, seed=7))
    return [root / "training" / "frames", root / "street.mp4"]


def assert_same_fit(a: Path, b: Path) -> None:
    """Statistics equal (float64 updates to 1e-9, float32 ones to their bound), the same progress
    and calibration frames, and the normalisation equal to float32 rounding."""
    sa, sb = read_state(open_store(a)), read_state(open_store(b))
    assert sa is not None and sb is not None
    for name in sa.arrays:
        if re.fullmatch(r"(motion_|flow_)?(count|mean|m2)", name):  # the running statistics, float64
            assert_statistics_close(sb.arrays[name], sa.arrays[name], exact=False, err_msg=name)
    attrs_a, attrs_b = open_store(a).attrs(), open_store(b).attrs()
    assert attrs_a["sources"] == attrs_b["sources"] and attrs_a["frames_seen"] == attrs_b["frames_seen"] > 0
    norm_a, norm_b = attrs_a["normalisation"], attrs_b["normalisation"]
    assert norm_a["frames"] == norm_b["frames"] > 1
    for name in ("position_mean", "normal_scores"):
        x, y = open_store(a).read(f"{norm_a['path']}/{name}"), open_store(b).read(f"{norm_b['path']}/{name}")
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    ("config", "shard_frames", "every"),
    [
        (SMALL, 7, 1),
        (SMALL, 1000, 1),
        (ModelConfig(method="soe", input_hw=(64, 96), k=16), 13, 2),
        (ModelConfig(input_hw=(64, 96), k=16, motion="feat"), 11, 1),
    ],
    ids=["padim-small-shards", "padim-one-round", "soe-every-2", "padim-motion"],
)
def test_cluster_fit_equals_the_local_fit(tmp_path: Path, clips: list[Path], local_ray: object, config: ModelConfig, shard_frames: int, every: int) -> None:
    options = replace(OPTIONS, every=every)
    fit(clips, tmp_path / "local.zarr", config, options=options)
    summary = fit_on_cluster(clips, tmp_path / "ray.zarr", config, options=options, on=ClusterOptions(shard_frames=shard_frames))
    assert_same_fit(tmp_path / "local.zarr", tmp_path / "ray.zarr")
    shards = open_store(tmp_path / "ray.zarr").attrs()["cluster"]["shards"]
    assert shards == shard_count(summary.frames_read, 2, shard_frames) and summary.frames_read == {1: 111, 2: 57}[every]


def test_cluster_fit_resumes_across_runs(tmp_path: Path, clips: list[Path], local_ray: object) -> None:
    fit(clips, tmp_path / "local.zarr", SMALL, options=OPTIONS)
    on = ClusterOptions(shard_frames=20)
    fit_on_cluster(clips[:1], tmp_path / "ray.zarr", SMALL, options=OPTIONS, on=on)
    fit_on_cluster(clips, tmp_path / "ray.zarr", options=OPTIONS, on=on, resume=True)
    assert_same_fit(tmp_path / "local.zarr", tmp_path / "ray.zarr")
    assert open_store(tmp_path / "ray.zarr").attrs()["cluster"]["shards"] == shard_count(71, 2, 20) + shard_count(40, 2, 20)


def test_a_worker_killed_mid_shard_is_retried_and_the_fit_stays_exact(tmp_path: Path, clips: list[Path], local_ray: object) -> None:
    marker = tmp_path / "killed"

    def die_once(shard: Shard) -> None:  # in the worker: the process dies on shard 1's first attempt
        if shard.number == 1 and not marker.exists():
            marker.touch()
            os._exit(1)

    fit(clips, tmp_path / "local.zarr", SMALL, options=OPTIONS)
    fit_on_cluster(clips, tmp_path / "ray.zarr", SMALL, options=OPTIONS, on=ClusterOptions(shard_frames=20), hook=die_once)
    assert marker.exists()
    assert_same_fit(tmp_path / "local.zarr", tmp_path / "ray.zarr")


def test_a_shard_that_keeps_failing_is_one_error_naming_it(tmp_path: Path, clips: list[Path], local_ray: object) -> None:
    def fail(shard: Shard) -> None:
        if shard.number == 1:
            raise ValueError("no such codec")

    with pytest.raises(ClusterError, match=r"expected shard 1 \(.*frames .*\) to finish, got ValueError: no such codec$") as caught:
        fit_on_cluster(clips, tmp_path / "ray.zarr", SMALL, options=OPTIONS, on=ClusterOptions(shard_frames=20), hook=fail)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ray.zarr").exists()  # the first round failed: nothing committed, a new store never appears


def test_a_failed_cluster_fit_keeps_its_finished_rounds_and_resumes_exactly(tmp_path: Path, clips: list[Path], local_ray: object) -> None:
    def fail(shard: Shard) -> None:  # 6 shards in rounds of 2: rounds 0 and 1 finish, round 2 fails
        if shard.number == 4:
            raise ValueError("disk full")

    fit(clips, tmp_path / "local.zarr", SMALL, options=OPTIONS)
    on = ClusterOptions(shard_frames=20)
    with pytest.raises(ClusterError, match=r"expected shard 4 .* got ValueError: disk full; the \d+ frames of the rounds before it are committed"):
        fit_on_cluster(clips, tmp_path / "ray.zarr", SMALL, options=OPTIONS, on=on, hook=fail)
    attrs = open_store(tmp_path / "ray.zarr").attrs()
    assert attrs["cluster"]["shards"] == 4 and 0 < attrs["frames_seen"] < open_store(tmp_path / "local.zarr").attrs()["frames_seen"]
    fit_on_cluster(clips, tmp_path / "ray.zarr", options=OPTIONS, on=on, resume=True)
    assert_same_fit(tmp_path / "local.zarr", tmp_path / "ray.zarr")


def test_ctrl_c_keeps_the_finished_rounds_and_resume_equals_the_local_fit(tmp_path: Path, clips: list[Path], local_ray: object) -> None:
    frames = tmp_path / "frames"  # a longer clip than the module's, so rounds are still to come at the interrupt
    frames.mkdir()
    for t in range(300):
        cv2.imwrite(str(frames / f"{t:03d}.png"), cv2.cvtColor(scene(t, seed=5), cv2.COLOR_RGB2BGR))
    args = [str(frames), "--method", "padim", "--input-size", "64x96", "-k", "16", "--calibration-frames", "9", "-q"]
    cut = tmp_path / "cut.zarr"
    proc = subprocess.Popen(  # its own local Ray, as a user's command starts one
        [sys.executable, "-m", "streamad", "fit", *args, "-m", str(cut), "--ray", "--ray-shard-frames", "10"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (cut / "zarr.json").exists():  # the first round is committed
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # the shell is told it was interrupted
    assert "interrupted: " in out and "--resume" in out, out
    seen = open_store(cut).attrs()["frames_seen"]
    assert 0 < seen < 270, "the interrupt should land between rounds"
    fit_on_cluster([frames], cut, options=OPTIONS, on=ClusterOptions(shard_frames=10), resume=True)
    fit([frames], tmp_path / "local.zarr", SMALL, options=OPTIONS)
    assert_same_fit(tmp_path / "local.zarr", cut)


def test_a_shard_whose_worker_dies_on_every_attempt_is_one_error_naming_it(tmp_path: Path, clips: list[Path], local_ray: object) -> None:
    def die(shard: Shard) -> None:
        if shard.number == 0:
            os._exit(1)

    with pytest.raises(ClusterError, match=r"expected shard 0 \(01 frames 0-.*\) to finish, got its worker dead on each of 4 attempts") as caught:
        fit_on_cluster(clips, tmp_path / "ray.zarr", SMALL, options=OPTIONS, on=ClusterOptions(shard_frames=20), hook=die)
    assert "\n" not in str(caught.value)


def test_trained_methods_are_refused_before_anything_runs(tmp_path: Path, clips: list[Path]) -> None:
    with pytest.raises(ConfigError, match="expected a mergeable method with --ray, got 'ae-ssim'.*hint: fit it without --ray"):
        fit_on_cluster(clips, tmp_path / "ray.zarr", ModelConfig(method="ae-ssim", input_hw=(64, 96)), options=OPTIONS)
    assert not (tmp_path / "ray.zarr").exists()


def test_cluster_score_writes_what_a_local_score_writes(tmp_path: Path, clips: list[Path], local_ray: object) -> None:
    fit(clips, tmp_path / "m.zarr", SMALL, options=OPTIONS)
    outputs = {"overlay_layers": ("combined",)}
    local = score(clips, tmp_path / "m.zarr", tmp_path / "local", overlay=tmp_path / "local" / "o.mp4", plot=tmp_path / "local" / "t.png", **outputs)
    remote = score_on_cluster(clips, tmp_path / "m.zarr", tmp_path / "ray", overlay=tmp_path / "ray" / "o.mp4", plot=tmp_path / "ray" / "t.png", **outputs)
    assert remote.frames == local.frames and sum(local.frames.values()) == 111
    assert [Path(p).name for p in remote.overlays] == [Path(p).name for p in local.overlays] and len(local.overlays) == 4
    assert (tmp_path / "ray" / "t.png").stat().st_size > 0
    rows = [(tmp_path / d / "scores.csv").read_text().splitlines() for d in ("local", "ray")]
    assert [r.split(",")[:3] for r in rows[0]] == [r.split(",")[:3] for r in rows[1]]  # source, index, pts_s, in order
    np.testing.assert_allclose(np.loadtxt(rows[1][1:], delimiter=",", usecols=3), np.loadtxt(rows[0][1:], delimiter=",", usecols=3), rtol=1e-5)
    (a, attrs_a), (b, attrs_b) = open_scores(tmp_path / "local" / "scores.zarr"), open_scores(tmp_path / "ray" / "scores.zarr")
    assert attrs_a == attrs_b
    for sid in attrs_a["sources"]:
        x, y = read_source(a, sid, with_maps=True), read_source(b, sid, with_maps=True)
        np.testing.assert_array_equal(x.index, y.index)
        np.testing.assert_allclose(y.score, x.score, rtol=1e-5)
        assert x.maps is not None and y.maps is not None
        np.testing.assert_allclose(y.maps[:].astype(np.float32), x.maps[:].astype(np.float32), rtol=2e-3, atol=1e-3)  # a float16 ulp: batches differ


def test_a_score_actor_killed_mid_source_is_retried_and_the_store_holds_each_frame_once(tmp_path: Path, clips: list[Path], local_ray: object) -> None:
    fit(clips, tmp_path / "m.zarr", SMALL, options=OPTIONS)
    with VideoWriter(tmp_path / "long.mp4", fps=10) as writer:  # longer than a flush of the store (64 frames)
        for t in range(70):
            writer.write(scene(t, seed=3))
    marker = tmp_path / "killed"

    def die_once(ref: object) -> None:  # in the actor, after frame 66 was written (64 are flushed)
        if getattr(ref, "index", None) == 66 and not marker.exists():
            marker.touch()
            os._exit(1)

    local = score([tmp_path / "long.mp4"], tmp_path / "m.zarr", tmp_path / "local")
    score_on_cluster([tmp_path / "long.mp4"], tmp_path / "m.zarr", tmp_path / "ray", hook=die_once)
    assert marker.exists() and local.frames["long"] == 70
    a, _ = open_scores(tmp_path / "local" / "scores.zarr")
    b, _ = open_scores(tmp_path / "ray" / "scores.zarr")
    for name in ("index", "score", "map_max"):
        assert b.read(f"long/{name}").shape == (70,)
    np.testing.assert_array_equal(read_source(b, "long").index, np.arange(70))
    np.testing.assert_allclose(read_source(b, "long").score, read_source(a, "long").score, rtol=1e-5)


def test_shards_cover_every_frame_once_in_order() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 40, rng.integers(1, 5))
        sources = [FrameArrays(f"s{i}", np.zeros((n, 2, 2, 3), np.uint8)) for i, n in enumerate(lengths)]
        start, stop = int(rng.integers(0, 5)), [None, int(rng.integers(6, 45))][int(rng.integers(0, 2))]
        reading = Reading(frame_range=(start, stop))
        count = int(rng.integers(1, 9))
        shards = plan_shards(sources, reading, count)
        pieces = [p for s in shards for p in s.pieces]
        covered = [(p.source.source_id, i) for p in pieces for i in range(p.start, len(p.source) if p.stop is None else min(p.stop, len(p.source)))]
        expected = [(s.source_id, i) for s in sources for i in range(start, len(s) if stop is None else min(stop, len(s)))]
        assert covered == expected
        assert len(shards) <= count and [s.number for s in shards] == list(range(len(shards)))


def test_without_ray_the_flag_is_a_one_line_error_naming_the_extra(tmp_path: Path, clips: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as when it is not installed
    result = CliRunner().invoke(main, ["fit", str(clips[1]), "-m", str(tmp_path / "m.zarr"), "--input-size", "64x96", "--ray", "-q"])
    assert result.exit_code != 0
    assert "expected Ray for --ray, got none installed; hint: pip install 'streamad[ray]'" in result.output
    assert not (tmp_path / "m.zarr").exists()
