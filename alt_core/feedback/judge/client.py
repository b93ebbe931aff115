"""Async client for an OpenAI-compatible LLM judge, and the `judge_batch` entry point.

Each (prompt, generation) pair becomes one judgement: the template's messages are sent
to `{base_url}/chat/completions`, the answer is parsed with the template's parser, an
unparseable answer gets one repair request, and every answer is cached. Many judgements
run at once under a semaphore (`max_concurrency`) and a token-bucket rate limiter.

A request that fails transiently (connection error, timeout, 429, 5xx, malformed body)
is retried with exponential backoff and jitter, honouring Retry-After on a 429, at most
`max_retries` times. A non-transient 4xx fails that judgement at once. Either way the
judgement is recorded as missing with the reason and its cause (`missing_cause`, one of
`alt_core.feedback.base.MISSING_CAUSES`: unreachable, unauthorized, rate_limited, ...),
and the call goes on; whether too much is missing is the caller's decision (a feedback
shard fails above `feedback.max_missing_share`). Failed requests are not cached, so a
rerun asks for exactly the judgements that are still missing and nothing else.

A judge that cannot be reached at all fails fast: once every connection attempt for
`_DOWN_AFTER_S` seconds has failed, with no answer in between, the judgements still
waiting are recorded as unreachable without being sent, instead of each spending its
whole backoff schedule (about 15 to 30 s with the default retries).

Server text (error bodies, answers, exception messages) is redacted before it is cut to
length or kept anywhere (`Redactor.clip`).

Works with vLLM's OpenAI server (`vllm serve`): it needs `model` in the body and takes
`max_tokens`; the served model needs a chat template.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import certifi
import httpx
import numpy as np
import pandas as pd
from pydantic import SecretStr

from alt_core.config.judge import JudgeConfig
from alt_core.feedback.judge.cache import ENTRY_FIELDS, JudgeCache
from alt_core.feedback.judge.credentials import Redactor, resolve_api_key
from alt_core.feedback.judge.parsers import Judgement, ParseError
from alt_core.feedback.judge.ratelimit import RateLimiter
from alt_core.feedback.judge.stats import TRANSIENT_KINDS, JudgeStats
from alt_core.feedback.judge.templates import JudgeTemplate, load_template
from alt_core.runtime.progress import ProgressLog

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = [
    "feedback",
    "score",
    "analysis",
    "reward",
    "missing_reason",
    "raw_answer",
    "missing_cause",
]
_SNIPPET = 300  # characters of a server's error body kept in a reason
_LANE = 8  # connections per httpx client (see JudgeClient.__aenter__)
# Seconds of nothing but failed connection attempts after which the judge counts as
# down (see the module docstring): long enough to ride out a restart of a local judge,
# short enough that a run against a stopped one fails in seconds.
_DOWN_AFTER_S = 5.0


class JudgeRequestError(RuntimeError):
    """A request to the judge failed for good (non-transient, or retries used up).

    `kind` is the stats' failure kind (FAILURE_KINDS), `cause` the missing-feedback cause
    it amounts to (alt_core.feedback.base.MISSING_CAUSES)."""

    def __init__(self, kind: str, message: str, attempts: int, cause: str = "unknown"):
        super().__init__(f"{kind}: {message} (after {attempts} attempt(s))")
        self.kind = kind
        self.attempts = attempts
        self.cause = cause

    def __reduce__(self) -> tuple[Any, ...]:
        message = str(self).removeprefix(f"{self.kind}: ").rsplit(" (after ", 1)[0]
        return (type(self), (self.kind, message, self.attempts, self.cause))


@dataclass
class _Failure:
    kind: str  # FAILURE_KINDS: what the stats count
    message: str
    cause: str  # MISSING_CAUSES: what the judgement's absence is blamed on
    retry_after: float | None = None


def _http_cause(code: int) -> str:
    if code in (401, 403):
        return "unauthorized"
    if code == 429:
        return "rate_limited"
    if code == 408:
        return "timeout"
    return "server_error" if code >= 500 else "rejected"


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    if "retry-after-ms" in headers:
        try:
            return max(float(headers["retry-after-ms"]) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _lane_sizes(cap: int) -> list[int]:
    return [min(_LANE, cap - start) for start in range(0, cap, _LANE)]


def _estimate_tokens(messages: list[dict[str, str]]) -> float:
    """Prompt tokens, roughly: 4 characters per token (corrected later by `usage`)."""
    return sum(len(m["content"]) for m in messages) / 4.0


def _missing(reason: str, raw: str | None, cause: str) -> dict[str, Any]:
    return {
        "feedback": None,
        "score": None,
        "analysis": None,
        "missing_reason": reason,
        "raw_answer": raw,
        "missing_cause": cause,
    }


def _entry(judgement: Judgement, raw: str) -> dict[str, Any]:
    return {
        "feedback": judgement.feedback,
        "score": judgement.score,
        "analysis": judgement.analysis,
        "missing_reason": None,
        "raw_answer": raw,
        "missing_cause": None,
    }


class JudgeClient:
    """Use as `async with JudgeClient(config) as client: frame, stats = await client.judge(...)`.

    Other JSON APIs reuse its concurrency, rate limit, retries, key handling and cache by
    subclassing: `endpoint`, `_auth_headers`, `_answer` (the answer in a response body)
    and `judge_one` (one item: request, answer, cache entry) are the hooks
    (`alt_core.feedback.perspective.PerspectiveClient` is one)."""

    endpoint = "/chat/completions"

    def __init__(
        self,
        config: JudgeConfig,
        template: JudgeTemplate | str | None = None,
        *,
        cache_uri: str | None = None,
    ):
        if template is None or isinstance(template, str):
            template = load_template(template or config.template)
        self.template = template
        self._parse = template.parser_fn()
        self._setup(config, JudgeCache(cache_uri, config.model, template, config.answer_settings()))

    def _setup(self, config: JudgeConfig, cache: JudgeCache) -> None:
        """The transport's state (connections open in __aenter__)."""
        self.config = config
        self.cache = cache
        self._lanes: list[httpx.AsyncClient] = []
        self._auth = httpx.Headers()
        self._redact = Redactor(None)
        self._rng = random.Random()
        # Since when every connection attempt has failed (None: the judge answers), and
        # the reason of the latest such failure; see _DOWN_AFTER_S.
        self._down_since: float | None = None
        self._down_reason = ""

    def __repr__(self) -> str:
        return (
            f"JudgeClient(model={self.config.model!r}, base_url={self.config.base_url!r}, "
            f"template={self.template.name!r}, max_concurrency={self.config.max_concurrency})"
        )

    async def __aenter__(self) -> JudgeClient:
        key = await resolve_api_key(self.config)
        self._redact = Redactor(key)
        # httpx.Headers masks Authorization in its repr, so even a traceback that dumps
        # locals shows "[secure]" instead of the key.
        self._auth = httpx.Headers(self._auth_headers(key) if key else {})
        await asyncio.to_thread(self.cache.load)  # before opening anything that needs closing
        self._lanes = self._open_lanes()
        self._slots: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(self.config.max_concurrency):
            self._slots.put_nowait(slot)
        self._limiter = RateLimiter(self.config.requests_per_minute, self.config.tokens_per_minute)
        return self

    def _open_lanes(self) -> list[httpx.AsyncClient]:
        # httpcore's pool scans every connection for every request it assigns, a cost that
        # grows with the square of the pool size (measured: p99 latency 0.6 s at 16
        # connections per pool, 0.2 s at 8, on a loopback judge). So the connections are
        # split into lanes of _LANE, and a free slot (the concurrency cap) picks its
        # lane: no lane ever has more requests than connections. One TLS context serves
        # all lanes (building one costs ~20 ms).
        tls = ssl.create_default_context(cafile=certifi.where())
        return [
            httpx.AsyncClient(
                base_url=self.config.base_url,
                timeout=httpx.Timeout(self.config.timeout_s),
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                verify=tls,
            )
            for size in _lane_sizes(self.config.max_concurrency)
        ]

    def _auth_headers(self, key: SecretStr) -> dict[str, str]:
        """The headers that carry the key (never the URL: httpx logs URLs)."""
        return {"Authorization": f"Bearer {key.get_secret_value()}"}

    def _answer(self, data: Any) -> Any:
        """The answer in a decoded response body; raises KeyError, IndexError, TypeError
        or ValueError when the body is malformed (a transient failure, retried)."""
        content = data["choices"][0]["message"]["content"]
        return "" if content is None else str(content)

    async def __aexit__(self, *exc_info: object) -> None:
        lanes, self._lanes = self._lanes, []
        await asyncio.gather(*(lane.aclose() for lane in lanes))
        self._auth = httpx.Headers()

    # --- one request, with retries -------------------------------------------------------

    async def complete(
        self, messages: list[dict[str, str]], stats: JudgeStats | None = None
    ) -> str:
        """The judge's answer text; raises JudgeRequestError once retries are used up."""
        cfg = self.config
        body = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            **cfg.extra_body,
        }
        return await self.request(body, _estimate_tokens(messages) + cfg.max_tokens, stats)

    async def request(
        self, body: dict[str, Any], estimate: float, stats: JudgeStats | None = None
    ) -> Any:
        """POST `body` to the endpoint and return `_answer` of the response, retrying
        transient failures; raises JudgeRequestError once retries are used up.
        `estimate`: the request's tokens, for the token rate limit."""
        if not self._lanes:
            raise RuntimeError(f"use the client inside `async with {type(self).__name__}(...)`")
        stats = stats if stats is not None else JudgeStats()
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            await self._limiter.acquire(estimate)
            self._raise_if_down(attempt)
            slot = await self._slots.get()
            try:
                stats.requests += 1
                result = await self._post(self._lanes[slot // _LANE], body, stats)
            finally:
                self._slots.put_nowait(slot)
            if isinstance(result, tuple):
                answer, used = result
                self._limiter.settle_tokens(estimate, used or estimate)
                return answer
            stats.fail(result.kind)
            delay = self._retry_delay(result, attempt)
            if delay is None:
                message = self._redact(result.message) or ""
                raise JudgeRequestError(result.kind, message, attempt + 1, result.cause)
            stats.retries += 1
            log.debug(
                "judge request failed (%s): %s; retry %d/%d in %.2fs",
                result.kind,
                self._redact(result.message),
                attempt + 1,
                cfg.max_retries,
                delay,
            )
            await asyncio.sleep(self._until_down(delay))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _until_down(self, delay: float) -> float:
        """The backoff, cut short while the judge is unreachable so as to wake when it
        would count as down: then every waiting judgement fails at once, instead of
        each at the end of its own (up to backoff_max_s) sleep."""
        if self._down_since is None:
            return delay
        left = self._down_since + _DOWN_AFTER_S - time.monotonic()
        return min(delay, max(left, 0.0) + 0.01)

    def _raise_if_down(self, attempts: int) -> None:
        """Fail a judgement without sending it once the judge counts as down."""
        if self._down_since is None:
            return
        down_for = time.monotonic() - self._down_since
        if down_for >= _DOWN_AFTER_S:
            raise JudgeRequestError(
                "connection",
                f"not sent: every connection attempt for {down_for:.0f}s failed "
                f"({self._down_reason})",
                attempts,
                "unreachable",
            )

    def _note_reachability(self, failure: _Failure | None, started: float) -> None:
        """Track how long the judge has been unreachable (see _DOWN_AFTER_S)."""
        if failure is None or failure.cause != "unreachable":
            self._down_since = None  # an answer of any kind: the judge is there
            return
        if self._down_since is None:
            self._down_since = started
        self._down_reason = self._redact(failure.message) or ""

    def _retry_delay(self, failure: _Failure, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when it must not be retried."""
        cfg = self.config
        if failure.kind not in TRANSIENT_KINDS or attempt >= cfg.max_retries:
            if failure.kind == "429":
                failure.message += "; the retry budget is spent"
            return None
        backoff = min(cfg.backoff_max_s, cfg.backoff_base_s * 2**attempt)
        wait = failure.retry_after
        if wait is not None and wait > 0:
            if wait > cfg.max_retry_after_s:
                failure.message += f"; Retry-After {wait:.0f}s exceeds max_retry_after_s"
                return None
            # The server said when capacity is back: hold every request until then, and
            # spread this one's retry a little so the waiters do not return at once.
            self._limiter.pause(wait)
            return wait * (1.0 + self._rng.uniform(0.0, 0.1))
        return backoff / 2 + self._rng.uniform(0.0, backoff / 2)  # "equal jitter"

    async def _post(
        self, http: httpx.AsyncClient, body: dict[str, Any], stats: JudgeStats
    ) -> tuple[Any, float] | _Failure:
        start = time.perf_counter()
        started = time.monotonic()
        try:
            response = await http.post(self.endpoint, json=body, headers=self._auth)
        except httpx.HTTPError as exc:
            failure = self._transport_failure(exc)
            self._note_reachability(failure, started)
            return failure
        self._note_reachability(None, started)
        stats.latencies_s.append(time.perf_counter() - start)
        return self._read(response, stats)

    def _transport_failure(self, exc: httpx.HTTPError) -> _Failure:
        """The failure of a request that got no HTTP response at all."""
        url = f"{self.config.base_url}{self.endpoint}"
        what = type(exc).__name__
        detail = self._redact.clip(str(exc), _SNIPPET)
        within = f"within {self.config.timeout_s:g}s"
        if isinstance(exc, httpx.ConnectTimeout):
            return _Failure(
                "timeout", f"{what}: could not connect to {url} {within}", "unreachable"
            )
        if isinstance(exc, httpx.TimeoutException):
            return _Failure("timeout", f"{what}: no answer from {url} {within}", "timeout")
        if isinstance(exc, httpx.ConnectError | httpx.UnsupportedProtocol):
            return _Failure(
                "connection", f"{what}: cannot connect to {url}: {detail}", "unreachable"
            )
        if isinstance(exc, httpx.TransportError):
            message = f"{what}: the connection to {url} ended without an answer: {detail}"
            return _Failure("connection", message, "dropped")
        return _Failure("bad_response", f"undecodable body from {url}: {detail}", "bad_response")

    def _read(self, response: httpx.Response, stats: JudgeStats) -> tuple[Any, float] | _Failure:
        code = response.status_code
        head = f"HTTP {code} from {response.request.url}"
        cause = _http_cause(code)
        if code == 429:
            after = _retry_after(response.headers)
            shown = "none" if after is None else f"{after:g}s"
            return _Failure("429", f"{head} (rate limited, Retry-After {shown})", cause, after)
        if code == 408:
            return _Failure("timeout", f"{head} (the server timed out)", cause)
        if code >= 400:
            # Redacted before the cut: a cut key no longer matches the redaction.
            body = self._redact.clip(response.text, _SNIPPET)
            return _Failure("5xx" if code >= 500 else "4xx", f"{head}: {body}", cause)
        try:
            data = response.json()
            answer = self._answer(data)
        except (ValueError, KeyError, IndexError, TypeError):
            body = self._redact.clip(response.text, _SNIPPET)
            return _Failure(
                "bad_response", f"{head} with a malformed body: {body!r}", "bad_response"
            )
        usage = data.get("usage") if isinstance(data, dict) else None
        stats.add_usage(usage)
        used = 0.0
        if isinstance(usage, dict):
            used = float(usage.get("total_tokens") or 0)
        return answer, used

    # --- one judgement: ask, parse, repair once ------------------------------------------

    async def judge_one(
        self, prompt: str, generation: str, stats: JudgeStats
    ) -> tuple[dict[str, Any], bool]:
        """(entry, cacheable): a judgement, or a missing record with its reason."""
        messages = self.template.messages(prompt, generation)
        try:
            answer = self._redact(await self.complete(messages, stats)) or ""
        except JudgeRequestError as exc:
            return _missing(str(exc), None, exc.cause), False
        try:
            return _entry(self._parse(answer), answer), True
        except ParseError as exc:
            first = exc
            stats.fail("parse")
        stats.repairs += 1
        repair = self.template.repair_messages(messages, answer, str(first))
        try:
            second = self._redact(await self.complete(repair, stats)) or ""
        except JudgeRequestError as exc:
            reason = f"parse: {first}; the repair request failed: {exc}"
            return _missing(reason, answer, exc.cause), False
        try:
            judgement = self._parse(second)
        except ParseError as exc:
            stats.fail("parse")
            raw = f"{answer}\n\n[answer to the repair request]\n{second}"
            reason = f"parse: {exc} (after one repair attempt; first answer: {first})"
            return _missing(reason, raw, "unparseable"), self.config.cache_unparsed
        stats.repaired += 1
        return _entry(judgement, second), True

    # --- a batch -----------------------------------------------------------------------

    async def judge(
        self,
        prompts: Sequence[str],
        generations: Sequence[str],
        progress_log: Callable[[str], None] | None = None,
    ) -> tuple[pd.DataFrame, dict[str, Any]]:
        """One output row per input pair, in order (see OUTPUT_COLUMNS), and the stats;
        `progress DONE/TOTAL judgements` lines go to `progress_log` as the distinct pairs are
        judged (cache hits count as done at once)."""
        if len(prompts) != len(generations):
            raise ValueError(f"{len(prompts)} prompts but {len(generations)} generations")
        started = time.perf_counter()
        stats = JudgeStats(judgements=len(prompts))
        keys = [self.cache.key(p, g) for p, g in zip(prompts, generations, strict=True)]
        first: dict[str, tuple[str, str]] = {}
        for key, p, g in zip(keys, prompts, generations, strict=True):
            first.setdefault(key, (p, g))
        stats.duplicates = len(keys) - len(first)
        results: dict[str, dict[str, Any]] = {}
        progress = ProgressLog(len(first), "judgements", progress_log)
        todo = []
        for key, (p, g) in first.items():
            hit = self.cache.get(key)
            if hit is not None:
                results[key] = hit
                stats.cache_hits += 1
            else:
                todo.append(self._judge_and_keep(key, p, g, stats, results, progress))
        progress.advance(stats.cache_hits)
        try:
            await asyncio.gather(*todo)
        finally:
            await self._flush()  # keep what was paid for even if something went wrong
        stats.wall_s = time.perf_counter() - started
        frame = self._frame([results[k] for k in keys])
        stats.missing = int(frame["missing_reason"].notna().sum())
        summary = stats.as_dict()
        log.info("%s %s/%s: %s", self.endpoint, self.config.model, self.cache.scope.name, summary)
        return frame, summary

    async def _judge_and_keep(
        self,
        key: str,
        prompt: str,
        generation: str,
        stats: JudgeStats,
        results: dict[str, dict[str, Any]],
        progress: ProgressLog,
    ) -> None:
        entry, cacheable = await self.judge_one(prompt, generation, stats)
        results[key] = entry
        progress.advance()
        if cacheable:
            self.cache.put(key, entry)
            if self.cache.pending >= self.config.cache_flush_every:
                await self._flush()

    async def _flush(self) -> None:
        entries = self.cache.take_pending()
        if entries:
            await asyncio.to_thread(self.cache.write_part, entries)

    def _frame(self, entries: list[dict[str, Any]]) -> pd.DataFrame:
        return output_frame(entries)


def output_frame(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """The client's output columns from cache-shaped entries; reward is NaN when missing."""
    frame = pd.DataFrame.from_records(entries, columns=ENTRY_FIELDS)
    text = ["feedback", "analysis", "missing_reason", "raw_answer"]
    # Plain None (not NaN) marks absent text, whatever pandas inferred per column.
    frame[text] = frame[text].astype(object).where(frame[text].notna(), None)
    frame["score"] = pd.array(frame["score"].tolist(), dtype="Int64")
    frame["reward"] = frame["score"].to_numpy(dtype=float, na_value=np.nan)
    return frame[OUTPUT_COLUMNS]


def _pairs(rows: Any, prompt_column: str, generation_column: str) -> tuple[list[str], list[str]]:
    if isinstance(rows, pd.DataFrame):
        frame = rows
    else:
        if not isinstance(rows, Iterable) or isinstance(rows, str | bytes):
            raise TypeError(
                f"judge rows must be a DataFrame, dicts or (prompt, generation) pairs, "
                f"not {type(rows).__name__}"
            )
        items = list(rows)
        if items and isinstance(items[0], Mapping):
            frame = pd.DataFrame(items)
        else:
            frame = pd.DataFrame(items, columns=[prompt_column, generation_column])
    missing = [c for c in (prompt_column, generation_column) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"judge rows lack column(s) {missing}; they have {list(frame.columns)} "
            f"(pass prompt_column= / generation_column= to name yours)"
        )

    def as_text(col: str) -> list[str]:
        return frame[col].fillna("").astype(str).tolist()

    return as_text(prompt_column), as_text(generation_column)


async def ajudge_batch(
    rows: Any,
    config: JudgeConfig,
    *,
    template: JudgeTemplate | str | None = None,
    cache_uri: str | None = None,
    prompt_column: str = "prompt",
    generation_column: str = "generation",
    progress_log: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Judge every row (a DataFrame, dicts, or (prompt, generation) pairs); see judge_batch."""
    prompts, generations = _pairs(rows, prompt_column, generation_column)
    async with JudgeClient(config, template, cache_uri=cache_uri) as client:
        return await client.judge(prompts, generations, progress_log)


def judge_batch(
    rows: Any,
    config: JudgeConfig,
    *,
    template: JudgeTemplate | str | None = None,
    cache_uri: str | None = None,
    prompt_column: str = "prompt",
    generation_column: str = "generation",
    progress_log: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Synchronous entry point: (frame, stats) for `rows`.

    The frame has one row per input row, in order, with columns feedback, score,
    analysis, reward (score as float, NaN when missing), missing_reason and raw_answer.
    Answers are cached under `cache_uri` (a folder or s3:// URI; None: no cache).
    Progress lines (`progress DONE/TOTAL judgements`) go to `progress_log`.
    """
    coro = ajudge_batch(
        rows,
        config,
        template=template,
        cache_uri=cache_uri,
        prompt_column=prompt_column,
        generation_column=generation_column,
        progress_log=progress_log,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running loop (a notebook, an async Prefect task): run the
    # batch on its own loop in a worker thread rather than fail.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
