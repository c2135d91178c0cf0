"""``streamad demo`` / ``make demo``: fit on the normal part of a clip, score the rest, write
scores, maps, an overlay video and a timeline plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions, FitSummary
from streamad.engine.progress import Progress, no_progress
from streamad.engine.scoring import ScoreOptions, ScoreSummary
from streamad.errors import ConfigError
from streamad.io.decode import VideoWriter, probe
from streamad.io.sources import resolve_sources
from streamad.pipelines.fit import fit
from streamad.pipelines.score import score


@dataclass(frozen=True, slots=True)
class SyntheticClip:
    path: str
    frames: int
    fps: float
    anomaly_frames: tuple[int, int]


def make_clip(
    path: str | Path,
    *,
    frames: int = 450,
    fps: float = 15.0,
    size_hw: tuple[int, int] = (240, 320),
    anomaly_frames: tuple[int, int] = (360, 400),
    seed: int = 0,
) -> SyntheticClip:
    """Write a synthetic walkway: textured ground, people walking to and fro; between
    ``anomaly_frames`` a fast red cart crosses the scene (the anomaly)."""
    rng = np.random.default_rng(seed)
    height, width = size_hw
    noise = cv2.resize(rng.uniform(0, 1, (height // 8, width // 8)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    ground = np.clip(110 + 40 * noise[..., None] + np.linspace(-20, 20, width)[None, :, None], 0, 255)
    ground = (ground * np.array([0.95, 1.0, 0.9])).astype(np.uint8)
    cv2.rectangle(ground, (0, height // 3), (width, height // 3 + 6), (70, 70, 70), -1)  # kerb
    # Regular traffic: every walker's motion repeats every `period` frames, so the part after the
    # fit shows the same kind of scene, and only the cart is new.
    period = 90
    lap = width + 40
    walkers = [
        (rng.uniform(0, width), rng.uniform(height * 0.45, height * 0.9), rng.choice([-1.0, 1.0]) * lap * int(rng.integers(1, 3)) / period) for _ in range(5)
    ]
    with VideoWriter(path, fps=fps) as writer:
        for t in range(frames):
            image = ground.copy()
            for x0, y, v in walkers:
                x = (x0 + v * t) % lap - 20
                bob = 2 * np.sin(2 * np.pi * t / 15 + x0)
                cv2.ellipse(image, (int(x), int(y + bob)), (6, 14), 0, 0, 360, (40, 45, 60), -1)
                cv2.circle(image, (int(x), int(y - 18 + bob)), 5, (200, 170, 150), -1)
            if anomaly_frames[0] <= t < anomaly_frames[1]:
                progress = (t - anomaly_frames[0]) / max(1, anomaly_frames[1] - anomaly_frames[0])
                x = int(-40 + progress * (width + 80))
                y = int(height * 0.65)
                cv2.rectangle(image, (x - 22, y - 12), (x + 22, y + 12), (220, 40, 30), -1)
                cv2.circle(image, (x - 12, y + 14), 5, (20, 20, 20), -1)
                cv2.circle(image, (x + 12, y + 14), 5, (20, 20, 20), -1)
            # sensor noise: real cameras never repeat a pixel exactly, and without it the
            # covariances of a static synthetic scene are nearly singular
            noisy = image.astype(np.int16) + rng.normal(0, 6, image.shape).astype(np.int16)
            writer.write(np.clip(noisy, 0, 255).astype(np.uint8))
    return SyntheticClip(str(path), frames, fps, anomaly_frames)


@dataclass(frozen=True, slots=True)
class DemoSummary:
    clip: str
    split: int
    fit: FitSummary
    score: ScoreSummary
    anomaly_frames: tuple[int, int] | None

    def lines(self) -> list[str]:
        said = [f"clip:     {self.clip} (fit on frames 0-{self.split - 1}, scored from {self.split})"]
        if self.anomaly_frames:
            said.append(f"anomaly:  a red cart crosses in frames {self.anomaly_frames[0]}-{self.anomaly_frames[1] - 1}")
        said += [f"model:    {self.fit.store}", f"scores:   {self.score.csv}", f"maps:     {self.score.store}"]
        return said + [f"overlay:  {path}" for path in self.score.overlays] + [f"timeline: {self.score.plot}"]


def demo(out_dir: str | Path, *, video: str | None = None, fit_fraction: float = 0.6, device: str = "cpu", progress: Progress = no_progress) -> DemoSummary:
    """Run the main job end to end on a generated (or given) clip."""
    if not 0 < fit_fraction < 1:
        raise ConfigError(f"expected a fit fraction in (0, 1), got {fit_fraction}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    anomaly: tuple[int, int] | None = None
    if video is None:
        clip = make_clip(out / "clip.mp4")
        path, total, anomaly = clip.path, clip.frames, clip.anomaly_frames
    else:
        resolve_sources([video])  # clear errors for a bad path
        path, total = video, probe(video).frames
    if total < 10:
        raise ConfigError(f"expected a clip of at least 10 frames for the demo, got {total} in {path}")
    split = int(total * fit_fraction)
    fitted = fit([path], out / "model.zarr", ModelConfig(), options=FitOptions(stop=split, device=device), overwrite=True, progress=progress)
    scored = score(
        [path],
        out / "model.zarr",
        out,
        options=ScoreOptions(start=split, device=device),
        overlay=out / "overlay.mp4",
        plot=out / "timeline.png",
        progress=progress,
    )
    return DemoSummary(path, split, fitted, scored, anomaly)
