"""Cache of parsed judge answers in the artifact store (local folder or s3://).

Layout: `<cache_uri>/<template>-<model>-<hash>/part-<time>-<random>.parquet`, one folder
per (judge model, template content, answer settings) and one committed Parquet part per
flush. The answer settings are what changes the answer to the same request (temperature,
max_tokens, extra_body): a judgement cut short at 64 tokens is not reused at 256. Every
writer creates new, uniquely named parts and never rewrites one, so shards that judge
at the same time cannot clobber each other's entries; readers load every committed part
and skip parts still being written. Entries are keyed by a hash of the model, the
template name and content hash, the answer settings, and the (prompt, generation) pair.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from typing import Any, Protocol

import fsspec
import pandas as pd

from alt_core import store
from alt_core.feedback.judge.templates import JudgeTemplate

log = logging.getLogger(__name__)

# What one cached judgement holds; the same shape as one output row of the client.
ENTRY_FIELDS = ["feedback", "score", "analysis", "missing_reason", "raw_answer", "missing_cause"]


class CacheScope(Protocol):
    """What names a cache's requests beside the model: a judge template, or another
    client's request kind (its name and a hash of what shapes its requests)."""

    @property
    def name(self) -> str: ...

    @property
    def content_hash(self) -> str: ...


class JudgeCache:
    """In-memory dict of judgements, backed by append-only parts under `uri` (or none)."""

    def __init__(
        self,
        uri: str | None,
        model: str,
        template: JudgeTemplate | CacheScope,
        settings: dict[str, Any] | None = None,
        *,
        float_scores: bool = False,
    ):
        self.model = model
        self.template = self.scope = template
        # Judge scores are integers; a scorer's (Perspective's toxicity) are floats.
        self.float_scores = float_scores
        self.template_hash = template.content_hash
        # Canonical JSON, so that {"a": 1, "b": 2} and {"b": 2, "a": 1} are the same settings.
        self.settings = json.dumps(settings or {}, sort_keys=True, default=str)
        ident = f"{model}\0{self.template_hash}\0{self.settings}"
        ident = hashlib.sha256(ident.encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)[:60]
        self.uri = store.join(uri, f"{template.name}-{slug}-{ident}") if uri else None
        self._entries: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, dict[str, Any]] = {}
        self._loaded = False

    def key(self, prompt: str, generation: str) -> str:
        blob = json.dumps(
            [self.model, self.template.name, self.template_hash, self.settings, prompt, generation]
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def load(self) -> int:
        """Read every committed part; returns the number of entries known."""
        if self._loaded or self.uri is None:
            self._loaded = True
            return len(self._entries)
        for part in self._part_uris():
            if not store.is_committed(part):
                log.debug("judge cache: skipping uncommitted part %s", part)
                continue
            try:
                frame = store.read_table(part)
            except store.ArtifactError as exc:
                # A damaged cache part costs only money: its judgements are asked again.
                log.warning("judge cache: ignoring %s (%s); delete it to silence this", part, exc)
                continue
            records = frame.reindex(columns=["key", *ENTRY_FIELDS]).to_dict("records")
            self._entries.update((r.pop("key"), _restore(r, self.float_scores)) for r in records)
        self._loaded = True
        return len(self._entries)

    def _part_uris(self) -> list[str]:
        assert self.uri is not None
        fs, path = fsspec.core.url_to_fs(self.uri)
        if not fs.exists(path):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        return sorted(
            store.join(self.uri, n)
            for n in names
            if n.startswith("part-") and n.endswith(".parquet")
        )

    def get(self, key: str) -> dict[str, Any] | None:
        return self._entries.get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self._entries[key] = entry
        self._pending[key] = entry

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take_pending(self) -> dict[str, dict[str, Any]]:
        """Hand over the unwritten entries (called on the event loop, written elsewhere)."""
        pending, self._pending = self._pending, {}
        return pending

    def write_part(self, entries: dict[str, dict[str, Any]]) -> str | None:
        """Commit `entries` as a new part; returns its URI (None if nothing to write)."""
        if not entries or self.uri is None:
            return None
        frame = pd.DataFrame([{"key": k, **e} for k, e in entries.items()])
        frame["score"] = frame["score"].astype("float64" if self.float_scores else "Int64")
        frame["model"] = self.model
        frame["template"] = self.template.name
        frame["template_hash"] = self.template_hash
        frame["created_at"] = time.time()
        part = store.join(self.uri, f"part-{time.time_ns()}-{uuid.uuid4().hex[:10]}.parquet")
        return store.write_table(part, frame, meta={"kind": "judge_cache", "entries": len(frame)})

    def flush(self) -> str | None:
        return self.write_part(self.take_pending())


def _restore(record: dict[str, Any], float_scores: bool = False) -> dict[str, Any]:
    """Parquet turns None into NaN/NA; give back plain None and int (or float)."""
    out = {k: (None if _is_missing(v) else v) for k, v in record.items()}
    if out["score"] is not None:
        out["score"] = float(out["score"]) if float_scores else int(out["score"])
    if out["missing_reason"] is not None and out["missing_cause"] is None:
        # Parts written before causes were recorded: the only misses ever cached are
        # answers that stayed unparseable.
        out["missing_cause"] = "unparseable"
    return out


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
