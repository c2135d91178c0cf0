"""The charts come from matplotlib: each is a readable, non-blank picture of the expected size,
in the format its suffix names."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamad import plots
from streamad.errors import ConfigError

RNG = np.random.default_rng(0)


def picture(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    return image


def assert_not_blank(image: np.ndarray) -> None:
    """Drawn: many distinct colours and a good share of non-white pixels."""
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20
    assert 0.02 < (image.min(-1) < 250).mean() < 0.9


def test_timeline(tmp_path: Path) -> None:
    times = np.arange(200) / 10
    scores = np.sin(times) + RNG.normal(0, 0.1, 200)
    plots.timeline({"cam1": (times, scores), "cam2": (times, scores + 1)}, tmp_path / "t.png", threshold=0.8)
    image = picture(tmp_path / "t.png")
    assert image.shape[:2] == (3.6 * plots.DPI, 10 * plots.DPI)
    assert_not_blank(image)
    red = (image[..., 2] > 180) & (image[..., 1] < 90) & (image[..., 0] < 90)
    assert red.sum() > 100  # the threshold line


def test_runs_above_matches_a_loop() -> None:
    values = RNG.normal(size=500)
    runs = plots.runs_above(values, 0.5)
    expected, start = [], None
    for i, above in enumerate(values > 0.5):
        if above and start is None:
            start = i
        if not above and start is not None:
            expected.append((start, i))
            start = None
    if start is not None:
        expected.append((start, len(values)))
    assert runs == expected


def test_roc_pro_histogram_grid(tmp_path: Path) -> None:
    fpr = np.linspace(0, 1, 50)
    plots.roc({"frame (0.900)": (fpr, np.sqrt(fpr))}, tmp_path / "roc.png")
    plots.pro(fpr[:16], fpr[:16] * 2, tmp_path / "pro.png", max_fpr=0.3, label="PRO (area 0.500)", saturated=False)
    plots.histogram({"normal": RNG.normal(0, 1, 300), "anomalous": RNG.normal(3, 1, 40)}, tmp_path / "h.png", title="frame scores")
    tiles = [(np.full((60, 90, 3), 40 * i, np.uint8), f"case {i}") for i in range(5)]
    plots.grid(tiles, tmp_path / "worst.png", columns=3)
    for name, hw in (("roc", (600, 660)), ("pro", (600, 660)), ("h", (480, 840))):
        image = picture(tmp_path / f"{name}.png")
        assert image.shape[:2] == hw
        assert_not_blank(image)
    worst = picture(tmp_path / "worst.png")
    assert worst.shape[1] == round(4.2 * 3 * plots.DPI) and worst.shape[0] > 200


def test_format_by_suffix(tmp_path: Path) -> None:
    series = {"a": (np.arange(10.0), np.arange(10.0))}
    plots.timeline(series, tmp_path / "t.svg")
    plots.timeline(series, tmp_path / "t.pdf")
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(ConfigError, match=r"t\.gif"):
        plots.timeline(series, tmp_path / "t.gif")
