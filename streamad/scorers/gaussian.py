"""PaDiM and SOE: a Gaussian per patch position of k projected feature dimensions.

The projection (PaDiM: a random channel subset; SOE: a random semi-orthogonal matrix) is part of
the scorer. Fitting streams float64 running statistics (exactly mergeable); finalising factorises
each position's covariance (Cholesky) and scores with the whitening factors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from streamad.config import ModelConfig, motion_kinds
from streamad.errors import ConfigError, StoreError
from streamad.features.extractor import FeatureExtractor, Features
from streamad.features.temporal import DIRECTIONS, FLOW, HAS_MOTION, MOTION, MotionTracker
from streamad.scorers.base import Scorer, ScorerState
from streamad.scorers.mahalanobis import Mahalanobis, cholesky_factors, whitening_factors
from streamad.scorers.projection import METHODS, make_projection, project_layers
from streamad.scorers.registry import ScorerSpec
from streamad.scorers.running import RunningGaussian, position_blocks

EMBEDDING = "embedding"


class PositionGaussians(nn.Module):
    """Streamed float64 statistics of per-position embeddings and, once finalised, the float32
    whitening factors that score them (one cue of a :class:`GaussianScorer`).

    Args:
        positions: P.
        k: embedding dimension.
        eps: ridge added to every covariance.
    """

    def __init__(self, positions: int, k: int, *, eps: float, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.eps = eps
        self.gaussian = RunningGaussian(positions, k, device=device)
        self.factors: Mahalanobis | None = None
        self.factor_count = 0  # frames the factors were computed from

    @property
    def n(self) -> int:
        return self.gaussian.n

    def update(self, x: Tensor) -> None:
        """Accumulate embeddings (B, P, k)."""
        if len(x):
            self.gaussian.update(x)

    @torch.inference_mode()
    def finalise(self, what: str) -> None:
        """Whitening factors ``L^-1`` of the covariances (+ eps I), a block of positions at a
        time (no full-size float64 temporaries). ``L`` is rounded to float32 before it is
        inverted, as stores before format 3 kept it, so their scores are unchanged."""
        gaussian = self.gaussian
        if gaussian.n < 2:
            raise ConfigError(f"expected at least 2 frames to fit {what}, got {gaussian.n}; hint: check the sources or lower --every")
        gaussian.ready()
        whitener = torch.empty(gaussian.m2.shape, dtype=torch.float32, device=gaussian.m2.device)
        for block in position_blocks(gaussian.positions, 3 * gaussian.k * gaussian.k):
            chol = cholesky_factors(gaussian.m2[block] / (gaussian.n - 1), eps=self.eps, first=block.start)
            whitener[block] = whitening_factors(chol.float().double())
        self._set_factors(gaussian.mean.float(), whitener, gaussian.n)

    def _set_factors(self, mean: Tensor, whitener: Tensor, count: int) -> None:
        self.factor_count = count
        device = self.gaussian.mean.device
        self.factors = Mahalanobis(mean.to(device, torch.float32), whitener.to(device, torch.float32))

    def _whitener_of(self, chol: Tensor) -> Tensor:
        """A store before format 3 kept float32 ``L``: its inverse, block by block."""
        whitener = torch.empty(chol.shape, dtype=torch.float32, device=self.gaussian.mean.device)
        for block in position_blocks(chol.shape[0], 2 * chol.shape[1] * chol.shape[2]):
            whitener[block] = whitening_factors(chol[block].to(whitener.device, torch.float64))
        return whitener

    def distances(self, x: Tensor) -> Tensor:
        if self.factors is None:
            raise RuntimeError("the scorer has no factors; call finalise() or load a fitted store")
        return self.factors(x)

    def arrays(self, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Named arrays and their revision tags (statistics: their count; factors: theirs)."""
        n, f = str(self.gaussian.n), str(self.factor_count)
        revisions = {f"{prefix}count": n, f"{prefix}mean": n, f"{prefix}m2": n}
        if self.gaussian.released:  # committed, then let go of: the store keeps them
            arrays = {}
        else:
            gaussian = self.gaussian.ready()
            arrays = {
                f"{prefix}count": np.asarray(gaussian.n, dtype=np.int64),
                f"{prefix}mean": gaussian.mean.cpu().numpy(),
                f"{prefix}m2": gaussian.m2.cpu().numpy(),
            }
        if self.factors is not None:
            arrays.update({f"{prefix}factor_mean": self.factors.mean.cpu().numpy(), f"{prefix}whitener": self.factors.whitener.cpu().numpy()})
            revisions.update({f"{prefix}factor_mean": f, f"{prefix}whitener": f})
        return arrays, revisions

    def load(self, arrays: Mapping[str, np.ndarray], prefix: str, *, factor_count: int | None, scoring: bool = False) -> None:
        """Restore from :meth:`arrays`; factors only when ``factor_count`` is given, and then,
        for a model that will only score (``scoring``), the statistics are not read at all."""
        self.factors, self.factor_count = None, 0
        if scoring and factor_count is not None and (f"{prefix}whitener" in arrays or f"{prefix}chol" in arrays):
            self.gaussian.drop(int(arrays[f"{prefix}count"]))
        else:
            self.gaussian.restore(int(arrays[f"{prefix}count"]), torch.from_numpy(arrays[f"{prefix}mean"]), torch.from_numpy(arrays[f"{prefix}m2"]))
        if factor_count is None:
            return
        if f"{prefix}whitener" in arrays:
            self._set_factors(torch.from_numpy(arrays[f"{prefix}factor_mean"]), torch.from_numpy(arrays[f"{prefix}whitener"]), factor_count)
        elif f"{prefix}chol" in arrays:  # format 2
            self._set_factors(torch.from_numpy(arrays[f"{prefix}factor_mean"]), self._whitener_of(torch.from_numpy(arrays[f"{prefix}chol"])), factor_count)


