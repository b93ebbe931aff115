"""The judge's API key: where it comes from, and that it never shows up anywhere."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest
from pydantic import ValidationError

from alt_core.config.judge import JudgeConfigError
from alt_core.feedback.judge import JudgeClient, JudgeConfig, JudgeRequestError, judge_batch
from tests.support import REPO_ROOT
from tests.support.judge_server import JudgeServer

KEY = "sk-test-Zq8ThisMustNeverLeak0123456789"


def config_for(server: JudgeServer, **overrides) -> JudgeConfig:
    base = dict(
        base_url=server.url,
        model="scripted-judge",
        api_key_env="ALT_JUDGE_TEST_KEY",
        max_retries=1,
        backoff_base_s=0.01,
        timeout_s=0.3,
    )
    return JudgeConfig(**{**base, **overrides})


def test_key_is_sent_but_never_logged_cached_or_raised(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("ALT_JUDGE_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)  # everything, httpx and httpcore included
    rows = [(f"post {i}", f"<gen-{i}> summary") for i in range(6)]
    script = {"<gen-0>": ["400"], "<gen-1>": ["500", "500"], "<gen-2>": ["off_format"] * 2}
    # A hostile server that echoes the Authorization header back in its error bodies.
    with JudgeServer(script=script, echo_auth=True) as server:
        config = config_for(server)
        frame, stats = judge_batch(rows, config, cache_uri=str(tmp_path / "cache"))
        assert server.authorization == {f"Bearer {KEY}"}  # the key did go to the server

        async def raise_one():
            async with JudgeClient(config) as client:
                text = repr(client) + repr(client.__dict__)
                messages = client.template.messages("post", "<gen-x> summary")
                server.script["<gen-x>"] = ["400"]
                with pytest.raises(JudgeRequestError) as info:
                    await client.complete(messages)
                return text, info.value

        client_text, error = asyncio.run(raise_one())
    assert "HTTP 400" in str(error) and "Bearer ***" in str(error)
    assert (
        frame.loc[0, "missing_reason"].startswith("4xx") and "***" in frame.loc[0, "missing_reason"]
    )
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    outputs = {
        "logs": caplog.text,
        "client repr": client_text,
        "config": repr(config) + config.model_dump_json(),
        "error": str(error) + repr(error),
        "frame": frame.to_csv(),
        "stats": str(stats),
        "cache files": written.decode("latin-1"),
    }
    for where, text in outputs.items():
        assert KEY not in text, f"the API key leaked into {where}"
    assert "HTTP Request" in caplog.text  # the logs were captured at all


def test_no_key_sends_no_authorization(monkeypatch):
    monkeypatch.delenv("ALT_JUDGE_TEST_KEY", raising=False)
    with JudgeServer() as server:
        frame, _ = judge_batch([("p", "<gen-1> g")], config_for(server))
        assert server.authorization == {""}
    assert frame["missing_reason"].isna().all()


def test_key_from_a_prefect_secret_block(monkeypatch):
    from prefect.blocks.system import Secret

    class FakeSecret:
        def get(self):
            return KEY

    async def fake_aload(name, *args, **kwargs):
        assert name == "judge-key"
        return FakeSecret()

    monkeypatch.setattr(Secret, "aload", fake_aload)
    monkeypatch.delenv("ALT_JUDGE_TEST_KEY", raising=False)
    with JudgeServer() as server:
        judge_batch([("p", "<gen-1> g")], config_for(server, api_key_secret_block="judge-key"))
        assert server.authorization == {f"Bearer {KEY}"}


def test_a_missing_secret_block_is_a_clear_error(monkeypatch):
    from prefect.blocks.system import Secret

    async def failing_aload(name, *args, **kwargs):
        raise ValueError("Unable to find block document named nope")

    monkeypatch.setattr(Secret, "aload", failing_aload)
    with JudgeServer() as server, pytest.raises(JudgeConfigError, match="Secret block 'nope'"):
        judge_batch([("p", "g")], config_for(server, api_key_secret_block="nope"))


def test_importing_the_judge_does_not_import_prefect():
    code = "import sys, alt_core.feedback.judge; print('prefect' in sys.modules, 'vllm' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    assert out.stdout.strip() == "False False"


def test_config_rejects_keys_in_the_wrong_place_without_echoing_them():
    with pytest.raises(ValidationError) as info:
        JudgeConfig(api_key_env=KEY)
    assert "NAME of an environment variable" in str(info.value)
    assert KEY not in str(info.value)
    with pytest.raises(ValidationError, match="must not carry credentials"):
        JudgeConfig(base_url=f"https://user:{KEY}@api.example.com/v1")
    with pytest.raises(ValidationError, match="api_key") as info:
        JudgeConfig(api_key=KEY)  # no such field: the key never lives in config
    assert KEY not in str(info.value)


def test_every_config_field_is_documented():
    for name, field in JudgeConfig.model_fields.items():
        assert field.description, f"JudgeConfig.{name} has no description"
