"""The pipeline's stages, as plain iterator transforms (no threads here; see :mod:`runner`).

frames -> batch_frames -> preprocess -> extract (backbone, + the scorer's prepare)
       -> rebatch -> score (distances, maps, frame scores) -> smooth -> sinks
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from streamad.errors import ConfigError
from streamad.features.extractor import FeatureExtractor, Features
from streamad.frames import FeatureBatch, Frame, FrameRef, ScoreMap, TensorBatch

Prepare = Callable[[Features], Features]


def ref_of(frame: Frame) -> FrameRef:
    return FrameRef(frame.source_id, frame.index, frame.pts_s, frame.name, frame.t_decoded_s)


def set_aside(
    frames: Iterable[Frame],
    wanted: Callable[[int], bool],
    into: list[Frame],
    *,
    resize: Callable[[np.ndarray], np.ndarray],
    passed: Callable[[int], bool] | None,
) -> Iterator[Frame]:
    """Copies of the ``wanted`` frames, resized to the input size (a fraction of a decoded
    frame's memory; preprocessing later finds them at size and leaves them as they are), go into
    ``into``; the frames ``passed`` lets through (None: all) go on.

    Example:
        >>> import numpy as np
        >>> kept: list[Frame] = []
        >>> fs = [Frame("a", i, 0.0, np.zeros((4, 4, 3), np.uint8)) for i in range(4)]
        >>> [f.index for f in set_aside(fs, lambda i: i == 3, kept, resize=lambda im: im[:2, :2], passed=lambda i: i != 3)]
        [0, 1, 2]
        >>> [(f.index, f.image.shape) for f in kept]
        [(3, (2, 2, 3))]
    """
    for frame in frames:
        if wanted(frame.index):
            into.append(replace(frame, image=resize(frame.image)))
        if passed is None or passed(frame.index):
            yield frame


def batch_frames(frames: Iterable[Frame], *, max_batch: int, stopped: Callable[[], bool] | None = None) -> Iterator[list[Frame]]:
    """Group frames into lists of at most ``max_batch``, in arrival order.

    When the stream ended because ``stopped()`` turned true, a trailing partial batch is not
    yielded: a fit then counts only whole batches, so a resumed fit sees the same batches (and
    bit-identical backbone outputs) as an uninterrupted one.

    Example:
        >>> import numpy as np
        >>> fs = [Frame("a", i, 0.0, np.zeros((1, 1, 3), np.uint8)) for i in range(5)]
        >>> [len(b) for b in batch_frames(fs, max_batch=2)]
        [2, 2, 1]
    """
    if max_batch < 1:
        raise ConfigError(f"expected a batch size of at least 1, got {max_batch}")
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == max_batch:
            yield batch
            batch = []
    if batch and not (stopped is not None and stopped()):
        yield batch


def preprocess(batches: Iterable[Sequence[Frame]], extractor: FeatureExtractor, *, keep_originals: bool = False) -> Iterator[TensorBatch]:
    """Frames to uint8 tensors at the extractor's input size, on its device (the backbone's
    worker normalises them)."""
    for batch in batches:
        images = extractor.preprocess([f.image for f in batch])
        originals = tuple(f.image for f in batch) if keep_originals else ()
        yield TensorBatch(tuple(ref_of(f) for f in batch), images, originals)


def extract(batch: TensorBatch, extractor: FeatureExtractor, prepare: Prepare | None = None) -> FeatureBatch:
    """Backbone forward of one batch, then ``prepare`` (a scorer's projection) when given."""
    features = extractor(batch.images)
    if prepare is not None:
        features = prepare(features)
    return FeatureBatch(batch.refs, features, batch.originals)


def concat(batches: Sequence[FeatureBatch]) -> FeatureBatch:
    """One batch of several (features concatenated on axis 0)."""
    if len(batches) == 1:
        return batches[0]
    names = batches[0].features
    return FeatureBatch(
        tuple(r for b in batches for r in b.refs),
        {name: torch.cat([b.features[name] for b in batches]) for name in names},
        tuple(o for b in batches for o in b.originals),
    )


def select(batch: FeatureBatch, rows: Sequence[int]) -> FeatureBatch:
    """The frames ``rows`` of a batch."""
    if len(rows) == len(batch.refs):
        return batch
    index = torch.as_tensor(list(rows), dtype=torch.long)
    features = {name: f.index_select(0, index.to(f.device)) for name, f in batch.features.items()}
    return FeatureBatch(tuple(batch.refs[i] for i in rows), features, tuple(batch.originals[i] for i in rows) if batch.originals else ())


def rebatch(batches: Iterable[FeatureBatch], *, min_frames: int) -> Iterator[FeatureBatch]:
    """Concatenate consecutive feature batches until each holds at least ``min_frames`` frames.

    The running Gaussian's update and the Mahalanobis distances each read (P, k, k) float
    matrices once per batch whatever its size, so larger batches are cheaper per frame.
    """
    pending: list[FeatureBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += len(batch.refs)
        if count >= min_frames:
            yield concat(pending)
            pending, count = [], 0
    if pending:
        yield concat(pending)


def gather(batches: Iterable[FeatureBatch], *, frames: int) -> Iterator[FeatureBatch]:
    """:func:`rebatch` into buffers of ``frames`` frames allocated once and reused: no
    concatenated copy, and a pending frame costs its features only once. Each batch yielded
    holds views of the buffers, valid until the next one is asked for (a consumer that keeps
    features must copy them); a batch that does not fit is split across two.

    Example:
        >>> fs = [FeatureBatch((FrameRef("a", i, 0.0),), {"x": torch.full((1, 2), float(i))}) for i in range(5)]
        >>> [(len(b.refs), b.features["x"][:, 0].tolist()) for b in gather(fs, frames=2)]
        [(2, [0.0, 1.0]), (2, [2.0, 3.0]), (1, [4.0])]
    """
    if frames < 1:
        raise ConfigError(f"expected at least 1 frame per batch, got {frames}")
    buffers: dict[str, torch.Tensor] = {}
    refs: list[FrameRef] = []
    originals: list[object] = []
    for batch in batches:
        if not buffers:
            buffers = {name: f.new_empty((frames, *f.shape[1:])) for name, f in batch.features.items()}
        start = 0
        while start < len(batch.refs):
            take = min(frames - len(refs), len(batch.refs) - start)
            for name, f in batch.features.items():
                buffers[name][len(refs) : len(refs) + take].copy_(f[start : start + take])
            refs.extend(batch.refs[start : start + take])
            originals.extend(batch.originals[start : start + take])
            start += take
            if len(refs) == frames:
                yield FeatureBatch(tuple(refs), dict(buffers), tuple(originals))  # type: ignore[arg-type]
                refs, originals = [], []
    if refs:
        yield FeatureBatch(tuple(refs), {name: b[: len(refs)] for name, b in buffers.items()}, tuple(originals))  # type: ignore[arg-type]


def by_source(batch: FeatureBatch) -> Iterator[tuple[str, FeatureBatch]]:
    """A batch split into one batch per source, in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for i, ref in enumerate(batch.refs):
        rows.setdefault(ref.source_id, []).append(i)
    for source_id, picked in rows.items():
        yield source_id, select(batch, picked)


Route = Callable[[FeatureBatch], Sequence[ScoreMap]]


def score(batches: Iterable[FeatureBatch], route: Callable[[str], Route]) -> Iterator[ScoreMap]:
    """Each source's frames through its route (a model's scoring, or a camera's learning)."""
    for batch in batches:
        for source_id, part in by_source(batch):
            yield from route(source_id)(part)
