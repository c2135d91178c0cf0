"""``streamad info``: a model or score store's metadata, as lines or JSON."""

from __future__ import annotations

import json
from pathlib import Path

from streamad.errors import StoreError
from streamad.model_store import KIND as MODEL_KIND
from streamad.score_store import KIND as SCORES_KIND
from streamad.store import ZarrStore


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
    return lines
