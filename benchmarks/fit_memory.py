"""Peak RSS of ``streamad fit`` (k=100) at 256x256 and 256x336 on 100 and on 2000 frames of the
same generated clip, with a breakdown: the runtime (Python, torch and the other libraries, the
backbone built), the statistics (float64 ``m2`` of every position, held while fitting; the fit
lets go of it for the float32 whitening factors, half its size, before the normalisation pass)
and the rest (the pipeline: frames in flight, backbone activations, buffers, heap slack).
Fitting keeps running statistics, not embeddings, so memory must be flat in the frames.

    python benchmarks/fit_memory.py [--frames 100 2000] [--size 256x256 --size 256x336] [--method knn]

With ``--method knn`` the "statistics" term is the memory bank's budget instead (``--bank-size``
patches of 152 float32 channels, bank and buffer: twice that at most).

Targets (issue "Fit at the speed of the backbone"): ratio 2000/100 <= 1.10; peak <= 1.2 GB at
256x256 and <= 1.5 GB at 256x336.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


def make_clip(path: Path, frames: int) -> None:
    sys.path.insert(0, str(ROOT))
    from streamad.pipelines.demo import make_clip as synth

    synth(path, frames=frames, anomaly_frames=(frames, frames))  # normal only


def peak_rss(command: list[str]) -> tuple[float, float]:
    """Run a command; return (peak RSS in bytes, wall seconds) from the kernel's accounting."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(command)}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


RUNTIME = """
import sys
from streamad.pipelines.fit import fit  # what `streamad fit` imports
from streamad.features.extractor import FeatureExtractor
FeatureExtractor("lite0", input_hw=({h}, {w}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs=2, default=[100, 2000])
    parser.add_argument("--size", action="append", default=None, help="HxW input size (default 256x256 and 256x336)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--method", default="padim")
    parser.add_argument("--bank-size", type=int, default=2500)
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-mem"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    clip = args.work / f"clip{max(args.frames)}.mp4"
    if not clip.exists():
        make_clip(clip, max(args.frames))
    exe = str(Path(sys.executable).with_name("streamad"))
    for size in args.size or ["256x256", "256x336"]:
        h, w = (int(v) for v in size.split("x"))
        positions = ((h + 3) // 4) * ((w + 3) // 4)  # Lite0's stride-4 grid
        statistics = positions * args.k * args.k * 8 if args.method != "knn" else 2 * args.bank_size * 152 * 4  # m2 float64, or bank + buffer
        runtime, _ = peak_rss([sys.executable, "-c", RUNTIME.format(h=h, w=w)])
        peaks = []
        for n in args.frames:
            model = str(args.work / f"m{n}.zarr")
            command = [exe, "fit", str(clip), "--stop", str(n), "-m", model, "--overwrite", "-q", "--input-size", size, "-k", str(args.k)]
            command += ["--method", args.method]
            command += ["--bank-size", str(args.bank_size)] if args.method == "knn" else []
            rss, wall = peak_rss(command)
            peaks.append(rss)
            rest = rss - runtime - statistics
            print(
                f"{size} fit on {n:5d} frames: peak RSS {rss / MB:7.0f} MiB = runtime {runtime / MB:.0f} + statistics {statistics / MB:.0f} "
                f"+ rest {rest / MB:.0f} (pipeline, buffers); wall {wall:5.1f} s",
                flush=True,
            )
        print(f"{size} ratio {args.frames[1]}/{args.frames[0]} frames: {peaks[1] / peaks[0]:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
