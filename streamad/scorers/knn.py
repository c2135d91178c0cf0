"""``knn``: a position-free memory bank of patch features (PatchCore-style), bounded while streaming.

A patch's feature is the backbone's taps at ``patch_stride`` and coarser, each averaged over its
3x3 neighbourhood (local context: PatchCore's locally aware patch features) and concatenated on
the ``patch_stride`` grid. For video the grid is at stride 8 (the taps at strides 8 and 16:
mid-level features, as PatchCore leaves out the first, generic block; things span many patches
and a frame has a time budget); for image sets at stride 4, every tap, as padim's maps (a small
defect covers a few stride-8 patches; the finest tap also carries colour). A patch scores its
Euclidean distance to the nearest patch of the bank, wherever in the frame that one was seen:
a pedestrian is normal anywhere pedestrians were seen, a rotated part anywhere its texture was.

The bank stays within ``bank_size`` patches however long the stream
(:class:`~streamad.scorers.bank.MemoryBank`): a frame offers every ``SAMPLE_EVERY``-th patch, and
the bank keeps those that cover the rest. Two banks merge by reducing their union:
deterministic, not equal to one fit over all the frames.

For video, two more cues judge how things move, still wherever they are (``--motion``):
``feat``, the change of each patch's feature over the lag, in a bank of its own (a patch that
changes as no normal patch changed: a wheel turning, a fast stride), and ``speed``, the object
speed of :mod:`streamad.scorers.speed` (a thing moving faster than normal things move at that
height in the frame).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streamad.config import IMAGE_BANK_SIZE, VIDEO_PATCH_STRIDE, ModelConfig, motion_kinds
from streamad.errors import ConfigError
from streamad.features.extractor import FeatureExtractor, Features
from streamad.features.temporal import HAS_MOTION, MOTION, REGIONS, MotionTracker
from streamad.scorers.bank import MemoryBank
from streamad.scorers.base import FitCounts, Scorer, ScorerState
from streamad.scorers.registry import ScorerSpec
from streamad.scorers.speed import SpeedModel

PATCHES = "patches"
SAMPLE_EVERY = 4  # a frame offers every 4th patch to the bank (see KnnScorer.update)
KINDS = ("feat", "speed")  # the --motion cues it takes


class KnnScorer(FitCounts):
    """The memory bank on ``layers`` (the taps at strides 8 and 16) of an extractor, and for
    video the motion cues ``kinds`` (``feat``: a bank of patch changes; ``speed``).

    Args:
        layers: the tapped layers used, finer first.
        channels: their channel counts.
        grid: the finest used tap's grid (h, w), where patches live (its stride: ``patch_stride``).
        finest: the extractor's finest grid (h, w): distances are upsampled to it.
        bank_size: patches each bank keeps (its budget).
        seed: seeds the selection's random projection.
        patch_stride: the stride of ``grid`` in input pixels (recorded).
        motion_lag_s: the motion cues' lag in seconds (None: appearance only).
        kinds: the motion cues (of :data:`KINDS`).
        input_hw: the model's input size (the speed cue's flow is at half of it).
    """

    def __init__(
        self,
        *,
        layers: tuple[str, ...],
        channels: int,
        grid: tuple[int, int],
        finest: tuple[int, int],
        bank_size: int,
        seed: int,
        patch_stride: int = VIDEO_PATCH_STRIDE,
        motion_lag_s: float | None = None,
        kinds: tuple[str, ...] = (),
        input_hw: tuple[int, int] = (0, 0),
        device: torch.device | str = "cpu",
    ) -> None:
        if bank_size < 1:
            raise ConfigError(f"expected --bank-size >= 1, got {bank_size}")
        if set(kinds) - set(KINDS) or (kinds and not motion_lag_s):
            raise ConfigError(f"expected --motion cues among {KINDS} (with a lag) for --method knn, got {kinds}")
        self.layers, self.channels, self.grid, self.finest = layers, channels, grid, finest
        self.bank_size, self.seed, self.patch_stride, self.device = bank_size, seed, patch_stride, torch.device(device)
        self.motion_lag_s, self.kinds, self.input_hw = motion_lag_s, kinds, input_hw
        self.appearance = MemoryBank(channels, bank_size, seed=seed, device=self.device)
        self.motion = MemoryBank(channels, bank_size, seed=seed, device=self.device) if "feat" in kinds else None
        self.speed = SpeedModel() if "speed" in kinds else None
        self._frames = 0
        self._finalised = False

    @property
    def cues(self) -> tuple[str, ...]:
        return ("appearance",) + (("motion",) if self.motion is not None else ()) + (("speed",) if self.speed is not None else ())

    @property
    def needs_images(self) -> bool:
        """Whether the tracker reads each frame's original image (the speed cue's flow)."""
        return self.speed is not None

    def _banks(self) -> dict[str, MemoryBank]:
        return {"": self.appearance} | ({"motion_": self.motion} if self.motion is not None else {})

    def attrs(self) -> dict[str, Any]:
        motion = {"motion_lag_s": self.motion_lag_s, "motion": ",".join(self.kinds)} if self.kinds else {}
        # patch_stride is recorded when it is not 8, the stride of stores from before it was recorded
        stride = {"patch_stride": self.patch_stride} if self.patch_stride != VIDEO_PATCH_STRIDE else {}
        return {"bank_size": self.bank_size, **stride, "seed": self.seed, "layers_used": list(self.layers), **motion}

    def tracker(self) -> MotionTracker | None:
        """What a job runs between :meth:`prepare` and the scorer, per source, in frame order."""
        if not self.kinds or not self.motion_lag_s:
            return None
        return MotionTracker(PATCHES, lag_s=self.motion_lag_s, kinds=self.kinds, input_hw=self.input_hw, feature_hw=self.grid)

    @torch.inference_mode()
    def prepare(self, features: Features) -> Features:
        """Taps averaged over 3x3 neighbourhoods, on the finest used tap's grid: ``{"patches": (B, P, C)}``."""
        first = features[self.layers[0]].float()
        parts = [F.avg_pool2d(first, 3, stride=1, padding=1, count_include_pad=False)]
        for name in self.layers[1:]:
            pooled = F.avg_pool2d(features[name].float(), 3, stride=1, padding=1, count_include_pad=False)
            parts.append(F.interpolate(pooled, size=first.shape[-2:], mode="bilinear", align_corners=False))
        return {PATCHES: torch.cat(parts, 1).flatten(2).transpose(1, 2).contiguous()}

    def _sampled(self, patches: Tensor, first: int) -> Tensor:
        """Every SAMPLE_EVERY-th patch of each frame, the offset turning with the frame number:
        neighbouring patches share most of their 3x3 neighbourhood, and consecutive frames of a
        video most of their content, so the other patches are offered by the next frames."""
        frame = torch.arange(first, first + patches.shape[0], device=self.device)
        patch = torch.arange(patches.shape[1], device=self.device)
        return patches[(frame[:, None] + patch[None]) % SAMPLE_EVERY == 0]

    def update(self, prepared: Features) -> None:
        """Offer a batch's patches (and, with motion, the frames' changes and regions)."""
        patches = prepared[PATCHES].to(self.device)
        first, self._frames = self._frames, self._frames + patches.shape[0]
        self._finalised = False
        self.appearance.offer(self._sampled(patches, first))
        if self.kinds:
            moved = prepared[HAS_MOTION].to(self.device)
            if self.motion is not None:
                self.motion.offer(self._sampled(prepared[MOTION].to(self.device)[moved], first))
            if self.speed is not None:
                self.speed.update(prepared[REGIONS][moved.to(prepared[REGIONS].device)])

    def finalise(self) -> None:
        for prefix, bank in self._banks().items():
            if not bank.ready():
                what = "patch changes (frames one lag apart)" if prefix else "patches"
                raise ConfigError(f"expected {what} in the memory bank to score against, got none; hint: fit on at least one frame")
        if self.speed is not None:
            self.speed.finalise()
        self._finalised = True

    @torch.inference_mode()
    def distances(self, prepared: Features) -> Tensor:
        """(B, P): each patch's distance to its nearest bank patch, on the finest grid; with
        motion cues (B, C, P), NaN for a frame without a frame one lag before it."""
        if not self._finalised:
            raise ConfigError("expected a finalised memory bank, got one still fitting")
        appearance = self._nearest(self.appearance, prepared[PATCHES])
        if not self.kinds:
            return appearance
        cues = [appearance]
        moved = prepared[HAS_MOTION].to(self.device)
        if self.motion is not None:
            cues.append(torch.where(moved[:, None], self._nearest(self.motion, prepared[MOTION]), float("nan")))
        if self.speed is not None:
            on_grid = self.speed.maps(prepared[REGIONS], moved, self.grid).to(self.device).view(-1, 1, *self.grid)
            cues.append(F.interpolate(on_grid, size=self.finest, mode="nearest").flatten(1))
        return torch.stack(cues, 1)

    def _nearest(self, bank: MemoryBank, patches: Tensor) -> Tensor:
        near = bank.nearest(patches.to(self.device).reshape(-1, self.channels)).view(-1, 1, *self.grid)
        return F.interpolate(near, size=self.finest, mode="bilinear", align_corners=False).flatten(1)

    def merge(self, other: Scorer) -> None:
        """The union of both banks and buffers, reduced to the budget (deterministic)."""
        if not isinstance(other, KnnScorer) or other.attrs() != self.attrs():
            raise ConfigError("expected partial fits of the same memory bank to merge, got another kind")
        for mine, theirs in zip(self._banks().values(), other._banks().values(), strict=True):
            mine.merge(theirs)
        if self.speed is not None and other.speed is not None:
            self.speed.merge(other.speed)
        self._frames += other.frames_seen
        self._finalised = False

    def state(self) -> ScorerState:
        arrays: dict[str, np.ndarray] = {}
        attrs: dict[str, Any] = {**self.attrs(), "frames_seen": self._frames, "finalised": self._finalised}
        for prefix, bank in self._banks().items():
            arrays |= bank.arrays(prefix)
            attrs |= {f"{prefix}bank_rows": len(bank.rows), f"{prefix}radius": bank.radius}
        if self.speed is not None:
            arrays |= self.speed.arrays()
            attrs |= self.speed.attrs()
        digest = hashlib.sha256(b"".join(arrays[name].tobytes() for name in sorted(arrays))).hexdigest()[:16]
        return ScorerState(arrays, attrs, f"{self._frames}-{digest}")

    def load_state(self, state: ScorerState) -> None:
        for prefix, bank in self._banks().items():
            bank.load(state.arrays, prefix, float(state.attrs.get(f"{prefix}radius", 0.0)))
        if self.speed is not None:
            self.speed.load(state.arrays, state.attrs, finalised=False)
        self._frames = int(state.attrs.get("frames_seen", 0))
        self._finalised = False
        if state.attrs.get("finalised"):
            self.finalise()


