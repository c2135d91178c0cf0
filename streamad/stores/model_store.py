"""Reading and writing models in an :class:`~streamad.stores.array_store.ArrayStore` (``model.zarr``).

Any scorer is persisted the same way, through its protocol (:meth:`Scorer.state` /
:meth:`Scorer.load_state`); nothing here knows a method. Layout (see README, "Store format")::

    attrs                     kind, format_version, streamad_version, method, backbone,
                              weights_sha256, layers, input_hw, feature_hw, sigma, scorer (its
                              settings), frames_seen, sources, every, generation,
                              state {arrays: name -> path, revisions, attrs, revision},
                              normalisation {path, frames, of}, threshold {..., of}
    scorer/gN/<name>          the scorer's arrays, one generation per checkpoint (an array whose
                              revision is unchanged is not written again: the attrs point at
                              the generation that holds it)
    normalisation/gN/position_mean (P,) or (C, P) float32, normal_scores (n,) float32

Committing is one atomic write of the root attributes, after every array it names is written;
a crash at any moment leaves the previous generation readable.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import streamad
from streamad import typed
from streamad.calibration import Normalisation, Threshold
from streamad.config import FrameScoreConfig, ModelConfig
from streamad.errors import ConfigError, StoreError
from streamad.features.extractor import FeatureExtractor
from streamad.model import Model
from streamad.scorers.base import ScorerState
from streamad.stores.array_store import ArrayStore, ZarrStore
from streamad.stores.fit_progress import FitProgress, checked

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)  # the scorers read the arrays of both (README, "Store format")
KIND = "streamad-model"
CHUNK_BYTES = 8 << 20  # reads of 2 MB chunks were twice as slow (zarr per-chunk overhead)
_KEEP: Any = object()  # commit(): leave the stored normalisation / threshold as they are


def open_store(path: str | Path, *, mode: str = "r") -> ZarrStore:
    """Open a model store on disk, checking that it is a streamad model of this format; ``"a"``
    (to write) requires an existing store, ``"w"`` makes a new one."""
    if mode == "a" and not (Path(path) / "zarr.json").is_file():
        ZarrStore(path, mode="r")  # raises the missing-store error
    store = ZarrStore(path, mode=mode)
    if mode != "w":
        check_format(store, str(path))
    return store


def check_format(store: ArrayStore, where: str) -> dict[str, Any]:
    attrs = store.attrs()
    if attrs.get("kind") != KIND:
        raise StoreError(f"expected a streamad model store at {where}, got a zarr store without streamad metadata; hint: create one with `streamad fit`")
    if attrs.get("format_version") not in READABLE_FORMATS:
        raise StoreError(
            f"expected model store format {' or '.join(map(str, READABLE_FORMATS))} at {where}, got {attrs.get('format_version')} "
            f"(written by streamad {attrs.get('streamad_version')}); hint: refit with this version"
        )
    return attrs


def config_from_attrs(attrs: dict[str, Any], *, weights: str | None = None, where: str = "store", weights_b: str | None = None) -> ModelConfig:
    """The stored model's config: its method, backbone, sizes and the scorer's recorded settings.

    Raises:
        StoreError: an attribute is missing or not of its type (the store was edited by hand).
    """
    recorded = attrs.get("scorer") or {}
    whole, real = typed.integer, typed.number
    convert: dict[str, Callable[[Any, str], Any]] = {"int": whole, "int | None": whole, "float": real, "float | None": real, "str": typed.text}
    top = ("method", "backbone", "input_hw", "sigma", "weights", "motion", "backbone_b", "weights_b")  # root attributes, or derived
    names = {f.name: convert[str(f.type)] for f in dataclasses.fields(ModelConfig) if f.name not in top}
    try:
        settings = {name: to(recorded[name], f"scorer.{name}") for name, to in names.items() if recorded.get(name) is not None}
        method, backbone = attrs.get("method"), attrs.get("backbone")
        backbone_b = attrs.get("backbone_b")
        if not isinstance(method, str) or not isinstance(backbone, str) or not isinstance(backbone_b, str | None):
            raise TypeError("method and backbones must be names")
        height, width = attrs["input_hw"]
        motion = typed.text(recorded.get("motion") or "feat", "scorer.motion") if settings.get("motion_lag_s") else "off"
        hw = (typed.integer(height, "input_hw", minimum=1), typed.integer(width, "input_hw", minimum=1))
        return ModelConfig(
            method=method,
            backbone=backbone,
            sigma=typed.number(attrs["sigma"], "sigma"),
            **settings,
            input_hw=hw,
            weights=weights,
            motion=motion,
            backbone_b=backbone_b,
            weights_b=weights_b,
        )
    except (KeyError, TypeError, ValueError) as exc:
        shown = {k: attrs.get(k) for k in ("method", "backbone", "input_hw", "sigma")} | {"scorer": recorded}
        raise StoreError(
            f"expected well-formed model attributes in {where}, got {shown} ({exc}); hint: the store's zarr.json was edited; refit, or restore it"
        ) from None


def check_compatible(attrs: dict[str, Any], model: Model, where: str, *, hint: str = "fit a new store") -> None:
    """Refuse to continue or merge a store fitted with another model definition."""
    described = model.describe()
    stored = {key: attrs.get(key) for key in described}
    for key in ("method", "backbone", "input_hw", "sigma", "backbone_b"):
        if stored.get(key) != described.get(key):
            raise StoreError(f"expected a store fitted with {key}={described[key]!r}, got {key}={stored[key]!r} in {where}; hint: {hint}")
    for key, value in described["scorer"].items():
        if (stored["scorer"] or {}).get(key) != value:
            raise StoreError(f"expected a store fitted with {key}={value!r}, got {key}={(stored['scorer'] or {}).get(key)!r} in {where}; hint: {hint}")
    for key, option in (("weights_sha256", "--weights"), ("weights_b_sha256", "--weights-b")):
        if stored.get(key) != described.get(key):
            raise StoreError(
                f"expected a store fitted with backbone weights sha256 {str(described.get(key))[:12]}..., got "
                f"{str(stored.get(key))[:12]}... in {where}; hint: pass the same {option} file the model was fitted with"
            )


def create(store: ArrayStore, model: Model, **extra: Any) -> None:
    """Start an empty model store for ``model`` (no state committed yet)."""
    store.set_attrs(
        {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "streamad_version": streamad.__version__,
            "fit_id": uuid.uuid4().hex,  # who fitted these statistics: merge refuses a fit twice
            **model.describe(),
            "frames_seen": 0,
            "sources": {},
            "every": 1,
            "generation": 0,
            "state": None,
            "normalisation": None,
            "threshold": None,
            **extra,
        }
    )


def _chunks(array: np.ndarray) -> tuple[int, ...] | None:
    if array.ndim < 2:
        return None
    if not array.shape[0]:  # an empty array (a memory bank's empty buffer) still needs chunks of one row
        return (1, *(max(1, s) for s in array.shape[1:]))
    row = max(1, array[0].nbytes)
    return (max(1, min(array.shape[0], CHUNK_BYTES // row)), *array.shape[1:])


def commit(
    store: ArrayStore,
    model: Model,
    progress: FitProgress,
    *,
    normalisation: Normalisation | None = _KEEP,
    threshold: Threshold | None = _KEEP,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the scorer's state (and a normalisation / threshold when given) as a new
    generation, then commit it atomically. A normalisation or threshold left out stays as it
    is, and is used only while it was measured on the same scorer revision."""
    attrs = check_format(store, "store")
    gen = int(attrs.get("generation", 0)) + 1
    state = model.state()
    paths = _write_state(store, state, attrs.get("state") or {}, gen)
    attrs["state"] = {"arrays": paths, "revisions": state.revisions, "attrs": state.attrs, "revision": state.revision}
    if normalisation is not _KEEP:
        attrs["normalisation"] = None
        if normalisation is not None:
            path = f"normalisation/g{gen}"
            store.write(f"{path}/position_mean", normalisation.position_mean.astype(np.float32))
            store.write(f"{path}/normal_scores", normalisation.normal_scores.astype(np.float32))
            attrs["normalisation"] = {"path": path, "frames": normalisation.frames, "of": state.revision, "frame_score": normalisation.frame_score}
    if threshold is not _KEEP:
        attrs["threshold"] = None if threshold is None else {**dataclasses.asdict(threshold), "of": state.revision}
    attrs.update(extra or {})
    attrs.update(
        format_version=FORMAT_VERSION,
        generation=gen,
        frames_seen=progress.frames_seen,
        sources=progress.attrs(),
        streamad_version=streamad.__version__,
    )
    store.set_attrs(attrs)  # the commit
    store.publish()  # a new store (or a replacement) appears at its first commit
    with store.reading(exclusive=True):  # no reader is loading a generation we delete
        _collect_garbage(store, attrs)


