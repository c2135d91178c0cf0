"""End to end on small generated clips: fit, score, resume, merge, Ctrl-C, CLI errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from streamad.cli import main
from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.engine.scoring import ScoreOptions
from streamad.io.decode import VideoWriter
from streamad.pipelines.fit import fit
from streamad.pipelines.merge import merge
from streamad.pipelines.score import score
from streamad.scorers.running import chan_merge
from streamad.stores.model_store import open_store, read_state
from streamad.stores.score_store import open_scores, read_source
from tests.conftest import assert_statistics_close, scene

SMALL = ModelConfig(input_hw=(64, 96), k=16)
ROOT = Path(__file__).resolve().parents[1]


def stats(path: Path) -> tuple[int, torch.Tensor, torch.Tensor]:
    """A Gaussian scorer's running statistics, as committed in its store."""
    state = read_state(open_store(path))
    assert state is not None
    return int(state.arrays["count"]), torch.from_numpy(state.arrays["mean"]), torch.from_numpy(state.arrays["m2"])


def assert_same_stats(a: Path, b: Path, *, exact: bool = False) -> None:
    """The same statistics: float64 updates to 1e-9, float32 ones to their bound."""
    n_a, mean_a, m2_a = stats(a)
    n_b, mean_b, m2_b = stats(b)
    assert n_a == n_b
    assert_statistics_close(mean_b.numpy(), mean_a.numpy(), exact=exact)
    assert_statistics_close(m2_b.numpy(), m2_a.numpy(), exact=exact)


def test_default_input_size_comes_from_the_first_source_with_a_readable_frame(tmp_path: Path, frame_folder: Path) -> None:
    import shutil

    from streamad.engine.fitting import _first_frame_hw
    from streamad.io.sources import resolve_sources

    root = tmp_path / "clips"
    (root / "a").mkdir(parents=True)
    (root / "a" / "0.png").write_bytes(b"not an image")
    shutil.copytree(frame_folder, root / "b")
    assert _first_frame_hw(resolve_sources([str(root)])) == (96, 128)


