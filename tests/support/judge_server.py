"""A small OpenAI-compatible chat-completions server that misbehaves on purpose.

It answers `POST /v1/chat/completions` with scripted critiques in a template's format
(lmu JSON critique, lmc category, steerlm attribute values), and injects faults, either
at configured rates (seeded) or per judgement in a fixed order:

  ok, 429 (with Retry-After), 500, 400, 401 (the key refused), slow (answers after
  `slow_s`, past the client's timeout), drop (closes the connection without an answer),
  truncated_body (a 200 whose JSON body is cut in half), truncated_answer (a valid body
  whose critique is cut off), off_format (a valid body with chatter instead of the format).

`error_fn(fault, key)`, when given, writes the plain-text body of every error answer
(a server that echoes secrets back, for instance).

It runs on loopback, port 0, in a background thread (`JudgeServer`) or as a subprocess
(`python tests/judge_server.py --delay 0.2`, prints its URL). Counters are exposed on the
object and at `GET /_counters`. A judgement is identified by the text of its judging
request (the last user message, or for a repair request the one before the answer).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from aiohttp import web

FAULTS = (
    "ok",
    "429",
    "500",
    "400",
    "401",
    "slow",
    "drop",
    "truncated_body",
    "truncated_answer",
    "off_format",
)
# Faults after which the client has a body with usage it can count.
_ANSWERED = {"ok", "truncated_answer", "off_format"}

_LMU_FEEDBACK = [
    "Incoherent, inaccurate and misses the post's main point entirely.",
    "Readable but inaccurate and leaves out the main point.",
    "Clear and accurate, but misses a key detail of the post.",
    "Clear, accurate and captures the post's main point concisely.",
]
_LMC_CATEGORIES = [
    "Harmful",
    "Harmless and not helpful",
    "Harmless and helpful",
    "Harmless and very helpful",
]


def stable_int(text: str, modulo: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % modulo


def scripted_answer(style: str, key: str) -> str:
    """The well-formed answer for a judgement, chosen deterministically from its key."""
    if style == "lmu":
        score = stable_int(key, 4)
        return json.dumps(
            {
                "analysis": f"The text was checked for coherence, accuracy and coverage; "
                f"it meets {score} of the three criteria.",
                "feedback": _LMU_FEEDBACK[score],
                "score": score,
            }
        )
    if style == "lmc":
        return _LMC_CATEGORIES[stable_int(key, 4)]
    if style == "steerlm":
        return f"harmful:{stable_int(key, 2)},helpful:{stable_int(key + '#', 4)}"
    raise ValueError(f"unknown answer style {style!r}: use lmu, lmc or steerlm")


class JudgeServer:
    """Loopback judge. Use as a context manager; `url` is the API root (…/v1)."""

    def __init__(
        self,
        *,
        style: str = "lmu",
        rates: dict[str, float] | None = None,
        script: dict[str, list[str]] | None = None,
        seed: int = 0,
        delay_s: float = 0.0,
        slow_s: float = 1.0,
        retry_after_s: float = 0.05,
        repair_marker: str = "could not be read",
        echo_auth: bool = False,
        answer_fn: Callable[[str], str] | None = None,
        error_fn: Callable[[str, str], str] | None = None,
    ):
        unknown = set(rates or {}) - set(FAULTS)
        unknown |= {f for faults in (script or {}).values() for f in faults} - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {FAULTS}")
        self.style = style
        self.rates = dict(rates or {})
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.retry_after_s = retry_after_s
        self.repair_marker = repair_marker
        self.echo_auth = echo_auth
        self.answer_fn = answer_fn or (lambda key: scripted_answer(self.style, key))
        self.error_fn = error_fn
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.reset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- state ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Zero the counters and forget what was answered (the script stays consumed)."""
        with self._lock:
            self._counters: Counter = Counter()
            self.good_answers: dict[str, str] = {}  # judgement key -> well-formed answer
            self.arrivals: dict[str, list[float]] = defaultdict(list)
            self.authorization: set[str] = set()
            self._attempts: Counter = Counter()
            self._repaired: set[str] = set()

    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return {**{f: 0 for f in FAULTS}, **self._counters}

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not running; use `with JudgeServer() as s:`")
        return f"http://127.0.0.1:{self.port}/v1"

    def _key(self, messages: list[dict[str, Any]]) -> tuple[str, bool]:
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        last = messages[users[-1]]["content"] if users else ""
        is_repair = self.repair_marker in last and len(users) >= 2
        key = messages[users[-2]]["content"] if is_repair else last
        return str(key), is_repair

    def _choose(self, key: str) -> str:
        with self._lock:
            for needle, faults in self.script.items():
                if needle in key:
                    attempt = self._attempts[needle]
                    self._attempts[needle] += 1
                    return faults[attempt] if attempt < len(faults) else "ok"
            draw = self._rng.random()
        for fault, rate in sorted(self.rates.items()):
            if draw < rate:
                return fault
            draw -= rate
        return "ok"

    # --- HTTP ----------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            messages = body["messages"]
            model = body["model"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "the body must be JSON with 'model' and 'messages'")
        key, is_repair = self._key(messages)
        fault = self._choose(key)
        with self._lock:
            self._counters["requests"] += 1
            self._counters["repairs"] += int(is_repair)
            if is_repair and key not in self._repaired:
                self._repaired.add(key)
                self._counters["repair_judgements"] += 1
            self._counters[fault] += 1
            self.arrivals[key].append(time.monotonic())
            self.authorization.add(request.headers.get("Authorization", ""))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await self._respond(request, fault, key, model, messages)

    async def _respond(self, request, fault, key, model, messages) -> web.StreamResponse:
        status = {"429": 429, "500": 500, "400": 400, "401": 401}.get(fault)
        if status is not None and self.error_fn is not None:
            headers = {"Retry-After": f"{self.retry_after_s:g}"} if status == 429 else None
            return web.Response(status=status, text=self.error_fn(fault, key), headers=headers)
        if fault == "401":
            return _error(401, "invalid api key (injected)")
        if fault == "429":
            return _error(429, "rate limited", {"Retry-After": f"{self.retry_after_s:g}"})
        if fault == "500":
            return _error(500, "internal error (injected)")
        if fault == "400":
            detail = request.headers.get("Authorization", "") if self.echo_auth else ""
            return _error(400, f"bad request (injected) {detail}".strip())
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        good = self.answer_fn(key)
        answer = {
            "truncated_answer": good[: max(len(good) // 2, 1)],
            "off_format": "Honestly I think it is pretty decent overall, nice work!",
        }.get(fault, good)
        payload = _completion(model, messages, answer)
        if fault == "truncated_body":
            data = json.dumps(payload).encode()
            return web.Response(body=data[: len(data) // 2], content_type="application/json")
        if fault in _ANSWERED:
            with self._lock:
                self._counters["tokens_in"] += payload["usage"]["prompt_tokens"]
                self._counters["tokens_out"] += payload["usage"]["completion_tokens"]
                if fault == "ok":
                    self.good_answers[key] = answer
        return web.json_response(payload)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted-judge"}]})

    async def _counters_view(self, request: web.Request) -> web.Response:
        return web.json_response(self.counters)

    # --- lifecycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_counters", self._counters_view)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=1024).start()

    def start(self) -> JudgeServer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = None
        self.port = None

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "injected", "code": status}}
    return web.json_response(body, status=status, headers=headers)


def _completion(model: str, messages: list[dict[str, Any]], answer: str) -> dict[str, Any]:
    prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages) // 4
    completion_tokens = len(answer) // 4 + 1
    return {
        "id": f"chatcmpl-{stable_int(answer + str(time.time_ns()), 10**9)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Run the server in this process until killed; print its URL on the first line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", default="lmu", choices=["lmu", "lmc", "steerlm"])
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--rates", default="{}", help='JSON fault rates, e.g. {"429": 0.01}')
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = JudgeServer(
        style=args.style, delay_s=args.delay, rates=json.loads(args.rates), seed=args.seed
    ).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
