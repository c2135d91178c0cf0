"""End-to-end ``streamad score`` frames/s on a real video vs the raw backbone forward frames/s at
the same input size, batch and thread count, and their ratio.

    python benchmarks/throughput.py [--video ../shared/data/videos/vtest.avi] [--batch-size 8]

End to end = decode + preprocess + backbone + Mahalanobis + maps + blur + writing scores.csv
and float16 maps to scores.zarr, timed in steady state from the first to the last scored frame
(model loading excluded; the whole command's wall time is printed too).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Clock:
    """A Progress hook that times the scoring loop."""

    def __init__(self) -> None:
        self.first = self.last = 0.0
        self.frames = 0

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int) -> None:
        now = time.perf_counter()
        if self.frames == 0:
            self.first = now
        self.frames += n
        self.last = now

    def finish(self) -> None:
        pass


def backbone_fps(model, batch_size: int, seconds: float) -> float:
    import torch

    x = torch.randn(batch_size, 3, *model.input_hw)
    with torch.inference_mode():
        for _ in range(3):
            model.backbone(x)
        start, frames = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model.backbone(x)
            frames += batch_size
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "videos" / "vtest.avi"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--switch-interval", type=float, default=None)
    parser.add_argument("--fit-frames", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-throughput"))
    args = parser.parse_args()

    import torch

    from pipelines.fit import FitOptions, fit
    from pipelines.score import ScoreOptions, score
    from streamad.model_store import load_model, open_store
    from streamad.runtime import set_threads, tune_allocator

    tune_allocator()
    set_threads(args.threads)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    model_path = args.work / "model.zarr"
    if not (model_path / "zarr.json").exists():
        fit([args.video], model_path, None, options=FitOptions(stop=args.fit_frames, device=args.device), overwrite=True)
    clock = Clock()
    start = time.perf_counter()
    summary = score([args.video], model_path, args.work / "scores", options=ScoreOptions(batch_size=args.batch_size, device=args.device), progress=clock)
    wall = time.perf_counter() - start
    steady = (clock.frames - 1) / (clock.last - clock.first)
    model, _ = load_model(open_store(model_path), device=args.device)
    raw = backbone_fps(model, args.batch_size, seconds=20)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, input {model.input_hw[0]}x{model.input_hw[1]}, batch {args.batch_size}")
    print(f"end-to-end score: {steady:.2f} frames/s steady state ({sum(summary.frames.values())} frames; whole call {wall:.1f} s incl. model load)")
    print(f"raw backbone forward: {raw:.2f} frames/s")
    print(f"ratio: {steady / raw:.3f} (target >= 0.85)")


if __name__ == "__main__":
    main()
