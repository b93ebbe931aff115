"""Progress lines for long stages: `progress DONE/TOTAL UNIT`.

Sampling, feedback and training print such lines (training's are `step I/N`) as they
go; the Prefect tasks that run them turn each line into a progress artifact update
(`tasks_lib.common.worker_log`), and on the command line they are plain log lines. A
`ProgressLog` prints at most about `lines` of them per stage, no two within
`min_interval_s` of each other (a shard done in a second prints one line), and always
the last.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

Log = Callable[[str], None]


class ProgressLog:
    """Counts work done and prints a progress line each time another 1/lines of the
    total is done and `min_interval_s` have passed since the last line. Thread-safe; a
    total of 0 prints nothing."""

    def __init__(
        self,
        total: int,
        unit: str,
        log: Log | None,
        lines: int = 10,
        min_interval_s: float = 2.0,
    ):
        self.total = total
        self.unit = unit
        self.done = 0
        self._log = log
        self._every = max(1, -(-total // max(lines, 1)))  # ceil(total / lines)
        self._next = self._every
        self._min_interval_s = min_interval_s
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def advance(self, n: int = 1) -> None:
        if n <= 0 or self._log is None:
            return
        with self._lock:
            self.done = min(self.total, self.done + n)
            now = time.monotonic()
            due = self.done >= self._next and now - self._last >= self._min_interval_s
            if not due and self.done < self.total:
                return
            while self._next <= self.done:
                self._next += self._every
            self._last = now
            line = f"progress {self.done}/{self.total} {self.unit}"
        self._log(line)


# Training prints `step I/N ...`; sampling and feedback `progress DONE/TOTAL ...`.
_PROGRESS = re.compile(r"\b(?:step|progress) (\d+)/(\d+)\b")


def progress_fraction(line: str) -> float | None:
    """The percentage a `step I/N` or `progress DONE/TOTAL` line reports, else None."""
    m = _PROGRESS.search(line)
    return 100.0 * int(m.group(1)) / max(int(m.group(2)), 1) if m else None


def artifact_key(*parts: object) -> str:
    """A progress or report key: Prefect allows lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")
