"""The README's Python API example runs as written, and its scores equal the CLI's on the same
frames; ``import streamad`` and ``streamad --help`` load no heavy library."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from streamad.cli import main
from streamad.io.decode import VideoWriter
from tests.conftest import scene

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its API example"
    return match.group(1)


def test_readme_api_example_runs_and_equals_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with VideoWriter(tmp_path / "clip.mp4", fps=10) as writer:
        for t in range(120):
            writer.write(scene(t, anomaly=t >= 110))
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - the documented example, verbatim
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[0].startswith("0 ")
    assert (tmp_path / "clip-model.zarr" / "zarr.json").is_file()
    results = namespace["results"]
    api = np.array([r.score for r in results])  # type: ignore[attr-defined]
    runner = CliRunner()
    assert (res := runner.invoke(main, ["fit", "clip.mp4", "--stop", "100", "-m", "cli.zarr", "-q"])).exit_code == 0, res.output
    assert (res := runner.invoke(main, ["score", "clip.mp4", "--start", "100", "-m", "cli.zarr", "-o", "out", "-q"])).exit_code == 0, res.output
    cli = np.loadtxt(tmp_path / "out" / "scores.csv", delimiter=",", skiprows=1, usecols=3)
    assert api.shape == cli.shape == (20,)
    np.testing.assert_allclose(api, cli, rtol=1e-5)
    assert api[10:].min() > api[:10].max()  # the red square (frames 110-119) stands out
    saved = runner.invoke(main, ["score", "clip.mp4", "--start", "100", "-m", "clip-model.zarr", "-o", "saved", "-q"])
    assert saved.exit_code == 0, saved.output
    np.testing.assert_allclose(np.loadtxt(tmp_path / "saved" / "scores.csv", delimiter=",", skiprows=1, usecols=3), cli, rtol=1e-5)


def test_import_and_help_load_no_heavy_library() -> None:
    probe = (
        "import sys, streamad; from streamad.cli import main; "
        "from click.testing import CliRunner; assert CliRunner().invoke(main, ['--help']).exit_code == 0; "
        "assert CliRunner().invoke(main, ['fit', '--help']).exit_code == 0; "
        "print(sorted(m for m in ('torch', 'zarr', 'av', 'cv2', 'kornia', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
