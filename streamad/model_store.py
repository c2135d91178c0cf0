"""Reading and writing fitted models in an :class:`~streamad.store.ArrayStore` (``model.zarr``).

Layout (see README, "Store format")::

    attrs            format_version, streamad_version, method, backbone, weights_sha256, layers,
                     input_hw, feature_hw, k, seed, eps, sigma, frames_seen, sources, stats_path,
                     factors_path, calibration
    projection       (k,) int64 channel indices (padim) or (C, k) float32 (soe)
    stats/gN/count   ()  int64        } one generation per checkpoint; the attrs name the
    stats/gN/mean    (P, k) float64   } committed one, so a crash mid-write leaves the
    stats/gN/m2      (P, k, k) float64} previous generation readable
    factors/gN/mean  (P, k) float32, factors/gN/chol (P, k, k) float32 (derived from stats/gN)
    calibration/gN/position_mean, position_std (P,) float32: distances on held-out normal frames
    calibration/gN/normal_scores (n,) float32: frame scores of those frames

Committing is one atomic write of the root attributes, after every array it names is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import streamad
from streamad.errors import StoreError
from streamad.model import AnomalyModel, ModelConfig
from streamad.store import ArrayStore, ZarrStore

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Calibration:
    """Per-position distance statistics and frame scores measured on normal frames."""

    position_mean: np.ndarray
    position_std: np.ndarray
    normal_scores: np.ndarray
    frames: int


@dataclass(slots=True)
class FitState:
    """Progress of a fit: how many frames of each source were consumed, in order."""

    next_index: dict[str, int] = field(default_factory=dict)
    frames_seen: int = 0


def open_store(path: str | Path, *, mode: str = "r") -> ZarrStore:
    """Open a model store on disk, checking that it is a streamad model of this format."""
    store = ZarrStore(path, mode=mode)
    if mode != "w":
        check_format(store, str(path))
    return store


def check_format(store: ArrayStore, where: str) -> dict[str, Any]:
    attrs = store.attrs()
    if attrs.get("kind") != "streamad-model":
        raise StoreError(f"expected a streamad model store at {where}, got a zarr store without streamad metadata; hint: create one with `streamad fit`")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"expected model store format {FORMAT_VERSION} at {where}, got {attrs.get('format_version')} "
            f"(written by streamad {attrs.get('streamad_version')}); hint: refit with this version"
        )
    return attrs


def config_from_attrs(attrs: dict[str, Any], *, weights: str | None = None) -> ModelConfig:
    return ModelConfig(
        method=attrs["method"],
        backbone=attrs["backbone"],
        input_hw=(int(attrs["input_hw"][0]), int(attrs["input_hw"][1])),
        k=int(attrs["k"]),
        seed=int(attrs["seed"]),
        eps=float(attrs["eps"]),
        sigma=float(attrs["sigma"]),
        weights=weights,
    )


def check_compatible(attrs: dict[str, Any], config: ModelConfig, weights_sha256: str, where: str) -> None:
    """Refuse to continue or merge a store fitted with another model definition."""
    stored = config_from_attrs(attrs, weights=config.weights)
    for name in ("method", "backbone", "input_hw", "k", "seed"):
        if getattr(stored, name) != getattr(config, name):
            raise StoreError(
                f"expected a store fitted with {name}={getattr(config, name)!r}, got {name}="
                f"{getattr(stored, name)!r} in {where}; hint: drop the option to use the store's, or fit a new store"
            )
    if attrs.get("weights_sha256") != weights_sha256:
        raise StoreError(
            f"expected a store fitted with backbone weights sha256 {weights_sha256[:12]}..., got "
            f"{str(attrs.get('weights_sha256'))[:12]}... in {where}; hint: pass the same --weights file"
        )


def base_attrs(model: AnomalyModel) -> dict[str, Any]:
    config = model.config
    return {
        "kind": "streamad-model",
        "format_version": FORMAT_VERSION,
        "streamad_version": streamad.__version__,
        "method": config.method,
        "backbone": config.backbone,
        "weights_sha256": model.weights_sha256,
        "layers": list(model.spec.layers),
        "input_hw": list(config.input_hw),
        "feature_hw": list(model.feature_hw),
        "k": config.k,
        "seed": config.seed,
        "eps": config.eps,
        "sigma": config.sigma,
        "frames_seen": 0,
        "sources": {},
        "every": 1,
        "stats_path": None,
        "factors_path": None,
        "calibration": None,
        "threshold": None,
    }


def _next_generation(attrs: dict[str, Any]) -> int:
    return int(attrs.get("generation", 0)) + 1


def _collect_garbage(store: ArrayStore, attrs: dict[str, Any]) -> None:
    """Delete generations no longer named by the committed attributes."""
    keep = {attrs.get("stats_path"), attrs.get("factors_path"), (attrs.get("calibration") or {}).get("path")}
    for group in ("stats", "factors", "calibration"):
        for name in store.arrays(group):
            prefix = "/".join(name.split("/")[:2])
            if prefix not in keep:
                store.delete(prefix)


def write_checkpoint(store: ArrayStore, model: AnomalyModel, state: FitState, *, extra_attrs: dict[str, Any] | None = None) -> None:
    """Write the running statistics as a new generation, then commit it atomically."""
    attrs = store.attrs() or base_attrs(model)
    if not store.exists("projection"):
        store.write("projection", model.projection.weight.cpu().numpy())
    gen = _next_generation(attrs)
    path = f"stats/g{gen}"
    gaussian = model.gaussian
    store.write(f"{path}/mean", gaussian.mean.cpu().numpy())
    store.write(f"{path}/m2", gaussian.m2.cpu().numpy(), chunks=(max(1, 4096 // max(1, gaussian.k)), gaussian.k, gaussian.k))
    store.write(f"{path}/count", np.asarray(gaussian.n, dtype=np.int64))
    attrs.update(extra_attrs or {})
    attrs.update(
        generation=gen,
        stats_path=path,
        frames_seen=state.frames_seen,
        sources={sid: {"next_index": n} for sid, n in state.next_index.items()},
        streamad_version=streamad.__version__,
    )
    store.set_attrs(attrs)  # the commit
    _collect_garbage(store, attrs)


def write_factors(store: ArrayStore, model: AnomalyModel, calibration: Calibration | None = None) -> None:
    """Store the factors (and calibration) derived from the committed statistics."""
    if model.scorer is None:
        raise RuntimeError("model has no factors to write; call finalise() first")
    attrs = check_format(store, "store")
    gen = _next_generation(attrs)
    store.write(f"factors/g{gen}/mean", model.scorer.mean.cpu().numpy())
    store.write(f"factors/g{gen}/chol", model.chol.cpu().numpy(), chunks=(max(1, 4096 // model.config.k), model.config.k, model.config.k))
    attrs.update(generation=gen, factors_path=f"factors/g{gen}", factors_of=attrs["stats_path"])
    if calibration is not None:
        cpath = f"calibration/g{gen}"
        store.write(f"{cpath}/position_mean", calibration.position_mean.astype(np.float32))
        store.write(f"{cpath}/position_std", calibration.position_std.astype(np.float32))
        store.write(f"{cpath}/normal_scores", calibration.normal_scores.astype(np.float32))
        attrs["calibration"] = {"path": cpath, "frames": calibration.frames, "of": attrs["stats_path"]}
    store.set_attrs(attrs)
    _collect_garbage(store, attrs)


def read_state(store: ArrayStore) -> FitState:
    attrs = store.attrs()
    return FitState(
        next_index={sid: int(v["next_index"]) for sid, v in (attrs.get("sources") or {}).items()},
        frames_seen=int(attrs.get("frames_seen", 0)),
    )


def load_stats(store: ArrayStore, model: AnomalyModel) -> None:
    """Fill the model's running statistics from the committed generation."""
    attrs = store.attrs()
    path = attrs.get("stats_path")
    if path is None:
        return
    gaussian = model.gaussian
    mean, m2 = store.read(f"{path}/mean"), store.read(f"{path}/m2")
    if mean.shape != tuple(gaussian.mean.shape):
        raise StoreError(f"expected statistics of shape {tuple(gaussian.mean.shape)}, got {mean.shape}")
    gaussian.count.fill_(int(store.read(f"{path}/count")))
    gaussian.mean.copy_(torch.from_numpy(mean))
    gaussian.m2.copy_(torch.from_numpy(m2))


