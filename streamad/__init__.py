"""streamad: unsupervised anomaly detection and localisation for video and image streams.

``import streamad`` is light: torch, zarr and PyAV load when a name that needs them is first
used (``streamad.Detector``, ``streamad.fit``, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Detector": "streamad.api",
    "Result": "streamad.api",
    "fit": "streamad.pipelines.fit",
    "score": "streamad.pipelines.score",
    "evaluate": "streamad.pipelines.evaluate",
    "export": "streamad.pipelines.export",
    "watch": "streamad.pipelines.watch",
    "WatchOptions": "streamad.pipelines.watch",
    "SiteOutputs": "streamad.publish.site",
    "Metrics": "streamad.publish.prometheus",
    "LiveView": "streamad.publish.web",
    "EventOutputs": "streamad.publish.events",
    "load": "streamad.api",
    "read_frames": "streamad.api",
    "ModelConfig": "streamad.config",
    "FrameScoreConfig": "streamad.config",
    "FitOptions": "streamad.engine.fitting",
    "ScoreOptions": "streamad.engine.scoring",
    "register_scorer": "streamad.scorers.registry",
    "ScorerSpec": "streamad.scorers.registry",
    "scorer_names": "streamad.scorers.registry",
    "StreamadError": "streamad.errors",
    "ConfigError": "streamad.errors",
    "StoreError": "streamad.errors",
    "DecodeError": "streamad.errors",
    "SourceNotFoundError": "streamad.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'streamad' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
