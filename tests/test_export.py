"""``streamad export``: the ONNX graph of a fitted model equals PyTorch's scoring (maps and
frame scores to 1e-4 relative), runs without torch or streamad, and bad input is one line."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import streamad
from streamad.cli import main
from streamad.config import FrameScoreConfig, ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.engine.scoring import load_model
from streamad.frames import FrameRef
from streamad.io.decode import VideoWriter
from streamad.stores.model_store import open_store
from tests.test_evaluate import mvtec

ort = pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
HW = (96, 128)  # the toy set's frame size: frames need no resizing


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mvtec(tmp_path_factory.mktemp("export") / "toy")


def toy_frames(root: Path) -> np.ndarray:
    paths = sorted((root / "test").glob("*/*.png"))
    return np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("method", ["padim", "soe", "pfm", "pefm"])
def test_exported_graph_equals_pytorch(method: str, toy: Path, tmp_path: Path) -> None:
    store = tmp_path / f"{method}.zarr"
    streamad.fit([str(toy)], store, ModelConfig(method=method, input_hw=HW, k=16), options=FitOptions(holdout_every=4, epochs=2))
    frames = toy_frames(toy)
    code = CliRunner().invoke(main, ["export", "-m", str(store), "-o", str(tmp_path / "m.onnx")])
    assert code.exit_code == 0 and "exported" in code.output, code.output
    model = load_model(store, device="cpu", weights=None)
    frame_score = model.settled(FrameScoreConfig())
    refs = [FrameRef("t", i, 0.0) for i in range(len(frames))]
    expected = model.results(refs, model.distances(model.prepare(model.extractor.extract(list(frames)))), frame_score=frame_score)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (frames[:1], frames[1:8], frames):  # the batch is dynamic
        maps, scores = session.run(["maps", "scores"], {"frames": batch})
        first = 0 if len(batch) != 7 else 1
        want = expected[first : first + len(batch)]
        assert relative(maps, np.stack([r.anomaly_map for r in want])) < 1e-4
        assert relative(scores, np.array([r.score for r in want])) < 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["method"] == method and json.loads(meta["input_hw"]) == list(HW) and meta["streamad_version"] == streamad.__version__
    assert json.loads(meta["frame_score"]) == frame_score.attrs()


BLOCK_IMPORTS = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "streamad", "torchvision", "cv2"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Block())
"""


