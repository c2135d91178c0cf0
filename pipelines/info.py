"""``streamad info``: a model or score store's metadata, as lines or JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamad.errors import StoreError
from streamad.stores.array_store import ZarrStore
from streamad.stores.model_store import KIND as MODEL_KIND
from streamad.stores.score_store import KIND as SCORES_KIND


def describe_store(path: str | Path, *, as_json: bool = False) -> list[str]:
    """The store's root attributes: one ``key: value`` line each (long source lists cut), or
    the whole as indented JSON."""
    attrs = ZarrStore(path, mode="r").attrs()
    if attrs.get("kind") not in (MODEL_KIND, SCORES_KIND):
        raise StoreError(f"expected a streamad store at {path}, got a zarr store without streamad metadata")
    if as_json:
        return [json.dumps(attrs, indent=2)]
    lines = []
    for key, value in attrs.items():
        if key == "sources" and isinstance(value, dict) and len(value) > 8:
            value = f"{len(value)} sources: {', '.join(list(value)[:8])}, ..."
        lines.append(f"{key:>18}: {value}")
    training = _training(attrs)
    if training:
        lines.append(f"{'training':>18}: {training}")
    return lines


def _training(attrs: dict[str, Any]) -> str | None:
    """A trained scorer's progress in words (``epoch 12/200, 64 of 180 frames, loss 0.05``)."""
    state = (attrs.get("state") or {}).get("attrs") or {}
    if "epoch" not in state:
        return None
    total = attrs.get("epochs")
    cached = min(int(state.get("frames_seen", 0)), int(attrs.get("cache_frames") or state.get("frames_seen", 0)))
    loss = state.get("loss")
    status = "done" if state.get("finalised") else "running"
    where = f", {state.get('position', 0)} of {cached} cached frames" if state.get("position") else ""
    return f"epoch {state['epoch']}/{total or '?'}{where}, {state.get('steps', 0)} steps, loss {loss if loss is None else f'{loss:.4g}'} ({status})"
