from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamad.engine.runner import DropLog
from streamad.errors import EmptySourceError, SourceNotFoundError, UnsupportedSourceError
from streamad.io.decode import VideoWriter, decode_video, probe
from streamad.io.sources import ImageSequence, VideoFile, natural_key, resolve_sources


class TestResolve:
    def test_video(self, tiny_video: Path) -> None:
        (source,) = resolve_sources([str(tiny_video)])
        assert isinstance(source, VideoFile) and source.source_id == "tiny" and len(source) == 40

    def test_frame_folder_natural_sort(self, frame_folder: Path) -> None:
        (source,) = resolve_sources([str(frame_folder)])
        assert isinstance(source, ImageSequence)
        assert [p.name for p in source.paths[:3]] == ["0.png", "1.png", "2.png"]
        assert source.paths[10].name == "10.png"

    def test_clip_folders_are_sources(self, tmp_path: Path, frame_folder: Path) -> None:
        root = tmp_path / "training" / "frames"
        for clip in ("01", "02"):
            (root / clip).mkdir(parents=True)
            for i in range(3):
                (root / clip / f"{i:03d}.png").write_bytes((frame_folder / f"{i}.png").read_bytes())
        sources = resolve_sources([str(root)])
        assert [s.source_id for s in sources] == ["01", "02"]

    def test_mvtec_category_uses_train_good(self, tmp_path: Path, frame_folder: Path) -> None:
        good = tmp_path / "hazelnut" / "train" / "good"
        good.mkdir(parents=True)
        (good / "000.png").write_bytes((frame_folder / "0.png").read_bytes())
        (source,) = resolve_sources([str(tmp_path / "hazelnut")])
        assert source.source_id == "hazelnut" and len(source) == 1

    def test_glob(self, frame_folder: Path) -> None:
        (source,) = resolve_sources([str(frame_folder / "1*.png")])
        assert len(source) == 11  # 1, 10..19

    def test_duplicate_names_made_unique(self, tiny_video: Path) -> None:
        ids = [s.source_id for s in resolve_sources([str(tiny_video), str(tiny_video)])]
        assert ids == ["tiny", "tiny-2"]

    def test_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(SourceNotFoundError, match="no such path"):
            resolve_sources([str(tmp_path / "nope.mp4")])

    def test_empty_folder(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        with pytest.raises(EmptySourceError, match="empty"):
            resolve_sources([str(tmp_path / "empty")])

    def test_empty_glob(self, tmp_path: Path) -> None:
        with pytest.raises(EmptySourceError, match="matching"):
            resolve_sources([str(tmp_path / "*.png")])

    def test_not_a_video(self, tmp_path: Path) -> None:
        bad = tmp_path / "notes.mp4"
        bad.write_text("this is not a video")
        with pytest.raises(UnsupportedSourceError, match="notes.mp4"):
            resolve_sources([str(bad)])


class TestFrames:
    def test_grayscale_becomes_rgb(self, tmp_path: Path) -> None:
        cv2.imwrite(str(tmp_path / "g.png"), np.full((20, 30), 77, np.uint8))
        (source,) = resolve_sources([str(tmp_path / "g.png")])
        (frame,) = list(source.frames())
        assert frame.image.shape == (20, 30, 3) and frame.image.dtype == np.uint8

    def test_unreadable_image_counted(self, frame_folder: Path) -> None:
        (frame_folder / "5.png").write_bytes(b"garbage")
        (source,) = resolve_sources([str(frame_folder)])
        drops = DropLog()
        frames = list(source.frames(on_drop=drops))
        assert len(frames) == 29 and drops.total("clip") == 1

    def test_every_start_stop(self, tiny_video: Path) -> None:
        (source,) = resolve_sources([str(tiny_video)])
        assert [f.index for f in source.frames(every=4, start_index=10, stop_index=30)] == [12, 16, 20, 24, 28]

    def test_a_late_start_seeks_and_yields_what_decoding_from_the_start_yields(self, tiny_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import streamad.io.decode as decode_module

        full = {f.index: f for f in decode_video(tiny_video, source_id="v")}  # 40 frames, a keyframe every 10
        landed: list[bool] = []
        seek = decode_module._seek_before
        monkeypatch.setattr(decode_module, "_seek_before", lambda *a: landed.append(seek(*a)) or landed[-1])
        for start in (1, 9, 10, 23, 39, 45):
            drops = DropLog()
            got = list(decode_video(tiny_video, source_id="v", start_index=start, on_drop=drops))
            assert [f.index for f in got] == [i for i in sorted(full) if i >= start] and drops.total("v") == 0
            for f in got:
                assert f.pts_s == full[f.index].pts_s and np.array_equal(f.image, full[f.index].image)
        # 1 and 9: the keyframe before is frame 0; from 23 on one after it (x264: a keyframe at least every 10 frames)
        assert landed[:2] == [False, False] and landed[3:] == [True, True, True]

    def test_keep_selects_before_conversion_and_size_from_metadata(self, tiny_video: Path, frame_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import streamad.io.sources as sources_module

        (video,) = resolve_sources([str(tiny_video)])
        assert video.frame_hw() == (96, 128) and len(video) == 40 and video.fps == pytest.approx(10)
        assert [f.index for f in video.frames(every=2, keep=lambda i: i % 3 == 0)] == [0, 6, 12, 18, 24, 30, 36]
        (folder,) = resolve_sources([str(frame_folder)])
        reads: list[Path] = []
        real = sources_module.read_image
        monkeypatch.setattr(sources_module, "read_image", lambda path: reads.append(path) or real(path))
        assert [f.index for f in folder.frames(keep=lambda i: i >= 27)] == [27, 28, 29]
        assert [p.name for p in reads] == ["27.png", "28.png", "29.png"]  # the others are not read

    def test_video_pts_and_rgb(self, tiny_video: Path) -> None:
        frames = list(decode_video(tiny_video, source_id="v"))
        assert len(frames) == 40 and frames[0].image.shape == (96, 128, 3)
        np.testing.assert_allclose([f.pts_s for f in frames[:3]], [0.0, 0.1, 0.2], atol=1e-6)
        assert probe(tiny_video).fps == pytest.approx(10)

    def test_corrupt_frames_counted_not_fatal(self, tmp_path: Path, tiny_video: Path) -> None:
        data = bytearray(tiny_video.read_bytes())
        rng = np.random.default_rng(0)
        for pos in rng.integers(len(data) // 4, len(data) // 2, size=20):  # inside mdat; the index (moov) is at the end
            data[pos : pos + 8] = b"\xff" * 8  # trash bytes inside the frame data
        broken = tmp_path / "broken.mp4"
        broken.write_bytes(bytes(data))
        drops = DropLog()
        frames = list(decode_video(broken, source_id="b", on_drop=drops))
        assert len(frames) > 0
        assert len(frames) + drops.total() <= 40

    def test_writer_odd_size(self, tmp_path: Path) -> None:
        with VideoWriter(tmp_path / "odd.mp4", fps=5) as writer:
            writer.write(np.zeros((31, 45, 3), np.uint8))
        assert (probe(tmp_path / "odd.mp4").height, probe(tmp_path / "odd.mp4").width) == (30, 44)


def test_natural_key() -> None:
    assert sorted(["f10", "f2", "f1"], key=natural_key) == ["f1", "f2", "f10"]
