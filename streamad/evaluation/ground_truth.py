"""Labelled test sets: which frames are anomalous, and where.

Layouts (detected from the folder given):

- **MVTec AD** category: ``test/<defect>/*.png`` with ``ground_truth/<defect>/<stem>_mask.png`` (or ``<stem>.png``);
  ``test/good`` has no masks. **MVTec 3D-AD**: ``test/<defect>/rgb/*.png`` with ``test/<defect>/gt/*.png``.
- **ShanghaiTech / mSTC**: ``testing/frames/<clip>/`` with ``test_frame_mask/<clip>.npy`` (T,) and
  ``test_pixel_mask/<clip>.npy`` (T, H, W), at the root or under ``testing/``.
- **UCSD** (as in ``ucsd_ped2``): ``testing/frames/<clip>/``, ``testing/masks/<clip>/<frame>.png`` and
  ``testing/frame_labels.json`` ``{clip: [0, 1, ...]}``.
- **MVTec LOCO AD** category: ``test/{good,logical_anomalies,structural_anomalies}/*.png`` with
  ``ground_truth/<type>/<stem>/000.png, 001.png, ...`` (one file per annotated defect; its pixel value names the
  defect type in ``defects_config.json``, which gives each type's saturation threshold for sPRO). Without
  ``test/good``, ``validation/good`` serves as the normal test images (a warning says so).
- **KolektorSDD**: ``kosNN/PartK.jpg`` with ``kosNN/PartK_label.bmp`` (or ``.png``); a part is defective when its
  label has any non-zero pixel. Each ``kos`` folder is one source.
- **Generic**: a folder of images with ``masks=`` a folder of masks (same stem, optionally ``_mask``; every image
  needs one, all-zero for normal images), or ``labels=`` a JSON file ``{image name: 0 or 1}`` (image-level only).

Anything malformed (a missing mask, a mask whose size differs from its image, a label count that differs from
the clip length, a label that is not 0, 1, true or false) raises :class:`GroundTruthError` naming the file.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamad import typed
from streamad.errors import StreamadError
from streamad.io.sources import IMAGE_SUFFIXES, ImageSequence, natural_key

logger = logging.getLogger(__name__)


class GroundTruthError(StreamadError):
    """The ground truth is missing, malformed or does not match the test frames."""


_checked = functools.partial(typed.checked, error=GroundTruthError, hint="fix the file")

MaskOf = Callable[[int], np.ndarray | None]  # frame index -> bool mask at the image's size; None = all normal
Defect = tuple[np.ndarray, float]  # (bool mask at the image's size, sPRO saturation threshold in pixels)
DefectsOf = Callable[[int], list[Defect]]  # frame index -> its annotated defects ([] = defect-free)


@dataclass(frozen=True, slots=True)
class LabelledSource:
    """One test source with its labels.

    Attributes:
        source: the frames, as :mod:`streamad.io.sources` reads them.
        labels: (T,) bool, True for anomalous frames.
        mask_of: the pixel mask of a frame (None: no pixel labels for this set).
        group: the row it is reported under (defect type, clip).
        defects_of: the annotated defects of a frame with their saturation thresholds (MVTec
            LOCO layout only; None elsewhere).
    """

    source: ImageSequence
    labels: np.ndarray
    mask_of: MaskOf | None
    group: str
    defects_of: DefectsOf | None = None

    @property
    def source_id(self) -> str:
        return self.source.source_id


@dataclass(frozen=True, slots=True)
class GroundTruth:
    layout: str
    sources: tuple[LabelledSource, ...]
    normal_from: str = "test"  # where the normal test images come from (LOCO: test or validation)

    @property
    def has_masks(self) -> bool:
        return all(s.mask_of is not None for s in self.sources)

    @property
    def has_defects(self) -> bool:
        """Every source carries per-defect annotations (sPRO can be computed)."""
        return all(s.defects_of is not None for s in self.sources)


def _images(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))


def _clips(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _images(p)), key=lambda p: natural_key(p.name))


def image_hw(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise GroundTruthError(f"expected a readable image at {path}, got an unreadable file")
    return int(image.shape[0]), int(image.shape[1])


def read_mask(path: Path, *, image: Path) -> np.ndarray:
    """A mask image as bool (nonzero = anomalous), checked against its image's size."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise GroundTruthError(f"expected a readable mask image at {path}, got an unreadable file")
    expected = image_hw(image)
    if mask.shape != expected:
        raise GroundTruthError(f"expected mask {path} to have its image's size {expected[0]}x{expected[1]} ({image}), got {mask.shape[0]}x{mask.shape[1]}")
    return mask > 0


