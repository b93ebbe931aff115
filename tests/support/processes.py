"""Finding every process of a run: each carries a marker in its environment.

A test sets `MARK_ENV=<a fresh id>` in the environment of the process it starts (`alt
run`, `alt serve`); every process below it inherits it, whatever its session or process
group, so the process table says whether anything of the run is left.
"""

from __future__ import annotations

from pathlib import Path

MARK_ENV = "ALT_TEST_RUN_MARK"


def processes_marked(mark: str, exclude: tuple[int, ...] = ()) -> list[str]:
    """The live processes whose environment holds MARK_ENV=mark, as "pid cmdline", less
    the pids in `exclude` (zombies do not count: nothing may reap an orphan in a
    container)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) in exclude:
            continue
        try:
            if f"{MARK_ENV}={mark}".encode() not in (proc / "environ").read_bytes():
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state != "Z":
            found.append(f"{proc.name} {cmd}")
    return found
