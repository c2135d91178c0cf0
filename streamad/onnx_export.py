"""ONNX files of the scoring graph (:mod:`streamad.scoring_graph`): PyTorch's TorchScript-based
exporter (opset 17), the batch dimension dynamic, the metadata as ``metadata_props``. The only
importer of ``onnx``."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from streamad.config import FrameScoreConfig
from streamad.model import Model
from streamad.scoring_graph import ScoringGraph, example_frames, metadata

OPSET = 17


def export_onnx(model: Model, path: str | Path, frame_score: FrameScoreConfig) -> dict[str, str]:
    """Write ``model``'s scoring graph to ``path`` (ONNX, dynamic batch) with its
    :func:`metadata`; returns the metadata."""
    import onnx

    graph = ScoringGraph(model, frame_score).eval()
    example = example_frames(model)
    target = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns for every Python value it freezes: the fitted model's shapes, indices
        # and normal levels, constants of this graph (tested at several batch sizes).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx")
        torch.onnx.export(
            graph,
            (example,),
            str(target),
            input_names=["frames"],
            output_names=["maps", "scores"],
            dynamic_axes={"frames": {0: "n"}, "maps": {0: "n"}, "scores": {0: "n"}},
            opset_version=OPSET,
            dynamo=False,
        )
    described = metadata(model, frame_score)
    proto = onnx.load(str(target))
    for key, value in described.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(target))
    return described