def test_the_readme_script_scores_without_torch_or_streamad_as_score_does(toy: Path, tmp_path: Path) -> None:
    """The README's script, verbatim, in a process where torch and streamad cannot be imported,
    gives `streamad score`'s frame scores to 1e-4."""
    text = (ROOT / "README.md").read_text()
    script = re.search(r"## Deploy.*?```python\n(.*?)```", text, re.S)
    assert script, "README.md lost its Deploy script"
    assert len(script.group(1).strip().splitlines()) <= 10
    store, onnx_file = tmp_path / "m.zarr", tmp_path / "m.onnx"
    streamad.fit([str(toy)], store, ModelConfig(input_hw=HW, k=16), options=FitOptions(holdout_every=4))
    runner = CliRunner()
    assert runner.invoke(main, ["export", "-m", str(store), "-o", str(onnx_file)]).exit_code == 0
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, path in enumerate(sorted((toy / "test").glob("*/*.png"))):
        shutil.copy(path, folder / f"{i:03d}.png")
    frames = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.glob("*.png"))])
    np.save(tmp_path / "frames.npy", frames)
    (tmp_path / "deploy.py").write_text(BLOCK_IMPORTS + script.group(1))
    command = [sys.executable, str(tmp_path / "deploy.py"), str(onnx_file), str(tmp_path / "frames.npy")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    alone = np.array([float(v) for v in done.stdout.split()])
    result = runner.invoke(main, ["score", str(folder), "-m", str(store), "-o", str(tmp_path / "s"), "-q"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "s" / "scores.csv") as f:
        scored = np.array([float(row["score"]) for row in csv.DictReader(f)])
    assert len(alone) == len(scored) == len(frames) and relative(alone, scored) < 1e-4
    blocked = subprocess.run([sys.executable, "-c", BLOCK_IMPORTS + "import torch"], capture_output=True, text=True)
    assert blocked.returncode != 0 and "torch is not installed here" in blocked.stderr


def test_bad_exports_are_one_line(toy: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    store = tmp_path / "knn.zarr"
    streamad.fit([str(toy)], store, ModelConfig(method="knn", input_hw=HW), options=FitOptions(holdout_every=4))
    (tmp_path / "plain").mkdir()
    cases = {
        "knn": ["-m", str(store), "-o", str(tmp_path / "k.onnx")],
        "not a store": ["-m", str(tmp_path / "plain"), "-o", str(tmp_path / "p.onnx")],
        "missing": ["-m", str(tmp_path / "none.zarr"), "-o", str(tmp_path / "n.onnx")],
        "onto the model": ["-m", str(store), "-o", str(store)],
    }
    for why, args in cases.items():
        result = runner.invoke(main, ["export", *args])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, (why, result.output)
    assert "exportable method" in runner.invoke(main, ["export", *cases["knn"]]).output
    result = runner.invoke(main, ["export", "-m", str(store), "-o", str(tmp_path / "x.xml"), "--format", "tflite"])
    assert result.exit_code == 2 and "tflite" in result.output
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".new-*"))


@pytest.mark.parametrize("method", ["padim", "pefm"])
def test_openvino_ir_equals_pytorch(method: str, toy: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    from streamad.openvino_export import compile_exported

    store = tmp_path / f"{method}.zarr"
    streamad.fit([str(toy)], store, ModelConfig(method=method, input_hw=HW, k=16), options=FitOptions(holdout_every=4, epochs=2))
    result = CliRunner().invoke(main, ["export", "-m", str(store), "-o", str(tmp_path / "m.xml"), "--format", "openvino"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.bin").stat().st_size > 1_000_000  # float32 weights, not compressed to float16
    frames = toy_frames(toy)
    model = load_model(store, device="cpu", weights=None)
    refs = [FrameRef("t", i, 0.0) for i in range(len(frames))]
    expected = model.results(refs, model.distances(model.prepare(model.extractor.extract(list(frames)))), frame_score=model.settled(FrameScoreConfig()))
    compiled = compile_exported(tmp_path / "m.xml")
    for batch, want in ((frames[:3], expected[:3]), (frames, expected)):
        out = compiled({"frames": batch})
        assert relative(out["maps"], np.stack([r.anomaly_map for r in want])) < 1e-4
        assert relative(out["scores"], np.array([r.score for r in want])) < 1e-4
    import openvino as ov

    assert ov.Core().read_model(str(tmp_path / "m.xml")).get_rt_info(["streamad", "method"]).astype(str) == method
    bad = CliRunner().invoke(main, ["export", "-m", str(store), "-o", str(tmp_path / "m.onnx"), "--format", "openvino"])
    assert bad.exit_code == 1 and "expected -o to end in .xml" in bad.output


def scores_csv(folder: Path) -> np.ndarray:
    with open(folder / "scores.csv") as f:
        return np.array([float(row["score"]) for row in csv.DictReader(f)])


def test_score_with_each_runtime_equals_pytorch_and_an_edited_graph_is_refused(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "m.zarr"
    streamad.fit([str(toy)], store, ModelConfig(input_hw=HW, k=16), options=FitOptions(holdout_every=4))
    runner = CliRunner()
    test = str(toy / "test" / "red")

    def score(runtime: str, out: str) -> tuple[int, str]:
        result = runner.invoke(main, ["score", test, "-m", str(store), "-o", str(tmp_path / out), "--runtime", runtime, "-q"])
        return result.exit_code, result.output

    assert score("torch", "torch")[0] == 0
    for runtime, cached in (("onnxruntime", ".m.zarr.onnx"), ("openvino", ".m.zarr.xml")):
        code, output = score(runtime, runtime)
        assert code == 0, output
        assert relative(scores_csv(tmp_path / runtime), scores_csv(tmp_path / "torch")) < 1e-4
        assert (tmp_path / cached).is_file()
    onnx_file = tmp_path / ".m.zarr.onnx"
    made = onnx_file.stat().st_mtime_ns
    assert score("onnxruntime", "again")[0] == 0 and onnx_file.stat().st_mtime_ns == made  # the cache is used
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"\0")
    code, output = score("onnxruntime", "edited")
    assert code == 1 and "edited since" in output and len(output.strip().splitlines()) == 1, output
    sidecar = tmp_path / ".m.zarr.onnx.json"
    recorded = json.loads(sidecar.read_text())
    recorded["made_from"]["streamad_version"] = "0.0.1"  # made by another version: refused when the runtime is named ...
    recorded["sha256"] = hashlib.sha256(onnx_file.read_bytes()).hexdigest()  # (and not edited since)
    sidecar.write_text(json.dumps(recorded))
    code, output = score("onnxruntime", "older")
    assert code == 1 and "streamad 0.0.1 exported" in output and "--runtime auto" in output and len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "older" / "scores.csv").exists()
    monkeypatch.delenv("STREAMAD_RUNTIME", raising=False)  # ... and made again by auto's pick
    assert score("auto", "remade")[0] == 0 and relative(scores_csv(tmp_path / "remade"), scores_csv(tmp_path / "torch")) < 1e-4
    assert json.loads(sidecar.read_text())["made_from"]["streamad_version"] == streamad.__version__
    knn = tmp_path / "knn.zarr"
    streamad.fit([str(toy)], knn, ModelConfig(method="knn", input_hw=HW), options=FitOptions(holdout_every=4))
    result = runner.invoke(main, ["score", test, "-m", str(knn), "-o", str(tmp_path / "k"), "--runtime", "onnxruntime"])
    assert result.exit_code == 1 and "exportable method" in result.output and len(result.output.strip().splitlines()) == 1


def test_two_jobs_opening_a_graph_first_export_it_once(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs scoring a model with onnxruntime for the first time at once (two threads here,
    each with its own lock file handle, as two processes would have): one exports, the other
    waits and loads that export, instead of reading a graph replaced under it."""
    import threading

    import streamad.engine.exported as exported

    store = tmp_path / "m.zarr"
    streamad.fit([str(toy)], store, ModelConfig(input_hw=HW, k=16), options=FitOptions(holdout_every=4))
    model = load_model(store, device="cpu", weights=None)
    settings = model.settled(FrameScoreConfig())
    writes: list[Path] = []
    write_graph = exported.write_graph

    def counted(fmt: str, model: object, path: Path, frame_score: FrameScoreConfig) -> dict[str, str]:
        writes.append(path)
        return write_graph(fmt, model, path, frame_score)  # type: ignore[arg-type]

    monkeypatch.setattr(exported, "write_graph", counted)
    opened: list[exported.Exported] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            opened.append(exported.open_exported("onnxruntime", store, model, settings, stored=open_store(store, mode="r"), threads=1))
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(opened) == 2 and writes == [tmp_path / ".m.zarr.onnx"]
    frames = toy_frames(toy)[:2]
    first, second = (graph.run(frames) for graph in opened)
    assert np.array_equal(first[1], second[1])


def test_eval_with_onnxruntime_gives_the_same_metrics(toy: Path, tmp_path: Path) -> None:
    store = tmp_path / "m.zarr"
    streamad.fit([str(toy)], store, ModelConfig(input_hw=HW, k=16), options=FitOptions(holdout_every=4))
    runner = CliRunner()
    tables = {}
    for runtime in ("torch", "onnxruntime"):
        result = runner.invoke(main, ["eval", str(toy), "-m", str(store), "-o", str(tmp_path / runtime), "--runtime", runtime, "-q"])
        assert result.exit_code == 0, result.output
        tables[runtime] = [line for line in result.output.splitlines() if "**overall**" in line]
    assert tables["torch"] and tables["torch"] == tables["onnxruntime"]


def test_a_raw_export_equals_score_raw(toy: Path, tmp_path: Path) -> None:
    store = tmp_path / "m.zarr"
    streamad.fit([str(toy)], store, ModelConfig(input_hw=HW, k=16), options=FitOptions(holdout_every=4))
    assert CliRunner().invoke(main, ["export", "-m", str(store), "-o", str(tmp_path / "raw.onnx"), "--raw"]).exit_code == 0
    frames = toy_frames(toy)
    model = load_model(store, device="cpu", weights=None)
    refs = [FrameRef("t", i, 0.0) for i in range(len(frames))]
    raw = model.settled(FrameScoreConfig(normalised=False))
    expected = model.results(refs, model.distances(model.prepare(model.extractor.extract(list(frames)))), frame_score=raw)
    maps, scores = ort.InferenceSession(str(tmp_path / "raw.onnx")).run(["maps", "scores"], {"frames": frames})
    assert relative(maps, np.stack([r.anomaly_map for r in expected])) < 1e-4
    assert relative(scores, np.array([r.score for r in expected])) < 1e-4


def test_auto_picks_onnxruntime_where_it_applies_else_torch(toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMAD_RUNTIME")
    store, knn = tmp_path / "m.zarr", tmp_path / "knn.zarr"
    streamad.fit([str(toy)], store, ModelConfig(input_hw=HW, k=16), options=FitOptions(holdout_every=4))
    streamad.fit([str(toy)], knn, ModelConfig(method="knn", input_hw=HW), options=FitOptions(holdout_every=4))
    runner, test = CliRunner(), str(toy / "test" / "red")

    def score(model: Path, out: str, *extra: str) -> int:
        return runner.invoke(main, ["score", test, "-m", str(model), "-o", str(tmp_path / out), "-q", *extra]).exit_code

    assert score(store, "auto") == 0 and (tmp_path / ".m.zarr.onnx").is_file()  # exportable, on a CPU: onnxruntime
    assert score(store, "torch", "--runtime", "torch") == 0
    assert relative(scores_csv(tmp_path / "auto"), scores_csv(tmp_path / "torch")) < 1e-4
    assert score(knn, "knn") == 0 and not (tmp_path / ".knn.zarr.onnx").exists()  # not exportable: torch
    assert score(store, "layers", "--overlay", str(tmp_path / "o.mp4"), "--overlay-layers", "combined,appearance") == 0  # maps only torch gives
    monkeypatch.setenv("STREAMAD_RUNTIME", "openvino")  # names auto's pick
    assert score(store, "ov") == 0 and (tmp_path / ".m.zarr.xml").is_file()
    monkeypatch.setenv("STREAMAD_RUNTIME", "tensorrt")
    result = runner.invoke(main, ["score", test, "-m", str(store), "-o", str(tmp_path / "bad")])
    assert result.exit_code == 1 and "STREAMAD_RUNTIME" in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_watch_and_the_detector_score_with_onnxruntime_as_pytorch(toy: Path, tmp_path: Path) -> None:
    from streamad.io.cameras import Camera
    from streamad.pipelines.watch import WatchOptions, watch

    store = tmp_path / "m.zarr"
    streamad.fit([str(toy)], store, ModelConfig(input_hw=HW, k=16), options=FitOptions(holdout_every=4))
    frames = list(toy_frames(toy))
    torch_scores = np.array([r.score for r in streamad.load(store, runtime="torch").score(frames)])
    loaded = streamad.load(store, runtime="onnxruntime")
    assert relative(np.array([r.score for r in loaded.score(frames)]), torch_scores) < 1e-4 and (tmp_path / ".m.zarr.onnx").is_file()
    fitted = streamad.Detector(ModelConfig(input_hw=HW, k=16), runtime="onnxruntime", options=FitOptions(holdout_every=4))  # in memory: own folder
    fitted.fit(frames)
    in_memory = np.array([r.score for r in fitted.score(frames)])
    fitted.save(tmp_path / "saved.zarr")
    assert relative(in_memory, np.array([r.score for r in streamad.load(tmp_path / "saved.zarr", runtime="torch").score(frames)])) < 1e-4
    clip = tmp_path / "clip.mp4"
    with VideoWriter(clip, fps=25) as writer:
        for frame in frames:
            writer.write(frame)
    for runtime in ("torch", "onnxruntime"):
        summary = watch([Camera("cam", str(clip), str(store))], tmp_path / runtime, options=WatchOptions(runtime=runtime), print_stats=lambda line: None)
        assert summary.streams["cam"].scored == len(frames) and summary.streams["cam"].balanced()
    assert relative(scores_csv(tmp_path / "onnxruntime"), scores_csv(tmp_path / "torch")) < 1e-4
    with pytest.raises(streamad.ConfigError, match="--adapt"):
        watch([Camera("cam", str(clip), str(store))], tmp_path / "a", options=WatchOptions(runtime="onnxruntime", adapt=True), print_stats=lambda line: None)
