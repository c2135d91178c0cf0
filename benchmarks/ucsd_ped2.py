"""UCSD Ped2 with default settings: fit on training/frames, score testing/frames, report
pixel AUROC (anomaly maps vs masks) and frame AUROC (CSV scores vs frame_labels.json, pooled
over clips 01-06, no per-clip normalisation), per clip too.

    python benchmarks/ucsd_ped2.py [--data ../shared/data/ucsd_ped2] [--work /tmp/ped2] [--method padim --method soe]

Runs the real commands (``streamad fit``, ``streamad score``) and reads their outputs.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]


def evaluate(data: Path, out: Path) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from streamad.stores.score_store import open_scores, read_source

    labels = json.loads((data / "testing" / "frame_labels.json").read_text())
    rows = list(csv.DictReader(open(out / "scores.csv")))
    by_clip: dict[str, dict[int, float]] = {}
    for row in rows:
        by_clip.setdefault(row["source"], {})[int(row["index"])] = float(row["score"])
    y, s, per_clip = [], [], {}
    for clip, lab in sorted(labels.items()):
        scores = [by_clip[clip][i] for i in range(len(lab))]
        per_clip[clip] = round(roc_auc_score(lab, scores), 3)
        y += lab
        s += scores
    store, _ = open_scores(out / "scores.zarr")
    pix_y, pix_s = [], []
    for clip in sorted(labels):
        maps = read_source(store, clip, with_maps=True).maps[:]
        for i in range(len(labels[clip])):
            mask = cv2.imread(str(data / "testing" / "masks" / clip / f"{i:03d}.png"), cv2.IMREAD_GRAYSCALE) > 127
            resized = cv2.resize(maps[i].astype(np.float32), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
            pix_y.append(mask.ravel())
            pix_s.append(resized.ravel())
    return {
        "frame_auroc": round(roc_auc_score(y, s), 4),
        "pixel_auroc": round(roc_auc_score(np.concatenate(pix_y), np.concatenate(pix_s)), 4),
        "per_clip_frame_auroc": per_clip,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ucsd_ped2")
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-ped2"))
    parser.add_argument("--method", action="append", default=None)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("streamad"))
    for method in args.method or ["padim", "soe"]:
        model, out = args.work / f"{method}.zarr", args.work / f"{method}-scores"
        commands = [
            [exe, "fit", str(args.data / "training" / "frames"), "-m", str(model), "--method", method, "--overwrite", "-q"],
            [exe, "score", str(args.data / "testing" / "frames"), "-m", str(model), "-o", str(out), "-q"],
        ]
        timings = []
        for command in commands:
            start = time.perf_counter()
            subprocess.run(command, check=True)
            timings.append(round(time.perf_counter() - start, 1))
        result = {"method": method, **evaluate(args.data, out), "fit_s": timings[0], "score_s": timings[1]}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
