"""``streamad export``: a fitted model's scoring graph as a file other runtimes run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamad.config import FrameScoreConfig
from streamad.errors import ConfigError
from streamad.io.outputs import Staged, check_outputs


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
    """Export the model store ``model`` to ``out`` in ``fmt``; ``raw``: frame scores from raw
    distances (as ``score --raw``). The file appears at ``out`` only once written whole."""
    if fmt != "onnx":
        raise ConfigError(f"expected --format onnx, got {fmt!r}")
    check_outputs({"-o": out}, [model])
    try:
        from streamad.onnx_export import export_onnx
    except ImportError as exc:  # onnx is an extra
        raise ConfigError(f"expected the onnx package to export ({exc}); hint: pip install 'streamad[onnx]'") from None
    from streamad.engine.scoring import load_model

    loaded = load_model(model, device="cpu", weights=weights, weights_b=weights_b)
    frame_score = loaded.settled(FrameScoreConfig(normalised=not raw))
    target = Staged(Path(out))
    target.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        described = export_onnx(loaded, target.writing, frame_score)
        target.commit()
    finally:
        target.discard()
    return ExportSummary(str(out), described)
