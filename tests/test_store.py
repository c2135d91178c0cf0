"""The shipped conformance suite every ArrayStore backend must pass, and model round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from streamad.errors import StoreError, StoreNotFoundError
from streamad.stores.array_store import ArrayStore, MemoryStore, ZarrStore


@pytest.fixture(params=["memory", "zarr"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArrayStore:
    return MemoryStore() if request.param == "memory" else ZarrStore(tmp_path / "s.zarr", mode="w")


class TestArrayStoreConformance:
    def test_is_protocol(self, store: ArrayStore) -> None:
        assert isinstance(store, ArrayStore)

    @pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64])
    def test_round_trip_exact(self, store: ArrayStore, dtype: type) -> None:
        data = (np.random.default_rng(0).normal(size=(7, 3, 3)) * 1e3).astype(dtype)
        store.write("stats/g1/m2", data, chunks=(2, 3, 3))
        back = store.read("stats/g1/m2")
        assert back.dtype == data.dtype and np.array_equal(back, data)

    def test_scalar(self, store: ArrayStore) -> None:
        store.write("count", np.asarray(5, np.int64))
        assert int(store.read("count")) == 5

    def test_overwrite(self, store: ArrayStore) -> None:
        store.write("a", np.zeros(3))
        store.write("a", np.ones(5))
        assert np.array_equal(store.read("a"), np.ones(5))

    def test_append(self, store: ArrayStore) -> None:
        store.append("s/score", np.arange(3, dtype=np.float32))
        store.append("s/score", np.arange(2, dtype=np.float32))
        assert np.array_equal(store.read("s/score"), np.array([0, 1, 2, 0, 1], np.float32))
        store.append("s/map", np.ones((2, 4, 5), np.float16), chunks=(1, 4, 5))
        store.append("s/map", np.zeros((1, 4, 5), np.float16))
        assert store.read("s/map").shape == (3, 4, 5)
        assert np.array_equal(store.read_rows("s/map", 1, 3), np.stack([np.ones((4, 5)), np.zeros((4, 5))]).astype(np.float16))

    def test_attrs_replace(self, store: ArrayStore) -> None:
        store.set_attrs({"a": 1, "nested": {"b": [1, 2]}})
        store.set_attrs({"c": "x"})
        assert store.attrs() == {"c": "x"}

    def test_attrs_must_be_json(self, store: ArrayStore) -> None:
        with pytest.raises(TypeError):
            store.set_attrs({"a": object()})

    def test_listing_exists_delete(self, store: ArrayStore) -> None:
        store.write("stats/g1/mean", np.zeros(2))
        store.write("stats/g1/m2", np.zeros(2))
        store.write("projection", np.zeros(2))
        assert store.arrays("stats") == ["stats/g1/m2", "stats/g1/mean"]
        assert store.exists("projection") and not store.exists("stats") and not store.exists("nope")
        store.delete("stats/g1")
        assert store.arrays("stats") == [] and store.exists("projection")
        store.delete("never-was")

    def test_missing_array(self, store: ArrayStore) -> None:
        with pytest.raises(StoreError, match="'nope'"):
            store.read("nope")


class TestZarrStore:
    def test_persists(self, tmp_path: Path) -> None:
        store = ZarrStore(tmp_path / "p.zarr", mode="w")
        store.write("x", np.arange(4))
        store.set_attrs({"kind": "k"})
        assert not (tmp_path / "p.zarr").exists()  # a new store appears only when published
        store.publish()
        again = ZarrStore(tmp_path / "p.zarr", mode="r")
        assert np.array_equal(again.read("x"), np.arange(4)) and again.attrs() == {"kind": "k"}

    def test_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(StoreNotFoundError, match="no such path"):
            ZarrStore(tmp_path / "none.zarr", mode="r")

    def test_not_a_store(self, tmp_path: Path) -> None:
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "file.txt").write_text("x")
        with pytest.raises(StoreError, match="without zarr.json"):
            ZarrStore(tmp_path / "folder", mode="r")
        with pytest.raises(StoreError, match="not a store"):
            ZarrStore(tmp_path / "folder", mode="w")


class TestModelStore:
    def test_round_trip_exact(self, tmp_path: Path) -> None:
        from streamad.config import ModelConfig
        from streamad.model import Model
        from streamad.stores.fit_progress import FitProgress, read_progress
        from streamad.stores.model_store import commit, create, load, open_store, read_state

        model = Model(ModelConfig(method="soe", input_hw=(32, 48), k=8))
        positions = model.extractor.feature_hw[0] * model.extractor.feature_hw[1]
        model.scorer.update({"embedding": torch.randn(20, positions, 8)})
        store = open_store(tmp_path / "m.zarr", mode="w")
        create(store, model)
        commit(store, model, FitProgress({"a": 20}, 20))
        written = set(store.arrays("scorer"))
        model.scorer.finalise()
        commit(store, model, FitProgress({"a": 20}, 20))
        assert written < set(store.arrays("scorer"))  # unchanged statistics are not written again
        loaded = load(open_store(tmp_path / "m.zarr"))
        assert loaded.normalisation is None and read_progress(store).next_index == {"a": 20}
        before, after = model.scorer.state(), read_state(store)
        assert after is not None and before.revision == after.revision and before.attrs == after.attrs
        for name, array in before.arrays.items():
            np.testing.assert_array_equal(after.arrays[name], array)
        x = {"embedding": torch.randn(2, positions, 8)}
        assert torch.equal(loaded.scorer.distances(x), model.scorer.distances(x))

    @staticmethod
    def fitted_store(path: Path, method: str) -> tuple[Any, Any, int]:
        """(store, model, positions): a small model fitted on 30 random embeddings, committed."""
        from streamad.config import ModelConfig
        from streamad.model import Model
        from streamad.stores.fit_progress import FitProgress
        from streamad.stores.model_store import commit, create, open_store

        model = Model(ModelConfig(method=method, input_hw=(32, 48), k=8))
        positions = model.extractor.feature_hw[0] * model.extractor.feature_hw[1]
        model.scorer.update({"embedding": torch.randn(30, positions, 8)})
        model.scorer.finalise()
        store = open_store(path, mode="w")
        create(store, model)
        commit(store, model, FitProgress({"a": 30}, 30))
        return store, model, positions

    def test_scoring_only_load_leaves_the_statistics_out(self, tmp_path: Path) -> None:
        from streamad.stores.model_store import load, open_store

        _, model, positions = self.fitted_store(tmp_path / "m.zarr", "soe")
        full, scoring = load(open_store(tmp_path / "m.zarr")), load(open_store(tmp_path / "m.zarr"), scoring_only=True)
        x = {"embedding": torch.randn(3, positions, 8)}
        assert torch.equal(scoring.scorer.distances(x), full.scorer.distances(x)) and scoring.frames_seen == 30
        assert scoring.scorer.appearance.gaussian.m2.numel() == 0  # never read, never allocated
        with pytest.raises(StoreError, match="loaded only to score"):
            scoring.scorer.update(x)
        with pytest.raises(StoreError, match="loaded only to score"):
            scoring.scorer.state()

    def test_reads_format_2_factors(self, tmp_path: Path) -> None:
        """A format-2 store kept float32 Cholesky factors (chol) where format 3 keeps their
        inverse: it loads and scores exactly like the fit that wrote the new format."""
        from streamad.stores.model_store import load, open_store

        store, model, positions = self.fitted_store(tmp_path / "m.zarr", "padim")
        attrs = store.attrs()
        m2, count = store.read(attrs["state"]["arrays"]["m2"]), int(store.read(attrs["state"]["arrays"]["count"]))
        chol = np.linalg.cholesky(m2 / (count - 1) + model.config.eps * np.eye(8)).astype(np.float32)  # numpy, not the code under test
        store.write("scorer/old/chol", chol)
        arrays = {name: path for name, path in attrs["state"]["arrays"].items() if name != "whitener"}
        revisions = {name: tag for name, tag in attrs["state"]["revisions"].items() if name != "whitener"}
        attrs.update(format_version=2, state={**attrs["state"], "arrays": {**arrays, "chol": "scorer/old/chol"}, "revisions": revisions})
        store.set_attrs(attrs)
        old = load(open_store(tmp_path / "m.zarr"))
        x = {"embedding": torch.randn(3, positions, 8)}
        np.testing.assert_allclose(old.scorer.distances(x).numpy(), model.scorer.distances(x).numpy(), rtol=1e-5)

    def test_refuses_other_format(self, tmp_path: Path) -> None:
        from streamad.stores.model_store import open_store

        with ZarrStore(tmp_path / "o.zarr", mode="w") as store:
            store.set_attrs({"kind": "streamad-model", "format_version": 999, "streamad_version": "9"})
        with pytest.raises(StoreError, match="format 2 or 3 .* got 999"):
            open_store(tmp_path / "o.zarr")
        with ZarrStore(tmp_path / "plain.zarr", mode="w") as plain:
            plain.set_attrs({"x": 1})
        with pytest.raises(StoreError, match="without streamad metadata"):
            open_store(tmp_path / "plain.zarr")


class TestReadersLock:
    """The readers lock file goes with its last holder: reading a store leaves nothing beside it,
    and no holder ever loses the lock to another's clean-up."""

    def test_a_lone_reader_leaves_no_file(self, tmp_path: Path) -> None:
        from streamad.stores.locking import lock_path, readers

        with readers(tmp_path / "m.zarr"):
            assert lock_path(tmp_path / "m.zarr", "readers").exists()
        assert not lock_path(tmp_path / "m.zarr", "readers").exists()

    def test_the_last_of_two_readers_removes_it_and_a_writer_waits_for_both(self, tmp_path: Path) -> None:
        import fcntl
        import os

        from streamad.stores.locking import lock_path, readers

        path, file = tmp_path / "m.zarr", lock_path(tmp_path / "m.zarr", "readers")
        with readers(path):
            with readers(path):
                pass
            assert file.exists()  # the first reader still holds it
            fd = os.open(file, os.O_RDWR)
            with pytest.raises(BlockingIOError):  # a writer could not take it now
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(fd)
        assert not file.exists()

    def test_a_reader_whose_file_was_removed_locks_the_new_one(self, tmp_path: Path) -> None:
        import os

        from streamad.stores.locking import _same_file, lock_path, readers

        path, file = tmp_path / "m.zarr", lock_path(tmp_path / "m.zarr", "readers")
        stale = os.open(file, os.O_RDWR | os.O_CREAT)
        file.unlink()  # as the last holder out does
        assert not _same_file(stale, file)
        with readers(path):
            assert file.exists()
        os.close(stale)
