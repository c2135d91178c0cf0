"""``streamad eval`` on the real data in ../shared/data, for padim and soe (and pfm, pefm with
``--method``): UCSD Ped2 (clips 01-06), magnetic tile (MT_Free split into train/test with a fixed
seed; the five defect classes as anomalies, with their masks), hazelnut_toy (MVTec layout) and
KolektorSDD, MVTec LOCO juice_bottle (image AUROC per anomaly type, pixel AUROC, sPRO@0.05) and
the KolektorSDD 3-fold protocol (``kolektorsdd_folds``: ``eval --folds 3``). Prints the exact commands, each fit's wall time and peak memory (max RSS of the
fit process), and a Markdown table.

    python benchmarks/eval_real.py [--data ../shared/data] [--work /tmp/streamad-eval] [--method padim] [--set ucsd_ped2] [--epochs N]

``--epochs`` caps the training epochs of trained methods (pfm, pefm, ae-*); the rows say so.

The KolektorSDD split is built the same way: the defect-free parts (all-zero label) of kos01-25,
named ``kosNN_PartK``, shuffled with default_rng(0); the first 30 % are test/good, the rest
train/good; every part with a crack is test/crack, its label as the mask.

The magnetic-tile split is a folder of symlinks in MVTec AD layout under --work: MT_Free's images
in name order, shuffled with numpy's default_rng(0); the first 20 % are test/good, the rest
train/good; every image of the defect classes is test/<class> with its mask as
ground_truth/<class>/<stem>.png. Its images come in many sizes and aspect ratios, so the input
size is fixed at 256x256.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFECTS = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
TEST_FRACTION, SEED = 0.2, 0
KOLEKTOR_TEST_FRACTION = 0.3


def magnetic_tile_split(data: Path, out: Path) -> Path:
    """The MVTec-layout folder of symlinks described above (rebuilt each time)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    free = sorted((data / "MT_Free" / "Imgs").glob("*.jpg"))
    order = np.random.default_rng(SEED).permutation(len(free))
    n_test = int(round(TEST_FRACTION * len(free)))
    for rank, i in enumerate(order):
        target = out / ("test" if rank < n_test else "train") / "good" / free[i].name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(free[i].resolve())
    for defect in DEFECTS:
        for image in sorted((data / f"MT_{defect}" / "Imgs").glob("*.jpg")):
            for folder, source in ((out / "test" / defect, image), (out / "ground_truth" / defect, image.with_suffix(".png"))):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / source.name).symlink_to(source.resolve())
    return out


def kolektor_split(data: Path, out: Path) -> Path:
    """The MVTec-layout folder of symlinks for KolektorSDD described above (rebuilt each time)."""
    import shutil

    import cv2

    shutil.rmtree(out, ignore_errors=True)
    parts = sorted((data / "kolektorsdd").glob("kos*/Part*.jpg"))
    good = [p for p in parts if not cv2.imread(str(p.with_name(p.stem + "_label.png")), cv2.IMREAD_GRAYSCALE).any()]
    order = np.random.default_rng(SEED).permutation(len(good))
    n_test = int(round(KOLEKTOR_TEST_FRACTION * len(good)))
    links = [(out / ("test" if rank < n_test else "train") / "good", good[i]) for rank, i in enumerate(order)]
    for part in sorted(set(parts) - set(good)):
        links += [(out / "test" / "crack", part), (out / "ground_truth" / "crack", part.with_name(part.stem + "_label.png"))]
    for folder, source in links:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{source.parent.name}_{source.stem.removesuffix('_label')}{source.suffix}"
        (folder / name).symlink_to(source.resolve())
    return out


