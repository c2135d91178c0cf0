"""The report of an evaluation: metrics as Markdown and JSON, ROC and PRO curves, score
histograms and the worst cases (pictures from :mod:`streamad.plots`), and summaries over
categories or folds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamad import pictures, plots
from streamad.evaluation.ground_truth import GroundTruth
from streamad.io.sources import read_image
from streamad.stores.score_store import open_scores


@dataclass(frozen=True, slots=True)
class Case:
    """A frame kept for the report's picture of worst cases."""

    source: str
    index: int
    score: float
    label: bool
    path: str


@dataclass(slots=True)
class Evaluation:
    """The numbers (``metrics``, JSON-ready) and what the report's pictures need."""

    metrics: dict[str, Any]
    roc: dict[str, tuple[np.ndarray, np.ndarray]]
    pro: tuple[np.ndarray, np.ndarray] | None  # (fpr, PRO), or (fpr, sPRO) for MVTec LOCO
    scores: tuple[np.ndarray, np.ndarray]
    worst_normal: list[Case]
    missed: list[Case]
    store: str
    truth: GroundTruth | None = None  # the masks the report's worst cases are outlined with


def rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def summarise(results: dict[str, dict[str, Any]], report_dir: str | Path | None, *, kind: str = "categories", column: str = "category") -> str:
    """The summary table over categories (or folds: ``kind``, rows named in ``column``) and
    their mean; with a report folder also its ``metrics.md`` and ``metrics.json``
    ``{kind: ..., "mean": ...}``."""
    summary = summary_markdown(results, first_column=column)
    if report_dir is not None:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        (Path(report_dir) / "metrics.md").write_text(summary)
        mean = mean_row({name: m["overall"] for name, m in results.items()})
        (Path(report_dir) / "metrics.json").write_text(json.dumps({kind: results, "mean": mean}, indent=2))
    return summary


def mean_row(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean of each metric over categories (those that have it)."""
    out: dict[str, Any] = {}
    for key in ("auroc", "pixel_auroc", "aupro", "spro"):
        values = [r[key] for r in rows.values() if r.get(key) is not None]
        out[key] = rounded(float(np.mean(values))) if values else None
    return out


def region_metric(metrics: dict[str, Any]) -> tuple[str, str]:
    """(key, column title) of the set's region metric: sPRO for MVTec LOCO, else AUPRO."""
    key = "spro" if "spro" in metrics["overall"] else "aupro"
    return key, f"{'sPRO' if key == 'spro' else 'AUPRO'}@{metrics['max_fpr']:g}"


def markdown(metrics: dict[str, Any]) -> str:
    """The metrics as a Markdown table (one row per group, then the overall row)."""
    level = metrics["level"]
    pixel = "pixel_auroc" in metrics["overall"]
    key, title = region_metric(metrics)
    head = ["", f"{level} AUROC", "frames", "anomalous"] + (["pixel AUROC", title] if pixel else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(value: Any) -> str:
        return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))

    for name, row in [*metrics["groups"].items(), ("**overall**", metrics["overall"])]:
        cells = [name, fmt(row["auroc"]), fmt(row["frames"]), fmt(row["anomalous"])] + ([fmt(row.get("pixel_auroc")), fmt(row.get(key))] if pixel else [])
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"\n\n{metrics['frames_evaluated']} of {metrics['frames_labelled']} labelled frames evaluated"]
    if metrics.get("every", 1) != 1:
        notes.append(f" (every {metrics['every']}-th frame, as scored)")
    if metrics.get("normal_images") == "validation":
        notes.append("; the normal test images are validation/good (the set has no test/good)")
    if key == "spro":
        notes.append(
            f". Pixel metrics compare maps resized to each image's size with its masks; sPRO (per annotated defect, saturated) is integrated "
            f"over the false-positive rate of the defect-free images' pixels to {metrics['max_fpr']:g} and normalised.\n"
        )
    else:
        limit = metrics["max_fpr"]
        notes.append(f". Pixel metrics compare maps resized to each image's size with its mask; AUPRO is integrated to FPR {limit:g} and normalised.\n")
    return "\n".join(lines) + "".join(notes) + papers_markdown(metrics)


def papers_markdown(metrics: dict[str, Any]) -> str:
    """The papers' protocol, clearly apart (video only): not what a live camera gets."""
    papers = metrics.get("papers_protocol")
    if not papers:
        return ""
    clips = ", ".join(f"{name} {value:.4f}" if value is not None else f"{name} -" for name, value in papers["groups"].items())
    overall = "-" if papers["auroc"] is None else f"{papers['auroc']:.4f}"
    return (
        f"\nPapers' protocol (for comparison with published tables only; not causal): per-clip min-max normalisation and a non-causal "
        f"Gaussian of sigma {papers['sigma']:g} frames over the unfiltered frame scores: frame AUROC **{overall}** (per clip: {clips}).\n"
    )


