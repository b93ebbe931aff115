"""A loopback server that speaks the Perspective API's comments:analyze format, with faults.

`script` maps a substring of the comment text to the answers it gets, one per request,
in order (the last repeats): "429" (Retry-After 0), "500", "malformed" (200 with a body
lacking attributeScores), "out_of_range" (a score of 1.7), or a float (the TOXICITY
score). Texts that match nothing score `default`. With `key`, a request whose
X-Goog-Api-Key header differs gets the API's answer to an invalid key (HTTP 400). Every
request's path, headers and body are recorded.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PerspectiveServer:
    def __init__(
        self,
        script: dict[str, list[Any]] | None = None,
        default: float = 0.1,
        key: str | None = None,
    ):
        self.script = script or {}
        self.key = key
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    answer = server._answer(body["comment"]["text"])
                attribute = next(iter(body["requestedAttributes"]))
                if server.key is not None and self.headers.get("X-Goog-Api-Key") != server.key:
                    self.send_response(400)
                    payload = (
                        b'{"error": {"status": "INVALID_ARGUMENT", "message": "API key not valid"}}'
                    )
                elif answer in ("429", "500"):
                    self.send_response(int(answer))
                    if answer == "429":
                        self.send_header("Retry-After", "0")
                    payload = b'{"error": {"message": "try later"}}'
                elif answer == "malformed":
                    self.send_response(200)
                    payload = b'{"languages": ["en"]}'
                else:
                    value = 1.7 if answer == "out_of_range" else float(answer)
                    self.send_response(200)
                    payload = json.dumps(
                        {
                            "attributeScores": {
                                attribute: {"summaryScore": {"value": value, "type": "PROBABILITY"}}
                            },
                            "languages": ["en"],
                        }  # fmt: skip
                    ).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1alpha1"

    def _answer(self, text: str) -> Any:
        for needle, answers in self.script.items():
            if needle in text:
                i = self._seen.get(needle, 0)
                self._seen[needle] = i + 1
                return answers[min(i, len(answers) - 1)]
        return self.default

    def __enter__(self) -> PerspectiveServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
