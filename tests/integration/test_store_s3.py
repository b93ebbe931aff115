"""The artifact store on a real S3 server (SeaweedFS on loopback, see s3_server.py).

The store gets endpoint, region and credentials from the environment only (the
`s3_run_root` fixture sets the standard AWS variables), as in production. Covered:
committed tables and JSON, uncommitted and corrupted objects, committed folders and
their local copies, RunLayout URIs, exists/remove, a server restart in the middle of a
write, a server that stays down, and credentials kept out of errors and logs.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

import fsspec
import pandas as pd
import pytest
import s3fs

from alt_core import store
from alt_core.pipeline.layout import RunLayout

pytestmark = pytest.mark.integration
# The `s3_server` and `s3_run_root` fixtures (a no-op once conftest registers them too).

FRAME = pd.DataFrame({"x": [1, 2, 3], "s": ["a", "b", None]})


def _raw_fs() -> s3fs.S3FileSystem:
    """The filesystem the store itself uses (same environment), to tamper with objects."""
    fs, _ = fsspec.core.url_to_fs("s3://")
    return fs


def _no_botocore_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard AWS setting: botocore tries once, so outages are ridden out by the store's
    own retry (the one under test) and failures come back quickly."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3fs.S3FileSystem.clear_instance_cache()


def test_endpoint_and_credentials_come_from_the_environment(s3_run_root, s3_server):
    uri = f"{s3_run_root}/t.parquet"
    store.write_table(uri, FRAME)
    fs = _raw_fs()
    assert fs.storage_options == {}  # nothing passed in code: all from the environment
    assert fs.s3.meta.endpoint_url == s3_server.endpoint_url
    assert fs.exists(f"{s3_server.bucket}/{uri.split('/', 3)[3]}")


def test_table_roundtrip_and_commit(s3_run_root):
    uri = f"{s3_run_root}/iter_001/samples/shard_000.parquet"
    assert not store.is_committed(uri) and store.commit_info(uri) is None
    store.write_table(uri, FRAME, meta={"fingerprint": "abc"})
    assert store.is_committed(uri) and store.is_committed(uri, verify=True)
    info = store.commit_info(uri)
    assert info["rows"] == 3 and info["meta"] == {"fingerprint": "abc"}
    pd.testing.assert_frame_equal(store.read_table(uri), FRAME)
    pd.testing.assert_frame_equal(store.read_table(uri, columns=["x"]), FRAME[["x"]])
    assert len(store.read_tables([uri, uri])) == 6


def test_uncommitted_object_is_not_read(s3_run_root):
    uri = f"{s3_run_root}/t.parquet"
    FRAME.to_parquet(uri)  # a whole Parquet object, but no commit marker
    assert store.exists(uri) and not store.is_committed(uri)
    with pytest.raises(store.ArtifactError, match="not committed"):
        store.read_table(uri)


def test_corruption_is_detected_by_hash(s3_run_root):
    uri = f"{s3_run_root}/t.parquet"
    store.write_table(uri, pd.DataFrame({"x": list(range(100))}))
    fs, path = fsspec.core.url_to_fs(uri)
    data = bytearray(fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(path, bytes(data))  # same size: only the hash can tell
    assert store.is_committed(uri)
    assert not store.is_committed(uri, verify=True)
    with pytest.raises(store.ArtifactError, match="corrupt"):
        store.read_table(uri)


def test_rewrite_cut_before_commit_reads_as_uncommitted(s3_run_root, monkeypatch):
    uri = f"{s3_run_root}/t.parquet"
    store.write_table(uri, FRAME)

    def crash(*_args, **_kwargs):
        raise RuntimeError("killed between the data and its commit")

    monkeypatch.setattr(store, "write_json", crash)
    with pytest.raises(RuntimeError, match="killed"):
        store.write_table(uri, FRAME.head(1))
    monkeypatch.undo()
    # The old marker went before the new data: neither old nor new rows are trusted.
    assert not store.is_committed(uri)
    with pytest.raises(store.ArtifactError, match="not committed"):
        store.read_table(uri)


def test_json_roundtrip_and_missing_object_fails_fast(s3_run_root):
    uri = f"{s3_run_root}/metrics.json"
    obj = {"iterations": [{"iteration": 1, "reward": 0.5}], "name": "run"}
    assert store.write_json(uri, obj) == uri
    assert store.read_json(uri) == obj
    began = time.monotonic()
    with pytest.raises(FileNotFoundError):
        store.read_json(f"{s3_run_root}/missing.json")
    assert time.monotonic() - began < 2.0  # a missing object is an answer: no retries


def _model_dir(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights" * 1000)
    (root / "config.json").write_text('{"n_layer": 2}')
    (root / "sub" / "tokenizer.json").write_text('{"vocab": {}}')
    return root


def test_put_dir_and_local_copy(s3_run_root, tmp_path):
    src = _model_dir(tmp_path / "model")
    uri = f"{s3_run_root}/iter_001/policy"
    with pytest.raises(store.ArtifactError, match="not a committed folder"):
        store.local_dir(uri)
    store.put_dir(src, uri, meta={"iteration": 1})
    assert store.dir_committed(uri)
    scratch = tmp_path / "scratch"
    local = store.local_dir(uri, str(scratch))
    for rel in ("model.safetensors", "config.json", "sub/tokenizer.json"):
        assert (local / rel).read_bytes() == (src / rel).read_bytes()
    assert sorted(p.name for p in scratch.iterdir()) == [local.name]  # no temp folders left
    # Reuse: with the remote files gone (marker kept), the local copy is still served.
    store.remove(f"{uri}/model.safetensors")
    assert store.local_dir(uri, str(scratch)) == local


def test_local_copy_checks_hashes(s3_run_root, tmp_path):
    uri = f"{s3_run_root}/policy"
    store.put_dir(_model_dir(tmp_path / "model"), uri)
    fs, path = fsspec.core.url_to_fs(f"{uri}/model.safetensors")
    fs.pipe_file(path, b"garbage" * 1000)
    scratch = tmp_path / "scratch"
    with pytest.raises(store.ArtifactError, match=r"model\.safetensors.*corrupt"):
        store.local_dir(uri, str(scratch))
    assert not scratch.exists() or not any(scratch.iterdir())  # the failed copy is gone


def test_verify_checks_remote_sizes_and_with_full_hashes(s3_run_root, tmp_path):
    uri = f"{s3_run_root}/verified/policy"
    src = _model_dir(tmp_path / "model")
    store.put_dir(src, uri)
    assert store.verify(uri) is None and store.verify(uri, full=True) is None
    fs, path = fsspec.core.url_to_fs(f"{uri}/model.safetensors")
    original = (src / "model.safetensors").read_bytes()
    flipped = bytes([original[0] ^ 0xFF]) + original[1:]
    fs.pipe_file(path, flipped)  # same size: only the full check sees it
    assert store.verify(uri) is None
    assert store.verify(uri, full=True) == "model.safetensors does not match its commit hash"
    fs.pipe_file(path, original + b"x")
    assert store.verify(uri) == (
        f"model.safetensors has {len(original) + 1} bytes, {len(original)} were committed"
    )
    fs.rm_file(path)
    assert store.verify(uri) == "model.safetensors is missing"


def test_a_damaged_local_copy_is_downloaded_again(s3_run_root, tmp_path):
    uri = f"{s3_run_root}/recopied/policy"
    src = _model_dir(tmp_path / "model")
    store.put_dir(src, uri)
    scratch = tmp_path / "scratch"
    local = store.local_dir(uri, str(scratch))
    (local / "model.safetensors").write_bytes(b"damaged")
    again = store.local_dir(uri, str(scratch))
    assert again == local
    assert (again / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


def test_run_layout_on_s3(s3_run_root, tmp_path):
    layout = RunLayout(s3_run_root + "/")
    shard = layout.shard(1, "train_samples", 0)
    assert shard == f"{s3_run_root}/iter_001/train_samples/shard_000.parquet"
    store.write_table(shard, FRAME)
    store.write_table(layout.table(1, "datapool", "pool"), FRAME)
    store.put_dir(_model_dir(tmp_path / "model"), layout.policy(1))
    store.write_json(layout.metrics, {"iterations": []})
    store.write_bytes_atomic(layout.config, b"name: run\n")
    assert store.is_committed(shard) and store.dir_committed(layout.policy(1))
    assert store.read_bytes(layout.config) == b"name: run\n"
    listed = _raw_fs().ls(layout.iteration(1))
    assert sorted(p.rsplit("/", 1)[1] for p in listed) == ["datapool", "policy", "train_samples"]


def test_exists_and_remove(s3_server, s3_run_root):
    layout = RunLayout(s3_run_root)
    shards = [layout.shard(1, "feedback", i) for i in range(2)]
    for uri in shards:
        store.write_table(uri, FRAME)
    assert all(store.exists(u) for u in shards)
    store.remove(shards[0])
    assert not store.exists(shards[0]) and store.exists(shards[1])
    stage = layout.stage(1, "feedback")
    store.remove(stage)  # a whole stage folder
    assert not store.exists(shards[1]) and not store.is_committed(shards[1])
    # No object is left under it. (SeaweedFS keeps the emptied folder itself as a
    # directory entry, so `exists(stage)` stays true there, unlike on AWS S3: artifacts
    # are known by their commit markers, never by their folder.)
    listing = s3_server.client().list_objects_v2(
        Bucket=s3_server.bucket, Prefix=stage.split("/", 3)[3] + "/"
    )
    assert listing["KeyCount"] == 0
    store.remove(f"{stage}/nothing-here")  # removing nothing is fine


@pytest.mark.timeout(180)
def test_write_survives_server_restart(s3_server, s3_run_root, monkeypatch, caplog):
    """The server goes down; a write starts; the server comes back within seconds: the
    store's bounded retry carries the write through, and earlier data is intact."""
    _no_botocore_retries(monkeypatch)
    caplog.set_level(logging.WARNING, logger="alt_core.store")
    before = f"{s3_run_root}/before.parquet"
    store.write_table(before, FRAME)
    uri = f"{s3_run_root}/during.parquet"
    outcome: dict[str, object] = {}

    def write() -> None:
        try:
            outcome["uri"] = store.write_table(uri, FRAME, meta={"during": "restart"})
        except Exception as exc:  # the main thread reports it
            outcome["error"] = exc

    s3_server.stop()
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    time.sleep(2.0)
    s3_server.start()  # same ports and data folder
    writer.join(timeout=60)
    assert not writer.is_alive(), "the write hung after the server came back"
    assert "error" not in outcome, f"the write failed: {outcome.get('error')!r}"
    retries = [r for r in caplog.records if r.name == "alt_core.store" and "retry" in r.message]
    assert retries, "the write succeeded without the store's retry: the outage was not hit"
    keys = (s3_server.access_key, s3_server.secret_key)
    assert not any(k in r.getMessage() for r in retries for k in keys)
    pd.testing.assert_frame_equal(store.read_table(uri), FRAME)
    assert store.commit_info(uri)["meta"] == {"during": "restart"}
    pd.testing.assert_frame_equal(store.read_table(before), FRAME)  # data survives a restart