def load_model(
    store: ArrayStore, *, where: str = "store", device: torch.device | str = "cpu", weights: str | None = None, need_factors: bool = True
) -> tuple[AnomalyModel, Calibration | None]:
    """Rebuild a model from a store: statistics, factors (rebuilt when stale) and calibration."""
    attrs = check_format(store, where)
    config = config_from_attrs(attrs, weights=weights)
    model = AnomalyModel(config, device=device)
    if model.weights_sha256 != attrs["weights_sha256"]:
        raise StoreError(
            f"expected backbone weights with sha256 {attrs['weights_sha256'][:12]}... for {where}, got "
            f"{model.weights_sha256[:12]}...; hint: pass the --weights file the model was fitted with"
        )
    projection = torch.from_numpy(store.read("projection"))
    if not torch.equal(projection.to(model.projection.weight.device), model.projection.weight):
        raise StoreError(f"expected the projection stored in {where} to match its seed {config.seed}, got a different one")
    load_stats(store, model)
    calibration = None
    if need_factors:
        if model.gaussian.n < 2:
            raise StoreError(f"expected a fitted model in {where}, got {model.gaussian.n} frames seen; hint: run `streamad fit`")
        fpath = attrs.get("factors_path")
        if fpath is not None and attrs.get("factors_of") == attrs.get("stats_path"):
            model.set_factors(torch.from_numpy(store.read(f"{fpath}/mean")), torch.from_numpy(store.read(f"{fpath}/chol")))
        else:
            model.finalise()
        cal = attrs.get("calibration")
        if cal and cal.get("of") == attrs.get("stats_path"):
            calibration = Calibration(
                position_mean=store.read(f"{cal['path']}/position_mean"),
                position_std=store.read(f"{cal['path']}/position_std"),
                normal_scores=store.read(f"{cal['path']}/normal_scores"),
                frames=int(cal["frames"]),
            )
    return model, calibration


