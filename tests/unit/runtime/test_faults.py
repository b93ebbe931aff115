"""Fault injection must end the run it is armed in, and nothing above it.

CI runs `make test` in one process group with `make` and the CI job itself; a fault
that SIGKILLs "the caller's group" there ends the whole CI job (exit 137). These tests
start the armed process the way `make` does, in the parent's process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from alt_core.runtime import faults
from deployments import cli

ARMED_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from alt_core.runtime import faults
    faults.claim_run_group()
    print(os.getpid(), os.getpgid(0), os.environ[faults.RUN_PGID_ENV], flush=True)
    faults.crash_if("datapool")
    time.sleep(5)
    """
)


def test_unarmed_command_leaves_the_process_group_and_environment_alone(monkeypatch):
    monkeypatch.delenv(faults.RUN_PGID_ENV, raising=False)
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    monkeypatch.delenv(faults.TRAIN_FAULT_ENV, raising=False)
    group = os.getpgid(0)
    assert cli.main(["presets"]) == 0
    assert os.getpgid(0) == group
    assert faults.RUN_PGID_ENV not in os.environ


def test_armed_run_kills_its_own_group_and_spares_its_parents():
    env = {**os.environ, faults.FAULT_ENV: "datapool"}
    env.pop(faults.RUN_PGID_ENV, None)
    # No start_new_session: the child starts in this test's process group, as under make.
    done = subprocess.run(
        [sys.executable, "-c", ARMED_CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid, pgid, recorded = done.stdout.split()
    assert pid == pgid == recorded  # the armed run leads a group of its own
    assert int(pgid) != os.getpgid(0)  # ... which is not ours: we are still here


def test_armed_flags():
    assert not faults.armed({})
    assert faults.armed({faults.FAULT_ENV: "datapool"})
    assert faults.armed({faults.TRAIN_FAULT_ENV: "3"})
    assert not faults.armed({faults.FAULT_ENV: ""})