def _write_state(store: ArrayStore, state: ScorerState, previous: dict[str, Any], gen: int) -> dict[str, str]:
    """Write the state's arrays as generation ``gen``, but those the store already holds at the
    same revision tag; returns where each array now is."""
    paths: dict[str, str] = {}
    stored, tags = previous.get("arrays", {}), previous.get("revisions", {})
    for name in [*state.arrays, *(state.revisions.keys() - state.arrays.keys())]:  # held, then let go of
        tag = state.revisions.get(name)
        if tag is not None and name in stored and tags.get(name) == tag:  # unchanged: it stays where it is
            paths[name] = stored[name]
            continue
        if name not in state.arrays:
            raise StoreError(f"expected array {name!r} (revision {tag}) in the store, as the scorer no longer holds it, got none")
        array = state.arrays[name]
        paths[name] = f"scorer/g{gen}/{name}"
        # Uncompressed: float statistics shrink only to about 65 % with zstd, at 5x the time of
        # the write (430 MB of statistics: 2.2 s against 0.45 s), and a long fit checkpoints them often.
        store.write(paths[name], array, chunks=_chunks(array), compressed=False)
    return paths


def _collect_garbage(store: ArrayStore, attrs: dict[str, Any]) -> None:
    """Delete arrays and generations no longer named by the committed attributes."""
    keep = set((attrs.get("state") or {}).get("arrays", {}).values())
    cal = attrs.get("normalisation")
    if cal:
        keep |= {f"{cal['path']}/{name}" for name in ("position_mean", "normal_scores")}
    prefixes = {"/".join(path.split("/")[:2]) for path in keep}
    for group in ("scorer", "normalisation"):
        for name in store.arrays(group):
            prefix = "/".join(name.split("/")[:2])
            if prefix not in prefixes:
                store.delete(prefix)
            elif name not in keep:
                store.delete(name)


