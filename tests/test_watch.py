"""``streamad watch`` against a real local RTSP server, a silent server, overload, several
cameras and online learning."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.engine.scoring import ScoreOptions
from streamad.errors import ConfigError
from streamad.frames import Frame
from streamad.io import live as live_module
from streamad.io.cameras import Camera, cameras_from
from streamad.io.decode import VideoWriter
from streamad.io.live import LiveOptions, LiveStream
from streamad.pipelines.fit import fit
from streamad.pipelines.score import score
from streamad.pipelines.watch import WatchOptions, WatchSummary, watch
from tests.conftest import scene

SMALL = ModelConfig(input_hw=(64, 96), k=16)
SERVER = Path(__file__).with_name("rtsp_server.py")
FAST = LiveOptions(open_timeout_s=3.0, stall_timeout_s=2.0, backoff_s=0.2, max_backoff_s=1.0)


def rtsp_available() -> bool:
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    return subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True).returncode == 0 if Path("/usr/bin/python3").exists() else False


needs_rtsp = pytest.mark.skipif(
    not rtsp_available() and os.environ.get("STREAMAD_REQUIRE_RTSP") != "1", reason="GStreamer RTSP server not installed (make system-deps)"
)


def clip(path: Path, frames: int, *, fps: int = 20, anomaly_from: int | None = None) -> Path:
    with VideoWriter(path, fps=fps) as writer:
        for t in range(frames):
            writer.write(scene(t, anomaly=anomaly_from is not None and t >= anomaly_from))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """tests/rtsp_server.py in a subprocess (Debian's Python with GStreamer's bindings)."""

    def __init__(self, video: Path) -> None:
        self.video, self.port = video, free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/bin/python3", str(SERVER), "--port", str(self.port), "--file", str(self.video)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("watch")
    fit([str(clip(folder / "train.mp4", 60))], folder / "m.zarr", SMALL, options=FitOptions(holdout_every=4))
    return folder / "m.zarr"


def run_in_thread(**kwargs: object) -> tuple[threading.Thread, dict[str, WatchSummary], threading.Event]:
    stop = threading.Event()
    result: dict[str, WatchSummary] = {}

    def target() -> None:
        result["summary"] = watch(should_stop=stop.is_set, print_stats=lambda line: None, **kwargs)  # type: ignore[arg-type]

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result, stop


def wait_until(predicate, timeout: float) -> bool:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@needs_rtsp
def test_rtsp_scores_and_survives_three_server_restarts(model: Path, tmp_path: Path) -> None:
    server = Server(clip(tmp_path / "live.mp4", 400))  # 20 s at 20 fps: every kill lands mid-stream
    server.start()
    options = WatchOptions(live=FAST, stats_every_s=0.5)
    thread, result, stop = run_in_thread(cameras=[Camera("door", server.url, str(model))], out_dir=tmp_path / "w", options=options)
    counts = []
    try:
        csv = tmp_path / "w" / "scores.csv"

        def scored() -> int:
            return sum(1 for _ in open(csv)) - 1 if csv.exists() else 0

        for _ in range(3):
            before = counts[-1] if counts else 0
            assert wait_until(lambda before=before: scored() > before + 10, 40), "no frames scored"
            counts.append(scored())
            server.kill()
            time.sleep(1.0)
            server.start()
        assert wait_until(lambda: scored() > counts[-1] + 10, 40), "no frames after the last restart"
    finally:
        stop.set()
        thread.join(30)
        server.kill()
    summary = result["summary"]
    door = summary.streams["door"]
    assert door.reconnects >= 3 and door.scored > counts[-1]
    assert door.received == door.scored + door.dropped_total
    assert "door: received" in summary.lines()[0] and "(ok;" in summary.lines()[0]


class FakeClock:
    """Time that passes only as the code under test looks at it (``step`` a look) or sleeps:
    watchdogs and backoffs run the same however fast or loaded the machine is."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_silent_server_trips_the_watchdog_not_a_hang(caplog: pytest.LogCaptureFixture) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: [accepted.append(listener.accept()[0]) for _ in range(8)], daemon=True).start()
    url = f"rtsp://user:secret@127.0.0.1:{listener.getsockname()[1]}/live"
    states: list[str] = []
    clock = FakeClock(step=0.25)  # each 0.1 s poll of the watchdog counts as 0.25 s
    options = LiveOptions(open_timeout_s=1.0, stall_timeout_s=1.0, backoff_s=0.1, max_retries=2)
    stream = LiveStream(url, "silent", options=options, on_state=lambda _, s: states.append(s), clock=clock, sleep=clock.sleep)
    frames = list(stream.frames(lambda: False))
    listener.close()
    assert frames == [] and accepted
    assert states[0] == "connecting" and states[-1] == "ended" and "stalled" in states and "reconnecting" in states
    assert stream.connections == 3
    assert "watchdog: not open after 1.0 s" in caplog.text and "secret" not in caplog.text and "user:***@" in caplog.text


