"""Fit time and peak memory of a trained scorer beside PaDiM's, on 200 images at 256x256.

    python benchmarks/fit_trained.py [--data ../shared/data] [--method pefm] [--images 200]

The images are the first ``--images`` of magnetic tile's MT_Free in name order (varied sizes,
resized to 256x256 by the fit). Each fit runs in its own process; its wall time and peak
resident memory (max RSS, from wait4) are printed with the machine's CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_real import ROOT, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--method", action="append", default=None)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("streamad"))
    work = Path(tempfile.mkdtemp(prefix="fit-trained-"))
    try:
        folder = work / "images"
        folder.mkdir()
        for image in sorted((args.data / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))[: args.images]:
            (folder / image.name).symlink_to(image.resolve())
        for method in ["padim", *(args.method or ["pefm"])]:
            seconds, peak = run([exe, "fit", str(folder), "-m", str(work / f"{method}.zarr"), "--method", method, "--input-size", "256x256", "-q"])
            row = {"method": method, "images": args.images, "input": "256x256", "fit_s": round(seconds, 1), "peak_gb": round(peak, 2), "cpus": os.cpu_count()}
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
