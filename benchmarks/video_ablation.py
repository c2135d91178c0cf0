"""The ablation that chose the video defaults: on UCSD Ped2 (fit on training/frames, test clips
01-06), the frame AUROC pooled over clips and per clip, and the pixel AUROC, for each cue
alone and together, with and without the causal filter of frame scores.

    python benchmarks/video_ablation.py --model ped2-knn.zarr [--model ped2-padim.zarr] [--data ../shared/data/ucsd_ped2]

Each model's distances on the test frames are computed once (the library's own extractor,
tracker and scorer, as ``score`` runs them); a cue left out counts at its normal level, as
``--branch`` does; frame scores are the default top-1 % mean of the normalised map, then the
causal exponential filter of each time constant (pts: frame index / 25, as frame folders read).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FILTERS_S = (0.0, 0.1, 0.2, 0.4)


def distances_of(model: object, frames_dir: Path, clips: list[str]) -> dict[str, tuple[list[object], torch.Tensor]]:
    """Per clip: the frame refs and the (T, C, P) distances, in frame order."""
    from streamad.frames import FeatureBatch, FrameRef
    from streamad.io.sources import resolve_sources

    out = {}
    for clip in clips:
        (source,) = resolve_sources([str(frames_dir / clip)])
        tracker = model.tracker()  # type: ignore[attr-defined]
        refs, parts, batch = [], [], []
        for frame in list(source.frames()) + [None]:
            if frame is not None:
                batch.append(frame)
            if batch and (frame is None or len(batch) == 16):
                images = [f.image for f in batch]
                features = model.prepare(model.extractor.extract(images))  # type: ignore[attr-defined]
                prepared = FeatureBatch(tuple(FrameRef(f.source_id, f.index, f.pts_s) for f in batch), features, tuple(images))
                prepared = tracker(prepared) if tracker is not None else prepared
                parts.append(model.distances(prepared.features).cpu())  # type: ignore[attr-defined]
                refs += prepared.refs
                batch = []
        out[clip] = (refs, torch.cat(parts))
    return out


def evaluate(model: object, measured: dict[str, tuple[list[object], torch.Tensor]], data: Path, labels: dict[str, list[int]], keep: tuple[str, ...]) -> dict:
    from sklearn.metrics import roc_auc_score

    from streamad.config import FrameScoreConfig
    from streamad.evaluation.metrics import PixelMetrics
    from streamad.maps import CausalSmoother

    cues = model.cues  # type: ignore[attr-defined]
    mask = torch.tensor([c in keep for c in cues]).view(1, -1, 1)
    pooled, pixels = {}, PixelMetrics()
    for clip, (refs, distances) in measured.items():
        kept = torch.where(mask, distances, torch.full_like(distances, float("nan")))
        scores = []
        for at in range(0, len(refs), 64):
            results = model.results(refs[at : at + 64], kept[at : at + 64].to(model.device), frame_score=FrameScoreConfig(smooth_s=0.0))  # type: ignore[attr-defined]
            for r in results:
                scores.append(r.score)
                truth = cv2.imread(str(data / "testing" / "masks" / clip / f"{r.ref.index:03d}.png"), cv2.IMREAD_GRAYSCALE) > 127
                pixels.add(cv2.resize(r.anomaly_map, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR), truth)
        pooled[clip] = (np.asarray(scores), [r.pts_s for r in refs])
    row: dict[str, object] = {"cues": "+".join(keep), "pixel_auroc": round(pixels.result().auroc, 4)}
    for time_s in FILTERS_S:
        per_clip, every_s, every_y = {}, [], []
        for clip, (scores, pts) in pooled.items():
            smoother = CausalSmoother(time_s) if time_s else None
            s = np.asarray([smoother(clip, p, v) for p, v in zip(pts, scores, strict=True)]) if smoother else scores
            per_clip[clip] = round(roc_auc_score(labels[clip], s), 3)
            every_s.append(s)
            every_y += labels[clip]
        row[f"filter {time_s:g} s"] = {"pooled": round(roc_auc_score(every_y, np.concatenate(every_s)), 4), "per_clip": per_clip}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ucsd_ped2")
    parser.add_argument("--model", type=Path, action="append", required=True)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from streamad.engine.scoring import load_model

    labels = json.loads((args.data / "testing" / "frame_labels.json").read_text())
    for path in args.model:
        model = load_model(path, device="cpu", weights=None)
        measured = distances_of(model, args.data / "testing" / "frames", sorted(labels))
        cues = model.cues
        for size in range(1, len(cues) + 1):
            for keep in itertools.combinations(cues, size):
                print(json.dumps({"model": path.name, **evaluate(model, measured, args.data, labels, keep)}), flush=True)


if __name__ == "__main__":
    main()
