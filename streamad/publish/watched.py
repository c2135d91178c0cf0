"""What the outputs of a running watch read of it: its cameras (as stored), their live stats,
thresholds and models. One view, shared by the score store's attributes, the metrics and the
web view; plain Python, no third-party import."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from streamad.sinks.stats import StreamStats


@dataclass(frozen=True, slots=True)
class Site:
    """A running watch, as its outputs see it.

    Attributes:
        cameras: each camera's name, URL (redacted) and model path, as the score store keeps them.
        streams: each camera's live counters.
        threshold: a camera's current alert threshold (None while it learns).
        model_of: a camera's model: {method, backbone, runtime}.
    """

    cameras: Sequence[Mapping[str, str]]
    streams: dict[str, StreamStats]
    threshold: Callable[[str], float | None]
    model_of: Callable[[str], dict[str, str]]
