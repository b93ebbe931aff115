"""The artifact store: committed writes, corruption detection, folders."""

from __future__ import annotations

import pandas as pd
import pytest

from alt_core import store
from alt_core.pipeline.layout import RunLayout


def test_table_roundtrip_and_commit(tmp_path):
    uri = str(tmp_path / "a" / "t.parquet")
    df = pd.DataFrame({"x": [1, 2, 3], "s": ["a", "b", None]})
    assert not store.is_committed(uri)
    store.write_table(uri, df, meta={"k": 1})
    assert store.is_committed(uri) and store.is_committed(uri, verify=True)
    assert store.commit_info(uri)["rows"] == 3
    pd.testing.assert_frame_equal(store.read_table(uri), df)


def test_uncommitted_table_is_not_read(tmp_path):
    uri = str(tmp_path / "t.parquet")
    pd.DataFrame({"x": [1]}).to_parquet(uri)  # written, but never committed
    with pytest.raises(store.ArtifactError, match="not committed"):
        store.read_table(uri)


def test_corruption_is_detected(tmp_path):
    uri = str(tmp_path / "t.parquet")
    store.write_table(uri, pd.DataFrame({"x": list(range(100))}))
    path = tmp_path / "t.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not store.is_committed(uri, verify=True)
    with pytest.raises(store.ArtifactError, match="corrupt"):
        store.read_table(uri)


def test_no_temp_files_left(tmp_path):
    store.write_table(str(tmp_path / "t.parquet"), pd.DataFrame({"x": [1]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet", "t.parquet.commit.json"]


def test_dir_commit_and_local_copy(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"weights")
    dest = str(tmp_path / "store" / "model")
    store.put_dir(src, dest)
    assert store.dir_committed(dest)
    assert (store.local_dir(dest) / "w.bin").read_bytes() == b"weights"
    with pytest.raises(store.ArtifactError):
        store.local_dir(str(tmp_path / "nothing"))


def test_layout_paths_are_deterministic():
    layout = RunLayout("s3://b/run/")
    assert (
        layout.shard(2, "train_samples", 1) == "s3://b/run/iter_002/train_samples/shard_001.parquet"
    )
    assert layout.policy(3) == "s3://b/run/iter_003/policy"


def _committed_model(tmp_path, name: str = "model") -> tuple[str, object]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "config.json").write_text('{"n_layer": 2}')
    return store.put_dir(folder, str(folder)), folder


def _flip(path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_finds_a_flipped_byte_a_resized_and_a_missing_file(tmp_path):
    uri, folder = _committed_model(tmp_path)
    assert store.verify(uri) is None
    _flip(folder / "model.safetensors")
    assert store.verify(uri) == "model.safetensors does not match its commit hash"
    with pytest.raises(store.ArtifactError, match="damaged: model.safetensors"):
        store.local_dir(uri)
    (folder / "config.json").write_text('{"n_layer": 2, "x": 1}')
    assert "config.json has 22 bytes, 14 were committed" in store.verify(uri)
    (folder / "config.json").unlink()
    assert store.verify(uri) == "config.json is missing"
    assert store.verify(str(tmp_path / "nothing")) == "it is not committed"


def test_a_folder_is_hashed_once_per_process_then_checked_by_size(tmp_path, monkeypatch):
    uri, folder = _committed_model(tmp_path)
    store._HASHED.clear()
    hashed: list[str] = []
    real = store._hash_file
    monkeypatch.setattr(store, "_hash_file", lambda p: hashed.append(p.name) or real(p))
    for _ in range(3):
        assert store.verify(uri) is None
    assert sorted(hashed) == ["config.json", "model.safetensors"]  # once each
    assert store.verify(uri, full=True) is None  # --verify hashes again
    assert len(hashed) == 4
    # A change that keeps the size is caught as soon as the file's stat changes.
    _flip(folder / "model.safetensors")
    assert store.verify(uri) is not None


def test_the_writer_does_not_hash_its_own_commit_again(tmp_path, monkeypatch):
    store._HASHED.clear()
    uri, _ = _committed_model(tmp_path)
    monkeypatch.setattr(store, "_hash_file", lambda p: pytest.fail(f"hashed {p} again"))
    assert store.verify(uri) is None


def test_a_table_that_lost_its_data_or_bytes_is_reported(tmp_path):
    uri = store.write_table(str(tmp_path / "t.parquet"), pd.DataFrame({"x": list(range(50))}))
    assert store.verify(uri) is None
    _flip(tmp_path / "t.parquet", 40)
    assert store.verify(uri) == "it does not match its commit hash"
    (tmp_path / "t.parquet").unlink()
    assert store.verify(uri) == "its data is missing"
