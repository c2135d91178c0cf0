"""Sinks: where results go. One protocol (``write(result)``, ``close()``), one module each."""

from __future__ import annotations

from streamad.sinks.sink import Sink, Sinks

__all__ = ["Sink", "Sinks"]
