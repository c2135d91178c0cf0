"""``streamad export``: a fitted model's scoring graph as a file other runtimes run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamad.config import FrameScoreConfig
from streamad.errors import ConfigError
from streamad.io.outputs import check_outputs


@dataclass(frozen=True, slots=True)
class ExportSummary:
    path: str
    metadata: dict[str, str]

    def lines(self) -> list[str]:
        m = self.metadata
        return [f"exported {m['method']} ({m['backbone']}, input {m['input_hw']}) to {self.path}: uint8 frames (N, H, W, 3) in, maps and scores out"]


def export(
    model: str | Path, out: str | Path, *, fmt: str = "onnx", raw: bool = False, weights: str | None = None, weights_b: str | None = None
) -> ExportSummary:
    """Export the model store ``model`` to ``out`` in ``fmt`` (``onnx``: one file; ``openvino``:
    ``out`` ending in .xml, the weights beside it in .bin); ``raw``: frame scores from raw
    distances (as ``score --raw``). The files appear at ``out`` only once written whole."""
    suffix = {"onnx": ".onnx", "openvino": ".xml"}.get(fmt)
    if suffix is None:
        raise ConfigError(f"expected --format onnx or openvino, got {fmt!r}")
    if Path(out).suffix != suffix:
        raise ConfigError(f"expected -o to end in {suffix} for --format {fmt}, got {out}; hint: -o {Path(out).with_suffix(suffix)}")
    check_outputs({"-o": out, "the weights": Path(out).with_suffix(".bin")}, [model])
    from streamad.engine.scoring import load_model
    from streamad.scoring_graph import write_graph

    loaded = load_model(model, device="cpu", weights=weights, weights_b=weights_b)
    frame_score = loaded.settled(FrameScoreConfig(normalised=not raw))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    described = write_graph(fmt, loaded, Path(out), frame_score)
    return ExportSummary(str(out), described)

