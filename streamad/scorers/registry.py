"""The scorer registry: ``--method`` names to declared :class:`ScorerSpec`\\ s.

Built in: ``padim`` and ``soe`` (:class:`~streamad.scorers.gaussian.GaussianScorer`), ``pfm``
and ``pefm`` (:class:`~streamad.scorers.pfm.MappingScorer`, on a pair of backbones), ``ae-l2``
and ``ae-ssim`` (:class:`~streamad.scorers.autoencoder.AutoencoderScorer`, on the pixels),
``gcad`` (:class:`~streamad.scorers.gcad.GcadScorer`, a teacher backbone and the pixels).
Another method plugs in with :func:`register_scorer` and then runs in every job (fit, score,
eval, calibrate, watch; merge when it is :class:`~streamad.scorers.base.Mergeable`) without
touching them. A built-in method's module is imported only when the method is used.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamad.config import motion_kinds
from streamad.errors import ConfigError

if TYPE_CHECKING:
    from streamad.config import ModelConfig
    from streamad.features.extractor import FeatureExtractor
    from streamad.scorers.base import Scorer

ScorerFactory = Callable[["ModelConfig", "FeatureExtractor"], "Scorer"]


@dataclass(frozen=True, slots=True)
class ScorerSpec:
    """A method, declared once: how to build it and what it needs.

    Attributes:
        name: the ``--method`` name (letters, digits, ``-`` and ``_``).
        factory: ``factory(config, extractor)`` builds a new, unfitted scorer.
        extractors: feature extractors it reads: 1 (any backbone) or 2 (a pair).
        default_pair: with two extractors, the default second backbone for a first.
        fixed_input: what it reads instead of a backbone (``pixels``), or None.
        input_hw: its default input size (None: from the sources).
        steps: default optimiser steps of a trained method (its epochs follow from them).
        motions: the ``--motion`` cues it takes (:data:`~streamad.config.MOTION_CUES`).
        position_free: its distances mean the same wherever a patch is: frame scores normalise
            them by the cue's mean over all positions, not per position (which would bring the
            place back in).
        exportable: ``streamad export`` can write its scoring graph (a fixed graph of tensor
            operations from frames to distances, tested equal to PyTorch's; appearance only).

    Example:
        >>> spec = scorer_spec("pfm")
        >>> spec.extractors, spec.default_pair("lite0") if spec.default_pair else None
        (2, 'lite2')
    """

    name: str
    factory: ScorerFactory
    extractors: int = 1
    default_pair: Callable[[str], str] | None = None
    fixed_input: str | None = None
    input_hw: tuple[int, int] | None = None
    steps: int | None = None
    motions: tuple[str, ...] = ()
    position_free: bool = False
    exportable: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"expected a method name of letters, digits, '-' and '_', got {self.name!r}")
        if self.extractors not in (1, 2) or (self.extractors == 2) != (self.default_pair is not None):
            raise ConfigError(f"expected 1 extractor, or 2 with a default_pair, for method {self.name!r}, got {self.extractors}")


_BUILTIN = {
    "padim": "streamad.scorers.gaussian:PADIM",
    "soe": "streamad.scorers.gaussian:SOE",
    "pfm": "streamad.scorers.pfm:PFM",
    "pefm": "streamad.scorers.pfm:PEFM",
    "ae-l2": "streamad.scorers.autoencoder:AE_L2",
    "ae-ssim": "streamad.scorers.autoencoder:AE_SSIM",
    "gcad": "streamad.scorers.gcad:GCAD",
    "knn": "streamad.scorers.knn:KNN",
}
_REGISTERED: dict[str, ScorerSpec] = {}


def register_scorer(spec: ScorerSpec, *, replace: bool = False) -> None:
    """Make ``spec`` the method ``--method spec.name``.

    Raises:
        ConfigError: the name is taken (pass ``replace=True`` to re-register your own).
    """
    if not replace and (spec.name in _BUILTIN or spec.name in _REGISTERED):
        raise ConfigError(f"expected a new method name, got {spec.name!r}, which is registered already; hint: pass replace=True")
    _REGISTERED[spec.name] = spec


def unregister_scorer(name: str) -> None:
    """Remove a scorer added with :func:`register_scorer` (built-in ones stay)."""
    _REGISTERED.pop(name, None)


def scorer_names() -> list[str]:
    """Every method name that :func:`build_scorer` accepts."""
    return sorted({*_BUILTIN, *_REGISTERED})


def scorer_spec(name: str) -> ScorerSpec:
    """The spec of a method, or a :class:`ConfigError` listing the choices."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        spec: ScorerSpec = getattr(importlib.import_module(module), attr)
        return spec
    raise ConfigError(f"expected --method in {scorer_names()}, got {name!r}")


def resolve(config: ModelConfig) -> ModelConfig:
    """The config with the method's declared defaults filled in (and checked): the second
    backbone of a method that reads two, none for the others; the input of a method that reads
    no backbone (``fixed_input``) and its input size."""
    spec = scorer_spec(config.method)
    refused = [cue for cue in motion_kinds(config.motion) if cue not in spec.motions]
    if refused:
        takes = f"cues among {spec.motions}" if spec.motions else "off"
        raise ConfigError(f"expected --motion {takes} for --method {config.method}, got {config.motion!r}")
    if spec.fixed_input is not None:
        from streamad.config import ModelConfig

        if config.backbone not in (spec.fixed_input, ModelConfig().backbone):
            raise ConfigError(f"expected no --backbone for --method {config.method} (it reads the {spec.fixed_input} input), got {config.backbone}")
        config = dataclasses.replace(config, backbone=spec.fixed_input, input_hw=config.input_hw or spec.input_hw)
    if spec.default_pair is not None:
        return config if config.backbone_b is not None else dataclasses.replace(config, backbone_b=spec.default_pair(config.backbone))
    if config.backbone_b is not None:
        raise ConfigError(f"expected no second backbone for --method {config.method}, got --backbone-b {config.backbone_b}; hint: it is for pfm and pefm")
    return config


def build_scorer(config: ModelConfig, extractor: FeatureExtractor) -> Scorer:
    """A new, unfitted scorer for ``config.method`` on ``extractor``'s features."""
    return scorer_spec(config.method).factory(config, extractor)