def _find_mask(folder: Path, stem: str) -> Path | None:
    names = (f"{stem}_mask.png", f"{stem}.png", f"{stem}_mask.jpg", f"{stem}.jpg", f"{stem}.bmp", f"{stem}.tif", f"{stem}.tiff")
    return next((folder / name for name in names if (folder / name).is_file()), None)


def _mask_files(images: Sequence[Path], folder: Path, *, what: str) -> list[Path]:
    found = []
    for image in images:
        mask = _find_mask(folder, image.stem)
        if mask is None:
            raise GroundTruthError(f"expected a mask for {image} in {folder} ({image.stem}_mask.png or {image.stem}.png), got none ({what})")
        found.append(mask)
    return found


def _file_masks(images: Sequence[Path], masks: Sequence[Path | None]) -> MaskOf:
    def mask_of(index: int) -> np.ndarray | None:
        path = masks[index]
        return None if path is None else read_mask(path, image=images[index])

    return mask_of


def _mvtec(root: Path) -> GroundTruth:
    sources = []
    for defect in sorted((p for p in (root / "test").iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        rgb = defect / "rgb"
        images = _images(rgb if rgb.is_dir() else defect)
        if not images:
            continue
        normal = defect.name == "good"
        if normal:
            masks: list[Path | None] = [None] * len(images)
        elif rgb.is_dir():
            masks = list(_mask_files(images, defect / "gt", what="MVTec 3D-AD layout"))
        else:
            masks = list(_mask_files(images, root / "ground_truth" / defect.name, what="MVTec AD layout"))
        labelled = ImageSequence(defect.name, tuple(images), timed=False), np.full(len(images), not normal), _file_masks(images, masks), defect.name
        sources.append(LabelledSource(*labelled))
    if not sources:
        raise GroundTruthError(f"expected test images in {root / 'test'}/<defect>/, got none")
    return GroundTruth("mvtec", tuple(sources))


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise GroundTruthError(f"expected a numpy array file at {path}, got an unreadable file ({exc})") from exc


def _mstc(root: Path, frames_dir: Path) -> GroundTruth:
    base = next(b for b in (root, root / "testing") if (b / "test_frame_mask").is_dir())
    sources = []
    for clip in _clips(frames_dir):
        images = _images(clip)
        label_file = base / "test_frame_mask" / f"{clip.name}.npy"
        if not label_file.is_file():
            raise GroundTruthError(f"expected frame labels {label_file} for clip {clip}, got no such file")
        labels = _checked(typed.flags, _npy(label_file).ravel(), f"the frame labels in {label_file}")
        if len(labels) != len(images):
            raise GroundTruthError(f"expected {len(images)} frame labels in {label_file} (one per frame of {clip}), got {len(labels)}")
        pixel_file = base / "test_pixel_mask" / f"{clip.name}.npy"
        mask_of: MaskOf | None = None
        if (base / "test_pixel_mask").is_dir():
            if not pixel_file.is_file():
                raise GroundTruthError(f"expected pixel masks {pixel_file} for clip {clip}, got no such file")
            pixels = np.load(pixel_file, mmap_mode="r", allow_pickle=False)
            expected = (len(images), *image_hw(images[0]))
            if pixels.shape != expected:
                raise GroundTruthError(f"expected pixel masks of shape {expected} in {pixel_file} (frames x size of {clip}), got {pixels.shape}")
            mask_of = _array_masks(pixels)
        sources.append(LabelledSource(ImageSequence(clip.name, tuple(images)), labels, mask_of, clip.name))
    return GroundTruth("mstc", tuple(sources))


def _array_masks(pixels: np.ndarray) -> MaskOf:
    return lambda index: np.asarray(pixels[index]) > 0


def _ucsd(root: Path) -> GroundTruth:
    testing = root / "testing"
    label_file = testing / "frame_labels.json"
    try:
        all_labels = json.loads(label_file.read_text())
    except (OSError, ValueError) as exc:
        raise GroundTruthError(f"expected a JSON object {{clip: [labels]}} in {label_file}, got an unreadable file ({exc})") from exc
    sources = []
    for clip in _clips(testing / "frames"):
        images = _images(clip)
        if not isinstance(all_labels, dict) or clip.name not in all_labels:
            raise GroundTruthError(f"expected labels for clip {clip.name} in {label_file}, got none")
        labels = _checked(typed.flags, all_labels[clip.name], f"the labels of clip {clip.name} in {label_file}")
        if len(labels) != len(images):
            raise GroundTruthError(f"expected {len(images)} frame labels for clip {clip.name} in {label_file} (one per frame of {clip}), got {len(labels)}")
        mask_of = None
        if (testing / "masks").is_dir():
            mask_of = _file_masks(images, _mask_files(images, testing / "masks" / clip.name, what="UCSD layout"))
        sources.append(LabelledSource(ImageSequence(clip.name, tuple(images)), labels, mask_of, clip.name))
    return GroundTruth("ucsd", tuple(sources))


def _generic(root: Path, masks: Path | None, labels: Path | None) -> GroundTruth:
    images = _images(root)
    if not images:
        raise GroundTruthError(f"expected images in {root}, got none")
    if masks is not None:
        files = _mask_files(images, masks, what="--masks folder")
        mask_of = _file_masks(images, files)
        flags = np.array([bool(mask_of(i).any()) for i in range(len(images))])  # type: ignore[union-attr]
        return GroundTruth("generic", (LabelledSource(ImageSequence(root.name, tuple(images), timed=False), flags, mask_of, root.name),))
    if labels is None:
        raise GroundTruthError(f"expected ground truth for {root}, got neither --masks nor --labels; hint: see `streamad eval --help` for the layouts")
    try:
        table = json.loads(labels.read_text())
    except (OSError, ValueError) as exc:
        raise GroundTruthError(f"expected a JSON object {{image name: 0 or 1}} in {labels}, got an unreadable file ({exc})") from exc
    if not isinstance(table, dict):
        raise GroundTruthError(f"expected a JSON object {{image name: 0 or 1}} in {labels}, got a {type(table).__name__}")
    missing = [p.name for p in images if p.name not in table and p.stem not in table]
    if missing:
        raise GroundTruthError(f"expected a label in {labels} for every image of {root}, got none for {missing[0]} ({len(missing)} missing)")
    flags = np.array([_checked(typed.flag, table.get(p.name, table.get(p.stem)), f"the label of {p.name!r} in {labels}") for p in images], bool)
    return GroundTruth("labels", (LabelledSource(ImageSequence(root.name, tuple(images), timed=False), flags, None, root.name),))


@dataclass(frozen=True, slots=True)
class DefectType:
    """One entry of MVTec LOCO's ``defects_config.json``."""

    name: str
    pixel_value: int
    saturation: float
    relative: bool

    def threshold(self, area: int) -> float:
        """The saturation threshold in pixels for a defect of ``area`` pixels."""
        return self.saturation * area if self.relative else self.saturation


def read_defects_config(path: Path) -> dict[int, DefectType]:
    """``defects_config.json`` as {pixel value: defect type}."""
    if not path.is_file():
        raise GroundTruthError(f"expected {path} (MVTec LOCO layout: each defect type's pixel value and saturation threshold), got no such file")
    try:
        entries = json.loads(path.read_text())
        keys: tuple[tuple[str, Callable[[Any, str], Any]], ...] = (
            ("defect_name", typed.text), ("pixel_value", typed.integer), ("saturation_threshold", typed.number), ("relative_saturation", typed.flag)
        )
        types = [DefectType(*(_checked(convert, e[key], f"{key} in entry {i} of {path}") for key, convert in keys)) for i, e in enumerate(entries)]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise GroundTruthError(
            f"expected a JSON list of {{defect_name, pixel_value, saturation_threshold, relative_saturation}} in {path}, got an unreadable file ({exc!r})"
        ) from exc
    bad = [t for t in types if not t.saturation > 0]
    if bad:
        raise GroundTruthError(f"expected positive saturation thresholds in {path}, got {bad[0].saturation} for {bad[0].name}")
    return {t.pixel_value: t for t in types}


def _loco_defects(image: Path, folder: Path, types: dict[int, DefectType], config: Path) -> list[Defect]:
    """Each mask file of one image, split by pixel value into defects with their thresholds."""
    files = _images(folder) if folder.is_dir() else []
    if not files:
        raise GroundTruthError(f"expected defect masks {folder}/000.png, ... for {image} (MVTec LOCO layout), got none")
    defects = []
    expected = image_hw(image)
    for file in files:
        mask = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise GroundTruthError(f"expected a readable mask image at {file}, got an unreadable file")
        if mask.shape != expected:
            raise GroundTruthError(f"expected mask {file} to have its image's size {expected[0]}x{expected[1]} ({image}), got {mask.shape[0]}x{mask.shape[1]}")
        for value in np.unique(mask[mask > 0]).tolist():
            if value not in types:
                raise GroundTruthError(f"expected the pixel values of {file} to name defect types of {config}, got {value}, which it does not list")
            region = mask == value
            defects.append((region, types[value].threshold(int(region.sum()))))
    return defects


def _defects_from(images: Sequence[Path], folder: Path, types: dict[int, DefectType], config: Path) -> DefectsOf:
    return lambda index: _loco_defects(images[index], folder / images[index].stem, types, config)


def union(defects: Sequence[Defect]) -> np.ndarray | None:
    """The pixels of any of the defects (None: no defect)."""
    return np.logical_or.reduce([mask for mask, _ in defects]) if defects else None


def _union_of(defects_of: DefectsOf) -> MaskOf:
    return lambda index: union(defects_of(index))


def _loco(root: Path) -> GroundTruth:
    config = root / "defects_config.json"
    types = read_defects_config(config)
    normal_from = "test"
    folders = [p for p in (root / "test").iterdir() if p.is_dir() and _images(p)]
    if not any(p.name == "good" for p in folders):
        validation = root / "validation" / "good"
        if not (validation.is_dir() and _images(validation)):
            raise GroundTruthError(f"expected normal test images in {root / 'test' / 'good'} (or {root / 'validation' / 'good'}), got none")
        logger.warning("%s has no test/good: the normal test images are validation/good", root)
        folders.append(validation)
        normal_from = "validation"
    sources = []
    for folder in sorted(folders, key=lambda p: (p.name != "good", natural_key(p.name))):
        images = _images(folder)
        normal = folder.name == "good"
        defects_of: DefectsOf = (lambda index: []) if normal else _defects_from(images, root / "ground_truth" / folder.name, types, config)
        source = ImageSequence(folder.name, tuple(images), timed=False)
        sources.append(LabelledSource(source, np.full(len(images), not normal), _union_of(defects_of), folder.name, defects_of))
    return GroundTruth("loco", tuple(sources), normal_from)


def _is_loco(root: Path) -> bool:
    """A test set whose ground truth is one folder per image (MVTec LOCO), or which has its config."""
    if (root / "defects_config.json").is_file():
        return True
    truth = root / "ground_truth"
    return truth.is_dir() and any(p.is_dir() for t in truth.iterdir() if t.is_dir() for p in t.iterdir())


def _kolektor_label(image: Path) -> Path:
    for suffix in (".bmp", ".png"):
        label = image.with_name(f"{image.stem}_label{suffix}")
        if label.is_file():
            return label
    raise GroundTruthError(f"expected a label {image.stem}_label.bmp or .png beside {image} (KolektorSDD layout), got none")


def kolektor_folders(root: Path) -> list[Path]:
    """The ``kosNN`` folders of a KolektorSDD root, in order."""
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("kos")), key=lambda p: natural_key(p.name))


