"""Faults and bad input on purpose: one test (or more) per item of the reliability issue.

1 two writers, 2 damaged videos, 3 errors streamad does not raise itself, 4 credentials,
5 --overwrite, 6 outputs over inputs, 7 merge inputs, 8 exit codes, 9 stop and crash paths,
10 small ones. Subprocesses are used where only a real process shows the behaviour (a kill,
a lock held by another pid, what reaches stderr at exit).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from streamad.config import ModelConfig
from streamad.engine.assembly import Reading
from streamad.engine.fitting import FitOptions
from streamad.engine.progress import NoProgress
from streamad.engine.runner import DropLog, Runner
from streamad.engine.scoring import ScoreOptions
from streamad.errors import ConfigError, StoreError, StoreLockedError
from streamad.frames import Frame
from streamad.io.cameras import Camera, cameras_from
from streamad.io.decode import VideoWriter, decode_video
from streamad.io.urls import redact
from streamad.pipelines.fit import fit
from streamad.pipelines.merge import merge
from streamad.pipelines.score import score
from streamad.pipelines.watch import WatchOptions, watch
from streamad.sinks.stats import StreamStats
from streamad.stores.array_store import ZarrStore
from streamad.stores.fit_progress import read_progress
from streamad.stores.locking import WriterLock, lock_path, readers
from streamad.stores.model_store import load, open_store
from streamad.stores.score_store import open_scores, read_source
from tests.conftest import scene

SMALL = ModelConfig(input_hw=(64, 96), k=8)
CLI = [sys.executable, "-m", "streamad"]


def clip(path: Path, frames: int, *, fps: int = 10) -> Path:
    with VideoWriter(path, fps=fps) as writer:
        for t in range(frames):
            writer.write(scene(t))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with clip.mp4 (40 frames) and base.zarr fitted on it."""
    folder = tmp_path_factory.mktemp("faults")
    fit([str(clip(folder / "clip.mp4", 40))], folder / "base.zarr", SMALL, options=FitOptions(holdout_every=4))
    return folder


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(__import__("streamad.cli", fromlist=["main"]).main, list(args))
    return result.exit_code, result.stdout, result.stderr


# 1. one writer per store ---------------------------------------------------------------


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with ZarrStore(tmp_path / "s.zarr", mode="w") as first:
        first.set_attrs({"x": 1})
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            ZarrStore(tmp_path / "s.zarr", mode="a")
    ZarrStore(tmp_path / "s.zarr", mode="a").close()  # released


def test_lock_left_by_a_killed_process_is_recovered(tmp_path: Path) -> None:
    code = f"from streamad.stores.locking import WriterLock; import os, signal; lock = WriterLock({str(tmp_path / 's.zarr')!r}); "
    code += "os.kill(os.getpid(), signal.SIGKILL)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert lock_path(tmp_path / "s.zarr", "lock").read_text().startswith("pid ")  # left behind, but not held
    WriterLock(tmp_path / "s.zarr").release()