def write_report(evaluation: Evaluation, report_dir: str | Path) -> list[str]:
    """``metrics.json``, ``metrics.md``, ROC and PRO curves, a score histogram and ``worst.png``:
    the highest-scored normal frames (would-be false positives) and the lowest-scored anomalies
    (the first to be missed), with their maps. Returns the files written."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json", out / "metrics.md"]
    written[0].write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
    written[1].write_text(markdown(evaluation.metrics))
    if evaluation.roc:
        plots.roc(evaluation.roc, out / "roc.png")
        written.append(out / "roc.png")
    if evaluation.pro is not None:
        fpr, overlap = evaluation.pro
        keep = fpr <= evaluation.metrics["max_fpr"]
        key, _ = region_metric(evaluation.metrics)
        area = evaluation.metrics["overall"].get(key) or 0.0
        name = "sPRO" if key == "spro" else "PRO"
        plots.pro(fpr[keep], overlap[keep], out / "pro.png", max_fpr=evaluation.metrics["max_fpr"], label=f"{name} (area {area:.3f})", saturated=key == "spro")
        written.append(out / "pro.png")
    scores, labels = evaluation.scores
    if scores.size:
        plots.histogram({"normal": scores[~labels], "anomalous": scores[labels]}, out / "histogram.png", title=f"{evaluation.metrics['level']} scores")
        written.append(out / "histogram.png")
    tiles = worst_tiles(evaluation)
    if tiles:
        plots.grid(tiles, out / "worst.png", columns=3)
        written.append(out / "worst.png")
    return [str(p) for p in written]


def worst_tiles(evaluation: Evaluation) -> list[tuple[np.ndarray, str]]:
    """Each worst case as the image (ground truth outlined in green) beside its heat map, the
    maps on one colour scale, so a missed anomaly still shows where the model looked."""
    store, _ = open_scores(evaluation.store)
    sources = {s.source_id: s for s in evaluation.truth.sources} if evaluation.truth is not None else {}
    indices: dict[str, np.ndarray] = {}  # each source's frame indices, read once
    cases = []
    for kind, chosen in (("top normal", evaluation.worst_normal), ("lowest anomaly", evaluation.missed)):
        for frame in chosen:
            image = read_image(Path(frame.path))
            if image is None:
                continue
            anomaly_map = None
            if store.exists(f"{frame.source}/map"):
                if frame.source not in indices:
                    indices[frame.source] = store.read(f"{frame.source}/index")
                row = int(np.searchsorted(indices[frame.source], frame.index))
                anomaly_map = np.asarray(store.read_rows(f"{frame.source}/map", row, row + 1)[0], np.float32)
            labelled = sources.get(frame.source)
            mask = labelled.mask_of(frame.index) if labelled is not None and labelled.mask_of is not None else None
            cases.append((kind, frame, image, anomaly_map, mask))
    maps = [m for *_, m, _ in cases if m is not None]
    low = min((float(np.quantile(m, 0.05)) for m in maps), default=0.0)
    high = max((float(m.max()) for m in maps), default=1.0)
    tiles = []
    for kind, frame, image, anomaly_map, mask in cases:
        shown = pictures.outline(image, mask) if mask is not None else image
        if anomaly_map is not None:
            heat = pictures.heatmap(anomaly_map, image.shape[:2], vmin=low, vmax=max(high, low + 1e-6))
            shown = np.concatenate([shown, np.full((image.shape[0], 4, 3), 255, np.uint8), pictures.outline(heat, mask) if mask is not None else heat], axis=1)
        tiles.append((shown, f"{kind}: {frame.source}/{Path(frame.path).name} {frame.score:.3g}"))
    return tiles


def summary_markdown(per_category: dict[str, dict[str, Any]], *, first_column: str = "category") -> str:
    """One row per category (or fold: its overall metrics) and their mean."""
    rows = {name: m["overall"] for name, m in per_category.items()}
    first = next(iter(per_category.values()), None)
    level = first["level"] if first else "image"
    key, title = region_metric(first) if first else ("aupro", "AUPRO@0.3")
    lines = [f"| {first_column} | {level} AUROC | pixel AUROC | {title} |", "|---|---|---|---|"]

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    for name, row in [*rows.items(), ("**mean**", mean_row(rows))]:
        lines.append(f"| {name} | {fmt(row.get('auroc'))} | {fmt(row.get('pixel_auroc'))} | {fmt(row.get(key))} |")
    return "\n".join(lines) + "\n"
