"""Start-up cost of the command line: ``streamad --help`` and ``streamad COMMAND --help`` as whole
processes (median of N runs), and which heavy libraries each loads.

    python benchmarks/startup.py [--runs 7]

Target: ``streamad --help`` under 1 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

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
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("streamad"))
    print(f"python -c pass: {timed([sys.executable, '-c', 'pass'], args.runs):.3f} s (the interpreter alone)")
    for extra in ([], ["fit"], ["score"], ["watch"]):
        seconds = timed([exe, *extra, "--help"], args.runs)
        print(f"streamad {' '.join(extra + ['--help'])}: {seconds:.3f} s median of {args.runs}; loads {loaded([*extra, '--help']) or 'no heavy library'}")


if __name__ == "__main__":
    main()
