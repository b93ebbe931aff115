"""The stop controller on dummy jobs: sleeping processes in sessions of their own."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alt_core.runtime import stop
from alt_core.runtime.launcher import run_job
from alt_core.training.spec import TrainSpec

# A job that starts a grandchild in its own group, as an engine does, and sleeps; with
# `trap`, it ignores SIGTERM (a job that does not stop when asked).
SLEEPER = "import subprocess, sys, time, signal\n{trap}subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\ntime.sleep(60)\n"


@pytest.fixture(autouse=True)
def fresh_controller():
    stop.reset()
    yield
    stop.kill_jobs()
    stop.reset()


def start_sleeper(name: str = "sleeper", ignore_term: bool = False):
    trap = "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else ""
    code = SLEEPER.format(trap=trap)

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)

    ready, release = threading.Event(), threading.Event()
    box: dict = {}

    def hold() -> None:
        with stop.start_job(start, name) as proc:
            box["proc"] = proc
            ready.set()
            proc.wait()
        release.set()

    threading.Thread(target=hold, daemon=True).start()
    assert ready.wait(10)
    time.sleep(0.5)  # the grandchild has started
    return box["proc"], release


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, which nothing may reap in a
    container, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_a_stop_ends_every_job_group_within_the_grace():
    polite, polite_done = start_sleeper("polite")
    stubborn, stubborn_done = start_sleeper("stubborn", ignore_term=True)
    assert stop.running() == ["polite", "stubborn"]

    t0 = time.monotonic()
    assert stop.request_stop(signal.SIGTERM) is True
    assert stop.finish_jobs(grace_s=1.0) is False  # the stubborn one needed SIGKILL
    elapsed = time.monotonic() - t0
    assert elapsed < 3.5
    assert polite_done.wait(5) and stubborn_done.wait(5)
    assert polite.returncode == -signal.SIGTERM
    assert stubborn.returncode == -signal.SIGKILL
    # The grandchildren went with their groups.
    assert not group_alive(polite.pid) and not group_alive(stubborn.pid)


def test_the_second_request_kills_at_once():
    stubborn, done = start_sleeper(ignore_term=True)
    assert stop.request_stop(signal.SIGINT) is True
    time.sleep(0.3)
    assert stubborn.poll() is None  # SIGTERM ignored
    t0 = time.monotonic()
    assert stop.request_stop(signal.SIGINT) is False
    assert done.wait(3) and time.monotonic() - t0 < 2
    assert stubborn.returncode == -signal.SIGKILL
    assert not group_alive(stubborn.pid)


def test_no_job_starts_once_stopping(tmp_path):
    stop.request_stop(signal.SIGTERM)
    started = []
    refused = "not started: the run was interrupted by SIGTERM"
    with (
        pytest.raises(stop.StopRequested, match=refused),
        stop.start_job(lambda: started.append(1), "late"),
    ):
        pass
    assert not started
    spec = TrainSpec(policy_path=str(tmp_path), train_table="t", output_dir="o",
                     training={"kl_coef": 0})  # fmt: skip
    with pytest.raises(stop.StopRequested):
        run_job("train", spec, name="train")
    with pytest.raises(stop.StopRequested, match="cancelled"):
        stop.reset()
        stop.request_stop(stop.CANCEL)
        stop.check("feedback")


def test_running_names_stages_before_jobs_and_keeps_them_after_the_request():
    with stop.running_stage("iter-1-train"):
        proc, _ = start_sleeper()
        assert stop.running() == ["iter-1-train"]
        stop.request_stop(signal.SIGTERM)
    assert stop.running() == ["iter-1-train"]
    stop.finish_jobs(grace_s=2.0)
    assert proc.returncode == -signal.SIGTERM