@pytest.mark.timeout(120)
def test_write_fails_clearly_when_server_stays_down(s3_server, s3_run_root, monkeypatch):
    _no_botocore_retries(monkeypatch)
    # A short budget keeps the test short; the policy is the same as with the default 30 s.
    monkeypatch.setattr(store, "RETRY_BUDGET_S", 4.0)
    uri = f"{s3_run_root}/t.parquet"
    store.write_table(uri, FRAME)
    s3_server.stop(kill=True)  # a crash
    try:
        began = time.monotonic()
        with pytest.raises(store.StoreUnavailableError) as excinfo:
            store.write_table(f"{s3_run_root}/new.parquet", FRAME)
        elapsed = time.monotonic() - began
        # Attempts 0.5, 1, 2 s apart while they fit the budget, then give up: not a hang.
        assert 1.5 < elapsed < 4.0 + 2.0, elapsed
        message = str(excinfo.value)
        assert f"{s3_run_root}/" in message and re.search(r"failed \d+ times over \d+ s", message)
        assert "AWS_ENDPOINT_URL" in message and "run the same command again" in message
        assert s3_server.access_key not in message and s3_server.secret_key not in message
        # A store that does not answer must never read as "not committed" (that would
        # redo, or skip, work for the wrong reason).
        with pytest.raises(store.StoreUnavailableError):
            store.is_committed(uri)
    finally:
        s3_server.start()
    assert store.is_committed(uri, verify=True)


