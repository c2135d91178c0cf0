"""``streamad fit``: stream frames through the backbone into a scorer, checkpointing to a store."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from streamad.config import ModelConfig
from streamad.engine.fitting import FitOptions, FitSummary, open_fit, run_fit
from streamad.engine.progress import Progress, no_progress
from streamad.engine.runtime import pick_device
from streamad.io.sources import Source, resolve_sources
from streamad.stores.array_store import ArrayStore


def fit(
    specs: Sequence[str | Path | Source],
    store: str | Path | ArrayStore,
    config: ModelConfig | None = None,
    *,
    options: FitOptions = FitOptions(),
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> FitSummary:
    """Fit (or continue fitting) a model store on the frames of ``specs``.

    Frames are counted per source in order; a checkpoint every ``options.checkpoint_every`` frames
    records how far each source got, so an interrupted fit resumes exactly where it stopped.
    Every ``holdout_every``-th frame is kept out of the fit; at most ``calibration_frames`` of
    those then measure the normalisation of the distances. The store is locked while the fit
    writes it; a replaced store (``overwrite``) is swapped out only at the new one's first commit.
    """
    began = time.perf_counter()
    sources = resolve_sources(specs)
    target, model, state = open_fit(sources, store, config, resume=resume, overwrite=overwrite, options=options, device=str(pick_device(options.device)))
    summary = FitSummary(str(store) if isinstance(store, str | Path) else "memory")
    try:
        run_fit(sources, target, model, state, options, summary, progress)
        if not summary.interrupted:
            summary.seconds = time.perf_counter() - began
        return summary
    finally:
        if target is not store:  # opened here: release the writer lock
            target.close()
