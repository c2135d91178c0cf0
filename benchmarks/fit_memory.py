"""Peak RSS of ``streamad fit`` on 100 and on 2000 frames of the same clip (same source type
and input size). Fitting keeps running statistics, not embeddings, so memory must be flat.

    python benchmarks/fit_memory.py [--frames 100 2000] [--work /tmp/streamad-mem]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_clip(path: Path, frames: int) -> None:
    sys.path.insert(0, str(ROOT))
    from streamad.pipelines.demo import make_clip as synth

    synth(path, frames=frames, anomaly_frames=(frames, frames))  # normal only


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Run a command; return (peak RSS in MiB, wall seconds) from the kernel's accounting."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(command)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs=2, default=[100, 2000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-mem"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    clip = args.work / "clip.mp4"
    if not clip.exists():
        make_clip(clip, max(args.frames))
    exe = str(Path(sys.executable).with_name("streamad"))
    results = []
    for n in args.frames:
        rss, wall = peak_rss_mb([exe, "fit", str(clip), "--stop", str(n), "-m", str(args.work / f"m{n}.zarr"), "--overwrite", "-q"])
        results.append(rss)
        print(f"fit on {n:5d} frames: peak RSS {rss:8.1f} MiB, wall {wall:6.1f} s", flush=True)
    print(f"ratio {args.frames[1]}/{args.frames[0]} frames: {results[1] / results[0]:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