def test_watchdog_reconnects_a_stream_that_stops_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader stuck inside the decoder (as PyAV can be on RTSP) is given up after the stall timeout."""
    calls = []

    def stuck(url: str, *, source_id: str, first_index: int = 0, should_stop, on_open=None, **_: object) -> Iterator[Frame]:  # noqa: ANN001
        calls.append(first_index)
        if on_open is not None:
            on_open(10.0)
        for i in range(3):
            yield Frame(source_id, first_index + i, (first_index + i) / 10, np.zeros((8, 8, 3), np.uint8), "", time.monotonic())
        time.sleep(30)  # never returns in time, ignores should_stop: a hang

    monkeypatch.setattr(live_module, "read_stream", stuck)
    states: list[str] = []
    clock = FakeClock(step=0.2)
    options = LiveOptions(stall_timeout_s=0.5, backoff_s=0.1)
    stream = LiveStream("rtsp://127.0.0.1:9/x", "cam", options=options, on_state=lambda _, s: states.append(s), clock=clock, sleep=clock.sleep)
    got: list[int] = []
    for frame in stream.frames(lambda: len(got) >= 9):
        got.append(frame.index)
    assert got == list(range(9)) and calls == [0, 3, 6]
    assert states.count("stalled") >= 2 and "streaming" in states


def test_overload_drops_oldest_with_bounded_latency(model: Path, tmp_path: Path) -> None:
    video = clip(tmp_path / "fast.mp4", 120, fps=40)
    options = WatchOptions(live=LiveOptions(realtime=True), queue_size=2, max_batch=2)
    batches: list[float] = []

    def slow(refs: object) -> None:
        batches.append(time.monotonic())
        time.sleep(0.25)

    summary = watch([Camera("cam", str(video), str(model))], tmp_path / "w", options=options, print_stats=lambda line: None, scorer_hook=slow)
    cam = summary.streams["cam"]
    assert cam.received == 120 and cam.dropped.get("queue full (drop-oldest)", 0) > 20
    assert cam.received == cam.scored + cam.dropped_total
    # Scoring manages at most 8 frames/s (2 frames per 0.25 s) of the 40 arriving: without drops
    # the last of the 120 frames (arriving at 3 s) would be scored at about 15 s, 12 s late.
    latencies = list(cam.latencies)
    assert np.mean(latencies[-10:]) < 2 * np.mean(latencies[5:15]) + 0.5  # bounded: no growth with the backlog
    # beyond the least latency (start-up and one batch), a frame waits behind at most the queue
    # (one batch) and the batch being scored: a few batch times, measured, whatever the machine's
    # load (without drops the backlog would add about 60 batch times)
    batch_time = float(np.median(np.diff(batches)))
    assert cam.percentile(95) < min(latencies) + 5 * batch_time  # type: ignore[operator]


def test_file_source_blocks_and_drops_nothing(model: Path, tmp_path: Path) -> None:
    video = clip(tmp_path / "file.mp4", 60)
    summary = watch(
        [Camera("cam", str(video), str(model))],
        tmp_path / "w",
        options=WatchOptions(queue_size=2),
        print_stats=lambda line: None,
        scorer_hook=lambda refs: time.sleep(0.05),
    )
    cam = summary.streams["cam"]
    assert cam.received == cam.scored == 60 and cam.dropped == {}


def test_two_cameras_share_batches_each_with_its_own_model(model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.zarr"
    fit([str(clip(tmp_path / "t2.mp4", 60))], other, ModelConfig(input_hw=(64, 96), k=16, seed=7, method="soe"), options=FitOptions(holdout_every=4))
    a, b = clip(tmp_path / "a.mp4", 40, anomaly_from=20), clip(tmp_path / "b.mp4", 40)
    cameras = cameras_from([f"a={a}", f"b={b}"], [f"a={model}", f"b={other}"])
    summary = watch(cameras, tmp_path / "w", options=WatchOptions(max_batch=8, max_wait_s=0.2), print_stats=lambda line: None)
    assert summary.mixed_batches > 0 and summary.streams["a"].scored == summary.streams["b"].scored == 40
    rows = [line.split(",") for line in open(tmp_path / "w" / "scores.csv").read().splitlines()[1:]]
    got = {cam: np.array([float(r[3]) for r in rows if r[0] == cam]) for cam in ("a", "b")}
    for cam, video, store, wrong in (("a", a, model, other), ("b", b, other, model)):
        own = np.loadtxt(score([str(video)], store, tmp_path / f"s-{cam}", options=ScoreOptions(write_maps=False)).csv, delimiter=",", skiprows=1, usecols=3)
        np.testing.assert_allclose(got[cam], own, rtol=1e-3)
        swapped = np.loadtxt(
            score([str(video)], wrong, tmp_path / f"x-{cam}", options=ScoreOptions(write_maps=False)).csv, delimiter=",", skiprows=1, usecols=3
        )
        assert not np.allclose(got[cam], swapped, rtol=1e-3)


def test_learn_for_bootstraps_a_model_that_separates_an_anomaly(tmp_path: Path) -> None:
    video = clip(tmp_path / "scene.mp4", 130, fps=10, anomaly_from=100)
    options = WatchOptions(learn_for_s=9.0, learn_config=ModelConfig(input_hw=(64, 96), k=16), stats_every_s=60)
    summary = watch([Camera("cam", str(video), str(tmp_path / "learned.zarr"))], tmp_path / "w", options=options, print_stats=lambda line: None)
    cam = summary.streams["cam"]
    assert 90 <= cam.learned < 100 and cam.received == cam.learned + cam.scored == 130  # learning ends at a batch boundary
    rows = [line.split(",") for line in open(tmp_path / "w" / "scores.csv").read().splitlines()[1:]]
    scores = {int(r[1]): float(r[3]) for r in rows}
    normal = [scores[i] for i in range(cam.learned, 100)]
    anomalous = [scores[i] for i in range(100, 130)]
    assert min(anomalous) > max(normal)
    assert (tmp_path / "learned.zarr" / "zarr.json").is_file()
    assert summary.events and summary.events[0].start_index >= 100 and Path(summary.events[0].snapshot or "").is_file()


def test_camera_and_model_pairing_errors() -> None:
    with pytest.raises(ConfigError, match="expected a --model for camera b"):
        cameras_from(["a=rtsp://h/1", "b=rtsp://h/2"], ["a=x.zarr"])
    with pytest.raises(ConfigError, match="names among the cameras"):
        cameras_from(["rtsp://h/1"], ["door=x.zarr"])
    assert [c.model for c in cameras_from(["rtsp://h/1", "rtsp://h/2"], ["m.zarr"])] == ["m.zarr", "m.zarr"]


def test_adapt_folds_normal_frames_in_and_a_restart_resumes(model: Path, tmp_path: Path) -> None:
    import shutil

    from streamad.pipelines.calibrate import calibrate
    from streamad.stores.fit_progress import read_progress
    from streamad.stores.model_store import load, open_store

    store = tmp_path / "m.zarr"
    shutil.copytree(model, store)
    calibrate(store, fixed=1e9)  # every frame counts as normal
    before = read_progress(open_store(store, mode="r")).frames_seen
    video = clip(tmp_path / "more.mp4", 30)
    for run in (1, 2):
        watch([Camera("cam", str(video), str(store))], tmp_path / f"w{run}", options=WatchOptions(adapt=True, refresh_every=10), print_stats=lambda line: None)
        reopened = open_store(store, mode="r")
        assert read_progress(reopened).frames_seen == before + 30 * run
        adapted = load(reopened)  # the threshold and the normalisation carried over to the adapted state
        assert adapted.threshold is not None and adapted.threshold.value == 1e9
        assert adapted.normalisation is not None and adapted.scorer.frames_seen == before + 30 * run


def test_scoring_without_adapt_leaves_the_store_alone(model: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "m.zarr"
    shutil.copytree(model, store)
    before = (store / "zarr.json").read_text()
    watch([Camera("cam", str(clip(tmp_path / "c.mp4", 10)), str(store))], tmp_path / "w", print_stats=lambda line: None)
    assert (store / "zarr.json").read_text() == before


def test_an_unreadable_file_is_a_clear_error_not_a_retry_loop(model: Path, tmp_path: Path) -> None:
    from streamad.errors import DecodeError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(DecodeError, match="bad.mp4"):
        watch([Camera("cam", str(bad), str(model))], tmp_path / "w", print_stats=lambda line: None)


@needs_rtsp
def test_dead_cameras_beside_a_healthy_one_take_nothing_from_it(model: Path, tmp_path: Path) -> None:
    """Reliability II, item 5: a healthy RTSP camera beside three dead ones (a refused RTSP
    port, a refused HTTP port, a server that accepts and never answers) drops nothing at a rate
    it handles alone, and scores as much of its stream in the same time."""
    server = Server(clip(tmp_path / "live.mp4", 400))  # 20 s at 20 fps: longer than each run
    server.start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the kernel's backlog and are never answered
    dead = [
        Camera("refused", f"rtsp://127.0.0.1:{free_port()}/x", str(model)),
        Camera("http", f"http://127.0.0.1:{free_port()}/y.mjpg", str(model)),
        Camera("silent", f"rtsp://127.0.0.1:{silent.getsockname()[1]}/z", str(model)),
    ]
    healthy = Camera("door", server.url, str(model))
    options = WatchOptions(live=FAST, stats_every_s=60.0, queue_size=32, duration_s=6.0)  # 1.6 s of queue: the start-up pass fits in it
    try:
        runs = {
            name: watch(cameras, tmp_path / name, options=options, print_stats=lambda _: None)
            for name, cameras in (("alone", [healthy]), ("beside", [healthy, *dead]))
        }
    finally:
        server.kill()
        silent.close()
    alone, beside = runs["alone"].streams["door"], runs["beside"].streams["door"]
    assert alone.received > 60 and alone.dropped_total == 0, alone.line("door")
    assert beside.dropped_total == 0 and beside.scored == beside.received, beside.line("door")
    assert beside.scored >= 0.8 * alone.scored, (alone.line("door"), beside.line("door"))
    assert all(runs["beside"].streams[c.name].received == 0 and runs["beside"].streams[c.name].reconnects >= 1 for c in dead)
