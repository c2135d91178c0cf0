"""End-to-end ``streamad score`` frames/s on a real video vs the raw backbone forward frames/s at
the same input size, batch and thread count, and their ratio.

    python benchmarks/throughput.py [--video ../shared/data/videos/vtest.avi] [--batch-size 8]

The raw backbone is timed the plain way (one forward at a time on all threads, the issue's
reference) and, when the pipeline runs several backbone passes at once, also that way.

The same is measured for padim models with motion cues (``--motion feat`` and ``both``, feature
motion and optical flow), each as a ratio to appearance only, and for the video defaults
(``knn`` with its ``feat`` and ``speed`` cues and the causal filter: what ``streamad fit`` picks
for a video), as a ratio to appearance-only padim (issue 23's target: at least 0.6), and for the
appearance-only padim model run by each exported runtime (``--runtime onnxruntime``,
``openvino``), as a ratio to the PyTorch path.

End to end = decode + preprocess + backbone + Mahalanobis + maps + blur + writing scores.csv
and float16 maps to scores.zarr, timed in steady state from the first to the last scored frame
(model loading excluded; the whole command's wall time is printed too).
"""

from __future__ import annotations

import argparse
import sys
import time
import types
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

    def note(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


def backbone_fps(model, batch_size: int, seconds: float, *, workers: int, threads: int, graph=None) -> float:  # noqa: ANN001
    """Frames/s of ``workers`` threads each looping the bare backbone forward on ``threads``
    torch threads (nothing else runs); ``graph``: an exported graph's whole pass instead (its
    own threads), on uint8 frames."""
    import threading

    import numpy as np
    import torch

    x = torch.randn(batch_size, 3, *model.input_hw, device=model.device)
    if graph is not None:
        frames = np.random.default_rng(0).integers(0, 256, (batch_size, *model.input_hw, 3), dtype=np.uint8)
        model = types.SimpleNamespace(extractor=lambda _: graph.run(frames))
    counts = [0] * workers
    ready = threading.Barrier(workers + 1)
    stop = [float("inf")]

    def loop(i: int) -> None:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for _ in range(3):
                model.extractor(x)
            ready.wait()
            while time.perf_counter() < stop[0]:
                model.extractor(x)
                counts[i] += batch_size

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for thread in pool:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    stop[0] = start + seconds
    for thread in pool:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


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

    from streamad.config import FrameScoreConfig, ModelConfig
    from streamad.engine.exported import open_exported, pick_runtime
    from streamad.engine.fitting import FitOptions
    from streamad.engine.runtime import set_threads, thread_plan, tune_allocator
    from streamad.engine.scoring import ScoreOptions
    from streamad.pipelines.fit import fit
    from streamad.pipelines.score import score
    from streamad.stores.model_store import load, open_store

    tune_allocator()
    set_threads(args.threads)
    threads = torch.get_num_threads()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    def scored(motion: str, runtime: str = "torch") -> tuple[float, float, int, Path]:
        """Steady-state frames/s, whole-call seconds and frames of `score` with a padim model
        fitted with ``--motion motion`` (``video-defaults``: the fit's own choice for video),
        run by ``runtime`` (``--runtime``; its graph exported and compiled before the clock starts)."""
        model_path = args.work / f"model-{motion}.zarr"
        config = None if motion == "video-defaults" else ModelConfig(motion=motion)
        if not (model_path / "zarr.json").exists():
            fit([args.video], model_path, config, options=FitOptions(stop=args.fit_frames, device=args.device), overwrite=True)
        clock = Clock()
        start = time.perf_counter()
        options = ScoreOptions(batch_size=args.batch_size, device=args.device, runtime=runtime)
        summary = score([args.video], model_path, args.work / f"scores-{motion}-{runtime}", options=options, progress=clock)
        wall = time.perf_counter() - start
        return (clock.frames - 1) / (clock.last - clock.first), wall, sum(summary.frames.values()), model_path

    steady, wall, frames, model_path = scored("off")
    with_motion = {kind: scored(kind)[0] for kind in ("feat", "both")}
    video_defaults = scored("video-defaults")[0]
    runtimes = {}
    for runtime in ("onnxruntime", "openvino"):
        try:
            runtimes[runtime] = scored("off", runtime)[0]
        except Exception as exc:  # noqa: BLE001 - a runtime not installed is reported, not fatal
            print(f"  --runtime {runtime}: not measured ({exc})")
    model = load(open_store(model_path), device=args.device)
    plan = thread_plan(model.device)
    raw = backbone_fps(model, args.batch_size, seconds=20, workers=1, threads=threads)
    default = pick_runtime("auto", model, model.settled(FrameScoreConfig()), stored=True)
    graphs = {}  # the exported graph alone, as the pipeline schedules it
    for runtime in runtimes:
        graph = open_exported(runtime, model_path, model, model.settled(FrameScoreConfig()), stored=open_store(model_path), threads=plan.threads)
        graphs[runtime] = backbone_fps(model, args.batch_size, seconds=20, workers=plan.workers, threads=plan.threads, graph=graph)
    print(f"device {args.device}, torch threads {threads}, input {model.input_hw[0]}x{model.input_hw[1]}, batch {args.batch_size}")
    print(f"end-to-end score: {steady:.2f} frames/s steady state ({frames} frames; whole call {wall:.1f} s incl. model load)")
    for kind, fps in with_motion.items():
        print(f"  with --motion {kind}: {fps:.2f} frames/s, {fps / steady:.3f} of appearance only (target >= 0.75)")
    print(f"  video defaults (knn, --motion feat,speed, 0.1 s filter): {video_defaults:.2f} frames/s, {video_defaults / steady:.3f} of padim (target >= 0.6)")
    for runtime, fps in runtimes.items():
        chosen = " (the default: --runtime auto's pick here)" if runtime == default else ""
        print(f"  padim with --runtime {runtime}{chosen}: {fps:.2f} frames/s, {fps / steady:.2f}x the PyTorch path (target: 1.5x for the default)")
        print(f"    its exported graph alone (frames to maps and scores), {plan.workers} at once on {plan.threads} thread(s): {graphs[runtime]:.2f} frames/s")
    print(f"  (the pipeline ran {plan.workers} backbone pass(es) at once on {plan.threads} thread(s) each)")
    print(f"raw backbone forward, one pass at a time on {threads} threads: {raw:.2f} frames/s")
    print(f"ratio: {steady / raw:.3f} (target >= 0.85)")
    if plan.workers > 1:
        same = backbone_fps(model, args.batch_size, seconds=20, workers=plan.workers, threads=plan.threads)
        print(f"raw backbone forward, {plan.workers} passes at once on {plan.threads} thread(s) each: {same:.2f} frames/s")
        print(f"ratio to that (the pipeline's own scheduling, nothing else running): {steady / same:.3f}")


if __name__ == "__main__":
    main()
