"""The live web view in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium; nothing is downloaded): two cameras with their images updating, the timelines, an
event with its snapshot; a screenshot for the README; the token; no external resource."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.io.cameras import Camera
from streamad.io.decode import VideoWriter
from streamad.io.live import LiveOptions
from streamad.pipelines.fit import fit
from streamad.pipelines.watch import WatchOptions, WatchSummary, watch
from streamad.publish.site import SiteOutputs
from streamad.publish.web import LiveView
from tests.conftest import scene

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "build" / "web-view.png"  # written by make test; README's picture is a copy
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    (CHROMIUM is None or DRIVER is None) and os.environ.get("STREAMAD_REQUIRE_BROWSER") != "1",
    reason="chromium and chromium-driver not installed (make system-deps)",
)


def scenes(path: Path, frames: int, anomaly: range = range(0), *, seed: int = 0) -> Path:
    """A 20 fps clip of the moving blob; a red square in the ``anomaly`` frames."""
    with VideoWriter(path, fps=20) as writer:
        for t in range(frames):
            writer.write(scene(t, height=192, width=256, anomaly=t in anomaly, seed=seed))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("view")
    fit([str(scenes(folder / "train.mp4", 200))], folder / "m.zarr", ModelConfig(input_hw=(96, 128), k=16), options=FitOptions(holdout_every=4))
    return folder / "m.zarr"


def browser():  # noqa: ANN201 - selenium's driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(DRIVER)))


def wait_for(driver, script: str, what: str, timeout_s: float = 60) -> object:  # noqa: ANN001
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(lambda d: d.execute_script(script), message=f"expected {what}")


@needs_browser
def test_the_page_shows_two_cameras_live_their_timelines_and_an_event(model: Path, tmp_path: Path) -> None:
    door, gate = scenes(tmp_path / "door.mp4", 200, anomaly=range(60, 100)), scenes(tmp_path / "gate.mp4", 200)
    cameras = [Camera("door", str(door), str(model)), Camera("gate", str(gate), str(model))]
    options = WatchOptions(live=LiveOptions(realtime=True), stats_every_s=60)
    done: list[WatchSummary] = []
    with LiveView(0) as view:
        outputs = SiteOutputs(view=view)
        thread = threading.Thread(target=lambda: done.append(watch(cameras, tmp_path / "w", options=options, print_stats=lambda line: None, outputs=outputs)))
        thread.start()
        driver = browser()
        try:
            driver.get(view.url)
            shown = "return [...document.querySelectorAll('.camera')].map(c => Number(c.dataset.framesShown || 0))"
            wait_for(driver, shown + ".filter(n => n >= 5).length === 2", "two cameras, each image updated 5 times")
            wait_for(driver, "return [...document.querySelectorAll('canvas')].every(c => Number(c.dataset.points || 0) > 10)", "two timelines drawn")
            thread.join(timeout=120)
            assert done and done[0].events, "the door camera's square should open an event"
            snapshot = "const i = document.querySelector('img.snapshot'); return i !== null && i.complete && i.naturalWidth > 0"
            wait_for(driver, snapshot, "an event with its snapshot")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            driver.save_screenshot(str(SCREENSHOT))
            names = driver.execute_script("return [...document.querySelectorAll('.camera .name')].map(n => n.textContent)")
            resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            html = driver.page_source
        finally:
            driver.quit()
    assert sorted(names) == ["door", "gate"]
    assert resources and all(url.startswith(view.url) for url in resources), resources  # nothing from elsewhere
    assert "https://" not in html and "cdn" not in html.lower()
    assert SCREENSHOT.stat().st_size > 10_000


def test_the_json_api_and_its_token(model: Path, tmp_path: Path) -> None:
    video = scenes(tmp_path / "c.mp4", 40, anomaly=range(20, 30))
    with LiveView(0, token="s3cret-token") as view:
        summary = watch([Camera("cam", str(video), str(model))], tmp_path / "w", print_stats=lambda line: None, outputs=SiteOutputs(view=view))

        def get(path: str, **headers: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(urllib.request.Request(view.url.rstrip("/") + path, headers=headers), timeout=10) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read()

        assert get("/api/cameras")[0] == 401 and get("/api/cameras?token=wrong")[0] == 401 and view.refused == 2
        status, body = get("/api/cameras", Authorization="Bearer s3cret-token")
        cameras = json.loads(body)
        assert status == 200 and cameras[0]["name"] == "cam" and cameras[0]["scored"] == summary.streams["cam"].scored
        assert cameras[0]["received"] == cameras[0]["scored"] + cameras[0]["learned"] + cameras[0]["dropped"]
        events = json.loads(get("/api/events?token=s3cret-token")[1])
        assert len(events) == len(summary.events) == 1 and not events[0]["open"]
        status, png = get(events[0]["snapshot"] + "?token=s3cret-token")
        assert status == 200 and png.startswith(b"\x89PNG")
        status, jpeg = get("/api/cameras/cam/frame.jpg?token=s3cret-token")
        assert status == 200 and jpeg.startswith(b"\xff\xd8")
        assert get("/snapshots/..%2Fscores.csv?token=s3cret-token")[0] == 404


def test_a_view_on_every_interface_links_by_the_machines_name() -> None:
    """Event messages link snapshots at the view's URL: listening on every interface, that is
    the machine's name (0.0.0.0 is no address to send anyone), and the name serves the page
    where it resolves here."""
    import socket

    from streamad.publish.web import _reachable

    assert _reachable("::1") == "[::1]" and _reachable("192.0.2.7") == "192.0.2.7" and _reachable("::") == socket.gethostname()
    with LiveView(0, host="0.0.0.0") as view:
        assert view.url == f"http://{socket.gethostname()}:{view.port}/"
        try:
            socket.getaddrinfo(socket.gethostname(), view.port)
        except socket.gaierror:
            return  # the name does not resolve on this machine: nothing more to fetch
        with urllib.request.urlopen(view.url, timeout=10) as response:
            assert response.status == 200 and b"<html" in response.read().lower()
