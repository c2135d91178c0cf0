"""Frames/s of one fitted model's whole scoring graph (frames at the input size to maps and
frame scores) in each runtime, on this machine: PyTorch (the module ``streamad export`` traces,
eager), onnxruntime on the exported ONNX file, OpenVINO on the exported IR (float32, and its
default precision, bfloat16 where the CPU has it), all on the same frames and thread count.
Decoding, resizing and writing are not in it: this is the stage ``--runtime`` would replace.

    python benchmarks/export_runtimes.py [--video ../shared/data/videos/vtest.avi] [--method padim] [--frames 200] [--batch 8]

Prints one line per runtime (frames/s, and the ratio to PyTorch) and the largest relative
difference of its maps and scores from PyTorch's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(run, frames: np.ndarray, batch: int) -> tuple[float, tuple[np.ndarray, np.ndarray]]:  # noqa: ANN001
    run(frames[:batch])  # warm-up (first-call allocation, compilation)
    outputs, start = [], time.perf_counter()
    for at in range(0, len(frames), batch):
        outputs.append(run(frames[at : at + batch]))
    seconds = time.perf_counter() - start
    return len(frames) / seconds, (np.concatenate([o[0] for o in outputs]), np.concatenate([o[1] for o in outputs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "videos" / "vtest.avi"))
    parser.add_argument("--method", default="padim")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-runtimes"))
    args = parser.parse_args()

    import onnxruntime as ort
    import openvino as ov
    import torch

    from streamad.config import FrameScoreConfig
    from streamad.engine.scoring import load_model
    from streamad.io.sources import resolve_sources
    from streamad.scoring_graph import ScoringGraph

    args.work.mkdir(parents=True, exist_ok=True)
    store = args.work / f"{args.method}.zarr"
    cli = [sys.executable, "-m", "streamad"]
    if not (store / "zarr.json").exists():
        subprocess.run([*cli, "fit", args.video, "-m", str(store), "--method", args.method, "--motion", "off", "--stop", "300", "-q"], check=True)
    for fmt, name in (("onnx", "m.onnx"), ("openvino", "m.xml")):
        subprocess.run([*cli, "export", "-m", str(store), "-o", str(args.work / name), "--format", fmt], check=True, capture_output=True)
    model = load_model(store, device="cpu", weights=None)
    source = resolve_sources([args.video])[0]
    frames = np.stack([model.extractor.resize(f.image) for f, _ in zip(source.frames(), range(args.frames), strict=False)])
    threads = torch.get_num_threads()
    graph = ScoringGraph(model, model.settled(FrameScoreConfig())).eval()

    def torch_run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            maps, scores = graph(torch.from_numpy(batch))
        return maps.numpy(), scores.numpy()

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(args.work / "m.onnx"), options)
    core = ov.Core()
    exact = core.compile_model(str(args.work / "m.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    default = core.compile_model(str(args.work / "m.xml"), "CPU", {"INFERENCE_NUM_THREADS": threads})
    runs = {
        "pytorch (eager)": torch_run,
        "onnxruntime": lambda b: tuple(session.run(["maps", "scores"], {"frames": b})),
        "openvino f32": lambda b: (lambda o: (o["maps"], o["scores"]))(exact({"frames": b})),
        "openvino default precision": lambda b: (lambda o: (o["maps"], o["scores"]))(default({"frames": b})),
    }
    print(f"{args.method} on {Path(args.video).name}: {len(frames)} frames at {model.input_hw[0]}x{model.input_hw[1]}, batch {args.batch}, {threads} threads")
    base_fps, (base_maps, base_scores) = timed(torch_run, frames, args.batch)
    for name, run in runs.items():
        fps, (maps, scores) = (base_fps, (base_maps, base_scores)) if name.startswith("pytorch") else timed(run, frames, args.batch)
        error = max(float(np.abs(maps - base_maps).max() / np.abs(base_maps).max()), float(np.abs(scores - base_scores).max() / np.abs(base_scores).max()))
        print(f"  {name:28s} {fps:7.1f} frames/s  {fps / base_fps:5.2f}x  max relative difference {error:.1e}")


if __name__ == "__main__":
    main()
