"""The docs stay true to the code: the API reference names every public name of ``import
streamad``, the README stays a door (short), and every page the site lists exists."""

from __future__ import annotations

import re
from pathlib import Path

import streamad

ROOT = Path(__file__).resolve().parents[1]


def test_reference_lists_every_public_name() -> None:
    text = (ROOT / "docs" / "reference.md").read_text()
    documented = set(re.findall(r"^::: [\w.]+\.(\w+)$", text, re.M))
    public = set(streamad.__all__) - {"__version__"}
    assert documented == public, f"missing: {public - documented}, stale: {documented - public}"


def test_reference_points_at_the_objects_streamad_exports() -> None:
    text = (ROOT / "docs" / "reference.md").read_text()
    for path in re.findall(r"^::: ([\w.]+)$", text, re.M):
        module, _, name = path.rpartition(".")
        module = module.replace("pipelines.", "streamad.pipelines.", 1) if module.startswith("pipelines.") else module
        exported = getattr(streamad, name)
        assert exported.__module__ == module, f"{path}: streamad.{name} is {exported.__module__}.{name}"


def test_readme_is_a_door_and_the_nav_is_whole() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) < 250
    nav = re.findall(r":\s*([\w-]+\.md)$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert set(nav) == pages, set(nav) ^ pages