def test_credentials_stay_out_of_errors_and_logs(s3_server, s3_run_root, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, botocore's request logging included
    uri = f"{s3_run_root}/t.parquet"
    store.write_table(uri, FRAME)
    store.read_table(uri)
    errors: list[BaseException] = []
    for bad in (f"{s3_run_root}/missing.parquet", f"{s3_run_root}/missing.json"):
        with pytest.raises((store.ArtifactError, FileNotFoundError)) as excinfo:
            store.read_table(bad) if bad.endswith(".parquet") else store.read_json(bad)
        errors.append(excinfo.value)
    wrong_secret = "wrong-" + s3_server.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(PermissionError, match="access denied.*AWS_SECRET_ACCESS_KEY") as excinfo:
        store.read_table(uri)
    errors.append(excinfo.value)

    secrets = (s3_server.access_key, s3_server.secret_key, wrong_secret)
    for exc in errors:
        text = f"{exc!s} {exc!r} {exc.__cause__!s}"
        assert not any(s in text for s in secrets), text
    for record in caplog.records:
        message = record.getMessage()
        assert s3_server.secret_key not in message and wrong_secret not in message
        # botocore's DEBUG request log shows the key id (not the secret) in the signed
        # Authorization header; nothing at WARNING or above, and nothing of ours, does.
        if record.levelno >= logging.WARNING or record.name.startswith("alt_core"):
            assert s3_server.access_key not in message, message


# Storage faults: one clear error naming the URI and the fix, within the retry budget.


def _point_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    s3fs.S3FileSystem.clear_instance_cache()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_store_filesystem_sets_only_timeouts_and_retries(s3_run_root):
    fs, _ = store.filesystem(s3_run_root)
    assert set(fs.storage_options) == {"config_kwargs"}  # no endpoint, no credentials
    assert fs.storage_options["config_kwargs"]["retries"]["total_max_attempts"] == 1
    assert fs.retries == 1
    assert store.filesystem(s3_run_root)[0] is fs  # one instance, however often asked


def test_check_writable_passes_and_leaves_nothing(s3_server, s3_run_root):
    store.check_writable(s3_run_root)
    prefix = s3_run_root.split("/", 3)[3]
    listing = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)
    assert listing["KeyCount"] == 0


