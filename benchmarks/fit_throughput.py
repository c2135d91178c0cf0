"""Fit throughput: ``streamad fit`` frames/s on a video and on a frame folder beside the raw
backbone's frames/s at the same input size and batch, under the pipeline's own scheduling, and
their ratio.

    python benchmarks/fit_throughput.py [--source PATH ...] [--batch-size 8] [--runs 3] [--method padim] [--fit-arg=--float64-stats]

Fit frames/s is what ``streamad fit`` itself reports: the frames of the sources it read (fitted
and held out) over the seconds of the whole job (model built, fitting pass, factors,
normalisation pass, every commit), after the command's imports (start-up is
``benchmarks/startup.py``'s). The whole command's wall time is printed too.

The raw backbone runs as the fit schedules it (on a CPU: two single-threaded passes at once on
batches of ``--batch-size``), on random input at the model's input size, nothing else running,
right after each fit: on a shared machine its speed drifts by a fifth within minutes, so each
fit is divided by the raw run next to it and the median of those ratios is reported.
Target: ratio >= 0.8 (issue "Fit at the speed of the backbone").
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def fit_fps(source: str, model: Path, batch_size: int, extra: list[str]) -> tuple[float, int, float]:
    """(frames/s as fit reports it, frames read, whole-command seconds)."""
    exe = str(Path(sys.executable).with_name("streamad"))
    start = time.perf_counter()
    command = [exe, "fit", source, "-m", str(model), "--overwrite", "-q", "--batch-size", str(batch_size), *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fit failed on {source}: {done.stderr.strip().splitlines()[-1:]}")
    match = re.search(r"read (\d+) frames .* in ([\d.]+) s: ([\d.]+) frames/s", done.stdout)
    if match is None:
        raise SystemExit(f"no throughput line in fit's output: {done.stdout!r}")
    return float(match.group(3)), int(match.group(1)), wall


def statistics_error(path: Path, exact: Path) -> str:
    """How far a store's co-moments are from another's of the same frames: the largest
    ``|d m2_ij| / sqrt(m2_ii m2_jj)`` and the relative Frobenius norm, over all its cues."""
    import numpy as np

    from streamad.stores.model_store import open_store, read_state

    got, want = read_state(open_store(path)), read_state(open_store(exact))
    assert got is not None and want is not None
    worst, frobenius = 0.0, 0.0
    for name in [n for n in want.arrays if n.endswith("m2")]:
        a, b = want.arrays[name], got.arrays[name]
        diagonal = np.diagonal(a, axis1=-2, axis2=-1)
        worst = max(worst, float((np.abs(b - a) / np.sqrt(diagonal[..., :, None] * diagonal[..., None, :])).max()))
        frobenius = max(frobenius, float(np.linalg.norm(b - a) / np.linalg.norm(a)))
    return f"max |d m2_ij| / sqrt(m2_ii m2_jj) {worst:.2e}, relative Frobenius {frobenius:.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", action="append", default=None, help="video or frame folder (default: vtest.avi and the Ped2 training frames)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--method", default="padim", help="the fit's method (default padim: the Gaussian statistics' update)")
    parser.add_argument("--fit-arg", action="append", default=[], help="more arguments for streamad fit (e.g. --fit-arg=--float64-stats)")
    parser.add_argument("--runs", type=int, default=3, help="fits per source, each followed by a raw backbone run (the median ratio of the pairs is reported)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each raw backbone run lasts")
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-fit-throughput"))
    parser.add_argument("--compare-float64", action="store_true", help="also fit with --float64-stats and print how far the statistics are from it")
    args = parser.parse_args()
    sources = args.source or [str(DATA / "videos" / "vtest.avi"), str(DATA / "ucsd_ped2" / "training" / "frames")]
    args.work.mkdir(parents=True, exist_ok=True)

    import torch
    from throughput import backbone_fps

    from streamad.engine.runtime import thread_plan, tune_allocator
    from streamad.stores.model_store import load, open_store

    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU")
    for i, source in enumerate(sources):
        model_path = args.work / f"m{i}.zarr"
        pairs = []  # (fit frames/s, raw backbone frames/s right after it, whole-command seconds)
        for _ in range(args.runs):
            fps, frames, wall = fit_fps(source, model_path, args.batch_size, ["--method", args.method, *args.fit_arg])
            tune_allocator()  # as scoring runs the backbone
            model = load(open_store(model_path))
            plan = thread_plan(model.device)
            pairs.append((fps, backbone_fps(model, args.batch_size, seconds=args.seconds, workers=plan.workers, threads=plan.threads), wall))
            h, w = model.input_hw
            del model
        print(f"{Path(source).name}: {frames} frames at {h}x{w}, batch {args.batch_size}, {args.method} {' '.join(args.fit_arg)}")
        for fps, raw, wall in pairs:
            print(f"  fit {fps:.1f} frames/s (whole command {wall:.1f} s incl. start-up), raw backbone right after it {raw:.1f}: ratio {fps / raw:.3f}")
        print(f"  raw backbone: {plan.workers} pass(es) at once on {plan.threads} thread(s), {args.seconds:.0f} s each, on random input at {h}x{w}")
        print(f"  median: fit {statistics.median(p[0] for p in pairs):.1f}, raw {statistics.median(p[1] for p in pairs):.1f} frames/s,", end=" ")
        print(f"ratio {statistics.median(p[0] / p[1] for p in pairs):.3f} (median of {args.runs} pairs; target >= 0.8)", flush=True)
        if args.compare_float64:
            exact = args.work / f"m{i}-float64.zarr"
            fps64 = fit_fps(source, exact, args.batch_size, ["--method", args.method, "--float64-stats"])[0]
            print(f"  with --float64-stats: {fps64:.1f} frames/s; the default's statistics against them: {statistics_error(model_path, exact)}", flush=True)


if __name__ == "__main__":
    main()
