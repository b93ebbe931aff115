"""Where the judge's API key comes from, and how it is kept out of every output.

The key is read from an environment variable or a Prefect Secret block (Prefect is
imported only then), held as a pydantic SecretStr, and scrubbed from any text the
client records (error bodies a server echoes back, for instance).
"""

from __future__ import annotations

import logging
import os

from pydantic import SecretStr

from alt_core.config.judge import JudgeConfig, JudgeConfigError

log = logging.getLogger(__name__)
REDACTED = "***"


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
    """Replaces the key wherever it appears in text the client keeps."""

    def __init__(self, secret: SecretStr | None):
        self._value = secret.get_secret_value() if secret is not None else ""

    def __call__(self, text: str | None) -> str | None:
        if text is None or not self._value:
            return text
        return text.replace(self._value, REDACTED)

    def __repr__(self) -> str:
        return "Redactor(***)"
