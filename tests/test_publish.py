"""Events to webhooks and MQTT, metrics to Prometheus: real parts started by the tests (an HTTP
server, Debian's Mosquitto broker, prometheus-client's parser), and bad input on purpose."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.frames import FrameRef, ScoreMap
from streamad.io.cameras import Camera
from streamad.pipelines.fit import fit
from streamad.pipelines.watch import WatchSummary, watch
from streamad.publish.events import EVENTS, STATE, EventOutputs, Message
from streamad.publish.site import SiteOutputs
from streamad.sinks.alerts import Event
from tests.test_watch import clip, free_port

SMALL = ModelConfig(input_hw=(64, 96), k=16)
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None and os.environ.get("STREAMAD_REQUIRE_MQTT") != "1", reason="Mosquitto not installed (make system-deps)"
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("publish")
    fit([str(clip(folder / "train.mp4", 60))], folder / "m.zarr", SMALL, options=FitOptions(holdout_every=4))
    return folder / "m.zarr"


@pytest.fixture(scope="module")
def anomalous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Normal frames, then a red square from frame 25 to the end: one event, closed at the end."""
    return clip(tmp_path_factory.mktemp("clips") / "test.mp4", 50, anomaly_from=25)


def run_watch(model: Path, video: Path, out: Path, **outputs: object) -> WatchSummary:
    return watch([Camera("cam", str(video), str(model))], out, outputs=SiteOutputs(**outputs), print_stats=lambda line: None)  # type: ignore[arg-type]


