"""A fitted model's scoring as one graph of tensor operations, for ``streamad export``.

The graph takes uint8 frames (N, H, W, 3), RGB, already at the model's input size (``input_hw``
in the metadata), and gives the anomaly maps (N, H, W) and the frame scores (N,) that ``streamad
score`` writes for them: the backbone's normalisation and taps, the scorer's prepare and
distances, the maps (upsampling and blur as two matrix products) and the frame-score pooling,
normalised by the model's held-out normal frames (or raw, with ``raw``). What is left to the
host is what needs frames' order: resizing to the input size, and a video model's causal filter
(``frame_score`` in the metadata: ``smooth_s``). Methods whose spec says ``exportable`` export;
their motion cues do not (they need the frame before). :mod:`streamad.onnx_export` and
:mod:`streamad.openvino_export` write it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import streamad
from streamad.config import FrameScoreConfig
from streamad.errors import ConfigError
from streamad.io.outputs import Staged
from streamad.maps import topk_mean
from streamad.model import Model


class ScoringGraph(nn.Module):
    """A model's scoring, frames to (maps, scores), as one module of tensor operations."""

    def __init__(self, model: Model, frame_score: FrameScoreConfig) -> None:
        super().__init__()
        check_exportable(model, frame_score)
        self.model, self.frame_score = model, frame_score
        # The networks as submodules, so their weights are the graph's initialisers, frozen
        # (a trained scorer's parameters still ask for gradients).
        self.extractor, self.to_map = model.extractor, model.to_map
        for name, value in vars(model.scorer).items():
            if isinstance(value, nn.Module):
                self.add_module(f"scorer_{name}", value)
        self.requires_grad_(False)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        model = self.model
        images = model.extractor.preprocessor.normalise(frames.permute(0, 3, 1, 2))
        distances = model.distances(model.prepare(model.extractor.whole(images)))
        maps, scored = model.scored_maps(distances, model.normalisation if self.frame_score.normalised else None)
        return maps, topk_mean(scored, fraction=self.frame_score.topk_fraction)


def check_exportable(model: Model, frame_score: FrameScoreConfig) -> None:
    """Refuse, in one line, what the graph cannot hold."""
    if not model.spec.exportable:
        exportable = ", ".join(sorted(n for n in _exportable_methods()))
        raise ConfigError(f"expected a model of an exportable method ({exportable}), got {model.config.method!r}, which does not export yet")
    if model.has_motion:
        raise ConfigError(f"expected an appearance-only model to export, got motion cues {model.cues[1:]}; hint: refit with --motion off")
    if frame_score.branch != "both":  # --window and --smooth act on frames in order: the host's (the metadata say them)
        raise ConfigError(f"expected the default --branch to export, got {frame_score.branch!r}; hint: leave it out")
    if frame_score.normalised and model.normalisation is None:
        raise ConfigError("expected a normalised model to export its default frame scores, got none; hint: pass --raw, or fit it to its end")


def _exportable_methods() -> list[str]:
    from streamad.scorers.registry import scorer_names, scorer_spec

    return [name for name in scorer_names() if scorer_spec(name).exportable]


def metadata(model: Model, frame_score: FrameScoreConfig) -> dict[str, str]:
    """What a runtime needs beside the graph, as strings (ONNX ``metadata_props``)."""
    threshold = model.threshold.value if model.threshold is not None else None
    normal = frame_score.normalised and model.normalisation is not None and model.normalisation.normal_scores.size
    return {
        "producer": "streamad",
        "streamad_version": streamad.__version__,
        "method": model.config.method,
        "backbone": model.config.backbone,
        "weights_sha256": model.extractor.weights_sha256,
        "input_hw": json.dumps(list(model.input_hw)),
        "input": "uint8 RGB frames (N, H, W, 3) at input_hw",
        "outputs": "maps (N, H, W) float32, scores (N,) float32",
        "frame_score": json.dumps(frame_score.attrs()),
        "threshold": json.dumps(threshold),
        "normal_score_p99": json.dumps(float(_quantile(model, 0.99)) if normal else None),
    }


def _quantile(model: Model, q: float) -> float:
    assert model.normalisation is not None
    return float(np.quantile(model.normalisation.normal_scores, q))


def write_graph(fmt: str, model: Model, path: Path, frame_score: FrameScoreConfig) -> dict[str, str]:
    """Export ``model`` in ``fmt`` (``onnx``, ``openvino``) to ``path``: written beside it and
    moved into place (an IR's ``.bin`` with it), so no reader sees half a graph; returns the
    metadata. The format's package missing is a one-line error naming the extra."""
    try:
        if fmt == "openvino":
            from streamad.openvino_export import export_openvino as write
        else:
            from streamad.onnx_export import export_onnx as write
    except ImportError as exc:  # each format is an extra
        raise ConfigError(f"expected the {fmt} package to export ({exc}); hint: pip install 'streamad[{fmt}]'") from None
    targets = [Staged(path)] + ([Staged(path.with_suffix(".bin"))] if fmt == "openvino" else [])
    try:
        described = write(model, targets[0].writing, frame_score)
        for target in targets:
            target.commit()
    finally:
        for target in targets:
            target.discard()
    return described


def example_frames(model: Model, n: int = 2) -> Tensor:
    """Frames to trace the graph with (zeros at the model's input size)."""
    h, w = model.input_hw
    return torch.zeros(n, h, w, 3, dtype=torch.uint8, device=model.device)
