"""What each stage cost, over every attempt: `iter_NNN/timings.json`.

The flow appends one record per stage and attempt (a flow run, a retry from the UI,
`alt resume`) when the stage finishes or fails: its wall time in that attempt, the
fingerprint of the outputs it was working towards, and whether it reused them all. A
stage's reported time is the sum over the attempts made for the outputs it has now (the
same fingerprint), so a resumed run's table shows the true cost of a training that ran
233 s before the interruption and 3 s after it, not 3 s. An attempt killed outright
(SIGKILL, a lost host) records nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Literal

from alt_core import store

Outcome = Literal["done", "failed"]


class StageTimes:
    """The attempts ledger of one iteration folder."""

    def __init__(self, uri: str):
        self.uri = uri
        self._attempts: list[dict[str, Any]] | None = None

    @property
    def attempts(self) -> list[dict[str, Any]]:
        if self._attempts is None:
            try:
                blob = store.read_json(self.uri)
            except (FileNotFoundError, ValueError):  # none yet, or a torn file
                blob = {}
            attempts = blob.get("attempts") if isinstance(blob, dict) else None
            self._attempts = list(attempts) if isinstance(attempts, list) else []
        return self._attempts

    def add(
        self,
        stage: str,
        seconds: float,
        fingerprint: str | None,
        outcome: Outcome,
        reused: bool = False,
    ) -> None:
        self.attempts.append(
            {
                "stage": stage,
                "seconds": round(float(seconds), 3),
                "fingerprint": fingerprint,
                "outcome": outcome,
                "reused": reused,
                "at": time.time(),
            }
        )
        store.write_json(self.uri, {"attempts": self.attempts})

    def total(self, stage: str, fingerprint: str | None) -> float:
        """Seconds spent on `stage` over every attempt towards these outputs."""
        return sum(
            float(a.get("seconds") or 0.0)
            for a in self.attempts
            if a.get("stage") == stage and a.get("fingerprint") == fingerprint
        )


def stage_fingerprint(fingerprints: Iterable[str]) -> str:
    """One stage's fingerprint: its nodes' fingerprints, in plan order."""
    from alt_core.pipeline.fingerprints import digest

    return digest(list(fingerprints))
