"""A model: a feature extractor, a scorer, and how distances become maps and frame scores.

Jobs hold a :class:`Model` and reach the method only through it: the model speaks the scorer
protocol (:mod:`streamad.scorers.base`) and asks the scorer's declared capabilities with
``isinstance``, never by probing attributes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streamad.calibration import Normalisation, Threshold, cue_scales, normalise
from streamad.config import FrameScoreConfig, ModelConfig
from streamad.engine.feature_cache import FeatureCache
from streamad.errors import ConfigError
from streamad.features.extractor import FeatureExtractor, Features
from streamad.features.temporal import MotionTracker
from streamad.frames import FrameRef, ScoreMap
from streamad.maps import AnomalyMap, topk_mean
from streamad.scorers.base import Mergeable, MultiCue, Releasable, Scorer, ScorerState, Temporal, Trainable, TrainRun, TrainStep
from streamad.scorers.registry import ScorerSpec, scorer_spec
from streamad.scorers.running import RunningGaussian
from streamad.stores.array_store import ArrayStore


class Model:
    """Frames' features in, per-position distances, anomaly maps and frame scores out.

    Args:
        config: the model's definition; ``input_hw`` must be set.
        device: where everything runs.
        extractor: an extractor to share (it must match the config's backbone and input size).
    """

    def __init__(self, config: ModelConfig, *, device: torch.device | str = "cpu", extractor: FeatureExtractor | None = None) -> None:
        if config.input_hw is None:
            raise ConfigError("expected a model config with a concrete input_hw, got None")
        self.config = config
        self.input_hw: tuple[int, int] = config.input_hw
        self.extractor = extractor or FeatureExtractor(
            config.backbone, input_hw=config.input_hw, weights=config.weights, device=device, backbone_b=config.backbone_b, weights_b=config.weights_b
        )
        second = self.extractor.spec_b.name if self.extractor.spec_b is not None else None
        if (self.extractor.spec.name, self.extractor.input_hw, second) != (config.backbone, config.input_hw, config.backbone_b):
            raise ConfigError(f"expected an extractor for {config.backbone} at {config.input_hw}, got {self.extractor.key}")
        self.device = self.extractor.device
        self.spec: ScorerSpec = scorer_spec(config.method)
        self.scorer = self.spec.factory(config, self.extractor)
        if not isinstance(self.scorer, Scorer):
            raise ConfigError(f"expected method {config.method!r} to build a scorer (streamad.scorers.base.Scorer), got {type(self.scorer).__name__}")
        self.to_map = AnomalyMap(feature_hw=self.extractor.feature_hw, out_hw=self.input_hw, sigma=config.sigma).to(self.device)
        self.normalisation: Normalisation | None = None
        self.threshold: Threshold | None = None
        self.unfinished = False  # loaded from a store whose fit was stopped before its last commit
        self.cache: FeatureCache | None = None

    def describe(self) -> dict[str, Any]:
        """The model's definition as stored (method, backbone, weights, sizes, scorer settings)."""
        return {
            "method": self.config.method,
            "backbone": self.config.backbone,
            "weights_sha256": self.extractor.weights_sha256,
            "layers": list(self.extractor.spec.layers),
            **self._second(),
            "input_hw": list(self.input_hw),
            "feature_hw": list(self.extractor.feature_hw),
            "sigma": self.config.sigma,
            "scorer": self.scorer.attrs(),
        }

    def _second(self) -> dict[str, Any]:
        spec_b = self.extractor.spec_b
        if spec_b is None:
            return {}
        return {"backbone_b": spec_b.name, "weights_b_sha256": self.extractor.weights_b_sha256, "layers_b": list(spec_b.layers)}

    def prepare(self, features: Features) -> Features:
        """The scorer's per-batch preparation of the extractor's maps."""
        return self.scorer.prepare(features)

    # The scorer protocol, as jobs reach it (they never touch the scorer's internals).

    @property
    def frames_seen(self) -> int:
        return self.scorer.frames_seen

    @property
    def finalised(self) -> bool:
        return self.scorer.finalised

    @property
    def mergeable(self) -> bool:
        """Whether partial fits merge exactly (:class:`~streamad.scorers.base.Mergeable`)."""
        return isinstance(self.scorer, Mergeable)

    @property
    def trainable(self) -> bool:
        """Whether the scorer trains over a feature cache (:class:`~streamad.scorers.base.Trainable`)."""
        return isinstance(self.scorer, Trainable)

    @property
    def trained(self) -> TrainStep | None:
        """Where a trainable scorer's training stands (None: the scorer does not train)."""
        return self.scorer.trained if isinstance(self.scorer, Trainable) else None

    def _trainable(self) -> Trainable:
        if not isinstance(self.scorer, Trainable):
            raise ConfigError(f"expected a trainable method, got {self.config.method!r}, which fits in one pass")
        return self.scorer

    def use_cache(self, store: ArrayStore, capacity: int) -> FeatureCache:
        """From now on :meth:`update` offers frames to a feature cache in ``store`` (a fit of a
        trainable scorer, whose epochs then run on the cache: :meth:`train`)."""
        self.cache = FeatureCache(store, capacity, self.config.seed, list(self._trainable().feature_names))
        return self.cache

    def update(self, prepared: Features) -> None:
        """One streaming fit step on prepared features (with a cache: into the cache)."""
        if self.cache is None:
            self.scorer.update(prepared)
            return
        scorer = self._trainable()
        if scorer.steps:
            raise ConfigError(
                f"expected new frames only before training starts, got more after {scorer.steps} training steps; hint: fit a new store on all the sources"
            )
        self.cache.add(prepared, offered=self.scorer.frames_seen)
        scorer.add_frames(len(next(iter(prepared.values()))))

    def train(self, run: TrainRun) -> bool:
        """The remaining training epochs over the feature cache
        (:meth:`streamad.scorers.base.Trainable.train`); returns whether they all ran (else it
        was stopped, after a checkpoint)."""
        if self.cache is None:
            raise ConfigError("expected a feature cache to train from, got none")
        return self._trainable().train(self.cache, self.cache.size(self.scorer.frames_seen), run)

    def finalise(self) -> None:
        self.scorer.finalise()

    @property
    def cues(self) -> tuple[str, ...]:
        """The scorer's distance cues: ``appearance``, and for video ``motion`` and/or ``flow``."""
        return tuple(self.scorer.cues) if isinstance(self.scorer, MultiCue) else ("appearance",)

    def settled(self, frame_score: FrameScoreConfig) -> FrameScoreConfig:
        """``frame_score`` with the model's own filter when none was given: the one its normal
        scores were measured with (a fit on video: :data:`~streamad.config.VIDEO_SMOOTH_S`)."""
        measured = self.normalisation.frame_score.get("smooth_s", 0.0) if self.normalisation is not None else 0.0
        return frame_score.settled(float(measured))

    @property
    def has_motion(self) -> bool:
        """Whether a cue measures change over time (each frame then needs its predecessor)."""
        return any(cue in ("motion", "flow", "speed") for cue in self.cues)

    @property
    def needs_images(self) -> bool:
        """Whether jobs must keep each frame's original image for the scorer's tracker (flow)."""
        return isinstance(self.scorer, Temporal) and self.scorer.needs_images

    def release_statistics(self) -> bool:
        """After a committed finalise, let the scorer free what only fitting needs (a Gaussian's
        running statistics); False when it keeps everything."""
        if not isinstance(self.scorer, Releasable):
            return False
        self.scorer.release_statistics()
        return True

    def exact_statistics(self, exact: bool) -> None:
        """Running statistics updated in float64 (bit-reproducible) or by float32 GEMMs summed
        into float64 (the default: :mod:`streamad.scorers.running`)."""
        for module in self.scorer.modules() if isinstance(self.scorer, torch.nn.Module) else ():
            if isinstance(module, RunningGaussian):
                module.exact = exact

    def state(self) -> ScorerState:
        """The scorer's state (named arrays and attributes), to store or to send elsewhere."""
        return self.scorer.state()

    def load_state(self, state: ScorerState) -> None:
        """Take a state from :meth:`state` of the same model; its arrays may be read-only (one
        received from another process): the scorer copies what it keeps."""
        with warnings.catch_warnings():  # torch.from_numpy of a read-only array, only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.scorer.load_state(state)

    def tracker(self) -> MotionTracker | None:
        """A new per-source memory that adds the motion features a scorer with a motion cue
        needs; run it on prepared batches in frame order, between :meth:`prepare` and the
        scorer (None: the scorer needs none)."""
        return self.scorer.tracker() if isinstance(self.scorer, Temporal) else None

    def distances(self, prepared: Features) -> Tensor:
        """Per-position distances (B, C, P) of prepared features, one row per cue (NaN: the
        cue had nothing to measure for that frame, as motion on a source's first frame)."""
        distances = self.scorer.distances(prepared)
        return distances.unsqueeze(1) if distances.ndim == 2 else distances

    @torch.inference_mode()
    def combine(self, distances: Tensor, *, per_position: bool, normalisation: Normalisation) -> Tensor:
        """The cues' distances (B, C, P) as one (B, P): each relative to its normal distances
        (a cue without a measure counts as its normal mean, 1), then averaged.

        Args:
            per_position: relative to each position's own normal mean (frame scores: a
                pedestrian where people always walk counts less than where nobody does), else
                to the cue's mean over all positions (maps: one scale, so they rank pixels as
                the raw distances do, which localises best).
        """
        relative = normalise(distances, normalisation) if per_position else distances / cue_scales(normalisation, distances, peak=self.spec.position_free)
        return torch.where(relative.isnan(), torch.ones_like(relative), relative).mean(1)

    def branch(self, distances: Tensor, branch: str) -> Tensor:
        """(B, C, P) with every cue but ``branch`` unmeasured (NaN: counted at its normal level,
        so maps and scores rank as that cue's alone); ``both`` keeps all."""
        if branch == "both":
            return distances
        if branch not in self.cues or len(self.cues) < 2:
            raise ConfigError(f"expected --branch among {['both', *self.cues] if len(self.cues) > 1 else ['both']} for this model, got {branch!r}")
        keep = torch.tensor([cue == branch for cue in self.cues], device=distances.device).view(1, -1, 1)
        return torch.where(keep, distances, torch.full_like(distances, float("nan")))

    def merge(self, other: Model) -> None:
        """Add another partial fit of the same model (mergeable scorers only)."""
        if not isinstance(self.scorer, Mergeable):
            raise ConfigError(f"expected a mergeable method, got {self.config.method!r}, which cannot merge partial fits")
        self.scorer.merge(other.scorer)

    @torch.inference_mode()
    def maps(self, distances: Tensor) -> Tensor:
        """Anomaly maps (B, H, W) at the input size from distances (B, P)."""
        return self.to_map(distances)

    @torch.inference_mode()
    def scored_maps(self, distances: Tensor, normalisation: Normalisation | None) -> tuple[Tensor, Tensor]:
        """The anomaly maps (B, H, W) of distances (B, C, P), and the maps frame scores pool:
        normalised by ``normalisation`` as :meth:`results` says, or raw (None: averaged over
        cues; one cue is itself, which also keeps the exported graph free of ``nanmean``, an
        operator ONNX lacks)."""
        if normalisation is None:
            maps = self.maps(distances[:, 0] if distances.shape[1] == 1 else distances.nanmean(1))
            return maps, maps
        maps = self.maps(self.combine(distances, per_position=False, normalisation=normalisation))
        # A position-free method's frame scores pool the map itself (one scale per cue).
        scored = maps if self.spec.position_free else self.maps(self.combine(distances, per_position=True, normalisation=normalisation))
        return maps, scored

    @torch.inference_mode()
    def results(
        self,
        refs: Sequence[FrameRef],
        distances: Tensor,
        *,
        frame_score: FrameScoreConfig,
        originals: Sequence[np.ndarray] = (),
        normalisation: Normalisation | None = None,
        layers: bool = False,
    ) -> list[ScoreMap]:
        """Distances to anomaly maps and pooled (not yet smoothed) frame scores.

        Normalised (the default), a frame's score pools its distances relative to each
        position's normal mean (a position-free method's: to each cue's mean over all
        positions, :attr:`~streamad.scorers.registry.ScorerSpec.position_free`), and its map
        shows them relative to each cue's normal mean over all positions (the same pixel ranking as raw distances); ``--raw``, both are the raw
        distances (averaged over cues).

        Args:
            distances: (B, C, P) as :meth:`distances` gives them (or (B, P) for one cue).
            normalisation: overrides the model's own (the one being measured, in a fit).
            layers: also each cue's map (``ScoreMap.layers``; NaN-free: a cue without a
                measure shows its normal level).
        """
        distances = self.branch(distances.unsqueeze(1) if distances.ndim == 2 else distances, frame_score.branch)
        if frame_score.normalised:
            normalisation = normalisation or self.normalisation
            if normalisation is None:
                stopped = ("a store whose fit was stopped before it finished", "continue it with `streamad fit SOURCES -m STORE --resume`")
                got, hint = stopped if self.unfinished else ("a store without normalisation", "refit, or score with --raw")
                raise ConfigError(f"expected a normalised model for the default frame scores, got {got}; hint: {hint}")
        maps, scored = self.scored_maps(distances, normalisation if frame_score.normalised else None)
        pooled = topk_mean(scored, fraction=frame_score.topk_fraction).cpu().numpy()
        peak = maps.flatten(1).amax(1).cpu().numpy()
        maps_np = maps.cpu().numpy()
        cue_maps: dict[str, np.ndarray] = {}
        if layers:
            scale = torch.ones(1, device=distances.device)
            if frame_score.normalised and normalisation is not None:
                scale = cue_scales(normalisation, distances, peak=self.spec.position_free)
            relative = (distances / scale).nan_to_num(nan=1.0)
            cue_maps = {cue: self.maps(relative[:, c]).cpu().numpy() for c, cue in enumerate(self.cues)}
        return [
            ScoreMap(ref, float(pooled[i]), float(peak[i]), maps_np[i], originals[i] if originals else None, {c: m[i] for c, m in cue_maps.items()} or None)
            for i, ref in enumerate(refs)
        ]
