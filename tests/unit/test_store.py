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
