"""padim against the position-free memory bank (knn) on a rotated and shifted copy of
hazelnut_toy, as the PaDiM paper's Rd-MVTec: every image (training and test alike) is rotated
by a random angle in [-10, 10] degrees and cropped at a random place to 7/8 of its side, its
mask with it (numpy default_rng(0), one draw per image in name order). A per-position model sees
the part move; a memory bank judges patches wherever they are.

    python benchmarks/rotated_hazelnut.py [--data ../shared/data] [--work /tmp/streamad-rd] [--method padim --method knn]

Prints the commands, one JSON row per method and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAX_DEGREES, KEEP = 10.0, 7 / 8


def rotate_and_crop(image: np.ndarray, angle: float, corner: tuple[float, float], *, nearest: bool) -> np.ndarray:
    """``image`` rotated by ``angle`` degrees about its centre, then a square of KEEP of its
    sides cut at ``corner`` (fractions of the room left)."""
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    rotated = cv2.warpAffine(image, turn, (w, h), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ch, cw = int(h * KEEP), int(w * KEEP)
    y, x = int(corner[0] * (h - ch)), int(corner[1] * (w - cw))
    return rotated[y : y + ch, x : x + cw]


def make_copy(source: Path, out: Path) -> Path:
    """The rotated copy of an MVTec-layout folder whose masks share the images' names."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(0)
    for image_path in sorted(p for p in (source / "train").rglob("*") if p.is_file()) + sorted(p for p in (source / "test").rglob("*") if p.is_file()):
        angle, corner = float(rng.uniform(-MAX_DEGREES, MAX_DEGREES)), (float(rng.uniform()), float(rng.uniform()))
        relative = image_path.relative_to(source)
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), rotate_and_crop(cv2.imread(str(image_path)), angle, corner, nearest=False))
        mask = source / "ground_truth" / relative.parts[1] / relative.with_suffix(".png").name
        if relative.parts[0] == "test" and mask.is_file():
            (out / "ground_truth" / relative.parts[1]).mkdir(parents=True, exist_ok=True)
            moved = rotate_and_crop(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE), angle, corner, nearest=True)
            cv2.imwrite(str(out / "ground_truth" / relative.parts[1] / mask.name), moved)
    return out


def run(command: list[str]) -> float:
    print("$ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-rd"))
    parser.add_argument("--method", action="append", default=None)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("streamad"))
    copy = make_copy(args.data / "hazelnut_toy", args.work / "hazelnut_rd")
    rows = []
    for method in args.method or ["padim", "knn"]:
        model, report = args.work / f"rd-{method}.zarr", args.work / f"rd-{method}-report"
        fit_s = run([exe, "fit", str(copy), "-m", str(model), "--method", method, "--overwrite", "-q"])
        run([exe, "eval", str(copy), "-m", str(model), "-o", str(args.work / f"rd-{method}-scores"), "--report", str(report), "-q"])
        overall = json.loads((report / "metrics.json").read_text())["overall"]
        row = {"method": method, **{k: overall.get(k) for k in ("auroc", "pixel_auroc", "aupro")}, "fit_s": round(fit_s, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| hazelnut_toy, rotated and shifted | image AUROC | pixel AUROC | AUPRO@0.3 | fit s |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['auroc']:.3f} | {row['pixel_auroc']:.3f} | {row['aupro']:.3f} | {row['fit_s']} |")


if __name__ == "__main__":
    main()