def test_a_missing_bucket_fails_at_once_with_the_fix(s3_server, s3_run_root):
    run_dir = "s3://no-such-bucket-alt/run"
    where = s3_server.endpoint_url
    for call in (store.check_writable, lambda d: store.read_table(f"{d}/t.parquet")):
        began = time.monotonic()
        with pytest.raises(store.StoreConfigError) as excinfo:
            call(run_dir)
        assert time.monotonic() - began < 3.0
        assert str(excinfo.value).startswith(
            f"bucket no-such-bucket-alt does not exist at endpoint {where}; create it (e.g. "
            f"`aws s3 mb s3://no-such-bucket-alt --endpoint-url {where}`) or fix the run folder"
        )
    # SeaweedFS makes a bucket on the first write to it (AWS S3 refuses): the check ran first.
    buckets = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "no-such-bucket-alt" not in buckets


@pytest.mark.timeout(60)
def test_an_endpoint_that_refuses_connections_fails_within_the_budget(s3_run_root, monkeypatch):
    monkeypatch.setattr(store, "RETRY_BUDGET_S", 3.0)
    endpoint = f"http://127.0.0.1:{_free_port()}"
    _point_at(monkeypatch, endpoint)
    calls = (store.check_writable, lambda d: store.write_table(f"{d}/t.parquet", FRAME))
    for call in calls:
        began = time.monotonic()
        with pytest.raises(store.StoreUnavailableError) as excinfo:
            call(s3_run_root)
        elapsed = time.monotonic() - began
        assert 1.0 < elapsed < 3.0 + 2.0, elapsed
        message = str(excinfo.value)
        assert s3_run_root in message and f"the endpoint {endpoint}" in message
        assert "EndpointConnectionError" in message and "run the same command again" in message


