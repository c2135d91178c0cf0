"""OpenVINO IR (``.xml`` and ``.bin``) of the scoring graph (:mod:`streamad.scoring_graph`),
converted by OpenVINO's PyTorch frontend straight from the module (through ONNX, its nearest
resizing differs from PyTorch's: 4e-3 relative on the maps, against 4e-7 this way), the batch
dimension dynamic, the weights kept in float32 and the metadata under ``rt_info["streamad"]``.
Run it with ``INFERENCE_PRECISION_HINT`` ``f32``: on CPUs with bfloat16 units OpenVINO
otherwise computes in bfloat16 (9 % off on the maps, measured). The only importer of
``openvino``."""

from __future__ import annotations

import warnings
from pathlib import Path

import openvino as ov
import torch

from streamad.config import FrameScoreConfig
from streamad.model import Model
from streamad.scoring_graph import ScoringGraph, example_frames, metadata

EXACT = {"INFERENCE_PRECISION_HINT": "f32"}  # compile_model's config for streamad's numbers


def export_openvino(model: Model, path: str | Path, frame_score: FrameScoreConfig) -> dict[str, str]:
    """Write ``model``'s scoring graph to ``path`` (``.xml``, its weights beside in ``.bin``)
    with its metadata; returns the metadata."""
    graph = ScoringGraph(model, frame_score).eval()
    h, w = model.input_hw
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the fitted model's constants, as for ONNX
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")  # the frontend traces with torch.jit
        converted = ov.convert_model(graph, example_input=example_frames(model), input=[ov.PartialShape([-1, h, w, 3])])
    described = metadata(model, frame_score)
    for key, value in described.items():
        converted.set_rt_info(value, ["streamad", key])
    converted.outputs[0].get_tensor().set_names({"maps"})
    converted.outputs[1].get_tensor().set_names({"scores"})
    ov.save_model(converted, str(path), compress_to_fp16=False)
    return described


def compile_exported(path: str | Path, *, threads: int | None = None) -> ov.CompiledModel:
    """An exported file compiled for the CPU, in float32 (on ``threads`` threads: all, if None)."""
    config: dict[str, object] = {**EXACT, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    return ov.Core().compile_model(str(path), "CPU", config)
