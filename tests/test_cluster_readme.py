"""The "More than one machine" page's commands (docs/cluster.md), run as written on one machine: a head node
started by ``ray start`` (on a free port), ``--ray auto`` fit and score, ``ray stop``. (This
module starts and stops a Ray of its own: it must not share the process with a ``ray.init``.)"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamad.io.decode import VideoWriter
from streamad.stores.model_store import open_store
from tests.conftest import scene

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def readme_commands() -> list[str]:
    text = (ROOT / "docs" / "cluster.md").read_text()
    match = re.search(r"<!-- ray-commands -->\n```sh\n(.*?)```", text, re.S)
    assert match, "docs/cluster.md lost its Ray commands"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_multi_node_commands_run_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    assert commands[0] == "pip install 'streamad[ray]'"
    head, others, fit, score, stop = commands[-5:]
    assert head == "ray start --head --port=6379" and others == "ray start --address=HEAD_IP:6379" and stop == "ray stop"
    cams = tmp_path / "cams"
    cams.mkdir()
    for i in range(2):
        with VideoWriter(cams / f"cam{i}.mp4", fps=10) as writer:
            for t in range(30):
                writer.write(scene(t, seed=i))
    port = str(free_port())

    def run(command: str) -> None:  # as written, by a shell, but for the port and the shared folder
        command = command.replace("6379", port).replace("/shared/", f"{tmp_path}/")
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"

    run(head)
    try:
        run(fit)
        run(score)
    finally:
        run(stop)
    attrs = open_store(tmp_path / "cams.zarr").attrs()
    assert attrs["cluster"]["address"] == "auto" and attrs["cluster"]["shards"] >= 1
    assert attrs["frames_seen"] == 54  # 60 frames, every 10th held out
    rows = (tmp_path / "cams-scores" / "scores.csv").read_text().splitlines()
    assert rows[0] == "source,index,pts_s,score" and len(rows) == 61
    assert np.isfinite([float(r.split(",")[3]) for r in rows[1:]]).all()