class _StoredArrays(Mapping[str, np.ndarray]):
    """A state's arrays, each read from the store when first used (inside the reading)."""

    def __init__(self, store: ArrayStore, paths: dict[str, str]) -> None:
        self._store, self._paths = store, paths
        self._read: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._read:
            self._read[name] = self._store.read(self._paths[name])
        return self._read[name]

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def state_revision(store: ArrayStore) -> str:
    """The committed scorer state's revision ("" before the first commit): what a copy made of
    the model (an exported graph) was made from."""
    return str((store.attrs().get("state") or {}).get("revision", ""))


def read_state(store: ArrayStore, *, scoring: bool = False) -> ScorerState | None:
    """The committed scorer state, or None before the first commit. ``scoring``: for a model
    that will only score; its arrays are read as the scorer asks for them (it may skip its
    running statistics), so use it before the store's reading ends."""
    stored = store.attrs().get("state")
    if not stored:
        return None
    paths = dict(stored["arrays"])
    arrays = _StoredArrays(store, paths) if scoring else {name: store.read(path) for name, path in paths.items()}
    return ScorerState(arrays, dict(stored.get("attrs", {})), str(stored.get("revision", "")), dict(stored.get("revisions", {})), scoring=scoring)


def load(
    store: ArrayStore,
    *,
    where: str = "store",
    device: torch.device | str = "cpu",
    weights: str | None = None,
    extractor: FeatureExtractor | None = None,
    fitted: bool = True,
    weights_b: str | None = None,
    scoring_only: bool = False,
) -> Model:
    """Rebuild a model from a store: the scorer's state, and (``fitted``) a finalised scorer with
    the normalisation and threshold that belong to its revision.

    Args:
        extractor: share this feature extractor (it must match the store's backbone).
        fitted: the model will score (finalise it when the store holds only running state).
        scoring_only: it will never be fitted further: what only fitting needs is not read
            (faster to load, less memory; updating it is then an error).
    """
    with store.reading():  # the generation read here is not collected meanwhile
        return _load(store, where=where, device=device, weights=(weights, weights_b), extractor=extractor, fitted=fitted, scoring=scoring_only)