def run(command: list[str]) -> tuple[float, float]:
    """Run a command; its wall seconds and peak resident memory in GB."""
    print("$ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise subprocess.CalledProcessError(status, command)
    return time.perf_counter() - start, usage.ru_maxrss / 1e6  # Linux: kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/streamad-eval"))
    parser.add_argument("--method", action="append", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs of trained methods (default: the method's schedule)")
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("streamad"))
    args.work.mkdir(parents=True, exist_ok=True)
    sets = {
        "ucsd_ped2": (args.data / "ucsd_ped2" / "training" / "frames", args.data / "ucsd_ped2", []),
        "magnetic_tile": (None, None, ["--input-size", "256x256"]),
        "hazelnut_toy": (args.data / "hazelnut_toy", args.data / "hazelnut_toy", []),
        "kolektorsdd": (None, None, []),
        "mvtec_loco_juice_bottle": (args.data / "mvtec_loco_juice_bottle" / "train" / "good", args.data / "mvtec_loco_juice_bottle", []),
    }
    rows = []
    for name in args.sets or list(sets):
        if name == "kolektorsdd_folds":
            rows += [fold_rows(exe, args.data / "kolektorsdd", args.work, method) for method in args.method or ["padim", "soe"]]
            continue
        train, test, extra = sets[name]
        if name == "magnetic_tile":
            test = magnetic_tile_split(args.data / "magnetic_tile", args.work / "magnetic_tile_split")
            train = test
        if name == "kolektorsdd":
            test = train = kolektor_split(args.data, args.work / "kolektorsdd_split")
        for method in args.method or ["padim", "soe"]:
            model, out, report = (args.work / f"{name}-{method}{suffix}" for suffix in (".zarr", "-scores", "-report"))
            trained = method in TRAINED and args.epochs is not None
            epochs = ["--epochs", str(args.epochs)] if trained else []
            fit_s, fit_gb = run([exe, "fit", str(train), "-m", str(model), "--method", method, "--overwrite", "-q", *extra, *epochs])
            eval_s, _ = run([exe, "eval", str(test), "-m", str(model), "-o", str(out), "--report", str(report), "-q"])
            metrics = json.loads((report / "metrics.json").read_text())
            overall = metrics["overall"]
            row = {"set": name, "method": method, "level": metrics["level"], **{k: overall.get(k) for k in ("auroc", "pixel_auroc", "aupro", "spro")}}
            row["groups"] = {g: r["auroc"] for g, r in metrics["groups"].items()}
            row.update(fit_s=round(fit_s, 1), fit_peak_gb=round(fit_gb, 2), eval_s=round(eval_s, 1), epochs=args.epochs if trained else None)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| data | method | image/frame AUROC | pixel AUROC | AUPRO@0.3 / sPRO@0.05 | fit s | fit peak GB |\n|---|---|---|---|---|---|---|")
    for row in rows:
        region = "aupro" if row.get("aupro") is not None else "spro"
        cells = [f"{row[k]:.3f}" if row.get(k) is not None else "-" for k in ("auroc", "pixel_auroc", region)]
        method = row["method"] + (f" ({row['epochs']} epochs)" if row.get("epochs") else "")
        print(f"| {row['set']} ({row['level']}) | {method} | " + " | ".join(cells) + f" | {row['fit_s']} | {row['fit_peak_gb']} |")


TRAINED = ("pfm", "pefm", "ae-l2", "ae-ssim", "gcad")


def fold_rows(exe: str, data: Path, work: Path, method: str) -> dict[str, object]:
    """``eval --folds 3`` on KolektorSDD: per fold and mean image and pixel AUROC (the wall time
    covers the three fits and evaluations)."""
    report = work / f"kolektorsdd_folds-{method}-report"
    seconds, peak = run(
        [exe, "eval", str(data), "--folds", "3", "--method", method, "-o", str(work / f"kolektorsdd_folds-{method}"), "--report", str(report), "-q"]
    )
    metrics = json.loads((report / "metrics.json").read_text())
    folds = {name: {k: m["overall"].get(k) for k in ("auroc", "pixel_auroc")} for name, m in metrics["folds"].items()}
    row = {"set": "kolektorsdd_folds", "method": method, "level": "image", **{k: metrics["mean"].get(k) for k in ("auroc", "pixel_auroc", "aupro")}}
    row.update(folds=folds, fit_s=round(seconds, 1), fit_peak_gb=round(peak, 2))
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