class GaussianScorer(nn.Module):
    """Per-position Gaussians of projected multi-scale features (``padim`` or ``soe``), and with
    ``motion_lag_s`` a second cue: per-position Gaussians of how those embeddings change over
    the lag (:mod:`streamad.features.temporal`), fitted on the same frames.

    Distances are (B, P) with appearance alone, else (B, 2, P): appearance and motion, NaN for
    the motion of a frame without a frame one lag before it.

    Args:
        method: ``padim`` or ``soe``.
        layers: the extractor's layer names, finest first (their channels are concatenated).
        channels: channels of each layer.
        positions: patches of the finest map (h * w).
        k: projected dimension.
        seed: seeds the projection.
        eps: ridge added to every covariance.
        motion_lag_s: the motion cue's lag in seconds (None: appearance only).
        device: where statistics and factors live.
    """

    projection: Tensor

    def __init__(
        self,
        *,
        method: str,
        layers: tuple[str, ...],
        channels: int,
        positions: int,
        k: int,
        seed: int,
        eps: float,
        motion_lag_s: float | None = None,
        motion: str = "feat",
        feature_hw: tuple[int, int] = (0, 0),
        input_hw: tuple[int, int] = (0, 0),
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"expected a Gaussian method in {METHODS}, got {method!r}")
        if k > channels:
            raise ConfigError(f"expected k <= {channels} (the backbone's channels), got k={k}")
        self.method, self.layers, self.k, self.seed, self.eps = method, layers, k, seed, eps
        self.motion_lag_s = motion_lag_s
        self.kinds: tuple[str, ...] = motion_kinds(motion) if motion_lag_s else ()
        self.feature_hw, self.input_hw = feature_hw, input_hw
        self.register_buffer("projection", make_projection(method, channels, k, seed=seed).to(device))
        self.appearance = PositionGaussians(positions, k, eps=eps, device=device)
        self.motion = PositionGaussians(positions, k, eps=eps, device=device) if "feat" in self.kinds else None
        self.flow = PositionGaussians(positions, 1 + DIRECTIONS, eps=eps, device=device) if "flow" in self.kinds else None

    @property
    def cues(self) -> tuple[str, ...]:
        return ("appearance",) + (("motion",) if self.motion is not None else ()) + (("flow",) if self.flow is not None else ())

    @property
    def needs_images(self) -> bool:
        """Whether the tracker needs each batch's original frames (the flow cue)."""
        return self.flow is not None

    @property
    def frames_seen(self) -> int:
        return self.appearance.n

    @property
    def finalised(self) -> bool:
        return all(g.factors is not None for g in self._cues())

    def _cues(self) -> list[PositionGaussians]:
        return [g for g in (self.appearance, self.motion, self.flow) if g is not None]

    def attrs(self) -> dict[str, Any]:
        kind = "both" if len(self.kinds) == 2 else self.kinds[0] if self.kinds else None
        motion = {"motion_lag_s": self.motion_lag_s, "motion": kind} if self.kinds else {}
        return {"k": self.k, "seed": self.seed, "eps": self.eps, **motion}

    def tracker(self) -> MotionTracker | None:
        """What a job runs between :meth:`prepare` and the scorer, per source, in frame order."""
        if not self.kinds or not self.motion_lag_s:
            return None
        return MotionTracker(EMBEDDING, lag_s=self.motion_lag_s, kinds=self.kinds, input_hw=self.input_hw, feature_hw=self.feature_hw)

    @torch.inference_mode()
    def prepare(self, features: Features) -> Features:
        """Multi-scale maps to projected embeddings ``{"embedding": (B, P, k)}``."""
        return {EMBEDDING: project_layers(features, self.layers, self.projection)}

    def update(self, prepared: Features) -> None:
        """Accumulate a batch; distances keep using the factors of the last :meth:`finalise`."""
        self.appearance.update(prepared[EMBEDDING])
        if self.motion is not None:
            self.motion.update(prepared[MOTION][prepared[HAS_MOTION]])
        if self.flow is not None:
            self.flow.update(prepared[FLOW][prepared[HAS_MOTION]])

    @torch.inference_mode()
    def finalise(self) -> None:
        self.appearance.finalise("the appearance")
        if self.motion is not None:
            self.motion.finalise("the motion (frames one lag apart)")
        if self.flow is not None:
            self.flow.finalise("the flow (frames one lag apart)")

    def release_statistics(self) -> None:
        """Let go of the running statistics once finalised and committed (a fit's last step,
        the normalisation pass, then needs only the factors): :meth:`state` then names them by
        revision only, and the store keeps them as they are."""
        if not self.finalised:
            raise ConfigError("expected a finalised scorer to release its statistics, got one still fitting")
        for gaussians in self._cues():
            gaussians.gaussian.drop(gaussians.gaussian.n, released=True)

    @torch.inference_mode()
    def distances(self, prepared: Features) -> Tensor:
        """Mahalanobis distances of the embeddings (B, P), or with motion (B, 2, P)."""
        appearance = self.appearance.distances(prepared[EMBEDDING])
        if not self.kinds:
            return appearance
        cues = [appearance]
        for gaussians, key in ((self.motion, MOTION), (self.flow, FLOW)):
            if gaussians is not None:
                distances = gaussians.distances(prepared[key])
                distances[~prepared[HAS_MOTION]] = float("nan")
                cues.append(distances)
        return torch.stack(cues, 1)

    def merge(self, other: Scorer) -> None:
        if not isinstance(other, GaussianScorer) or (other.method, other.attrs()) != (self.method, self.attrs()):
            raise ConfigError("expected partial fits of the same Gaussian model to merge, got another kind")
        for mine, theirs in zip(self._cues(), other._cues(), strict=True):
            mine.gaussian.merge(theirs.gaussian)

    def state(self) -> ScorerState:
        """Statistics (revision: their frame count) and, once finalised, the factors (revision:
        the count they were computed from, which is also the state's revision: distances
        change only when the factors do)."""
        arrays, revisions = self.appearance.arrays("")
        arrays["projection"], revisions["projection"] = self.projection.cpu().numpy(), "0"
        attrs = {**self.attrs(), "finalised": self.finalised, "factor_count": self.appearance.factor_count}
        revision = f"f{self.appearance.factor_count}" if self.finalised else f"n{self.appearance.n}"
        for gaussians, prefix in ((self.motion, "motion_"), (self.flow, "flow_")):
            if gaussians is not None:
                more, tags = gaussians.arrays(prefix)
                arrays.update(more)
                revisions.update(tags)
                attrs[f"{prefix}factor_count"] = gaussians.factor_count
                revision += f"{prefix[0]}{gaussians.factor_count if self.finalised else gaussians.n}"
        return ScorerState(arrays, attrs, revision=revision, revisions=revisions)

    def load_state(self, state: ScorerState) -> None:
        arrays = state.arrays
        projection = torch.from_numpy(arrays["projection"]).to(self.projection.device)
        if projection.shape != self.projection.shape:
            raise StoreError(f"expected a stored projection of shape {tuple(self.projection.shape)} (k={self.k}), got {tuple(projection.shape)}")
        if not torch.equal(projection, self.projection):
            raise StoreError(f"expected the stored projection of method {self.method} with seed {self.seed} and k={self.k}, got another one")
        finalised = bool(state.attrs.get("finalised"))
        self.appearance.load(arrays, "", factor_count=int(state.attrs.get("factor_count", 0)) if finalised else None, scoring=state.scoring)
        for gaussians, prefix in ((self.motion, "motion_"), (self.flow, "flow_")):
            if gaussians is not None:
                if f"{prefix}mean" not in arrays:
                    raise StoreError(f"expected {prefix[:-1]} statistics ({prefix}mean) in the state, got none")
                gaussians.load(arrays, prefix, factor_count=int(state.attrs.get(f"{prefix}factor_count", 0)) if finalised else None, scoring=state.scoring)


def build(config: ModelConfig, extractor: FeatureExtractor) -> GaussianScorer:
    """The registry's factory for ``padim`` and ``soe``: sized for ``extractor``'s features."""
    h, w = extractor.feature_hw
    spec = extractor.spec
    return GaussianScorer(
        method=config.method,
        layers=spec.layers,
        channels=spec.total_channels,
        positions=h * w,
        k=config.k,
        seed=config.seed,
        eps=config.eps,
        motion_lag_s=config.motion_lag_s if config.motion != "off" else None,
        motion=config.motion,
        feature_hw=extractor.feature_hw,
        input_hw=extractor.input_hw,
        device=extractor.device,
    )


PADIM = ScorerSpec("padim", build, motions=("feat", "flow"), exportable=True)
SOE = ScorerSpec("soe", build, motions=("feat", "flow"), exportable=True)