def _load(
    store: ArrayStore,
    *,
    where: str,
    device: torch.device | str,
    weights: tuple[str | None, str | None],
    extractor: FeatureExtractor | None,
    fitted: bool,
    scoring: bool = False,
) -> Model:
    attrs = check_format(store, where)
    config = config_from_attrs(attrs, weights=weights[0], where=where, weights_b=weights[1])
    try:
        model = Model(config, device=device, extractor=extractor)
    except ConfigError as exc:
        raise StoreError(f"model store {where}: {exc}") from None
    check_compatible(attrs, model, where, hint="pass the backbone weights files the model was fitted with")
    state = read_state(store, scoring=scoring)
    if state is not None:
        try:
            model.load_state(state)
        except StoreError as exc:
            raise StoreError(f"model store {where}: {exc}; hint: its attributes and arrays disagree (edited or damaged): refit it") from None
    model.unfinished = checked(typed.flag, attrs.get("unfinished", False), f"unfinished in {where}")
    if not fitted:
        return model
    if model.frames_seen == 0:
        raise StoreError(f"expected a fitted model in {where}, got 0 frames seen; hint: run `streamad fit`")
    if not model.finalised and model.trainable:
        raise StoreError(f"expected a trained model in {where}, got one whose training did not finish; hint: run `streamad fit --resume` with the same sources")
    if not model.finalised:
        model.finalise()
    revision = state.revision if state is not None else ""
    cal = attrs.get("normalisation")
    if cal and cal.get("of") == revision:
        model.normalisation = Normalisation(
            position_mean=store.read(f"{cal['path']}/position_mean"),
            normal_scores=store.read(f"{cal['path']}/normal_scores"),
            frames=checked(typed.integer, cal["frames"], f"normalisation.frames in {where}"),
            frame_score=cal.get("frame_score", FrameScoreConfig().attrs()),  # stores before it was recorded: the defaults
        )
    stored = attrs.get("threshold")
    if stored and stored.get("of") != revision:
        logger.warning("ignoring the stored threshold: it was set before the model was refitted; run `streamad calibrate` again")
    elif stored:
        value = checked(typed.number, stored["value"], f"threshold.value in {where}")
        model.threshold = Threshold(value, stored["method"], stored.get("detail", {}), stored.get("frame_score", {}))
    return model


def write_threshold(store: ArrayStore, threshold: Threshold) -> None:
    """Record a threshold for the store's committed scorer state (a refit makes it stale)."""
    attrs = check_format(store, "store")
    attrs["threshold"] = {**dataclasses.asdict(threshold), "of": (attrs.get("state") or {}).get("revision")}
    store.set_attrs(attrs)