def kolektor_parts(folder: Path) -> tuple[list[Path], list[Path]]:
    """A ``kosNN`` folder's part images (labels excluded) and their label files."""
    images = [p for p in _images(folder) if not p.stem.endswith("_label")]
    return images, [_kolektor_label(p) for p in images]


def kolektor(root: Path, folders: Sequence[Path] | None = None) -> GroundTruth:
    """KolektorSDD (or the given ``kos`` folders of it): one source per folder, reported as one
    group; a part is defective when its label has any non-zero pixel."""
    sources = []
    for folder in folders if folders is not None else kolektor_folders(root):
        images, labels = kolektor_parts(folder)
        if not images:
            raise GroundTruthError(f"expected part images in {folder} (KolektorSDD layout), got none")
        mask_of = _file_masks(images, labels)
        flags = np.array([bool(mask_of(i).any()) for i in range(len(images))])  # type: ignore[union-attr]
        sources.append(LabelledSource(ImageSequence(folder.name, tuple(images), timed=False), flags, mask_of, "parts"))
    return GroundTruth("kolektorsdd", tuple(sources))


def load_ground_truth(path: str | Path, *, masks: str | Path | None = None, labels: str | Path | None = None) -> GroundTruth:
    """Read a labelled test set; the layout is detected (see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise GroundTruthError(f"expected a test-set folder, got {root} (no such folder)")
    if masks is not None or labels is not None:
        return _generic(root, Path(masks) if masks else None, Path(labels) if labels else None)
    if (root / "test").is_dir() and _is_loco(root):
        return _loco(root)
    if (root / "test").is_dir() and ((root / "train").is_dir() or (root / "ground_truth").is_dir()):
        return _mvtec(root)
    if kolektor_folders(root):
        return kolektor(root)
    frames = root / "testing" / "frames"
    if frames.is_dir():
        if (root / "test_frame_mask").is_dir() or (root / "testing" / "test_frame_mask").is_dir():
            return _mstc(root, frames)
        if (root / "testing" / "frame_labels.json").is_file():
            return _ucsd(root)
    raise GroundTruthError(
        f"expected a labelled test set at {root} (MVTec AD or LOCO category, KolektorSDD, ShanghaiTech/mSTC or UCSD layout), got none of them; "
        "hint: for a plain image folder give --masks DIR or --labels FILE"
    )
