"""The architecture, checked: jobs stay short and reach models only through the scorer
protocol; one module imports each heavy library."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "pipelines").glob("*.py")) + [ROOT / "cli.py"]
LIBRARY = [p for p in sorted((ROOT / "streamad").rglob("*.py")) if not p.is_symlink()]


def functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    nodes = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    return [(node.name, (node.end_lineno or node.lineno) - node.lineno + 1) for node in nodes]


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_no_job_function_longer_than_60_lines(path: Path) -> None:
    long = [(name, n) for name, n in functions(path) if n > 60]
    assert not long, f"{path.name}: {long}"


@pytest.mark.parametrize("path", [*JOBS, ROOT / "streamad" / "api.py"], ids=lambda p: p.name)
def test_jobs_do_not_reach_into_scorers(path: Path) -> None:
    """Jobs hold a model, never its scorer (with or without an attribute after it), and never
    probe a scorer's capabilities by name."""
    hits = [line for line in path.read_text().splitlines() if re.search(r"\.gaussian\.|\.chol\b|\.scorer\b|getattr\(.*scorer", line)]
    assert not hits, hits


def test_capabilities_are_declared_not_probed() -> None:
    """No module asks a scorer (or a factory) for an attribute by name: capabilities are
    protocols checked with isinstance, requirements a ScorerSpec."""
    hits = []
    for path in [*LIBRARY, *JOBS]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"getattr\((self\.)?(scorer|factory|model)\b", line) or "# type: ignore[attr-defined]" in line:
                hits.append(f"{path.name}:{number}: {line.strip()}")
    assert not hits, hits


def test_no_two_modules_share_a_name() -> None:
    names = [p.name for p in [*LIBRARY, *JOBS] if p.name not in ("__init__.py", "__main__.py")]
    assert len(names) == len(set(names)), sorted({n for n in names if names.count(n) > 1})


def test_model_store_knows_no_method() -> None:
    text = (ROOT / "streamad" / "stores" / "model_store.py").read_text()
    assert not re.search(r"padim|soe|gaussian|\bm2\b|chol|projection", text, re.I)


def test_watch_is_short() -> None:
    assert len((ROOT / "pipelines" / "watch.py").read_text().splitlines()) < 250


OWNERS = [
    ("zarr", {"array_store.py"}),
    ("av", {"decode.py"}),
    ("click", {"cli.py", "cli_support.py"}),  # the command line: its commands and their machinery
    ("ray", {"cluster.py"}),
    ("matplotlib", {"plots.py"}),
]


@pytest.mark.parametrize(("library", "owners"), OWNERS, ids=[library for library, _ in OWNERS])
def test_one_importer_per_heavy_library(library: str, owners: set[str]) -> None:
    importers = []
    for path in [*LIBRARY, *JOBS]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name == library or name.startswith(library + ".") for name in names):
                importers.append(path.name)
    assert set(importers) == owners, importers


@pytest.mark.parametrize("path", [*LIBRARY, *JOBS], ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    """One idea a module: at most 400 lines, and no function over 50 (docstring included)."""
    assert len(path.read_text().splitlines()) <= 400
    long = [(name, n) for name, n in functions(path) if n > 50]
    assert not long, long


def test_the_library_is_not_built_on_the_jobs() -> None:
    """``streamad/`` (the API included) imports no job from ``pipelines/``; only the CLI does."""
    importers = []
    for path in LIBRARY:
        if path.name == "__init__.py" and path.parent.name == "streamad":
            continue  # names the jobs as lazy exports, imports none
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamad.pipelines"):
                importers.append(f"{path.relative_to(ROOT)}: {node.module}")
    assert not importers, importers