@pytest.mark.timeout(60)
def test_an_endpoint_that_never_answers_is_cut_at_the_budget(s3_run_root, monkeypatch):
    monkeypatch.setattr(store, "RETRY_BUDGET_S", 3.0)
    with socket.socket() as silent:  # takes connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        _point_at(monkeypatch, endpoint)
        for call in (store.check_writable, lambda d: store.read_bytes(f"{d}/config.yaml")):
            began = time.monotonic()
            with pytest.raises(store.StoreUnavailableError, match=r"no answer in \d+ s"):
                call(s3_run_root)
            # Not the 20 s read timeout, nor botocore's or s3fs's retries of it.
            assert time.monotonic() - began < 3.0 + 2.0


def test_no_credentials_names_the_fix(s3_run_root, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3fs.S3FileSystem.clear_instance_cache()
    for call in (store.check_writable, lambda d: store.read_json(f"{d}/metrics.json")):
        began = time.monotonic()
        with pytest.raises(store.StoreAccessError) as excinfo:
            call(s3_run_root)
        assert time.monotonic() - began < 3.0
        message = str(excinfo.value)
        assert s3_run_root in message and "the store has no credentials" in message
        assert "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message


def test_wrong_credentials_name_the_fix_and_never_the_secret(s3_server, s3_run_root, monkeypatch):
    wrong = "wrong-" + s3_server.secret_key[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    s3fs.S3FileSystem.clear_instance_cache()
    for call in (store.check_writable, lambda d: store.write_json(f"{d}/m.json", {})):
        began = time.monotonic()
        with pytest.raises(store.StoreAccessError) as excinfo:
            call(s3_run_root)
        assert time.monotonic() - began < 3.0
        assert isinstance(excinfo.value, PermissionError)  # as access denied always was
        message = str(excinfo.value)
        assert f"access denied at {s3_server.endpoint_url}" in message
        assert "AWS_SECRET_ACCESS_KEY" in message and f"bucket {s3_server.bucket}" in message
        text = f"{message} {excinfo.value!r} {excinfo.value.__cause__}"
        assert wrong not in text and s3_server.secret_key not in text


def test_check_writable_refuses_local_folders_that_cannot_hold_a_run(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {
        str(a_file): "is a file, not a folder",
        str(a_file / "run"): f"{a_file} is a file, not a folder",
        "/proc/alt-run": "is under /proc, a kernel filesystem",
        "file:///sys/alt-run": "is under /sys, a kernel filesystem",
    }
    for run_dir, expected in cases.items():
        began = time.monotonic()
        with pytest.raises(store.StoreConfigError, match=expected):
            store.check_writable(run_dir)
        assert time.monotonic() - began < 1.0
    store.check_writable(str(tmp_path / "new" / "run"))
    assert not (tmp_path / "new").exists()  # left as it was found


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(store.StoreConfigError, match="is not writable"):
        store.check_writable(str(ro / "run"))