@dataclass(frozen=True, slots=True)
class Threshold:
    """A decision threshold on frame scores (and on map pixels, which share their units).

    Attributes:
        value: frames scoring above it are anomalous.
        method: ``quantile`` (of scores on normal frames), ``f1`` (F1-optimal on labelled
            frames) or ``fixed``.
        detail: how it was found (quantile, frames, F1, ...).
        frame_score: the frame-score settings it applies to.
    """

    value: float
    method: str
    detail: dict[str, Any]
    frame_score: dict[str, Any]


def write_threshold(store: ArrayStore, threshold: Threshold) -> None:
    """Record a threshold for the store's current statistics (a refit makes it stale)."""
    attrs = check_format(store, "store")
    attrs["threshold"] = {
        "value": threshold.value,
        "method": threshold.method,
        "detail": threshold.detail,
        "frame_score": threshold.frame_score,
        "of": attrs.get("stats_path"),
    }
    store.set_attrs(attrs)


def read_threshold(store: ArrayStore) -> Threshold | None:
    """The stored threshold, or None when there is none or it predates the statistics."""
    attrs = store.attrs()
    stored = attrs.get("threshold")
    if not stored:
        return None
    if stored.get("of") != attrs.get("stats_path"):
        logger.warning("ignoring the stored threshold: it was set before the model was refitted; run `streamad calibrate` again")
        return None
    return Threshold(float(stored["value"]), stored["method"], stored.get("detail", {}), stored.get("frame_score", {}))