class Collector(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[tuple[int, list[dict], threading.Event]]:
    """A port, the bodies POSTed to it, and an event that starts the server listening on it
    (until then the port refuses connections: the webhook is down)."""
    port, bodies, start = free_port(), [], threading.Event()
    handler = type("Handler", (Collector,), {"bodies": bodies})
    servers: list[ThreadingHTTPServer] = []

    def serve() -> None:
        start.wait()
        servers.append(ThreadingHTTPServer(("127.0.0.1", port), handler))
        servers[0].serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, bodies, start
    start.set()
    deadline = time.monotonic() + 5
    while not servers and time.monotonic() < deadline:
        time.sleep(0.01)
    servers[0].shutdown()


def test_state_is_throttled_and_updates_are_rate_limited() -> None:
    sent: list[Message] = []
    now = [0.0]

    class Recorder:
        name = "recorder"

        def publish(self, message: Message) -> None:
            sent.append(message)

        def counts(self) -> dict[str, int]:
            return {}

        def close(self) -> None:
            return None

    outputs = EventOutputs([Recorder()], lambda camera: 1.5, state_every_s=1.0, update_every_s=1.0, clock=lambda: now[0])
    for i in range(10):  # 10 frames in 0.9 s: one state message
        now[0] = i * 0.1
        outputs.write(ScoreMap(FrameRef("cam", i, i / 10), 0.5, 0.5, None))  # type: ignore[arg-type]
    event = Event("cam", 3, 0.3, 0.0, 2.0, 3)
    outputs.event("open", event)
    outputs.event("update", event)  # the same instant: skipped
    now[0] = 1.5
    outputs.write(ScoreMap(FrameRef("cam", 15, 1.5), 2.5, 2.5, None))  # type: ignore[arg-type]
    now[0] = 2.0
    outputs.event("update", event)
    outputs.event("close", event)
    outputs.write(ScoreMap(FrameRef("cam", 20, 2.0), 0.5, 0.5, None))  # type: ignore[arg-type]  # 0.5 s after the last: none
    now[0] = 2.6
    outputs.write(ScoreMap(FrameRef("cam", 26, 2.6), 0.5, 0.5, None))  # type: ignore[arg-type]
    assert [m.kind for m in sent] == [STATE, EVENTS, STATE, EVENTS, EVENTS, STATE]
    assert [m.body["change"] for m in sent if m.kind == EVENTS] == ["open", "update", "close"]
    assert [m.body["state"] for m in sent if m.kind == STATE] == ["normal", "alert", "normal"]
    assert sent[1].body["id"] == "cam:3" and sent[1].body["threshold"] == 1.5


def test_webhook_gets_every_event_change_after_being_down_and_scoring_is_not_held(
    model: Path, anomalous: Path, tmp_path: Path, webhook: tuple[int, list[dict], threading.Event], caplog: pytest.LogCaptureFixture
) -> None:
    """The server comes up 1.5 s after the event opened: its messages are retried until then,
    delivered before the watch returns, and handing them over never waited for the network."""
    import streamad.publish.events as events

    port, bodies, start = webhook

    class OpenedThenUp(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "alert opened" in record.getMessage():
                threading.Timer(1.5, start.set).start()

    held, publish = [0.0], events.EventOutputs._send

    def timed(self: events.EventOutputs, message: Message) -> None:
        began = time.perf_counter()
        publish(self, message)
        held[0] += time.perf_counter() - began

    handler = OpenedThenUp()
    logging.getLogger("streamad.sinks.alerts").addHandler(handler)
    events.EventOutputs._send = timed  # type: ignore[method-assign]
    try:
        began = time.perf_counter()
        summary = run_watch(model, anomalous, tmp_path / "w", webhooks=(f"http://user:secret@127.0.0.1:{port}/hook",))
        wall = time.perf_counter() - began
    finally:
        events.EventOutputs._send = publish  # type: ignore[method-assign]
        logging.getLogger("streamad.sinks.alerts").removeHandler(handler)
    assert start.is_set() and len(summary.events) == 1
    changes = [b["change"] for b in bodies]
    assert changes[0] == "open" and changes[-1] == "close" and set(changes) <= {"open", "update", "close"}, changes
    assert {b["id"] for b in bodies} == {f"cam:{summary.events[0].start_index}"}
    assert bodies[-1]["peak_score"] == pytest.approx(summary.events[0].peak_score) and bodies[-1]["threshold"] is not None
    assert held[0] < 0.02 * wall, (held[0], wall)  # scoring's thread only queues them
    assert "failing" in caplog.text and "secret" not in caplog.text  # logged once, its password redacted


def test_webhook_retries_until_the_server_is_up(tmp_path: Path, webhook: tuple[int, list[dict], threading.Event]) -> None:
    from streamad.publish.webhook import WebhookPublisher

    port, bodies, start = webhook
    publisher = WebhookPublisher(f"http://127.0.0.1:{port}/hook", backoff_s=0.1, max_backoff_s=0.4, drain_s=10)
    for change in ("open", "update", "close"):
        publisher.publish(Message(EVENTS, "cam", {"change": change}))
    publisher.publish(Message(STATE, "cam", {"state": "normal"}))  # MQTT's, not the webhook's
    time.sleep(0.5)
    assert not bodies and publisher.counts()["failed"] >= 2  # down: retried with backoff
    start.set()
    publisher.close()
    assert [b["change"] for b in bodies] == ["open", "update", "close"]
    assert publisher.counts() == {"sent": 3, "failed": publisher.counts()["failed"], "dropped": 0, "undelivered": 0}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """Mosquitto on a free local port, anonymous."""
    if MOSQUITTO is None:
        pytest.fail("expected Debian's mosquitto (STREAMAD_REQUIRE_MQTT=1); hint: make system-deps")
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def subscribe(port: int, topic: str) -> tuple[object, list[tuple[str, bytes, bool]]]:
    """A client of the broker collecting (topic, payload, retained) of ``topic``'s messages."""
    import paho.mqtt.client as mqtt

    received: list[tuple[str, bytes, bool]] = []
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: (c.subscribe(topic, qos=1), ready.set())
    client.on_message = lambda c, u, m: received.append((m.topic, m.payload, bool(m.retain)))
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(10)
    time.sleep(0.2)  # the subscription acknowledged
    return client, received


@needs_mosquitto
def test_mqtt_gets_the_event_the_retained_state_and_availability(model: Path, anomalous: Path, tmp_path: Path, broker: int) -> None:
    client, received = subscribe(broker, "site/#")
    summary = run_watch(model, anomalous, tmp_path / "w", mqtt=(f"mqtt://127.0.0.1:{broker}/site",))
    time.sleep(0.5)
    client.loop_stop()  # type: ignore[attr-defined]
    events = [json.loads(p) for t, p, _ in received if t == "site/cam/events"]
    assert [e["change"] for e in events][0] == "open" and events[-1]["change"] == "close"
    assert events[-1]["id"] == f"cam:{summary.events[0].start_index}" and events[-1]["peak_score"] == pytest.approx(summary.events[0].peak_score)
    assert [p for t, p, _ in received if t == "site/availability"][-2:] == [b"online", b"offline"]
    late, retained = subscribe(broker, "site/#")  # a client that comes later is told the last state
    time.sleep(0.5)
    late.loop_stop()  # type: ignore[attr-defined]
    states = {t: json.loads(p) for t, p, kept in retained if kept and t == "site/cam/state"}
    assert states["site/cam/state"]["camera"] == "cam" and states["site/cam/state"]["score"] > 0
    assert (("site/availability", b"offline", True)) in retained


def test_metrics_scrape_parses_and_balances_with_the_summary(model: Path, anomalous: Path, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from streamad.publish.prometheus import Metrics

    with Metrics(0) as metrics:
        summary = watch([Camera("cam", str(anomalous), str(model))], tmp_path / "w", print_stats=lambda line: None, outputs=SiteOutputs(metrics=metrics))
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics", timeout=10).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = lambda name, **labels: sum(s.value for s in families[name].samples if s.name.endswith(("_total", name)) and labels.items() <= s.labels.items())  # noqa: E731
    stats = summary.streams["cam"]
    assert value("streamad_frames_received", camera="cam") == stats.received > 0
    outcomes = {o: value("streamad_frames", camera="cam", outcome=o) for o in ("scored", "learned", "dropped")}
    assert outcomes == {"scored": stats.scored, "learned": stats.learned, "dropped": stats.dropped_total}
    assert sum(outcomes.values()) == stats.received
    assert value("streamad_events_opened", camera="cam") == len(summary.events) == 1
    latency = [s for s in families["streamad_latency_seconds"].samples if s.name == "streamad_latency_seconds_count"]
    assert latency[0].value == stats.scored
    assert [s.labels["method"] for s in families["streamad_model_info"].samples] == ["padim"]
    assert families["streamad_frames"].type == "counter" and families["streamad_latency_seconds"].type == "histogram"


def test_bad_outputs_are_one_line(model: Path, anomalous: Path, tmp_path: Path) -> None:
    from streamad.cli import main

    runner = CliRunner()
    base = ["watch", str(anomalous), "-m", str(model), "-o", str(tmp_path / "w")]
    for extra, said in (
        (["--events-webhook", "ftp://user:pw@host/x"], "expected --events-webhook http(s)://"),
        (["--events-mqtt", "mqtt://user:hunter2@host"], "topic-prefix"),
        (["--events-mqtt", "http://host/site"], "expected --events-mqtt"),
    ):
        result = runner.invoke(main, [*base, *extra])
        assert result.exit_code == 1 and said in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert "pw@" not in result.output and "hunter2" not in result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = runner.invoke(main, [*base, "--metrics-port", str(taken.getsockname()[1])])
    assert result.exit_code == 1 and "--metrics-port" in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_unreachable_outputs_count_failures_and_the_watch_balances(model: Path, anomalous: Path, tmp_path: Path) -> None:
    """Nothing listens on either port: the watch scores every frame, exits, and says so."""
    dead = free_port()
    summary = run_watch(model, anomalous, tmp_path / "w", webhooks=(f"http://127.0.0.1:{dead}/x",), mqtt=(f"mqtt://127.0.0.1:{dead}/site",))
    stats = summary.streams["cam"]
    assert stats.balanced() and stats.scored == stats.received > 0 and len(summary.events) == 1


def test_a_site_file_names_the_cameras_and_outputs(model: Path, anomalous: Path, tmp_path: Path, webhook: tuple[int, list[dict], threading.Event]) -> None:
    port, bodies, start = webhook
    start.set()
    site = tmp_path / "site.toml"
    site.write_text(
        f'[cameras]\ndoor = {{ url = "{anomalous}", model = "{model}" }}\n'
        f'[events]\nwebhooks = ["http://127.0.0.1:{port}/hook"]\n[metrics]\nport = 0\n'
    )
    result = CliRunner().invoke(main_cli(), ["watch", "--config", str(site), "-o", str(tmp_path / "w"), "--stats-every", "60"])
    assert result.exit_code == 0, result.output
    assert "door: received 50 = scored 50" in result.output
    assert [b["change"] for b in bodies][0] == "open" and bodies[-1]["change"] == "close" and bodies[0]["camera"] == "door"
    site.write_text('[cameras]\n[events]\nwebhook = ["http://x/y"]\n')  # a misspelt key
    result = CliRunner().invoke(main_cli(), ["watch", "--config", str(site), "-o", str(tmp_path / "w2")])
    assert result.exit_code == 1 and "events.webhook" in result.output and len(result.output.strip().splitlines()) == 1, result.output


def main_cli():  # noqa: ANN201 - click's group
    from streamad.cli import main

    return main


def test_ctrl_c_with_every_output_on_exits_0_balanced(model: Path, tmp_path: Path) -> None:
    """A file played in real time, every output pointed at something dead or alive: Ctrl-C
    after a few seconds exits 0 with the summary balanced, and no traceback."""
    import signal
    import sys

    video = clip(tmp_path / "long.mp4", 400, anomaly_from=40)
    dead = free_port()
    args = ["watch", str(video), "-m", str(model), "-o", str(tmp_path / "w"), "--realtime", "--stats-every", "60"]
    args += ["--events-webhook", f"http://127.0.0.1:{dead}/x", "--events-mqtt", f"mqtt://127.0.0.1:{dead}/site", "--metrics-port", "0", "--http-port", "0"]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-m", "streamad", *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "w" / "scores.csv").exists():
        time.sleep(0.1)
    time.sleep(3.0)  # scoring, with the first event's messages failing to go out
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "summary (interrupted):" in out and "(ok;" in out and "Traceback" not in err, out + err
    assert "live view: http://127.0.0.1:" in err


def test_a_web_view_port_in_use_and_an_empty_token_are_one_line(model: Path, anomalous: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["watch", str(anomalous), "-m", str(model), "-o", str(tmp_path / "w")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = runner.invoke(main_cli(), [*base, "--http-port", str(taken.getsockname()[1])])
    assert result.exit_code == 1 and "--http-port" in result.output and len(result.output.strip().splitlines()) == 1, result.output
    result = runner.invoke(main_cli(), [*base, "--http-port", "0", "--http-token", " "])
    assert result.exit_code == 1 and "--http-token" in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_closed_event_links_and_optionally_carries_its_snapshot(tmp_path: Path) -> None:
    from streamad.publish.events import event_body

    png = tmp_path / "cam-00000042.png"
    png.write_bytes(b"\x89PNG fake")
    event = Event("cam", 40, 4.0, 0.0, 9.0, 42, 50, 5.0, 1.0, str(png))
    body = event_body("close", event, 3.0, inline_snapshot=True, view_url="http://127.0.0.1:8080/")
    assert body["snapshot_url"] == "http://127.0.0.1:8080/snapshots/cam-00000042.png"
    assert base64.b64decode(body["snapshot_png_base64"]) == b"\x89PNG fake" and body["end_index"] == 50
    assert "snapshot_url" not in event_body("close", event, 3.0) and "snapshot_png_base64" not in event_body("close", event, 3.0)


def test_score_sends_a_file_s_events(model: Path, anomalous: Path, tmp_path: Path, webhook: tuple[int, list[dict], threading.Event]) -> None:
    """Events from a file, as watch opens them: events.jsonl, a snapshot, and the webhook's
    open and close; without a decision threshold it is one line."""
    port, bodies, start = webhook
    start.set()
    runner, url = CliRunner(), f"http://127.0.0.1:{port}/hook"
    args = ["score", str(anomalous), "-m", str(model), "-o", str(tmp_path / "s"), "-q", "--events-webhook", url]
    result = runner.invoke(main_cli(), [*args, "--threshold", "10"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in (tmp_path / "s" / "events.jsonl").read_text().splitlines()]
    assert len(events) == 1 and Path(events[0]["snapshot"]).is_file()
    assert [b["change"] for b in bodies][0] == "open" and bodies[-1]["change"] == "close" and bodies[-1]["start_index"] == events[0]["start_index"]
    raw = runner.invoke(main_cli(), [*args, "--raw"])  # the stored threshold is for normalised scores
    assert raw.exit_code == 1 and "decision threshold" in raw.output and len(raw.output.strip().splitlines()) == 1, raw.output
