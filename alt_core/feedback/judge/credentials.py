"""Where the judge's API key comes from, and how it is kept out of every output.

The key is read from an environment variable or a Prefect Secret block (Prefect is
imported only then), held as a pydantic SecretStr, and scrubbed from any text the
client records (error bodies a server echoes back, for instance). Text is scrubbed
before it is cut to length (`Redactor.clip`): cutting first can split the key so that
the replacement no longer matches, and most of the key survives the cut.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import quote, quote_plus

from pydantic import SecretStr

from alt_core.config.judge import JudgeConfig, JudgeConfigError

log = logging.getLogger(__name__)
REDACTED = "***"
# A fragment of the key this long at either end of a text (a server that cut its own
# body mid-key) is scrubbed too; shorter ones are too likely to be ordinary text.
MIN_FRAGMENT = 4


async def resolve_api_key(config: JudgeConfig) -> SecretStr | None:
    """The key from the configured Secret block, else from the environment; None if unset."""
    block_name = config.api_key_secret_block
    if block_name:
        try:
            from prefect.blocks.system import Secret
        except ImportError:
            raise JudgeConfigError(
                f"judge.api_key_secret_block={block_name!r} needs Prefect installed; install "
                f"it or set judge.api_key_env instead"
            ) from None
        try:
            block = await Secret.aload(block_name)
        except Exception as exc:  # Prefect raises ValueError, HTTP or DB errors here
            raise JudgeConfigError(
                f"could not load the Prefect Secret block {block_name!r} ({type(exc).__name__}); "
                f"create it with `prefect block create secret` or fix the name"
            ) from None
        return SecretStr(str(block.get()))  # type: ignore[attr-defined]  # Block.aload's type
    value = os.environ.get(config.api_key_env)
    if not value:
        log.info(
            "judge: %s is unset and no secret block is configured; sending requests "
            "without an Authorization header",
            config.api_key_env,
        )
        return None
    return SecretStr(value)


class Redactor:
    """Scrubs the key from text the client keeps: the key itself and its obvious
    encodings (JSON-escaped, URL-quoted) anywhere, and a fragment of it of MIN_FRAGMENT
    or more characters at either end of the text, where a cut left it."""

    def __init__(self, secret: SecretStr | None):
        value = secret.get_secret_value() if secret is not None else ""
        self._value = value
        forms = {value, json.dumps(value)[1:-1], value.replace("/", "\\/")}
        forms |= {quote(value, safe=""), quote_plus(value)}
        # Longest first, so that a form containing another is replaced whole.
        self._forms = sorted((f for f in forms if f), key=len, reverse=True)

    def __call__(self, text: str | None) -> str | None:
        if text is None or not self._value:
            return text
        for form in self._forms:
            text = text.replace(form, REDACTED)
        return self._scrub_ends(text)

    def clip(self, text: str | None, limit: int) -> str | None:
        """`text` redacted, then cut to `limit` characters (never the other way round)."""
        redacted = self(text)
        if redacted is None or len(redacted) <= limit:
            return redacted
        return self(redacted[:limit])

    def _scrub_ends(self, text: str) -> str:
        key = self._value
        for n in range(min(len(key), len(text)), MIN_FRAGMENT - 1, -1):
            if text.endswith(key[:n]):
                text = text[:-n] + REDACTED
                break
        for n in range(min(len(key), len(text)), MIN_FRAGMENT - 1, -1):
            if text.startswith(key[-n:]):
                text = REDACTED + text[n:]
                break
        return text

    def __repr__(self) -> str:
        return "Redactor(***)"
