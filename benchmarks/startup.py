"""Start-up cost of the command line: ``streamad --help`` and ``streamad COMMAND --help`` as whole
processes (median of N runs), and which heavy libraries each loads; then how soon ``streamad
score`` on a small input (the first 8 frames of a video, with a model fitted on its first 100
frames at the default input size) scores its first frame, counted from the process's start (the
command logs it with ``-v``), beside ``import torch`` alone.

    python benchmarks/startup.py [--runs 7] [--video ../shared/data/videos/vtest.avi]

Targets: ``streamad --help`` under 1 s; the first frame scored within 1.5 s of the command
starting, on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "zarr", "av", "cv2", "kornia", "numpy")


def timed(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loaded(args: list[str]) -> list[str]:
    probe = f"import sys; from streamad.cli import main\ntry: main({args!r})\nexcept SystemExit: pass\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    return eval(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])  # noqa: S307


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "videos" / "vtest.avi"))
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("streamad"))
    print(f"python -c pass: {timed([sys.executable, '-c', 'pass'], args.runs):.3f} s (the interpreter alone)")
    for extra in ([], ["fit"], ["score"], ["watch"]):
        seconds = timed([exe, *extra, "--help"], args.runs)
        print(f"streamad {' '.join(extra + ['--help'])}: {seconds:.3f} s median of {args.runs}; loads {loaded([*extra, '--help']) or 'no heavy library'}")
    print(f"python -c 'import torch': {timed([sys.executable, '-c', 'import torch'], args.runs):.3f} s median of {args.runs}")
    first_scored(exe, args.video, args.runs)


def first_scored(exe: str, video: str, runs: int) -> None:
    """Median seconds from the process's start to ``score``'s first scored frame, and the whole
    command's wall time."""
    work = Path(tempfile.mkdtemp(prefix="streamad-startup-"))
    subprocess.run([exe, "fit", video, "--stop", "100", "-m", str(work / "m.zarr"), "-q"], check=True, capture_output=True)
    firsts, walls = [], []
    for i in range(runs):
        start = time.perf_counter()
        done = subprocess.run([exe, "score", "-v", video, "--stop", "8", "-m", str(work / "m.zarr"), "-o", str(work / f"s{i}")], capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        match = re.search(r"first frame scored ([\d.]+) s after the process started", done.stderr)
        if done.returncode != 0 or match is None:
            raise SystemExit(f"score failed or did not log its first frame: {done.stderr[-500:]}")
        firsts.append(float(match.group(1)))
    print(
        f"streamad score (8 frames of {Path(video).name}): first frame scored {statistics.median(firsts):.2f} s after the process started "
        f"(median of {runs}; target <= 1.5 s); whole command {statistics.median(walls):.2f} s"
    )


if __name__ == "__main__":
    main()
