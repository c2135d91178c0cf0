"""The Python API's own parts, built on the library (not on the jobs): an in-memory
:class:`Detector`, :func:`load` and :func:`read_frames` (``streamad.fit``, ``score`` and
``evaluate`` are the jobs themselves).

Example (frames are RGB uint8 arrays, shape (H, W, 3); README.md runs the same with a video)::

    import streamad

    detector = streamad.Detector()  # the video defaults; Detector(streamad.ModelConfig(method="padim")) for images
    detector.fit(normal_frames)
    for result in detector.score(new_frames):
        print(result.index, result.score, result.anomalous, result.anomaly_map.shape)
    detector.save("model.zarr")
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamad.calibration import decision_threshold
from streamad.config import FrameScoreConfig, ModelConfig
from streamad.engine.exported import AUTO, Exported, open_exported, pick_runtime
from streamad.engine.fitting import FitOptions, FitSummary, open_fit, run_fit
from streamad.engine.progress import no_progress
from streamad.engine.runtime import pick_device, thread_plan
from streamad.engine.scoring import ScoreOptions, ScoreSummary, score_frames
from streamad.errors import ConfigError
from streamad.frames import ScoreMap
from streamad.io.sources import FrameArrays, resolve_sources
from streamad.model import Model
from streamad.sinks import Sinks
from streamad.stores.array_store import ArrayStore, MemoryStore
from streamad.stores.fit_progress import read_progress
from streamad.stores.model_store import commit, create, open_store
from streamad.stores.model_store import load as load_store


@dataclass(frozen=True, slots=True)
class Result:
    """One frame's result.

    Attributes:
        index: the frame's position in the scored sequence (0-based).
        score: the frame score (normalised top-1 % mean of the map by default).
        anomalous: score above the model's threshold (None without a threshold).
        anomaly_map: float32 (H, W) at the model's input size.
        map_max: the map's maximum.
    """

    index: int
    score: float
    anomalous: bool | None
    anomaly_map: np.ndarray
    map_max: float


class _Collect:
    """A sink that keeps every result (in order)."""

    def __init__(self) -> None:
        self.results: list[ScoreMap] = []

    def write(self, result: ScoreMap) -> None:
        self.results.append(result)

    def close(self) -> None:
        return None


class Detector:
    """An anomaly detector on frames in memory: fit on normal frames, score new ones, save.

    Args:
        config: the model (method, backbone, input size, ...); ``input_hw`` None picks it from
            the first frame; None: the fit's defaults for video (the frames are a clip), as
            ``streamad fit`` picks them.
        device: ``cpu``, ``cuda`` or ``auto``.
        options: how the fit batches, holds out and normalises (as ``streamad fit``).
        runtime: what scores: ``torch``, ``onnxruntime`` or ``openvino`` (the model's graph,
            exported on first use: beside the store for a loaded detector, else in a temporary
            folder the detector owns), or ``auto`` (``streamad score --runtime``'s choice; a
            detector fitted in memory stays with torch).
    """

    def __init__(self, config: ModelConfig | None = None, *, device: str = "cpu", options: FitOptions | None = None, runtime: str = "auto") -> None:
        self.config, self.device, self.runtime = config, device, runtime
        self.options = options or FitOptions(device=device)
        self._store: ArrayStore = MemoryStore()
        self.model: Model | None = None
        self.path: Path | None = None  # the store it was loaded from
        self._graphs: dict[FrameScoreConfig, Exported | None] = {}
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def fit(self, frames: Iterable[np.ndarray], *, fps: float = 25.0) -> FitSummary:
        """Fit on normal frames (held in memory: every 10th frame is kept out to normalise on)."""
        images = frames if isinstance(frames, Sequence) else list(frames)
        self._store = MemoryStore()
        sources = [FrameArrays("frames", images, fps)]
        device = str(pick_device(self.options.device))
        _, model, state = open_fit(sources, self._store, self.config, resume=False, overwrite=False, options=self.options, device=device)
        summary = FitSummary("memory")
        run_fit(sources, self._store, model, state, self.options, summary, no_progress)
        self.model = load_store(self._store, where="the detector", device=self.options.device)
        self.path, self._graphs = None, {}
        return summary

    def score(self, frames: Iterable[np.ndarray], *, frame_score: FrameScoreConfig = FrameScoreConfig(), fps: float = 25.0) -> list[Result]:
        """Maps, frame scores and decisions for ``frames`` (in order)."""
        if self.model is None:
            raise ConfigError("expected a fitted detector, got one without a model; hint: call fit() or streamad.load() first")
        images = frames if isinstance(frames, Sequence) else list(frames)
        collect = _Collect()
        options = ScoreOptions(frame_score=self.model.settled(frame_score), device=self.device)
        summary, graph = ScoreSummary("", "", ""), self._graph(options.frame_score)
        score_frames(self.model, [FrameArrays("frames", images, fps)], options, Sinks([collect]), summary, decision=None, graph=graph)
        threshold = decision_threshold(self.model.threshold, None, self.model.settled(frame_score).attrs())  # the stored one, for these settings only
        return [Result(r.ref.index, r.score, None if threshold is None else r.score > threshold, r.anomaly_map, r.map_max) for r in collect.results]

    def _graph(self, frame_score: FrameScoreConfig) -> Exported | None:
        """The exported graph that scores with these settings (None: PyTorch scores)."""
        assert self.model is not None
        if frame_score not in self._graphs:
            runtime = pick_runtime(self.runtime, self.model, frame_score, stored=self.path is not None)
            graph = None
            if runtime != "torch":
                threads = thread_plan(self.model.device).threads
                graph = open_exported(runtime, self._cache_beside(), self.model, frame_score, stored=self._store, threads=threads, named=self.runtime != AUTO)
            self._graphs[frame_score] = graph
        return self._graphs[frame_score]

    def _cache_beside(self) -> Path:
        """Where exported graphs are cached: beside the store it was loaded from, else in a
        temporary folder the detector owns."""
        if self.path is not None:
            return self.path
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="streamad-detector-")
        return Path(self._folder.name) / f"fit-{id(self.model)}.zarr"

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the fitted model as a model store (as ``streamad fit`` does)."""
        if self.model is None:
            raise ConfigError("expected a fitted detector to save, got none; hint: call fit() first")
        if Path(path).exists() and not overwrite:
            raise ConfigError(f"expected a new path to save to, got an existing {path}; hint: pass overwrite=True")
        with open_store(path, mode="w") as target:  # appears (or replaces the old one) at the commit
            create(target, self.model)
            commit(target, self.model, read_progress(self._store), normalisation=self.model.normalisation, threshold=self.model.threshold)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu", weights: str | None = None, runtime: str = "auto") -> Detector:
        """A detector from a fitted model store."""
        store = open_store(path, mode="r")
        model = load_store(store, where=str(path), device=device, weights=weights)
        detector = cls(model.config, device=device, runtime=runtime)
        detector.model, detector.path, detector._store = model, Path(path), store
        return detector


def read_frames(source: str | Path, *, every: int = 1) -> Iterator[np.ndarray]:
    """The RGB uint8 frames (H, W, 3) of a video, frame folder or image glob, in order."""
    for item in resolve_sources([source]):
        for frame in item.frames(every=every):
            yield frame.image


def load(path: str | Path, *, device: str = "cpu", weights: str | None = None, runtime: str = "auto") -> Detector:
    """Load a fitted model store as a :class:`Detector` (``runtime``: what scores, as
    :class:`Detector`'s)."""
    return Detector.load(path, device=device, weights=weights, runtime=runtime)
