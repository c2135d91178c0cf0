"""``--runtime onnxruntime|openvino``: a model's scoring graph (:mod:`streamad.scoring_graph`)
run by another runtime in the engine's backbone stage, instead of PyTorch's backbone, scorer and
maps; decoding, resizing, the causal filter and the sinks stay as they are.

The graph is exported on first use and cached beside the store (``.NAME.zarr.onnx``,
``.NAME.zarr.xml``/``.bin``) with a sidecar (``.json``) recording what it was made from (the
store's state revision, streamad's version, the frame-score settings) and the file's sha256: a
cache made from another revision is made again, and one another version made is too under
``--runtime auto`` but refused under a runtime named; a file whose bytes no longer match its
sidecar (edited, or copied over) is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import streamad
from streamad.config import FrameScoreConfig
from streamad.errors import ConfigError, StoreError
from streamad.frames import FeatureBatch, TensorBatch
from streamad.model import Model
from streamad.scoring_graph import check_exportable, write_graph
from streamad.stores.array_store import ArrayStore
from streamad.stores.locking import readers
from streamad.stores.model_store import state_revision

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino")
AUTO = "auto"  # what --runtime defaults to: :func:`pick_runtime`
RUNTIME_ENV = "STREAMAD_RUNTIME"  # names the runtime ``auto`` means, for every job of a process
MAPS, SCORES = "maps", "scores"
Graph = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 (N, H, W, 3) -> maps (N, H, W), scores (N,)


@dataclass(frozen=True, slots=True)
class Exported:
    """A runtime's compiled graph; :meth:`__call__` runs one preprocessed batch."""

    runtime: str
    path: Path
    run: Graph

    def __call__(self, batch: TensorBatch) -> FeatureBatch:
        frames = np.ascontiguousarray(batch.images.permute(0, 2, 3, 1).cpu().numpy())
        maps, scores = self.run(frames)
        return FeatureBatch(batch.refs, {MAPS: torch.from_numpy(maps), SCORES: torch.from_numpy(scores)}, batch.originals)


def pick_runtime(requested: str, model: Model, frame_score: FrameScoreConfig, *, stored: bool, why_not: str | None = None) -> str:
    """The runtime a job uses: ``requested``, unless it is ``auto``, which means
    ``$STREAMAD_RUNTIME`` when set, else onnxruntime where it applies and is installed, else torch.

    onnxruntime is auto's choice because it measured fastest in every run of
    ``benchmarks/throughput.py`` (vtest.avi, padim, 2-core CPU; the latest: 81.2 frames/s against
    PyTorch's 41.7 and OpenVINO's 50.8; each run in docs/benchmarks.md). It applies to a model on
    the CPU, of an exportable method, read from a store (``stored``: the graph is cached beside
    it), with nothing else in the way (``why_not``: the caller's reason, such as overlay layers
    the graph does not give).
    """
    if requested not in (AUTO, *RUNTIMES):
        raise ConfigError(f"expected --runtime among {[AUTO, *RUNTIMES]}, got {requested!r}")
    if requested != AUTO:
        return requested
    named = os.environ.get(RUNTIME_ENV, "").strip()
    if named:
        if named not in RUNTIMES:
            raise ConfigError(f"expected ${RUNTIME_ENV} among {list(RUNTIMES)}, got {named!r}; hint: unset it to let --runtime auto choose")
        return named
    try:
        check_exportable(model, frame_score)
    except ConfigError as exc:
        why_not = why_not or str(exc)
    reasons = {
        "the model runs on CUDA": model.device.type != "cpu",
        "the model is not read from a store": not stored,
        "onnxruntime is not installed (pip install 'streamad[onnx]')": importlib.util.find_spec("onnxruntime") is None,
        str(why_not): why_not is not None,
    }
    held = [reason for reason, holds in reasons.items() if holds]
    logger.info("--runtime auto: %s", f"torch ({held[0]})" if held else "onnxruntime")
    return "torch" if held else "onnxruntime"


def _sha256(path: Path) -> str:
    """The graph's bytes (an IR's ``.xml`` and its weights' ``.bin``)."""
    digest = hashlib.sha256(path.read_bytes())
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():
        digest.update(weights.read_bytes())
    return digest.hexdigest()


def open_exported(
    runtime: str, store: str | Path, model: Model, frame_score: FrameScoreConfig, *, stored: ArrayStore, threads: int, named: bool = False
) -> Exported:
    """The model's graph in ``runtime``, exported and cached beside ``store`` (the model's path;
    ``stored``: what it was read from) when missing or made from something else.

    ``named``: the runtime was asked for by name (not ``auto``'s pick), and a graph another
    version of streamad exported is then refused, as the file was not made by what runs it;
    ``auto`` exports it again instead (an upgrade must not stop a site's scoring)."""
    if runtime not in RUNTIMES[1:]:
        raise ConfigError(f"expected --runtime among {list(RUNTIMES)}, got {runtime!r}")
    suffix = ".onnx" if runtime == "onnxruntime" else ".xml"
    path = Path(store).with_name(f".{Path(store).name}{suffix}")
    with readers(path, exclusive=True):  # one process at a time checks, exports and loads it
        return _checked(runtime, path, model, frame_score, stored=stored, threads=threads, named=named, store=store)


def _checked(
    runtime: str, path: Path, model: Model, frame_score: FrameScoreConfig, *, stored: ArrayStore, threads: int, named: bool, store: str | Path
) -> Exported:
    """:func:`open_exported` with the cache's lock held."""
    revision = state_revision(stored)
    sidecar = path.with_suffix(path.suffix + ".json")
    graph_settings = {k: v for k, v in frame_score.attrs().items() if k in ("normalised", "topk_fraction")}  # what the graph holds
    made_from = {"revision": revision, "streamad_version": streamad.__version__, "frame_score": graph_settings, "runtime": runtime}
    try:
        recorded = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except ValueError:  # a damaged sidecar: made again
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    made = recorded.get("made_from")
    made_by = made.get("streamad_version") if isinstance(made, dict) else None
    if named and path.is_file() and made_by not in (None, streamad.__version__):
        raise StoreError(
            f"expected {path} to be exported by this streamad ({streamad.__version__}), got one streamad {made_by} exported; "
            f"hint: delete it to export it again, or pass --runtime auto, which exports it again itself"
        )
    if made != made_from or not path.is_file():
        write_graph(_format(runtime), model, path, frame_score)
        sidecar.write_text(json.dumps({"made_from": made_from, "sha256": _sha256(path)}))
    elif recorded.get("sha256") != _sha256(path):
        raise StoreError(f"expected {path} to be the graph streamad exported for {store}, got a file edited since; hint: delete it to export it again")
    return Exported(runtime, path, _compile(runtime, path, threads))


def _format(runtime: str) -> str:
    """The export format a runtime runs, which is also the name of its extra."""
    return "onnx" if runtime == "onnxruntime" else "openvino"


def _compile(runtime: str, path: Path, threads: int) -> Graph:
    try:
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return lambda frames: tuple(session.run([MAPS, SCORES], {"frames": frames}))
        from streamad.openvino_export import compile_exported

        compiled, local = compile_exported(path, threads=threads), threading.local()

        def run(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if not hasattr(local, "request"):  # an infer request per worker thread: one runs one batch at a time
                local.request = compiled.create_infer_request()
            out = local.request.infer({"frames": frames})
            return out[MAPS], out[SCORES]

        return run
    except ImportError as exc:
        raise ConfigError(f"expected {runtime} to be installed for --runtime {runtime} ({exc}); hint: pip install 'streamad[{_format(runtime)}]'") from None
