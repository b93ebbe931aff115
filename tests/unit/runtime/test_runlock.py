"""The run folder's lease (alt_core.runtime.runlock) on a local folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from alt_core import store
from alt_core.runtime import env, runlock
from alt_core.runtime.runlock import RunLock, RunLockedError, RunLockError, RunLockLostError


def _lease_file(run_dir) -> dict:
    return json.loads((run_dir / runlock.LOCK_NAME).read_text())


def _write_lease(run_dir, **fields) -> None:
    now = time.time()
    lease = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "run_id": "other",
        "started": now - 100,
        "renewed": now - 5,
        "expires": now + 55,
        **fields,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runlock.LOCK_NAME).write_text(json.dumps(lease))


@pytest.fixture
def sleeper():
    """A live process of this host that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_acquire_writes_the_lease_and_release_removes_it(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(str(run_dir), lease_s=30) as lock:
        lease = _lease_file(run_dir)
        assert lease["host"] == socket.gethostname() and lease["pid"] == os.getpid()
        assert lease["run_id"] == lock.run_id
        assert lease["expires"] - lease["renewed"] == pytest.approx(30)
        store.write_json(str(run_dir / "a.json"), {"a": 1})  # the holder writes
    assert not (run_dir / runlock.LOCK_NAME).exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["a.json"]  # no temporary files


def test_a_second_run_is_refused_with_the_holders_host_and_pid(tmp_path, sleeper):
    run_dir = tmp_path / "run"
    _write_lease(run_dir, pid=sleeper)
    began = time.monotonic()
    with pytest.raises(RunLockedError) as excinfo:
        RunLock(str(run_dir)).acquire()
    assert time.monotonic() - began < 2
    message = str(excinfo.value)
    assert message.startswith(f"{run_dir} is held by a live run: host {socket.gethostname()}, ")
    assert f"pid {sleeper}, since " in message and "renewed 5 s ago, expires in 5" in message
    assert f"kill {sleeper} on {socket.gethostname()}" in message
    assert _lease_file(run_dir)["run_id"] == "other"  # untouched


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    run_dir = str(tmp_path / "run")
    with RunLock(run_dir), pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(run_dir).acquire()


def test_the_lock_of_a_dead_pid_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "run"
    _write_lease(run_dir, pid=dead.pid)  # its lease is still valid for 55 s
    with RunLock(str(run_dir)) as lock:
        assert _lease_file(run_dir)["run_id"] == lock.run_id
    assert f"pid {dead.pid} on this host has exited" in caplog.text


def test_an_expired_lease_of_another_host_is_taken_over(tmp_path, sleeper):
    run_dir = tmp_path / "run"
    _write_lease(run_dir, host="elsewhere", pid=sleeper, expires=time.time() - 1)
    with RunLock(str(run_dir)) as lock:
        assert _lease_file(run_dir)["run_id"] == lock.run_id


def test_a_valid_lease_of_another_host_is_refused_even_if_the_pid_is_unknown_here(tmp_path):
    run_dir = tmp_path / "run"
    _write_lease(run_dir, host="elsewhere", pid=999_999_999)
    with pytest.raises(RunLockedError, match="host elsewhere, pid 999999999"):
        RunLock(str(run_dir)).acquire()


def test_the_lease_is_renewed_while_held(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(str(run_dir), lease_s=0.6):
        first = _lease_file(run_dir)
        time.sleep(0.9)  # past the first expiry: renewed every 0.2 s
        later = _lease_file(run_dir)
        assert later["renewed"] > first["renewed"] and later["expires"] > time.time()
        assert later["started"] == first["started"]
        store.write_json(str(run_dir / "a.json"), {})  # still the holder


@pytest.mark.parametrize(
    "content",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'{"host": "h"}', b'{"host": "h", "pid": "x"}'],
)
def test_a_lease_file_that_is_not_a_lease_is_refused_with_a_clear_message(tmp_path, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runlock.LOCK_NAME).write_bytes(content)
    with pytest.raises(RunLockError) as excinfo:
        RunLock(str(run_dir)).acquire()
    assert not isinstance(excinfo.value, RunLockedError)
    message = str(excinfo.value)
    assert f"{run_dir}/{runlock.LOCK_NAME} is not a run lock" in message
    assert "if no run is using this folder, delete the file" in message
    assert (run_dir / runlock.LOCK_NAME).read_bytes() == content  # never taken over


def test_released_on_an_exception_and_on_ctrl_c(tmp_path):
    run_dir = tmp_path / "run"
    for error in (RuntimeError("stage failed"), KeyboardInterrupt()):
        with pytest.raises(type(error)), RunLock(str(run_dir)):
            raise error
        assert not (run_dir / runlock.LOCK_NAME).exists()


def test_a_lost_lease_stops_every_write_under_the_folder(tmp_path, caplog):
    run_dir = tmp_path / "run"
    with RunLock(str(run_dir), lease_s=0.6) as lock:
        _write_lease(run_dir, host="elsewhere", run_id="thief")  # taken behind its back
        time.sleep(0.5)  # the renewal thread sees it
        assert lock.lost and "held by host elsewhere" in lock.lost
        with pytest.raises(RunLockLostError, match="stops before it writes more"):
            store.write_json(str(run_dir / "a.json"), {})
        with pytest.raises(RunLockLostError):
            store.remove(str(run_dir / "iter_001"))
        store.write_json(str(tmp_path / "elsewhere.json"), {})  # other folders are not fenced
    assert _lease_file(run_dir)["run_id"] == "thief"  # the release leaves the new holder's
    assert "held by host elsewhere" in caplog.text
    store.write_json(str(run_dir / "a.json"), {})  # no fence once released


def test_a_late_write_renews_first(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(str(run_dir), lease_s=30) as lock:
        lock.expires = time.time() + 1  # as if the renewal thread had been stopped
        store.write_json(str(run_dir / "a.json"), {})
        assert lock.expires > time.time() + 25 and lock.lost is None


def test_concurrent_acquisitions_have_one_winner(tmp_path):
    run_dir = str(tmp_path / "run")
    barrier, outcomes = threading.Barrier(6), []
    locks = [RunLock(run_dir) for _ in range(6)]

    def take(lock: RunLock) -> None:
        barrier.wait()
        try:
            lock.acquire()
            outcomes.append("won")
        except RunLockedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    finally:
        for lock in locks:
            if lock.expires:
                lock.release()


def test_the_lease_length_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(env.LEASE_ENV, "12")
    assert RunLock(str(tmp_path)).lease_s == 12
    monkeypatch.setenv(env.LEASE_ENV, "soon")
    with pytest.raises(ValueError, match="ALT_RUN_LEASE_S='soon'"):
        RunLock(str(tmp_path))


def test_refuse_if_held_answers_before_a_flow_starts(tmp_path, sleeper):
    run_dir = tmp_path / "run"
    runlock.refuse_if_held(str(run_dir))  # no folder yet: free
    _write_lease(run_dir, pid=sleeper)
    with pytest.raises(RunLockedError, match=f"pid {sleeper}"):
        runlock.refuse_if_held(str(run_dir))
    _write_lease(run_dir, host="elsewhere", expires=time.time() - 1)
    runlock.refuse_if_held(str(run_dir))  # expired: a run would take it over
    assert _lease_file(run_dir)["run_id"] == "other"  # only looked at
