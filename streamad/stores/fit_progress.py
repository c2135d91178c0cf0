"""How far a fit got, and of what: the part of a model store's attributes that resuming and
merging read (``sources`` and ``frames_seen``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from streamad import typed
from streamad.errors import StoreError
from streamad.io.sources import Source, identity
from streamad.stores.array_store import ArrayStore

EDITED = "the store's zarr.json was edited; refit, or restore it"
checked = functools.partial(typed.checked, error=StoreError, hint=EDITED)  # a store attribute's type checked


@dataclass(slots=True)
class FitProgress:
    """How far a fit got: the next frame index of each source, and the frames taken; for the
    sources a fit named, where their fitted range starts and what they are
    (:func:`~streamad.io.sources.identity`), so a merge can refuse two fits of the same frames."""

    next_index: dict[str, int] = field(default_factory=dict)
    frames_seen: int = 0
    start: dict[str, int] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)

    def claim(self, sources: Sequence[Source], start: int | None) -> None:
        """Record the start and identity of sources new to the fit (a resume keeps its own)."""
        for source in sources:
            self.start.setdefault(source.source_id, start or 0)
            known = identity(source)
            if known is not None:
                self.identity.setdefault(source.source_id, known)

    def range_of(self, source_id: str) -> tuple[str, int, int] | None:
        """(identity, first, next) of a source's fitted frames, when the fit recorded them."""
        if source_id not in self.identity or source_id not in self.next_index:
            return None
        return self.identity[source_id], self.start.get(source_id, 0), self.next_index[source_id]

    def attrs(self) -> dict[str, dict[str, Any]]:
        """The ``sources`` attribute of a store."""
        return {
            sid: {"next_index": n}
            | ({"start": self.start[sid]} if sid in self.start else {})
            | ({"source": self.identity[sid]} if sid in self.identity else {})
            for sid, n in self.next_index.items()
        }


def read_progress(store: ArrayStore) -> FitProgress:
    """How far the store's fit got: each source's next frame index and the frames seen (and,
    where recorded, each source's start and identity)."""
    attrs, where = store.attrs(), getattr(store, "path", "the store")
    sources = attrs.get("sources") or {}
    if not isinstance(sources, dict) or not all(isinstance(v, dict) for v in sources.values()):
        raise StoreError(f"expected sources in {where} to be an object {{source: {{next_index}}}}, got {sources!r}; hint: {EDITED}")
    count = functools.partial(typed.integer, minimum=0)
    return FitProgress(
        next_index={sid: checked(count, v.get("next_index"), f"sources.{sid}.next_index in {where}") for sid, v in sources.items()},
        frames_seen=checked(count, attrs.get("frames_seen", 0), f"frames_seen in {where}"),
        start={sid: checked(count, v["start"], f"sources.{sid}.start in {where}") for sid, v in sources.items() if "start" in v},
        identity={sid: checked(typed.text, v["source"], f"sources.{sid}.source in {where}") for sid, v in sources.items() if "source" in v},
    )