def test_two_fit_resume_processes_one_wins_the_other_names_the_lock(tmp_path: Path) -> None:
    """Two rounds here (benchmarks/concurrent_fits.py runs ten): one finishes, the other
    exits 1 with one line naming the holder, and frames_seen adds up."""
    base = clip(tmp_path / "base.mp4", 20)
    long = clip(tmp_path / "long.mp4", 2000)
    store = tmp_path / "S.zarr"
    args = ["--method", "padim", "--input-size", "64x96", "-k", "8", "-q", "--checkpoint-every", "32", "-m", str(store)]
    assert run_cli("fit", str(base), *args).returncode == 0
    for round_ in range(2):
        names = [tmp_path / f"a{round_}.mp4", tmp_path / f"b{round_}.mp4"]
        for name in names:
            name.symlink_to(long)
        before = read_progress(open_store(store)).frames_seen
        procs = [subprocess.Popen([*CLI, "fit", str(n), *args, "--resume"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in names]
        outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in outs)
        assert codes == [0, 1], outs
        winner = next(out for code, out, _ in outs if code == 0)
        loser = next(err for code, _, err in outs if code == 1)
        assert len(loser.strip().splitlines()) == 1 and "pid " in loser and "Traceback" not in loser
        added = int(winner.split(": ")[1].split(" new frames")[0])
        model = load(open_store(store), where="S")  # loads: the store is whole
        assert model.frames_seen == before + added == read_progress(open_store(store)).frames_seen


def test_a_reader_keeps_its_generation_while_a_writer_collects(data: Path, tmp_path: Path) -> None:
    shutil.copytree(data / "base.zarr", tmp_path / "m.zarr")
    path = tmp_path / "m.zarr"
    old = set(open_store(path).arrays("scorer"))
    generation = open_store(path).attrs()["generation"]
    fitted = threading.Event()
    more = clip(tmp_path / "more.mp4", 40)

    def refit() -> None:
        fit([str(more)], path, options=FitOptions(holdout_every=4), resume=True)
        fitted.set()

    with readers(path):  # a reader loading the current generation
        writer = threading.Thread(target=refit)
        writer.start()
        while open_store(path).attrs()["generation"] == generation and writer.is_alive():
            fitted.wait(0.05)
        assert open_store(path).attrs()["generation"] > generation  # committed a new generation ...
        assert set(ZarrStore(path, mode="r").arrays("scorer")) >= old  # ... but deleted nothing we read
    writer.join()
    assert fitted.is_set() and old - set(open_store(path).arrays("scorer"))  # what the new generation replaced is collected once the reader left


# 2. damaged videos: frame identity from presentation time -------------------------------


def encode(path: Path, frames: int, *, container: str | None = None, options: dict[str, str] | None = None) -> Path:
    """An H.264 clip with a keyframe every 10 frames, at 25 fps."""
    with av.open(str(path), "w", format=container, options=options or {}) as out:
        stream = out.add_stream("libx264", rate=Fraction(25), options={"g": "10", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for t in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(scene(t), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def damaged(kind: str, tmp_path: Path) -> tuple[Path, Path]:
    """(intact, damaged) pairs: truncated at half, bytes overwritten at three places, zeros in a .ts."""
    rng = np.random.default_rng(1)
    if kind == "truncated":
        intact = encode(tmp_path / "fast.mp4", 60, options={"movflags": "faststart"})  # index first: a cut file still opens
        data = bytearray(intact.read_bytes()[: intact.stat().st_size // 2])
    elif kind == "overwritten":
        intact = encode(tmp_path / "plain.mp4", 60)
        data = bytearray(intact.read_bytes())
        for at in (0.3, 0.5, 0.7):
            start = int(len(data) * at)
            data[start : start + 1000] = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    else:
        intact = encode(tmp_path / "clip.ts", 60, container="mpegts")
        data = bytearray(intact.read_bytes())
        start, size = len(data) // 2, len(data) // 10
        data[start : start + size] = bytes(size)
    broken = tmp_path / f"{kind}{intact.suffix}"
    broken.write_bytes(bytes(data))
    return intact, broken


@pytest.mark.parametrize("kind", ["truncated", "overwritten", "zeros"])
def test_damaged_video_scored_plus_dropped_is_the_intact_count_with_true_indices(kind: str, data: Path, tmp_path: Path) -> None:
    intact, broken = damaged(kind, tmp_path)
    truth = {f.index: f.pts_s for f in decode_video(intact, source_id="x")}
    summary = score([str(broken)], data / "base.zarr", tmp_path / "out", options=ScoreOptions(write_maps=False))
    scored, dropped = sum(summary.frames.values()), sum(sum(r.values()) for r in summary.dropped.values())
    assert dropped > 0 and scored + dropped == len(truth) == 60
    store, _ = open_scores(summary.store)
    result = read_source(store, broken.stem)
    assert all(truth[int(i)] == pytest.approx(p) for i, p in zip(result.index, result.pts_s, strict=True))


def test_truncated_file_warns_with_the_last_frame_and_the_expected_count(data: Path, tmp_path: Path) -> None:
    _, broken = damaged("truncated", tmp_path)
    code, _, err = cli("score", str(broken), "-m", str(data / "base.zarr"), "-o", str(tmp_path / "o"), "-q", "--every", "5")
    assert code == 0 and "truncated file (ends after frame" in err and "of 60" in err


def test_every_and_start_select_by_true_index_after_a_loss(tmp_path: Path) -> None:
    _, broken = damaged("zeros", tmp_path)
    drops: list[int] = []
    frames = list(decode_video(broken, source_id="x", every=5, start_index=10, on_drop=lambda s, i, r: drops.append(i)))
    assert all(f.index % 5 == 0 and f.index >= 10 for f in frames) and all(i % 5 == 0 and i >= 10 for i in drops)
    assert sorted([f.index for f in frames] + drops) == list(range(10, 60, 5))


# 3. errors streamad does not raise itself -> one line, exit 1 ---------------------------


def test_disk_full_is_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", str(tmp_path / "o" / "scores.zarr"))

    monkeypatch.setattr(ZarrStore, "append", full)
    code, _, err = cli("score", str(data / "clip.mp4"), "-m", str(data / "base.zarr"), "-o", str(tmp_path / "o"), "-q")
    assert code == 1 and err.strip().splitlines() == [
        f"Error: could not use {tmp_path / 'o' / 'scores.zarr'}: No space left on device; hint: free space on that disk or write elsewhere"
    ]


def test_allocation_failure_is_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamad.model import Model

    def oom(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(Model, "update", oom)
    code, _, err = cli("fit", str(data / "clip.mp4"), "-m", str(tmp_path / "m.zarr"), "--input-size", "64x96", "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "allocation failure" in err


def test_debug_shows_the_traceback(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamad.model import Model

    monkeypatch.setattr(Model, "update", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    result = CliRunner().invoke(
        __import__("streamad.cli", fromlist=["main"]).main, ["--debug", "fit", str(data / "clip.mp4"), "-m", str(tmp_path / "m.zarr"), "-q"]
    )
    assert isinstance(result.exception, MemoryError)


@pytest.mark.parametrize("damage", ["empty", "half"])
def test_damaged_chunk_in_a_store_is_one_line_naming_it(damage: str, data: Path, tmp_path: Path) -> None:
    shutil.copytree(data / "base.zarr", tmp_path / "m.zarr")
    chunk = max((p for p in (tmp_path / "m.zarr" / "scorer").rglob("c/*") if p.is_file()), key=lambda p: p.stat().st_size)
    chunk.write_bytes(b"" if damage == "empty" else chunk.read_bytes()[: chunk.stat().st_size // 2])
    result = run_cli("score", str(data / "clip.mp4"), "-m", str(tmp_path / "m.zarr"), "-o", str(tmp_path / "o"), "-q")
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Task was destroyed" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "m.zarr/scorer" in result.stderr, result.stderr


def test_malformed_attribute_is_one_line_naming_the_store(data: Path, tmp_path: Path) -> None:
    shutil.copytree(data / "base.zarr", tmp_path / "m.zarr")
    meta = json.loads((tmp_path / "m.zarr" / "zarr.json").read_text())
    meta["attributes"]["scorer"]["seed"] = "x"
    (tmp_path / "m.zarr" / "zarr.json").write_text(json.dumps(meta))
    code, _, err = cli("score", str(data / "clip.mp4"), "-m", str(tmp_path / "m.zarr"), "-o", str(tmp_path / "o"), "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "m.zarr" in err and "seed" in err


def test_default_input_size_is_bounded_for_a_strip_image(tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "strips"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((1, 2000, 3), 40 * i, np.uint8))
    fit([str(folder)], tmp_path / "m.zarr", ModelConfig(k=8), options=FitOptions(holdout_every=3))
    assert open_store(tmp_path / "m.zarr").attrs()["input_hw"] == [32, 1024]


# 4. credentials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://user:se@cret@host/x", "rtsp://user:***@host/x"),
        ("rtsp://admin:p%40ss/w@10.0.0.5:554/s", "rtsp://admin:***@10.0.0.5:554/s"),
        ("http://cam/v?user=admin&password=secret&ch=1", "http://cam/v?user=admin&password=***&ch=1"),
        ("https://cam/v?token=abc;api_key=def", "https://cam/v?token=***;api_key=***"),
        ("/dev/video0", "/dev/video0"),
    ],
)
def test_redaction_by_parsing(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_no_credential_reaches_logs_or_the_score_store(data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = "rtsp://user:se@cret@127.0.0.1:9/x?password=hunter2"
    options = WatchOptions(live=__import__("streamad.io.live", fromlist=["LiveOptions"]).LiveOptions(open_timeout_s=1, max_retries=0, backoff_s=0.01))
    summary = watch([Camera("door", url, str(data / "base.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None)
    assert summary.gave_up == ["door"]
    stored = json.dumps(open_scores(tmp_path / "w" / "scores.zarr")[1])
    assert "cret" not in stored and "hunter2" not in stored and "***" in stored
    assert "cret" not in caplog.text and "hunter2" not in caplog.text


# 5. --overwrite builds beside and swaps at the first commit ------------------------------


def test_overwrite_killed_before_its_first_commit_keeps_the_old_model(data: Path, tmp_path: Path) -> None:
    shutil.copytree(data / "base.zarr", tmp_path / "m.zarr")
    before = read_progress(open_store(tmp_path / "m.zarr")).frames_seen
    long = clip(tmp_path / "long.mp4", 3000)
    args = ["fit", str(long), "-m", str(tmp_path / "m.zarr"), "--overwrite", "--input-size", "64x96", "--checkpoint-every", "100000", "-q"]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    building = lock_path(tmp_path / "m.zarr", "new") / "zarr.json"
    while not building.exists() and proc.poll() is None:
        threading.Event().wait(0.05)
    proc.kill()
    proc.wait()
    assert building.exists()  # killed while the new store was being built
    assert read_progress(open_store(tmp_path / "m.zarr")).frames_seen == before
    load(open_store(tmp_path / "m.zarr"))
    fit([str(data / "clip.mp4")], tmp_path / "m.zarr", SMALL, overwrite=True)  # the next writer clears the leftover
    assert not building.parent.exists() and read_progress(open_store(tmp_path / "m.zarr")).frames_seen == 36


# 6. outputs never overwrite inputs ------------------------------------------------------


def test_overlay_onto_the_source_is_refused(data: Path, tmp_path: Path) -> None:
    video = shutil.copy(data / "clip.mp4", tmp_path / "clip.mp4")
    before = Path(video).read_bytes()
    code, _, err = cli("score", str(video), "-m", str(data / "base.zarr"), "-o", str(tmp_path / "o"), "--overlay", str(video), "-q")
    assert code == 1 and "--overlay" in err and Path(video).read_bytes() == before


def test_scores_onto_the_model_store_are_refused(data: Path, tmp_path: Path) -> None:
    shutil.copytree(data / "base.zarr", tmp_path / "X" / "scores.zarr")
    code, _, err = cli("score", str(data / "clip.mp4"), "-m", str(tmp_path / "X" / "scores.zarr"), "-o", str(tmp_path / "X"), "-q")
    assert code == 1 and "score store" in err
    load(open_store(tmp_path / "X" / "scores.zarr"))


def test_a_score_store_replaces_only_a_score_store(data: Path, tmp_path: Path) -> None:
    shutil.copytree(data / "base.zarr", tmp_path / "o" / "scores.zarr")
    with pytest.raises(StoreError, match="kind 'streamad-model'"):
        score([str(data / "clip.mp4")], data / "base.zarr", tmp_path / "o")
    score([str(data / "clip.mp4")], data / "base.zarr", tmp_path / "p")
    score([str(data / "clip.mp4")], data / "base.zarr", tmp_path / "p")  # a score store over a score store


# 7. merge ---------------------------------------------------------------------------------


def test_merge_refuses_the_same_fit_twice(data: Path, tmp_path: Path) -> None:
    base = data / "base.zarr"
    shutil.copytree(base, tmp_path / "copy.zarr")
    for inputs in ([base, base], [base, base.parent / "." / base.name], [base, tmp_path / "copy.zarr"]):
        with pytest.raises(ConfigError, match="same fit"):
            merge(inputs, tmp_path / "out.zarr")


def test_merge_refuses_other_eps_with_a_merge_hint(data: Path, tmp_path: Path) -> None:
    fit([str(data / "clip.mp4")], tmp_path / "e.zarr", ModelConfig(input_hw=(64, 96), k=8, eps=0.5))
    with pytest.raises(StoreError, match=r"eps=0.01.*got eps=0.5.*hint: merge only stores fitted with the same settings"):
        merge([data / "base.zarr", tmp_path / "e.zarr"], tmp_path / "out.zarr")


# 8. exit codes ----------------------------------------------------------------------------


def test_watch_fails_when_every_camera_gave_up(data: Path, tmp_path: Path) -> None:
    args = ["watch", "a=rtsp://127.0.0.1:9/x", "b=http://127.0.0.1:9/y", "-m", str(data / "base.zarr"), "-o", str(tmp_path / "w")]
    code, _, err = cli(*args, "--max-retries", "1", "--open-timeout", "1")
    assert code == 1 and "all 2 giving up" in err


def test_score_fails_when_nothing_was_scored_and_counts_unreadable_images(data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(b"not a png")
    code, _, err = cli("score", str(folder), "-m", str(data / "base.zarr"), "-o", str(tmp_path / "o"), "-q")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 2
    assert "5 frame(s) dropped: unreadable image (e.g. 0.png, 1.png, 2.png, ...)" in lines[0] and "got none (5 dropped)" in lines[1]


# 9. stop and crash paths ------------------------------------------------------------------


def test_a_stop_does_not_start_the_next_source_nor_fail_it(data: Path) -> None:
    from streamad.io.sources import resolve_sources

    sources = resolve_sources([str(data / "clip.mp4"), str(data / "clip.mp4")])
    stop = [False]

    def frames() -> Iterator[Frame]:
        for frame in Reading().frames(sources, drops=DropLog(), should_stop=lambda: stop[0]):
            stop[0] = True
            yield frame

    assert len(list(frames())) == 1
    assert list(decode_video(data / "clip.mp4", source_id="c", should_stop=lambda: True)) == []  # stopped, not "no frames"


def test_sigint_on_a_fit_of_two_videos_checkpoints_and_exits_130(tmp_path: Path) -> None:
    """Item 8 of Reliability II: checkpointed, said, and exit 130, so `fit && score` stops."""
    videos = [clip(tmp_path / f"{n}.mp4", 600) for n in "ab"]
    store = tmp_path / "m.zarr"
    args = [*CLI, "fit", *map(str, videos), "-m", str(store), "--input-size", "64x96", "-k", "8", "--checkpoint-every", "16"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (store / "zarr.json").exists() and proc.poll() is None:  # the first commit: fitting is under way
        threading.Event().wait(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in out and "--resume" in out and "Error" not in err, err
    progress = read_progress(open_store(store))
    assert progress.frames_seen > 0 and sum(progress.next_index.values()) >= progress.frames_seen
    code, _, err = cli("score", str(videos[0]), "-m", str(store), "-o", str(tmp_path / "s"), "--stop", "5")
    assert code == 1 and "--resume" in err and "--raw" not in err, err


def test_drop_oldest_sources_stop_when_the_consumer_fails() -> None:
    produced = [0]

    def endless() -> Iterator[int]:
        while True:
            produced[0] += 1
            yield produced[0]

    runner = Runner()
    channels = runner.sources([endless, endless], maxsize=2, policy="drop-oldest")
    with pytest.raises(RuntimeError, match="consumer"):
        for _ in runner.consume(iter(runner.gather(channels, max_batch=1, max_wait_s=0.01))):
            raise RuntimeError("consumer failed")
    assert not any(t.is_alive() for t in runner._threads)  # joined, not left running
    after = produced[0]
    threading.Event().wait(0.1)
    assert produced[0] == after


def test_one_unnamed_model_cannot_be_learned_by_two_cameras(tmp_path: Path) -> None:
    cameras = cameras_from(["rtsp://h/1", "rtsp://h/2"], [str(tmp_path / "m.zarr")])
    with pytest.raises(ConfigError, match="a model store per camera"):
        watch(cameras, tmp_path / "w", options=WatchOptions(learn_for_s=5))


def test_a_crash_while_learning_leaves_no_store_and_a_restart_learns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamad.engine import online as learning

    video = clip(tmp_path / "cam.mp4", 120)
    original = learning.CameraModel._learn
    calls = [0]

    def crash(self: learning.CameraModel, batch: object) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("power cut")
        original(self, batch)

    monkeypatch.setattr(learning.CameraModel, "_learn", crash)
    options = WatchOptions(learn_for_s=9.0, learn_config=SMALL)
    with pytest.raises(RuntimeError, match="power cut"):
        watch([Camera("cam", str(video), str(tmp_path / "m.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None)
    assert not (tmp_path / "m.zarr").exists()
    monkeypatch.setattr(learning.CameraModel, "_learn", original)
    summary = watch([Camera("cam", str(video), str(tmp_path / "m.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None)
    assert summary.streams["cam"].learned >= 90 and load(open_store(tmp_path / "m.zarr")).threshold is not None


def test_learning_is_timed_by_the_stream_not_a_clock_that_runs_ahead(tmp_path: Path) -> None:
    video = clip(tmp_path / "cam.mp4", 130)
    now = [0.0]

    def racing_clock() -> float:  # as if the machine were very slow: 10 s pass per look
        now[0] += 10.0
        return now[0]

    options = WatchOptions(learn_for_s=9.0, learn_config=SMALL, stats_every_s=1e9)
    summary = watch([Camera("cam", str(video), str(tmp_path / "m.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None, clock=racing_clock)
    assert 90 <= summary.streams["cam"].learned < 100


def test_an_error_while_watching_still_checkpoints_and_releases(data: Path, tmp_path: Path) -> None:
    shutil.copytree(data / "base.zarr", tmp_path / "m.zarr")
    before = read_progress(open_store(tmp_path / "m.zarr")).frames_seen
    video = clip(tmp_path / "cam.mp4", 60)
    seen = [0]

    def hook(refs: object) -> None:
        seen[0] += 1
        if seen[0] == 4:
            raise RuntimeError("sink failed")

    options = WatchOptions(adapt=True, threshold=1e9, checkpoint_every_s=1e9, max_batch=4)
    with pytest.raises(RuntimeError, match="sink failed"):
        watch([Camera("cam", str(video), str(tmp_path / "m.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None, scorer_hook=hook)
    assert read_progress(open_store(tmp_path / "m.zarr")).frames_seen > before  # adapted frames were checkpointed
    ZarrStore(tmp_path / "m.zarr", mode="a").close()  # and the lock released
    assert len((tmp_path / "w" / "scores.csv").read_text().splitlines()) > 1  # the results before the error were written out


def test_stream_counters_are_exact_under_threads() -> None:
    stats = StreamStats()

    def count() -> None:
        for _ in range(20000):
            stats.count("received")
            stats.count("dropped", reason="x")

    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.received == stats.dropped["x"] == 80000


def test_a_score_store_left_by_a_crash_reads_as_its_flushed_rows(data: Path, tmp_path: Path) -> None:
    from streamad.frames import FrameRef, ScoreMap
    from streamad.sinks.score_writer import ScoreStoreSink

    store = ZarrStore(tmp_path / "scores.zarr", mode="w")
    sink = ScoreStoreSink(store, attrs={}, flush_every=8)
    for i in range(20):
        sink.write(ScoreMap(FrameRef("cam", i, i / 10), float(i), float(i), np.zeros((4, 4), np.float32)))
    store.append("cam/index", np.arange(100, 104))  # a crash between the appends of a flush
    scores, _ = open_scores(tmp_path / "scores.zarr")
    result = read_source(scores, "cam", with_maps=True)
    assert list(result.index) == list(range(16)) and len(result.score) == len(result.maps or []) == 16


# 10 and all bad input: non-zero, at most two lines, no traceback ------------------------


BAD = [
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--threads", "0"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--threads", "-1"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--calibration-frames", "0"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--calibration-frames", "-5"],
    ["fit", "{clip}", "-m", "{tmp}/r.zarr", "--resume", "--every", "2"],
    ["fit", "{clip}", "-m", "{tmp}/r.zarr", "--resume", "--holdout-every", "5"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--input-size", "10000x10000"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--input-size", "abc"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--input-size", "100x100"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--every", "0"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--start", "5", "--stop", "2"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--method", "nope"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "-k", "0"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--eps", "-1"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--workers", "0"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--batch-size", "0"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--backbone", "resnet18", "--weights", "{tmp}/bad.pt"],
    ["fit", "{clip}", "-m", "{tmp}/a.zarr", "--backbone", "resnet18"],
    ["fit", "{tmp}/missing.mp4", "-m", "{tmp}/a.zarr"],
    ["fit", "{tmp}/notvideo.mp4", "-m", "{tmp}/a.zarr"],
    ["fit", "{tmp}/empty", "-m", "{tmp}/a.zarr"],
    ["fit", "{clip}", "-m", "{base}"],
    ["fit", "{clip}", "-m", "{tmp}/missing.zarr", "--resume"],
    ["fit", "{clip}", "-m", "{tmp}/r.zarr", "--resume", "-k", "4"],
    ["score", "{clip}", "-m", "{tmp}/missing.zarr"],
    ["score", "{clip}", "-m", "{tmp}/plain"],
    ["score", "{clip}", "-m", "{tmp}/foo.zarr", "-o", "{tmp}/o"],
    ["score", "{clip}", "-m", "{tmp}/hw.zarr", "-o", "{tmp}/o"],
    ["score", "{clip}", "-m", "{tmp}/k.zarr", "-o", "{tmp}/o"],
    ["score", "{clip}", "-m", "{base}", "-o", "{tmp}/o", "--topk", "2"],
    ["score", "{clip}", "-m", "{base}", "-o", "{tmp}/o", "--window", "0"],
    ["score", "{clip}", "-m", "{base}", "-o", "{tmp}/o", "--overlay", "{clip}"],
    ["score", "{clip}", "-m", "{base}", "-o", "{tmp}/o", "--plot", "{clip}"],
    ["merge", "{base}", "{base}", "-o", "{tmp}/m.zarr"],
    ["merge", "{base}", "-o", "{tmp}/m.zarr"],
    ["info", "{tmp}/missing.zarr"],
    ["watch", "{clip}", "-m", "{tmp}/missing.zarr", "-o", "{tmp}/w"],
    ["watch", "rtsp://a:b@h/1", "rtsp://h/2", "-m", "{tmp}/n.zarr", "--learn-for", "5s", "-o", "{tmp}/w"],
    ["watch", "{clip}", "-m", "{base}", "--learn-for", "-3s", "-o", "{tmp}/w"],
    ["calibrate", "-m", "{tmp}/missing.zarr", "--fixed", "1"],
]


@pytest.fixture(scope="module")
def bad_inputs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "notvideo.mp4").write_text("hello")
    (tmp / "empty").mkdir()
    (tmp / "plain").mkdir()
    (tmp / "plain" / "x.txt").write_text("x")
    (tmp / "bad.pt").write_bytes(b"garbage")
    shutil.copytree(data / "base.zarr", tmp / "r.zarr")
    for name, edit in (("foo", {"backbone": "foo"}), ("hw", {"input_hw": [64, "x"]}), ("k", {"scorer": {"k": 4, "seed": 0, "eps": 0.01}})):
        shutil.copytree(data / "base.zarr", tmp / f"{name}.zarr")
        meta = json.loads((tmp / f"{name}.zarr" / "zarr.json").read_text())
        meta["attributes"].update(edit)
        (tmp / f"{name}.zarr" / "zarr.json").write_text(json.dumps(meta))
    return {"clip": str(data / "clip.mp4"), "tmp": str(tmp), "base": str(data / "base.zarr")}


@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a[:1] + a[2:]).replace("{", "").replace("}", ""))
def test_bad_input_is_a_short_error_without_traceback(args: list[str], bad_inputs: dict[str, str]) -> None:
    code, _, err = cli(*(a.format(**bad_inputs) for a in args))
    assert code != 0
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "secret" not in err and ":b@" not in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_thresholds_and_floats_are_refused_in_one_line(value: str, tmp_path: Path) -> None:
    """A NaN threshold would decide every frame normal without a word (issue 24, item 2)."""
    from click.testing import CliRunner

    from streamad.calibration import Threshold, decision_threshold
    from streamad.cli import main
    from streamad.errors import ConfigError

    score = ["score", "x.mp4", "-m", "m.zarr"]
    calls = (["calibrate", "-m", "m.zarr", "--fixed", value], [*score, "--threshold", value], [*score, "--topk", value], [*score, "--smooth", value])
    for args in calls:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and ("expected a finite number" in result.output or "not in the range" in result.output), result.output
    with pytest.raises(ConfigError, match="finite"):
        Threshold(float(value), "fixed", {}, {})
    with pytest.raises(ConfigError, match="finite"):
        decision_threshold(None, float(value), {})


# Reliability II (issue 24) --------------------------------------------------------------


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _InterruptAtStart:
    """A progress hook that presses Ctrl-C as the scoring starts (before any frame)."""

    def start(self, label: str, total: int | None) -> None:
        signal.raise_signal(signal.SIGINT)

    def advance(self, n: int) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


class _FailAfter:
    """A sink that fails at its fifth frame (a fault half-way through a score)."""

    def __init__(self) -> None:
        self.seen = 0

    def write(self, result: object) -> None:
        self.seen += 1
        if self.seen == 5:
            raise OSError("disk gone")

    def close(self) -> None:
        pass


def test_a_failed_score_leaves_the_previous_outputs_byte_identical(data: Path, tmp_path: Path) -> None:
    """Item 1: every failure (a refused option, a bad model, an overlay that cannot be written,
    a fault half-way, Ctrl-C before the first frame) leaves -o as it was; a success replaces
    it whole."""
    out, model = tmp_path / "keep", str(data / "base.zarr")
    plot = out / "timeline.png"
    code, _, err = cli("score", str(data / "clip.mp4"), "-m", model, "-o", str(out), "--overlay", str(out / "o.mp4"), "--plot", str(plot), "-q")
    assert code == 0, err
    before = contents(out)
    assert {"scores.csv", "o.mp4", "timeline.png", "scores.zarr/zarr.json"} <= set(before)
    bad_model = tmp_path / "hw.zarr"
    shutil.copytree(data / "base.zarr", bad_model)
    meta = json.loads((bad_model / "zarr.json").read_text())
    meta["attributes"]["input_hw"] = [64, "x"]
    (bad_model / "zarr.json").write_text(json.dumps(meta))
    failures = {
        "refused option": ["--branch", "local"],
        "unwritable overlay": ["--overlay", str(out / "o.gif")],
        "overlay onto a folder": ["--overlay", str(tmp_path / "folder.mp4")],
    }
    (tmp_path / "folder.mp4").mkdir()
    for why, extra in failures.items():
        code, _, err = cli("score", str(data / "clip.mp4"), "-m", model, "-o", str(out), "--plot", str(plot), "-q", *extra)
        assert code != 0 and "Traceback" not in err and "report it" not in err, (why, err)
        assert contents(out) == before, why
    code, _, err = cli("score", str(data / "clip.mp4"), "-m", str(bad_model), "-o", str(out), "-q")
    assert code != 0 and contents(out) == before, err
    with pytest.raises(OSError, match="disk gone"):
        score([str(data / "clip.mp4")], model, out, sinks=[_FailAfter()], plot=plot, overlay=out / "o.mp4")
    assert contents(out) == before
    summary = score([str(data / "clip.mp4")], model, out, progress=_InterruptAtStart(), plot=plot)
    assert summary.interrupted and not summary.frames and contents(out) == before
    score([str(data / "clip.mp4")], model, out, options=ScoreOptions(start=10))
    after = contents(out)
    assert after["scores.csv"] != before["scores.csv"] and after["scores.csv"].count(b"\n") == 1 + 30
    assert not [name for name in after if ".new" in name]


_KILLED_FIT = """
import os, signal, sys
from pathlib import Path
import streamad
from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.engine.progress import NoProgress

store = Path(sys.argv[2])

class KillAfterFirstCommit(NoProgress):
    def advance(self, n):
        if (store / "zarr.json").exists():  # a checkpoint of the fitting pass is committed
            os.kill(os.getpid(), signal.SIGKILL)

options = FitOptions(holdout_every=6, epochs=2, train_batch_size=4, cache_frames=12, checkpoint_every=4, batch_size=2, accumulate_frames=2)
streamad.fit([sys.argv[1]], store, ModelConfig(method="gcad", input_hw=(64, 64)), options=options, progress=KillAfterFirstCommit())
"""


def test_kill_9_in_a_trained_fit_pass_keeps_its_epochs_and_resume_equals_the_whole_fit(tmp_path: Path) -> None:
    """Item 3: the epochs asked for are recorded with the first commit, so a resume after a
    kill -9 in the fitting pass trains as many as the uninterrupted fit, to the same weights."""
    import cv2

    from streamad.stores.model_store import read_state

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(60):
        cv2.imwrite(str(images / f"{i:03d}.png"), cv2.cvtColor(scene(i * 7, height=64, width=64), cv2.COLOR_RGB2BGR))
    part = tmp_path / "part.zarr"
    killed = subprocess.run([sys.executable, "-c", _KILLED_FIT, str(images), str(part)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    progress = read_progress(open_store(part))
    assert 0 < progress.frames_seen < 50 and open_store(part).attrs().get("epochs") == 2
    options = FitOptions(holdout_every=6, train_batch_size=4, cache_frames=12, checkpoint_every=4, batch_size=2, accumulate_frames=2)
    resumed = fit([str(images)], part, None, options=options, resume=True)
    whole = fit([str(images)], tmp_path / "whole.zarr", ModelConfig(method="gcad", input_hw=(64, 64)), options=replace_epochs(options, 2))
    assert resumed.epochs == whole.epochs == 2
    a, b = read_state(open_store(tmp_path / "whole.zarr")), read_state(open_store(part))
    assert a is not None and b is not None and set(a.arrays) == set(b.arrays)
    for name in a.arrays:
        np.testing.assert_array_equal(b.arrays[name], a.arrays[name], err_msg=name)
    code, _, err = cli("fit", str(images), "-m", str(part), "--resume", "--epochs", "3")
    assert code == 1 and "expected --epochs 2" in err, err


def replace_epochs(options: FitOptions, epochs: int) -> FitOptions:
    from dataclasses import replace

    return replace(options, epochs=epochs)


class _InterruptWhile(NoProgress):
    """Presses Ctrl-C (a real SIGINT) when the stage ``label`` starts."""

    def __init__(self, label: str) -> None:
        self.label = label

    def start(self, label: str, total: int | None) -> None:
        if label == self.label:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_while_normalising_is_graceful_exits_130_and_resume_finishes(data: Path, tmp_path: Path) -> None:
    """Item 8: Ctrl-C in the normalisation pass keeps the committed statistics, says
    --resume (no bare "Aborted!"), and a resume measures the normalisation."""
    store = tmp_path / "m.zarr"
    summary = fit([str(data / "clip.mp4")], store, SMALL, options=FitOptions(holdout_every=4), progress=_InterruptWhile("normalising"))
    assert summary.interrupted and summary.calibrated_on == 0
    assert open_store(store).attrs().get("unfinished") is True
    code, _, err = cli("score", str(data / "clip.mp4"), "-m", str(store), "-o", str(tmp_path / "s"))
    assert code == 1 and "--resume" in err, err
    resumed = fit([str(data / "clip.mp4")], store, None, options=FitOptions(holdout_every=4), resume=True)
    assert not resumed.interrupted and resumed.calibrated_on > 0 and open_store(store).attrs().get("unfinished") is False
    whole = load(open_store(data / "base.zarr"), where="base")
    again = load(open_store(store), where="again")
    assert again.normalisation is not None and whole.normalisation is not None
    np.testing.assert_array_equal(again.normalisation.normal_scores, whole.normalisation.normal_scores)


def test_ctrl_c_outside_a_checkpointed_stage_is_one_line_and_exit_130() -> None:
    """Item 8: not click's bare "Aborted!" (exit 1) but the shell's convention."""
    import click

    from streamad.cli_support import friendly_errors

    @click.command()
    @friendly_errors
    def job() -> None:
        raise KeyboardInterrupt

    result = CliRunner().invoke(job, [])
    assert result.exit_code == 130 and result.stderr.strip() == "Error: interrupted (Ctrl-C)", result.output


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels in a few hundred KB (1-bit grey zero
    rows, compressed as they are made: nothing of its decoded size is ever in memory)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


_PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(done.stdout); sys.stderr.write(done.stderr)
print("peak_rss_kb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(done.returncode)
"""


def test_a_decompression_bomb_is_dropped_by_its_header_and_the_others_are_scored(data: Path, tmp_path: Path) -> None:
    """Item 4: a 30000x30000 PNG among ordinary images is judged by its header, counted as
    dropped with its reason, and the job scores the rest in bounded memory."""
    import cv2

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        cv2.imwrite(str(images / f"{i:03d}.png"), cv2.cvtColor(scene(i * 7), cv2.COLOR_RGB2BGR))
    bomb = bomb_png(images / "002b.png", 30000, 30000)
    assert bomb.stat().st_size < 2_000_000
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *CLI, "score", str(images), "-m", str(data / "base.zarr"), "-o", str(tmp_path / "s"), "--raw"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr and "report it" not in done.stderr, done.stderr
    assert "scored 4 frames" in done.stdout and "1 dropped" in done.stdout, done.stdout
    assert "1 frame(s) dropped: image too large (e.g. 002b.png declares over 179 M pixels)" in done.stderr
    peak_kb = int(done.stdout.split("peak_rss_kb")[1])
    assert peak_kb < 2 * 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


def test_the_pixel_limit_is_configurable_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamad.io.sources import oversized, read_image

    small = bomb_png(tmp_path / "wide.png", 4000, 3000)  # 12 M pixels
    assert oversized(small) is None and read_image(small) is not None
    monkeypatch.setenv("STREAMAD_MAX_PIXELS", "1e6")
    assert oversized(small) == "image too large: wide.png declares 4000x3000 pixels, over the limit of 1 M ($STREAMAD_MAX_PIXELS)"
    assert read_image(small) is None
    monkeypatch.setenv("STREAMAD_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="STREAMAD_MAX_PIXELS"):
        oversized(small)


def test_truthy_strings_in_files_are_refused_naming_the_file_and_key(data: Path, tmp_path: Path) -> None:
    """Item 6: "0", "false" and "no" are not true; a number as a string is not a number."""
    import cv2

    from streamad.evaluation.ground_truth import GroundTruthError, load_ground_truth, read_defects_config
    from tests.test_evaluate import LOCO_CONFIG

    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), cv2.cvtColor(scene(i), cv2.COLOR_RGB2BGR))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0.png": 0, "1.png": True, "2": 1}))
    assert load_ground_truth(images, labels=labels).sources[0].labels.tolist() == [False, True, True]
    for bad in ("0", "false", 2, None):
        labels.write_text(json.dumps({"0.png": 0, "1.png": bad, "2": 1}))
        with pytest.raises(GroundTruthError, match=rf"expected the label of '1.png' in {labels} to be 0, 1, true or false, got {bad!r}"):
            load_ground_truth(images, labels=labels)
    code, _, err = cli("eval", str(images), "--labels", str(labels), "-m", str(data / "base.zarr"), "-o", str(tmp_path / "e"))
    assert code == 1 and len(err.strip().splitlines()) == 1 and "'1.png'" in err, err

    config = tmp_path / "defects_config.json"
    config.write_text(json.dumps([LOCO_CONFIG[0], {**LOCO_CONFIG[1], "relative_saturation": "no"}]))
    with pytest.raises(GroundTruthError, match=r"expected relative_saturation in entry 1 of .*defects_config.json to be 0, 1, true or false, got 'no'"):
        read_defects_config(config)
    config.write_text(json.dumps([{**LOCO_CONFIG[0], "pixel_value": "255"}]))
    with pytest.raises(GroundTruthError, match=r"expected pixel_value in entry 0 of .*defects_config.json to be a whole number, got '255'"):
        read_defects_config(config)

    for key, value, said, command in (
        ("sources", {"clip": {"next_index": "5"}}, "sources.clip.next_index", "fit"),
        ("frames_seen", True, "frames_seen", "fit"),
        ("scorer", {"k": "8", "seed": 0, "eps": 0.01}, "scorer.k", "score"),
        ("unfinished", "false", "unfinished", "score"),
    ):
        edited = tmp_path / f"{key}.zarr"
        shutil.copytree(data / "base.zarr", edited)
        meta = json.loads((edited / "zarr.json").read_text())
        meta["attributes"][key] = value
        (edited / "zarr.json").write_text(json.dumps(meta))
        args = ["score", str(data / "clip.mp4"), "-m", str(edited), "-o", str(tmp_path / "s")]
        code, _, err = cli(*args) if command == "score" else cli("fit", str(data / "clip.mp4"), "-m", str(edited), "--resume")
        assert code == 1 and said in err and len(err.strip().splitlines()) == 1 and "report it" not in err, (key, err)


def test_merge_refuses_overlapping_frames_of_the_same_source(data: Path, tmp_path: Path) -> None:
    """Item 7: two fits of frames 0-28 of one video would count them twice; disjoint parts of
    it, and two videos that only share a name, merge."""
    video = str(data / "clip.mp4")

    def part(name: str, start: int, stop: int, source: str = video) -> Path:
        fit([source], tmp_path / name, SMALL, options=FitOptions(holdout_every=4, start=start, stop=stop))
        return tmp_path / name

    a, b = part("a.zarr", 0, 29), part("b.zarr", 0, 29)
    with pytest.raises(ConfigError, match=r"expected disjoint frames of each source to merge, got frames 0-28 of clip fitted in both .*a.zarr and .*b.zarr"):
        merge([a, b], tmp_path / "ab.zarr")
    code, _, err = cli("merge", str(a), str(part("c.zarr", 20, 40)), "-o", str(tmp_path / "ac.zarr"))
    assert code == 1 and "frames 20-28 of clip" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ac.zarr").exists()
    merged = merge([a, part("d.zarr", 29, 40)], tmp_path / "ad.zarr")
    whole = read_progress(open_store(tmp_path / "a.zarr")).frames_seen + read_progress(open_store(tmp_path / "d.zarr")).frames_seen
    assert merged.frames_seen == whole
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = part("e.zarr", 0, 29, str(clip(other / "clip.mp4", 30)))  # another video, also called clip
    assert merge([a, twin], tmp_path / "ae.zarr").frames_seen == 2 * read_progress(open_store(a)).frames_seen