def build(config: ModelConfig, extractor: FeatureExtractor) -> KnnScorer:
    """The registry's factory for ``knn``: the extractor's taps at ``patch_stride`` and coarser."""
    spec = extractor.spec
    patch_stride = config.patch_stride or VIDEO_PATCH_STRIDE  # stores from before it was recorded
    used = [i for i, s in enumerate(spec.strides) if s >= patch_stride]
    if not used or spec.strides[used[0]] != patch_stride:
        raise ConfigError(f"expected --patch-stride among the strides of {spec.name}'s taps {list(spec.strides)}, got {patch_stride}")
    layers = tuple(spec.layers[i] for i in used)
    stride, (h, w) = spec.strides[used[0]], extractor.input_hw
    return KnnScorer(
        layers=layers,
        channels=sum(spec.channels[i] for i in used),
        grid=((h + stride - 1) // stride, (w + stride - 1) // stride),
        finest=extractor.feature_hw,
        bank_size=config.bank_size or IMAGE_BANK_SIZE,  # a fit settles it (ModelConfig.for_sources)
        patch_stride=patch_stride,
        seed=config.seed,
        motion_lag_s=config.motion_lag_s if config.motion != "off" else None,
        kinds=motion_kinds(config.motion),
        input_hw=(h, w),
        device=extractor.device,
    )


KNN = ScorerSpec("knn", build, position_free=True, motions=KINDS)
