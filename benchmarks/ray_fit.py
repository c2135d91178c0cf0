"""A cluster fit's overhead: ``streamad fit`` and ``streamad fit --ray`` on the same frames, as
whole commands, their frames/s and ratio, and the peak memory of each driver process.

    python benchmarks/ray_fit.py [--source PATH ...] [--runs 1]

``--ray`` with no address starts a local Ray instance on this machine's cores for the job (on
the 2-core machine: 2 workers, one shard each), and its start is counted. Frames/s is frames
read (fitted and held out) over the whole command's wall time, start-up included, for both.
The driver's peak RSS is the command's own process (Ray's workers are other processes, started
by Ray, not counted). Target: ratio >= 0.8 (issue
"Scale-out on Ray").
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def run(args: list[str]) -> tuple[float, int, float]:
    """(whole-command seconds, frames read, peak RSS of the command's process in MiB)."""
    exe = str(Path(sys.executable).with_name("streamad"))
    start = time.perf_counter()
    process = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    out, err = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"streamad {' '.join(args)} failed: {err.strip().splitlines()[-1:]}")
    match = re.search(r"read (\d+) frames", out)
    if match is None:
        raise SystemExit(f"no throughput line in fit's output: {out!r}")
    return wall, int(match.group(1)), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", action="append", default=None, help="videos or frame folders (default: the Ped2 training frames)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each command (medians are reported)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-ray-fit"))
    args = parser.parse_args()
    sources = args.source or [str(DATA / "ucsd_ped2" / "training" / "frames")]
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    print(f"machine: {os.cpu_count()} cores; sources: {', '.join(Path(s).name for s in sources)}")
    results = {}
    for name, extra in (("local", []), ("--ray", ["--ray"])):
        runs = [run(["fit", *sources, "-m", str(args.work / f"{name.strip('-')}.zarr"), "--overwrite", "-q", *extra]) for _ in range(args.runs)]
        wall, frames, peak = statistics.median(r[0] for r in runs), runs[0][1], statistics.median(r[2] for r in runs)
        results[name] = frames / wall
        print(
            f"  fit {name:6}: {frames} frames in {wall:.1f} s: {frames / wall:.1f} frames/s; driver peak RSS {peak:.0f} MiB (median of {args.runs})", flush=True
        )
    print(f"  ratio --ray / local: {results['--ray'] / results['local']:.3f} (target >= 0.8)")


if __name__ == "__main__":
    main()
