"""``streamad eval`` end to end on generated test sets in each layout, and bad ground truth."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from streamad.cli import main
from streamad.config import FrameScoreConfig, ModelConfig
from streamad.engine.fitting import FitOptions
from streamad.engine.scoring import ScoreOptions
from streamad.evaluation.ground_truth import GroundTruthError, load_ground_truth
from streamad.evaluation.report import markdown, worst_tiles, write_report
from streamad.pipelines.evaluate import evaluate_model, evaluate_predictions
from streamad.pipelines.fit import fit
from tests.conftest import scene

SMALL = ModelConfig(input_hw=(64, 96), k=16)
SQUARE = (24, 32, 20)  # y, x, side of the red square scene(anomaly=True) draws at 96x128


def save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)


def square_mask(shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    y, x, side = SQUARE
    mask[y : y + side + 1, x : x + side + 1] = 255
    return mask


def mvtec(root: Path, *, mask_suffix: str = "_mask") -> Path:
    for t in range(24):
        save(root / "train" / "good" / f"{t:03d}.png", scene(t))
    for t in range(6):
        save(root / "test" / "good" / f"{t:03d}.png", scene(3 * t + 1))  # blob where training saw it
        save(root / "test" / "red" / f"{t:03d}.png", scene(3 * t + 2, anomaly=True))
        save(root / "ground_truth" / "red" / f"{t:03d}{mask_suffix}.png", square_mask())
    return root


def ucsd(root: Path, *, anomalous: range = range(8, 14), frames: int = 20) -> Path:
    labels = [int(t in anomalous) for t in range(frames)]
    for t in range(frames):
        save(root / "training" / "frames" / "01" / f"{t:03d}.png", scene(t))
        save(root / "testing" / "frames" / "01" / f"{t:03d}.png", scene(t, anomaly=bool(labels[t])))
        save(root / "testing" / "masks" / "01" / f"{t:03d}.png", square_mask() if labels[t] else np.zeros((96, 128), np.uint8))
    (root / "testing" / "frame_labels.json").write_text(json.dumps({"01": labels}))
    return root


LOCO_CONFIG = [
    {"defect_name": "red_square", "pixel_value": 255, "saturation_threshold": 200.0, "relative_saturation": False},
    {"defect_name": "red_corner", "pixel_value": 254, "saturation_threshold": 0.5, "relative_saturation": True},
]


def loco(root: Path, *, test_good: bool = True) -> Path:
    """A MVTec LOCO category: each anomalous image has two defect files of two types (the second
    overlapping the first), absolute and relative saturation."""
    for t in range(24):
        save(root / "train" / "good" / f"{t:03d}.png", scene(t))
    for t in range(4):
        save(root / "validation" / "good" / f"{t:03d}.png", scene(3 * t + 1))
        if test_good:
            save(root / "test" / "good" / f"{t:03d}.png", scene(3 * t + 1))
        for kind in ("logical_anomalies", "structural_anomalies"):
            save(root / "test" / kind / f"{t:03d}.png", scene(3 * t + 2, anomaly=True))
            corner = np.zeros((96, 128), np.uint8)
            corner[24:34, 32:42] = 254
            save(root / "ground_truth" / kind / f"{t:03d}" / "000.png", square_mask())
            save(root / "ground_truth" / kind / f"{t:03d}" / "001.png", corner)
    (root / "defects_config.json").write_text(json.dumps(LOCO_CONFIG))
    return root


def kolektor(root: Path, folders: int = 3, parts: int = 6) -> Path:
    """KolektorSDD layout: kosNN/PartK.jpg with PartK_label.bmp; part 2 of each folder is cracked."""
    for f in range(folders):
        for k in range(parts):
            bad = k == 2
            save(root / f"kos{f + 1:02d}" / f"Part{k}.jpg", scene(k + f % 2, anomaly=bad))
            save(root / f"kos{f + 1:02d}" / f"Part{k}_label.bmp", square_mask() if bad else np.zeros((96, 128), np.uint8))
    return root


@pytest.fixture(scope="module")
def category(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = mvtec(tmp_path_factory.mktemp("mvtec") / "toy")
    model = root.parent / "toy.zarr"
    fit([str(root)], model, SMALL, options=FitOptions(holdout_every=4))
    return root, model


class TestModelEval:
    def test_mvtec_layout_metrics_report_and_predictions_agree(self, category: tuple[Path, Path], tmp_path: Path) -> None:
        root, model = category
        truth = load_ground_truth(root)
        assert truth.layout == "mvtec" and [s.source_id for s in truth.sources] == ["good", "red"]
        evaluation = evaluate_model(truth, model, tmp_path / "eval")
        overall = evaluation.metrics["overall"]
        assert overall["frames"] == 12 and overall["anomalous"] == 6
        assert overall["auroc"] > 0.9 and overall["pixel_auroc"] > 0.9 and overall["aupro"] > 0.5
        assert overall["regions"] == 6
        again = evaluate_predictions(tmp_path / "eval" / "scores.zarr", truth)
        assert again.metrics["overall"] == overall and again.metrics["groups"] == evaluation.metrics["groups"]
        written = write_report(evaluation, tmp_path / "report")
        assert {Path(p).name for p in written} == {"metrics.json", "metrics.md", "roc.png", "pro.png", "histogram.png", "worst.png"}
        assert json.loads((tmp_path / "report" / "metrics.json").read_text())["overall"] == overall
        assert "| **overall** |" in markdown(evaluation.metrics)

    def test_cli_eval_then_predictions_same_numbers(self, category: tuple[Path, Path], tmp_path: Path) -> None:
        root, model = category
        runner = CliRunner()
        first = runner.invoke(main, ["eval", str(root), "-m", str(model), "-o", str(tmp_path / "e"), "--report", str(tmp_path / "r1"), "-q"])
        assert first.exit_code == 0, first.output
        second = runner.invoke(
            main, ["eval", "--predictions", str(tmp_path / "e" / "scores.zarr"), "--ground-truth", str(root), "--report", str(tmp_path / "r2"), "-q"]
        )
        assert second.exit_code == 0, second.output
        m1 = json.loads((tmp_path / "r1" / "metrics.json").read_text())
        m2 = json.loads((tmp_path / "r2" / "metrics.json").read_text())
        assert m1["overall"] == m2["overall"] and m1["groups"] == m2["groups"]

    def test_categories_with_a_mean_row(self, category: tuple[Path, Path], tmp_path: Path) -> None:
        root, model = category
        result = CliRunner().invoke(
            main,
            [
                "eval",
                str(root.parent),
                "--categories",
                "toy",
                "-m",
                str(root.parent / "{category}.zarr"),
                "-o",
                str(tmp_path / "e"),
                "--report",
                str(tmp_path / "r"),
                "-q",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "| **mean** |" in (tmp_path / "r" / "metrics.md").read_text()
        assert (tmp_path / "r" / "toy" / "roc.png").is_file()

    def test_ucsd_layout_every_second_frame(self, tmp_path: Path) -> None:
        root = ucsd(tmp_path / "ped")
        fit([str(root / "training" / "frames")], tmp_path / "m.zarr", SMALL, options=FitOptions(holdout_every=4))
        truth = load_ground_truth(root)
        assert truth.layout == "ucsd"
        evaluation = evaluate_model(truth, tmp_path / "m.zarr", tmp_path / "e", options=ScoreOptions(every=2))
        metrics = evaluation.metrics
        assert metrics["level"] == "frame" and metrics["every"] == 2
        assert metrics["frames_evaluated"] == 10 and metrics["frames_labelled"] == 20
        assert metrics["overall"]["auroc"] > 0.9 and metrics["overall"]["pixel_auroc"] > 0.9
        assert "every 2-th frame" in markdown(metrics)

    def test_labels_only_gives_no_pixel_metrics(self, category: tuple[Path, Path], tmp_path: Path) -> None:
        root, model = category
        images = tmp_path / "imgs"
        names = {}
        for source, label in (("good", 0), ("red", 1)):
            for path in sorted((root / "test" / source).iterdir()):
                target = images / f"{source}-{path.name}"
                images.mkdir(exist_ok=True)
                shutil.copy(path, target)
                names[target.name] = label
        (tmp_path / "labels.json").write_text(json.dumps(names))
        truth = load_ground_truth(images, labels=tmp_path / "labels.json")
        evaluation = evaluate_model(truth, model, tmp_path / "e")
        assert "pixel_auroc" not in evaluation.metrics["overall"] and evaluation.metrics["overall"]["auroc"] > 0.9
        assert evaluation.pro is None


class TestLayouts:
    def test_mstc_layout(self, tmp_path: Path) -> None:
        root = tmp_path / "stc"
        for t in range(5):
            save(root / "testing" / "frames" / "01_0014" / f"{t:03d}.jpg", scene(t))
        (root / "test_frame_mask").mkdir()
        (root / "test_pixel_mask").mkdir()
        np.save(root / "test_frame_mask" / "01_0014.npy", np.array([0, 0, 1, 1, 0]))
        np.save(root / "test_pixel_mask" / "01_0014.npy", np.zeros((5, 96, 128), np.uint8))
        truth = load_ground_truth(root)
        assert truth.layout == "mstc" and truth.sources[0].labels.tolist() == [False, False, True, True, False]
        assert truth.sources[0].mask_of is not None and truth.sources[0].mask_of(2).shape == (96, 128)
        np.save(root / "test_pixel_mask" / "01_0014.npy", np.zeros((5, 96, 127), np.uint8))
        with pytest.raises(GroundTruthError, match=r"01_0014\.npy"):
            load_ground_truth(root)

    def test_mvtec_masks_without_suffix_and_3d_layout(self, tmp_path: Path) -> None:
        assert load_ground_truth(mvtec(tmp_path / "a", mask_suffix="")).sources[1].mask_of(0).any()  # type: ignore[misc]
        root = tmp_path / "b"
        save(root / "train" / "good" / "rgb" / "000.png", scene(0))
        save(root / "test" / "hole" / "rgb" / "000.png", scene(1, anomaly=True))
        save(root / "test" / "hole" / "gt" / "000.png", square_mask())
        truth = load_ground_truth(root)
        assert truth.sources[0].source_id == "hole" and truth.sources[0].mask_of(0).sum() > 0  # type: ignore[misc]


def test_worst_case_tiles_show_map_and_outline(category: tuple[Path, Path], tmp_path: Path) -> None:
    """Each worst case is the image with its ground truth outlined beside a heat map coloured
    everywhere (a missed anomaly under any threshold still shows where the model looked)."""
    from streamad import pictures

    root, model = category
    evaluation = evaluate_model(load_ground_truth(root), model, tmp_path / "e")
    tiles = worst_tiles(evaluation)
    assert len(tiles) == 12
    missed = [image for image, caption in tiles if caption.startswith("lowest anomaly")]
    image = missed[0]
    assert image.shape[1] == 2 * 128 + 4  # image | gap | heat map
    green = (image[..., 1] == 255) & (image[..., 0] == 0) & (image[..., 2] == 0)
    y, x, side = SQUARE
    assert green[:, :128].any() and green[y - 2 : y + side + 3, x - 2 : x + side + 3].sum() == green[:, :128].sum()
    heat = pictures.heatmap(np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), (3, 4), vmin=2.0, vmax=3.0)
    assert (heat == heat[0, 0]).all() and heat[0, 0].tolist() != [0, 0, 0]  # below vmin: coloured blue, not blank


class TestLoco:
    def test_layout_defects_and_saturation(self, tmp_path: Path) -> None:
        truth = load_ground_truth(loco(tmp_path / "juice"))
        assert truth.layout == "loco" and truth.normal_from == "test" and truth.has_defects
        assert [s.source_id for s in truth.sources] == ["good", "logical_anomalies", "structural_anomalies"]
        defects = truth.sources[1].defects_of(0)  # type: ignore[misc]
        square = square_mask() > 0
        assert len(defects) == 2 and np.array_equal(defects[0][0], square) and defects[0][1] == 200.0
        assert defects[1][0].sum() == 100 and defects[1][1] == 50.0  # relative: half of its area
        assert np.array_equal(truth.sources[1].mask_of(0), square)  # type: ignore[misc]  # the union
        assert truth.sources[0].defects_of(0) == []  # type: ignore[misc]

    def test_eval_reports_each_anomaly_type_and_spro(self, tmp_path: Path) -> None:
        root = loco(tmp_path / "juice")
        model = tmp_path / "m.zarr"
        fit([str(root / "train" / "good")], model, SMALL, options=FitOptions(holdout_every=4))
        code, output = TestBadGroundTruth.invoke(["eval", str(root), "-m", str(model), "-o", str(tmp_path / "e"), "--report", str(tmp_path / "r"), "-q"])
        assert code == 0, output
        metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
        assert metrics["layout"] == "loco" and metrics["max_fpr"] == 0.05
        for kind in ("logical_anomalies", "structural_anomalies"):
            row = metrics["groups"][kind]
            assert row["auroc"] > 0.9 and row["defects"] == 8 and 0.3 < row["spro"] <= 1.0 and "aupro" not in row
        overall = metrics["overall"]
        assert overall["defects"] == 16 and overall["pixel_auroc"] > 0.9 and overall["spro"] > 0.3
        assert "sPRO@0.05" in output and (tmp_path / "r" / "pro.png").is_file()

    def test_validation_good_when_test_good_is_absent(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        truth = load_ground_truth(loco(tmp_path / "juice", test_good=False))
        assert truth.normal_from == "validation" and truth.sources[0].source.paths[0].parent.parent.name == "validation"
        assert "validation/good" in caplog.text

    def test_missing_config_and_unknown_value(self, tmp_path: Path) -> None:
        root = loco(tmp_path / "juice")
        (root / "defects_config.json").unlink()
        with pytest.raises(GroundTruthError, match="defects_config.json"):
            load_ground_truth(root)
        (root / "defects_config.json").write_text(json.dumps(LOCO_CONFIG[:1]))
        truth = load_ground_truth(root)
        with pytest.raises(GroundTruthError, match=r"001\.png.* 254"):
            truth.sources[1].defects_of(0)  # type: ignore[misc]


class TestKolektor:
    def test_layout(self, tmp_path: Path) -> None:
        truth = load_ground_truth(kolektor(tmp_path / "ksdd"))
        assert truth.layout == "kolektorsdd" and [s.source_id for s in truth.sources] == ["kos01", "kos02", "kos03"]
        assert all(s.labels.tolist() == [False, False, True, False, False, False] for s in truth.sources)
        assert all(not p.stem.endswith("_label") for s in truth.sources for p in s.source.paths)
        assert truth.sources[0].mask_of(2).sum() == (square_mask() > 0).sum()  # type: ignore[misc]
        (tmp_path / "ksdd" / "kos02" / "Part4_label.bmp").unlink()
        with pytest.raises(GroundTruthError, match="Part4_label"):
            load_ground_truth(tmp_path / "ksdd")

    def test_fold_protocol(self, tmp_path: Path) -> None:
        from streamad.pipelines.folds import split_folds

        root = kolektor(tmp_path / "ksdd", folders=5, parts=11)
        folds = split_folds(root, 2)
        assert [[p.name for p in f.held_out] for f in folds] == [["kos01", "kos02", "kos03"], ["kos04", "kos05"]]
        assert len(folds[0].train) == 2 * 10 and all(p.parent.name in ("kos04", "kos05") and p.name != "Part2.jpg" for p in folds[0].train)
        args = ["eval", str(root), "--folds", "2", "--input-size", "64x96", "-k", "16", "-o", str(tmp_path / "e"), "--report", str(tmp_path / "r"), "-q"]
        code, output = TestBadGroundTruth.invoke(args)
        assert code == 0, output
        report = json.loads((tmp_path / "r" / "metrics.json").read_text())
        assert set(report["folds"]) == {"fold1", "fold2"} and report["folds"]["fold1"]["overall"]["frames"] == 33
        assert report["folds"]["fold2"]["fold"]["held_out"] == ["kos04", "kos05"] and report["folds"]["fold2"]["overall"]["anomalous"] == 2
        aurocs = [report["folds"][f]["overall"]["auroc"] for f in ("fold1", "fold2")]
        assert min(aurocs) > 0.9 and report["mean"]["auroc"] == pytest.approx(np.mean(aurocs), abs=1e-6)
        assert "| fold |" in output and "**mean**" in output
        code, output = TestBadGroundTruth.invoke(["eval", str(root), "--folds", "9", "-o", str(tmp_path / "e")])
        assert code != 0 and "--folds <= 5" in output
        code, output = TestBadGroundTruth.invoke(["eval", str(root), "--method", "soe", "-m", "x.zarr"])
        assert code != 0 and "--method only with --folds" in output


class TestBadGroundTruth:
    @staticmethod
    def invoke(args: list[str]) -> tuple[int, str]:
        result = CliRunner().invoke(main, args)
        return result.exit_code, result.output

    def test_mask_size_differs_from_image(self, category: tuple[Path, Path], tmp_path: Path) -> None:
        root = mvtec(tmp_path / "cat")
        bad = root / "ground_truth" / "red" / "003_mask.png"
        save(bad, np.zeros((50, 50), np.uint8))
        code, output = self.invoke(["eval", str(root), "-m", str(category[1]), "-o", str(tmp_path / "e"), "-q"])
        assert code != 0 and "003_mask.png" in output and "50x50" in output and "Traceback" not in output

    def test_missing_mask(self, tmp_path: Path) -> None:
        root = mvtec(tmp_path / "cat")
        (root / "ground_truth" / "red" / "002_mask.png").unlink()
        with pytest.raises(GroundTruthError, match=r"mask for .*002\.png"):
            load_ground_truth(root)

    def test_label_count_differs_from_clip_length(self, tmp_path: Path) -> None:
        root = ucsd(tmp_path / "ped", frames=6)
        (root / "testing" / "frame_labels.json").write_text(json.dumps({"01": [0, 1, 0]}))
        code, output = self.invoke(["eval", str(root), "--predictions", str(tmp_path / "none.zarr")])
        assert code != 0 and "frame_labels.json" in output and "expected 6 frame labels" in output

    def test_not_a_test_set(self, tmp_path: Path) -> None:
        code, output = self.invoke(["eval", str(tmp_path), "--predictions", str(tmp_path / "x.zarr")])
        assert code != 0 and "labelled test set" in output

    def test_predictions_for_another_test_set(self, category: tuple[Path, Path], tmp_path: Path) -> None:
        root, model = category
        evaluate_model(load_ground_truth(root), model, tmp_path / "e")
        other = ucsd(tmp_path / "ped", frames=4)
        with pytest.raises(GroundTruthError, match="expected predictions for source '01'"):
            evaluate_predictions(tmp_path / "e" / "scores.zarr", load_ground_truth(other))


class TestThresholds:
    def test_quantile_f1_and_fixed_thresholds_drive_decisions(self, category: tuple[Path, Path], tmp_path: Path) -> None:
        import csv

        from streamad.pipelines.calibrate import calibrate
        from streamad.pipelines.score import score
        from streamad.stores.model_store import load, open_store

        root, fitted = category
        model = tmp_path / "m.zarr"
        shutil.copytree(fitted, model)
        stored = calibrate(model)
        assert stored.method == "quantile" and stored.detail["quantile"] == 0.99 and stored.detail["frames"] == 6
        best = calibrate(model, labelled=load_ground_truth(root), work_dir=tmp_path / "w")
        assert best.method == "f1" and best.detail["f1"] == 1.0
        assert load(open_store(model, mode="r")).threshold == best
        summary = score([str(root / "test" / "good"), str(root / "test" / "red")], model, tmp_path / "out")
        assert summary.decisions and summary.anomalous == {"red": 6}
        rows = list(csv.DictReader(open(summary.csv)))
        assert list(rows[0]) == ["source", "index", "pts_s", "score", "decision"]
        assert [int(r["decision"]) for r in rows] == [0] * 6 + [1] * 6
        store, _ = open_scores_of(summary.store)
        assert store.read("red/decision").all() and not store.read("good/decision").any()
        masks = store.read("red/mask")
        assert masks.shape == (6, 64, 96) and masks.dtype == bool and masks.any()
        raw = score([str(root / "test" / "red")], model, tmp_path / "raw", options=ScoreOptions(frame_score=FrameScoreConfig(topk_fraction=0.0)))
        assert not raw.decisions  # the threshold was set for other frame scores
        calibrate(model, fixed=1e9)
        assert score([str(root / "test" / "red")], model, tmp_path / "fixed").anomalous == {}

    def test_refit_makes_the_threshold_stale(self, tmp_path: Path, frame_folder: Path) -> None:
        from streamad.pipelines.calibrate import calibrate
        from streamad.stores.model_store import load, open_store

        fit([str(frame_folder)], tmp_path / "m.zarr", SMALL, options=FitOptions(holdout_every=4, stop=20))
        calibrate(tmp_path / "m.zarr", fixed=3.0)
        assert load(open_store(tmp_path / "m.zarr", mode="r")).threshold is not None
        fit([str(frame_folder)], tmp_path / "m.zarr", None, options=FitOptions(holdout_every=4), resume=True)
        assert load(open_store(tmp_path / "m.zarr", mode="r")).threshold is None

    def test_conflicting_ways_refused(self, category: tuple[Path, Path]) -> None:
        from streamad.errors import ConfigError
        from streamad.pipelines.calibrate import calibrate

        with pytest.raises(ConfigError, match="one way"):
            calibrate(category[1], fixed=1.0, quantile=0.9)


def open_scores_of(path: str):  # noqa: ANN201
    from streamad.stores.score_store import open_scores

    return open_scores(path)


def test_generic_masks_folder(category: tuple[Path, Path], tmp_path: Path) -> None:
    root, model = category
    images, masks = tmp_path / "imgs", tmp_path / "masks"
    for source in ("good", "red"):
        for path in sorted((root / "test" / source).iterdir()):
            save(masks / f"{source}-{path.stem}_mask.png", square_mask() if source == "red" else np.zeros((96, 128), np.uint8))
            images.mkdir(exist_ok=True)
            shutil.copy(path, images / f"{source}-{path.name}")
    truth = load_ground_truth(images, masks=masks)
    assert truth.layout == "generic" and truth.sources[0].labels.sum() == 6
    metrics = evaluate_model(truth, model, tmp_path / "e").metrics["overall"]
    assert metrics["auroc"] > 0.9 and metrics["pixel_auroc"] > 0.9
    (masks / "red-000_mask.png").unlink()
    with pytest.raises(GroundTruthError, match=r"red-000\.png"):
        load_ground_truth(images, masks=masks)


def test_predictions_written_by_another_tool(category: tuple[Path, Path], tmp_path: Path) -> None:
    """The minimal documented format: index, score and map per source, plus the two attributes."""
    from streamad.stores.array_store import ZarrStore

    root, _ = category
    truth = load_ground_truth(root)
    store = ZarrStore(tmp_path / "theirs.zarr", mode="w")
    store.set_attrs({"kind": "streamad-scores", "format_version": 1})
    rng = np.random.default_rng(0)
    for labelled in truth.sources:
        n = len(labelled.labels)
        store.write(f"{labelled.source_id}/index", np.arange(n))
        store.write(f"{labelled.source_id}/score", labelled.labels.astype(np.float32) + rng.random(n).astype(np.float32) * 0.5)
        maps = rng.random((n, 48, 64)).astype(np.float32) * 0.1
        if labelled.labels.any():
            maps[:, 12:23, 16:27] += 1.0  # the square, at half the image's resolution
        store.write(f"{labelled.source_id}/map", maps)
    store.publish()
    store.close()
    overall = evaluate_predictions(tmp_path / "theirs.zarr", truth).metrics["overall"]
    assert overall["auroc"] == 1.0 and overall["pixel_auroc"] > 0.95
