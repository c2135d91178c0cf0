"""Output paths, checked before anything is written: a job never overwrites what it reads."""

from __future__ import annotations

import glob
import os
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


class Staged:
    """A file written beside ``path`` (``.new-NAME``: same folder, same suffix) that replaces
    ``path`` only when :meth:`commit`; :meth:`discard` removes it, so a job that fails leaves
    what was at ``path`` as it was. With ``staged=False`` it is written at ``path`` itself.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "scores.csv"
        >>> _ = target.write_text("old")
        >>> staged = Staged(target)
        >>> _ = staged.writing.write_text("new")
        >>> target.read_text(), staged.writing.name
        ('old', '.new-scores.csv')
        >>> staged.commit(); target.read_text(), staged.writing.exists()
        ('new', False)
    """

    def __init__(self, path: str | Path, *, staged: bool = True) -> None:
        self.path = Path(path)
        self.writing = self.path.with_name(f".new-{self.path.name}") if staged else self.path

    def commit(self) -> None:
        if self.writing != self.path and self.writing.exists():
            os.replace(self.writing, self.path)

    def discard(self) -> None:
        if self.writing != self.path:
            self.writing.unlink(missing_ok=True)
