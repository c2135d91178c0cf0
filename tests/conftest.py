"""Shared fixtures: generated clips and frame folders, the --device option, real-data skips."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamad.features.extractor import Features
from streamad.io.decode import VideoWriter
from streamad.model import Model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# --runtime auto picks onnxruntime for exportable models where it is installed, exporting each
# model's graph first (seconds): the suite's many small models are scored by PyTorch, as the
# jobs were written against it; tests/test_export.py tests auto's own choices with this unset.
os.environ.setdefault("STREAMAD_RUNTIME", "torch")

collect_ignore = ["rtsp_server.py"]  # a script for Debian's Python (GStreamer bindings), not a test module


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
    for item in items:
        if "real_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--device"))


def scene(t: int, *, height: int = 96, width: int = 128, anomaly: bool = False, seed: int = 0) -> np.ndarray:
    """A textured frame with a moving grey blob; ``anomaly`` adds a red square."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.uniform(60, 190, (height // 8, width // 8, 3)).astype(np.float32), (width, height))
    image = base.astype(np.uint8)
    x = int((t * 3) % width)
    cv2.circle(image, (x, height // 2), 8, (40, 40, 40), -1)
    if anomaly:
        cv2.rectangle(image, (width // 4, height // 4), (width // 4 + 20, height // 4 + 20), (230, 20, 20), -1)
    return image


@pytest.fixture
def tiny_video(tmp_path: Path) -> Path:
    """40 frames, 96x128, 10 fps, H.264."""
    path = tmp_path / "tiny.mp4"
    with VideoWriter(path, fps=10) as writer:
        for t in range(40):
            writer.write(scene(t))
    return path


@pytest.fixture
def frame_folder(tmp_path: Path) -> Path:
    """A folder of 30 PNG frames named 0.png ... 29.png (natural order matters)."""
    folder = tmp_path / "clip"
    folder.mkdir()
    for t in range(30):
        cv2.imwrite(str(folder / f"{t}.png"), cv2.cvtColor(scene(t), cv2.COLOR_RGB2BGR))
    return folder


def embed(model: Model, frames: Sequence[np.ndarray]) -> Features:
    """RGB uint8 frames to a model's prepared features (extractor, then the scorer's prepare)."""
    return model.prepare(model.extractor.extract(frames))


def assert_statistics_close(got: np.ndarray, expected: np.ndarray, *, exact: bool, err_msg: str = "") -> None:
    """Running statistics of the same frames: float64 updates (``exact``) to 1e-9; float32 ones
    (fits that folded at other frames: a resume, a merge, shards) within twice the bound
    streamad.scorers.running states, ``gamma(FOLD_FRAMES + 3) * sqrt(m2_ii m2_jj)`` per entry
    of a co-moment; counts and means, float64 in both, to 1e-9."""
    from streamad.scorers.running import FOLD_FRAMES

    if exact or got.ndim < 3:
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * max(1.0, float(np.abs(expected).max())), err_msg=err_msg)
        return
    n, u = FOLD_FRAMES + 3, 2.0**-24
    diagonal = np.diagonal(expected, axis1=-2, axis2=-1)
    bound = 2 * n * u / (1 - n * u) * np.sqrt(diagonal[..., :, None] * diagonal[..., None, :]) + 1e-300
    assert (np.abs(got - expected) <= bound).all(), f"{err_msg}: {float((np.abs(got - expected) / bound).max()):.3f} of the bound"
