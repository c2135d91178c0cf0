"""``knn``: a position-free memory bank of patch features (PatchCore-style), bounded while streaming.

A patch's feature is the backbone's two coarser taps (strides 8 and 16: mid-level features, as
PatchCore leaves out the first, generic block), each averaged over its 3x3 neighbourhood (local
context: PatchCore's locally aware patch features) and concatenated on the stride-8 grid. A
patch scores its Euclidean distance to the nearest patch of the bank, wherever in the frame that
one was seen: a pedestrian is normal anywhere pedestrians were seen, a rotated part anywhere
its texture was.

The bank stays within ``bank_size`` patches however long the stream (streaming k-center, after
Charikar et al.): a frame offers every ``SAMPLE_EVERY``-th patch; the bank keeps a covering
radius ``r``; an offered patch within ``r`` of the bank is already covered and dropped; the others wait in a buffer, and when bank and buffer hold twice
the budget their union is reduced to ``bank_size`` by greedy k-center selection (PatchCore's
coreset, chosen on a seeded random projection to ``SELECTION_DIMS`` dimensions), the radius
becoming the distance of the first patch left out. Every patch ever offered is then within
twice the final radius of the bank (in the projected space), whatever the order. Two banks merge
by the same reduction of their union: deterministic, not equal to one fit over all the frames.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streamad.config import ModelConfig
from streamad.errors import ConfigError, StoreError
from streamad.features.extractor import FeatureExtractor, Features
from streamad.scorers.base import FitCounts, Scorer, ScorerState
from streamad.scorers.registry import ScorerSpec

PATCHES = "patches"
SELECTION_DIMS = 128  # PatchCore selects its coreset on a random projection of about this size
BLOCK = 1024  # query patches per nearest-neighbour block (a 40 MB distance matrix against 10000 patches)
SAMPLE_EVERY = 4  # a frame offers every 4th patch to the bank (see KnnScorer.update)


def greedy_coreset(x: Tensor, k: int) -> tuple[Tensor, float]:
    """Greedy k-center selection: start at row 0, then repeatedly the row farthest from those
    chosen. Returns the chosen rows' indices (in order of choice) and the covering radius: the
    largest distance of any row to its nearest chosen one (0 when every row is chosen).

    Example:
        >>> rows = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
        >>> greedy_coreset(rows, 2)
        (tensor([0, 3]), 1.0)
    """
    n = x.shape[0]
    if n <= k:
        return torch.arange(n), 0.0
    norms = x.square().sum(1)
    nearest = torch.addmv(norms, x, x[0], alpha=-2).add_(norms[0])  # squared distances to the chosen
    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = 0
    to_new = torch.empty_like(nearest)
    for step in range(1, k):  # one fused matrix-vector product a step: 3x faster than the plain expression
        i = int(nearest.argmax())
        chosen[step] = i
        torch.addmv(norms, x, x[i], alpha=-2, out=to_new).add_(norms[i])
        torch.minimum(nearest, to_new, out=nearest)
    return chosen, float(nearest.max().clamp_min(0).sqrt())


def nearest_distances(queries: Tensor, bank: Tensor, bank_norms: Tensor) -> Tensor:
    """Euclidean distance of each query row (N, C) to its nearest bank row (M, C), in blocks."""
    out = torch.empty(queries.shape[0], device=queries.device)
    for at in range(0, queries.shape[0], BLOCK):
        q = queries[at : at + BLOCK]
        squared = torch.addmm(bank_norms, q, bank.T, alpha=-2)  # one (BLOCK, M) matrix a block, nothing more
        out[at : at + BLOCK] = squared.amin(1).add_(q.square().sum(1)).clamp_min_(0).sqrt_()
    return out


class KnnScorer(FitCounts):
    """The memory bank on ``layers`` (the taps at strides 8 and 16) of an extractor.

    Args:
        layers: the two tapped layers used, finer first.
        channels: their channel counts.
        grid: the finer used tap's grid (h, w), where patches live.
        finest: the extractor's finest grid (h, w): distances are upsampled to it.
        bank_size: patches the bank keeps (its budget).
        seed: seeds the selection's random projection.
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
        device: torch.device | str = "cpu",
    ) -> None:
        if bank_size < 1:
            raise ConfigError(f"expected --bank-size >= 1, got {bank_size}")
        self.layers, self.channels, self.grid, self.finest = layers, channels, grid, finest
        self.bank_size, self.seed, self.device = bank_size, seed, torch.device(device)
        generator = torch.Generator().manual_seed(seed)
        self.selection = (torch.randn(channels, SELECTION_DIMS, generator=generator) / SELECTION_DIMS**0.5).to(self.device)
        self.bank = torch.zeros(0, channels, device=self.device)
        self.buffer = torch.zeros(0, channels, device=self.device)
        self.radius = 0.0
        self._frames = 0
        self._finalised = False
        self._bank_norms: Tensor | None = None
        self._projected: tuple[Tensor, Tensor, Tensor] | None = None  # (bank it was made of, bank @ selection, its squared norms)

    def attrs(self) -> dict[str, Any]:
        return {"bank_size": self.bank_size, "seed": self.seed, "layers_used": list(self.layers)}

    @torch.inference_mode()
    def prepare(self, features: Features) -> Features:
        """Taps averaged over 3x3 neighbourhoods, on the stride-8 grid: ``{"patches": (B, P8, C)}``."""
        first = features[self.layers[0]].float()
        parts = [F.avg_pool2d(first, 3, stride=1, padding=1, count_include_pad=False)]
        for name in self.layers[1:]:
            pooled = F.avg_pool2d(features[name].float(), 3, stride=1, padding=1, count_include_pad=False)
            parts.append(F.interpolate(pooled, size=first.shape[-2:], mode="bilinear", align_corners=False))
        return {PATCHES: torch.cat(parts, 1).flatten(2).transpose(1, 2).contiguous()}

    def update(self, prepared: Features) -> None:
        """Offer a batch's patches: the uncovered ones join the buffer; a full buffer is reduced."""
        patches = prepared[PATCHES].to(self.device)
        first, self._frames = self._frames, self._frames + patches.shape[0]
        self._finalised = False
        # Every SAMPLE_EVERY-th patch of each frame, the offset turning with the frame number:
        # neighbouring patches share most of their 3x3 neighbourhood, and consecutive frames of
        # a video most of their content, so the other patches are offered by the next frames.
        frame, patch = torch.arange(first, self._frames, device=self.device), torch.arange(patches.shape[1], device=self.device)
        rows = patches[(frame[:, None] + patch[None]) % SAMPLE_EVERY == 0]
        if len(self.bank) and self.radius > 0:
            gap = nearest_distances(rows @ self.selection, *self._projected_bank())
            rows = rows[gap > self.radius]
        self.buffer = torch.cat([self.buffer, rows])
        if len(self.bank) + len(self.buffer) > 2 * self.bank_size:
            self._reduce()

    def _projected_bank(self) -> tuple[Tensor, Tensor]:
        """The bank in the selection space and its squared norms, made again only when the bank
        changed (a reduction, a merge, a load), not for every batch offered."""
        if self._projected is None or self._projected[0] is not self.bank:
            projected = self.bank @ self.selection
            self._projected = (self.bank, projected, projected.square().sum(1))
        return self._projected[1], self._projected[2]

    def _reduce(self) -> None:
        """Bank and buffer, reduced to the budget by greedy k-center on the projected rows."""
        union = torch.cat([self.bank, self.buffer])
        chosen, radius = greedy_coreset(union @ self.selection, self.bank_size)
        self.bank, self.buffer = union[chosen.to(union.device)], union[:0]
        self.radius = max(self.radius, radius)

    def finalise(self) -> None:
        if len(self.buffer):
            self._reduce()
        if not len(self.bank):
            raise ConfigError("expected patches in the memory bank to score against, got none; hint: fit on at least one frame")
        self._bank_norms = self.bank.square().sum(1)
        self._finalised = True

    @torch.inference_mode()
    def distances(self, prepared: Features) -> Tensor:
        """(B, P): each patch's distance to its nearest bank patch, on the finest grid."""
        if self._bank_norms is None:
            raise ConfigError("expected a finalised memory bank, got one still fitting")
        patches = prepared[PATCHES].to(self.device)
        near = nearest_distances(patches.reshape(-1, self.channels), self.bank, self._bank_norms).view(-1, 1, *self.grid)
        return F.interpolate(near, size=self.finest, mode="bilinear", align_corners=False).flatten(1)

    def merge(self, other: Scorer) -> None:
        """The union of both banks and buffers, reduced to the budget (deterministic)."""
        if not isinstance(other, KnnScorer) or other.attrs() != self.attrs():
            raise ConfigError("expected partial fits of the same memory bank to merge, got another kind")
        self.bank = torch.cat([self.bank, self.buffer, other.bank.to(self.device), other.buffer.to(self.device)])
        self.buffer = self.bank[:0]
        self.radius = max(self.radius, other.radius)
        self._frames += other.frames_seen
        self._finalised = False
        if len(self.bank) > self.bank_size:
            self._reduce()

    def state(self) -> ScorerState:
        arrays = {"bank": self.bank.cpu().numpy(), "buffer": self.buffer.cpu().numpy()}
        attrs = {**self.attrs(), "frames_seen": self._frames, "bank_rows": len(self.bank), "radius": self.radius, "finalised": self._finalised}
        digest = hashlib.sha256(arrays["bank"].tobytes() + arrays["buffer"].tobytes()).hexdigest()[:16]
        return ScorerState(arrays, attrs, f"{self._frames}-{digest}")

    def load_state(self, state: ScorerState) -> None:
        bank, buffer = (np.asarray(state.arrays.get(name, np.zeros((0, self.channels), np.float32))) for name in ("bank", "buffer"))
        if bank.ndim != 2 or bank.shape[1:] != (self.channels,) or buffer.shape[1:] != (self.channels,):
            raise StoreError(f"expected memory bank arrays of {self.channels} channels, got {bank.shape} and {buffer.shape}")
        self.bank = torch.from_numpy(bank.astype(np.float32)).to(self.device)
        self.buffer = torch.from_numpy(buffer.astype(np.float32)).to(self.device)
        self.radius = float(state.attrs.get("radius", 0.0))
        self._frames = int(state.attrs.get("frames_seen", 0))
        self._finalised = False
        if state.attrs.get("finalised"):
            self.finalise()


def build(config: ModelConfig, extractor: FeatureExtractor) -> KnnScorer:
    """The registry's factory for ``knn``: the extractor's two coarser taps (all it has, if fewer)."""
    spec = extractor.spec
    used = range(len(spec.layers))[-2:]
    layers = tuple(spec.layers[i] for i in used)
    stride, (h, w) = spec.strides[used[0]], extractor.input_hw
    return KnnScorer(
        layers=layers,
        channels=sum(spec.channels[i] for i in used),
        grid=((h + stride - 1) // stride, (w + stride - 1) // stride),
        finest=extractor.feature_hw,
        bank_size=config.bank_size,
        seed=config.seed,
        device=extractor.device,
    )


KNN = ScorerSpec("knn", build, position_free=True)