class TestFitScore:
    def test_fit_reads_each_frame_once_and_normalises_as_a_second_pass_would(self, tmp_path: Path, frame_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The held-out frames are set aside as the fit decodes them: every frame is read once
        (the input size is given here: no frame is read for it), and the normalisation equals one measured by
        reading the held-out frames again, as fits did before."""
        import streamad.io.sources as sources_module
        from streamad.engine.assembly import Reading
        from streamad.engine.normalising import normalise_on
        from streamad.io.sources import resolve_sources
        from streamad.stores.model_store import load

        reads: list[str] = []
        real = sources_module.read_image
        monkeypatch.setattr(sources_module, "read_image", lambda path: reads.append(path.name) or real(path))
        options = FitOptions(holdout_every=4, batch_size=4)
        summary = fit([str(frame_folder)], tmp_path / "m.zarr", ModelConfig(input_hw=(64, 96), k=16, sigma=0), options=options)
        assert summary.frames_added == 23 and summary.calibrated_on == 7 and summary.frames_read == 30
        assert sorted(reads) == sorted(f"{t}.png" for t in range(30))
        model = load(open_store(tmp_path / "m.zarr"))
        stored = model.normalisation
        assert stored is not None
        sampled = options.holdout.sampler(7, options.calibration_frames)
        again = normalise_on(model, resolve_sources([str(frame_folder)]), Reading(keep=sampled), batch_size=4, measured=sampled)
        for name in ("position_mean", "normal_scores"):  # stored as float32
            np.testing.assert_array_equal(getattr(again, name).astype(np.float32), getattr(stored, name), err_msg=name)

    def test_end_to_end(self, tmp_path: Path, tiny_video: Path, device: str) -> None:
        summary = fit([str(tiny_video)], tmp_path / "m.zarr", SMALL, options=FitOptions(device=device, holdout_every=4))
        assert summary.frames_added == 30 and summary.calibrated_on == 10  # every 4th frame held out
        anomalous = tmp_path / "test.mp4"
        with VideoWriter(anomalous, fps=10) as writer:
            for t in range(20):
                writer.write(scene(t, anomaly=10 <= t < 15))
        result = score(
            [str(anomalous)], tmp_path / "m.zarr", tmp_path / "out", options=ScoreOptions(device=device), overlay=tmp_path / "o.mp4", plot=tmp_path / "t.png"
        )
        assert result.frames == {"test": 20}
        rows = list(csv.DictReader(open(result.csv)))
        assert list(rows[0]) == ["source", "index", "pts_s", "score"]
        assert [int(r["index"]) for r in rows] == list(range(20))
        scores = np.array([float(r["score"]) for r in rows])
        assert scores[10:15].min() > scores[:10].max()  # the red square stands out
        store, attrs = open_scores(result.store)
        back = read_source(store, "test", with_maps=True)
        assert back.maps is not None and len(back.maps) == 20
        maps = back.maps[:]
        assert maps.shape == (20, 64, 96) and maps.dtype == np.float16
        np.testing.assert_allclose(back.score, scores, rtol=1e-5)
        assert attrs["sources"] == {"test": 20}
        # the anomaly map peaks on the square (top-left quarter of the frame)
        peak = np.unravel_index(np.argmax(maps[12].astype(np.float32)), maps[12].shape)
        assert peak[0] < 40 and peak[1] < 55
        assert Path(result.overlays[0]).stat().st_size > 0 and Path(result.plot).stat().st_size > 0

    @pytest.mark.parametrize("exact", [False, True], ids=["float32", "float64"])
    def test_resume_equals_one_shot(self, tmp_path: Path, tiny_video: Path, frame_folder: Path, exact: bool) -> None:
        one, options = tmp_path / "one.zarr", FitOptions(float64_stats=exact)
        fit([str(tiny_video), str(frame_folder)], one, SMALL, options=options)
        part = tmp_path / "part.zarr"
        fit([str(tiny_video)], part, SMALL, options=replace(options, stop=17))
        fit([str(tiny_video), str(frame_folder)], part, None, resume=True, options=options)
        assert_same_stats(one, part, exact=exact)
        info = open_store(part).attrs()
        assert {sid: v["next_index"] for sid, v in info["sources"].items()} == {"tiny": 39, "clip": 29}
        assert info["sources"]["tiny"]["start"] == 0 and info["sources"]["tiny"]["source"] == str(tiny_video.resolve())

    def test_merge_equals_one_shot(self, tmp_path: Path, tiny_video: Path, frame_folder: Path) -> None:
        fit([str(tiny_video), str(frame_folder)], tmp_path / "one.zarr", SMALL)
        fit([str(tiny_video)], tmp_path / "a.zarr", SMALL)
        fit([str(frame_folder)], tmp_path / "b.zarr", SMALL)
        summary = merge([tmp_path / "b.zarr", tmp_path / "a.zarr"], tmp_path / "c.zarr", calibrate_on=[str(frame_folder)])
        assert summary.calibrated_on == 30
        assert_same_stats(tmp_path / "one.zarr", tmp_path / "c.zarr")
        n, mean, m2 = chan_merge(*stats(tmp_path / "b.zarr"), *stats(tmp_path / "a.zarr"))  # exactly what each part accumulated
        merged = stats(tmp_path / "c.zarr")
        assert merged[0] == n
        torch.testing.assert_close(merged[1], mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(merged[2], m2, rtol=1e-12, atol=1e-12)

    def test_resume_refuses_other_model(self, tmp_path: Path, tiny_video: Path) -> None:
        from streamad.errors import StoreError

        fit([str(tiny_video)], tmp_path / "m.zarr", SMALL)
        with pytest.raises(StoreError, match="method='soe'"):
            fit([str(tiny_video)], tmp_path / "m.zarr", ModelConfig(method="soe", input_hw=(64, 96), k=16), resume=True)
        with pytest.raises(StoreError, match="--resume .* --overwrite"):
            fit([str(tiny_video)], tmp_path / "m.zarr", SMALL)


def test_sigint_during_fit_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    clip = tmp_path / "long.mp4"
    with VideoWriter(clip, fps=25) as writer:
        for t in range(400):
            writer.write(scene(t, height=192, width=256))
    args = ["fit", str(clip), "--method", "padim", "--input-size", "128x160", "-k", "16", "--checkpoint-every", "16", "-q"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamad", *args, "-m", str(tmp_path / "cut.zarr")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    def committed() -> int:  # frames the first checkpoint holds (its store appears at that commit)
        try:
            return int(json.loads((tmp_path / "cut.zarr" / "zarr.json").read_text())["attributes"].get("frames_seen", 0))
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not committed():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # after the first checkpoint of 16: most of the 360 fitted frames are still to come
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # checkpointed, and the shell told it was interrupted
    assert "interrupted" in out, out
    seen = open_store(tmp_path / "cut.zarr").attrs()["frames_seen"]
    assert 0 < seen < 360, "the interrupt should land mid-fit"
    runner = CliRunner()
    resumed = runner.invoke(main, ["fit", str(clip), "-m", str(tmp_path / "cut.zarr"), "--resume", "-q"])
    assert resumed.exit_code == 0, resumed.output
    full = runner.invoke(main, [*args, "-m", str(tmp_path / "full.zarr")])
    assert full.exit_code == 0, full.output
    assert_same_stats(tmp_path / "full.zarr", tmp_path / "cut.zarr")


class TestCli:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["fit", "nope/missing.mp4"], "no such path"),
            (["score", "{video}", "-m", "{tmp}/none.zarr"], "no such path"),
            (["score", "{video}", "-m", "{tmp}"], "without zarr.json"),
            (["fit", "{tmp}/notvideo.mp4"], "expected a video"),
            (["fit", "{tmp}/empty"], "got none"),
            (["fit", "{video}", "--backbone", "resnet18"], "--weights FILE"),
            (["fit", "{video}", "--input-size", "100x10"], "multiples of 16"),
            (["info", "{tmp}/plain.zarr"], "without streamad metadata"),
        ],
    )
    def test_bad_input_one_line_error(self, tmp_path: Path, tiny_video: Path, args: list[str], message: str) -> None:
        (tmp_path / "notvideo.mp4").write_text("hello")
        (tmp_path / "empty").mkdir()
        from streamad.stores.array_store import ZarrStore

        with ZarrStore(tmp_path / "plain.zarr", mode="w") as plain:
            plain.set_attrs({"x": 1})
        args = [a.format(video=tiny_video, tmp=tmp_path) for a in args]
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0
        assert message in result.output, result.output
        assert "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output

    def test_fit_score_info(self, tmp_path: Path, tiny_video: Path) -> None:
        runner = CliRunner()
        model = str(tmp_path / "m.zarr")
        res = runner.invoke(main, ["fit", str(tiny_video), "-m", model, "--input-size", "64x96", "-k", "8", "--method", "soe", "-q"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(main, ["info", model])
        assert "soe" in res.output and "weights_sha256" in res.output
        res = runner.invoke(
            main, ["score", str(tiny_video), "-m", model, "-o", str(tmp_path / "out"), "--window", "3", "--plot", str(tmp_path / "t.png"), "-q"]
        )
        assert res.exit_code == 0, res.output
        assert "scored 40 frames" in res.output and (tmp_path / "t.png").exists()


def test_demo_timeline_tells_the_truth(tmp_path: Path) -> None:
    """The first picture a new user sees: normal frames below the drawn threshold, the cart's
    frames above it while it is wholly in view (it takes 5 frames to drive in and out)."""
    import csv

    from streamad.pipelines.demo import demo

    summary = demo(tmp_path / "demo")
    threshold = summary.score.threshold
    assert threshold is not None and summary.anomaly_frames is not None
    first, end = summary.anomaly_frames
    rows = [(int(r["index"]), float(r["score"])) for r in csv.DictReader(open(summary.score.csv))]
    normal = [s for i, s in rows if not first <= i < end]
    cart = [s for i, s in rows if first + 5 <= i < end - 5]
    assert max(normal) < threshold < min(cart), (max(normal), threshold, min(cart))
