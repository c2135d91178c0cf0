"""Output paths, checked before anything is written: a job never overwrites what it reads."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from streamad.errors import ConfigError


def input_paths(specs: Iterable[object]) -> list[Path]:
    """The files and folders a job reads: existing paths, glob matches; URLs are left out."""
    paths: list[Path] = []
    for spec in specs:
        if not isinstance(spec, str | Path) or "://" in str(spec):
            continue
        text = str(spec)
        paths.extend(Path(p) for p in glob.glob(text)) if glob.has_magic(text) else paths.append(Path(text))
    return [p for p in paths if p.exists()]


def check_outputs(outputs: Mapping[str, str | Path | None], inputs: Sequence[str | Path]) -> None:
    """Refuse an output that is an input, or a folder holding one (it would be replaced).

    Args:
        outputs: what will be written, by the name the user knows it by (``"--overlay"``).
        inputs: sources and model stores the job reads.

    Raises:
        ConfigError: naming the output, the input and the fix.

    Example:
        >>> check_outputs({"--overlay": "clip.mp4"}, ["clip.mp4"])
        Traceback (most recent call last):
        ...
        streamad.errors.ConfigError: expected --overlay clip.mp4 to be a new path, got an input of this run (clip.mp4); hint: write it elsewhere
    """
    resolved = [(Path(i), Path(i).resolve()) for i in inputs]
    for label, output in outputs.items():
        if output is None:
            continue
        target = Path(output).resolve()
        for given, source in resolved:
            if target == source or target in source.parents:
                raise ConfigError(f"expected {label} {output} to be a new path, got an input of this run ({given}); hint: write it elsewhere")
