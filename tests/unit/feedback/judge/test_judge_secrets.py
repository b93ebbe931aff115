"""The judge's API key: where it comes from, and that it never shows up anywhere."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from urllib.parse import quote

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


# ---------------------------------------------------------------- redact before cutting

ECHO_KEY = "sk-Qx7vW9pLm2Zr4Tb8Yk"
FILL = "." * 320  # with the key, longer than the client's 300-character cut
# How the key comes back: in the body of a 429, 5xx or 4xx, in a 200 answer that does
# not parse or does (in its analysis), and in a 200 whose JSON body is cut in half.
GROUPS = ["429", "500", "400", "unparsed", "parsed", "truncated_body"]


def echoed(key_text: str) -> tuple[str, str]:
    """(group, text with the key at this judgement's offset) from the judging text."""
    i = int(re.search(r"<gen-(\d+)>", key_text).group(1))
    offset = i // len(GROUPS)
    return GROUPS[i % len(GROUPS)], FILL[:offset] + ECHO_KEY + FILL[offset:]


def echo_answer(key_text: str) -> str:
    group, text = echoed(key_text)
    if group == "parsed":
        return json.dumps({"analysis": text, "feedback": "Clear and accurate.", "score": 2})
    return text


def fragments(text: str) -> list[str]:
    return [ECHO_KEY[i : i + 4] for i in range(len(ECHO_KEY) - 3) if ECHO_KEY[i : i + 4] in text]


@pytest.mark.slow
def test_a_key_echoed_at_every_offset_never_survives_a_cut(tmp_path, monkeypatch, caplog):
    from alt_core import store
    from alt_core.feedback.base import FeedbackIncompleteError, check_complete
    from alt_core.pipeline.stages import score_feedback
    from tests.unit.feedback.test_missing_feedback import run_config, shard_spec

    monkeypatch.setenv("ALT_JUDGE_TEST_KEY", ECHO_KEY)
    caplog.set_level(logging.INFO)  # httpx's request lines; httpcore's traces are many
    caplog.set_level(logging.DEBUG, logger="alt_core")
    n = len(GROUPS) * (len(FILL) + 1)  # every offset 0..len(FILL) in every group
    script = {}
    for i in range(n):
        group = GROUPS[i % len(GROUPS)]
        if group not in ("unparsed", "parsed"):
            script[f"<gen-{i:03d}>"] = [group] * 5
    server = JudgeServer(
        script=script,
        retry_after_s=0.01,
        answer_fn=echo_answer,
        error_fn=lambda _fault, key_text: echoed(key_text)[1],
    )
    with server:
        settings = {"api_key_env": "ALT_JUDGE_TEST_KEY", "max_retries": 1, "max_concurrency": 64}
        config = run_config(tmp_path, server.url, **settings)
        config.feedback.max_missing_share = 1.0  # commit, so the stored table can be read
        spec = shard_spec(tmp_path, config, n=n)
        stats = score_feedback(spec, log=lambda _line: None)
        assert server.authorization == {f"Bearer {ECHO_KEY}"}
    table = store.read_table(spec.output_uri)
    # What the shard would have raised and recorded under the default share.
    with pytest.raises(FeedbackIncompleteError) as info:
        check_complete(table, 0.05, shard="s", rerun="alt resume R")
    assert stats["missing_unparseable"] == len(FILL) + 1 and stats["missing_bad_response"] > 0
    # The key in a parsed analysis became *** (which the parser strips at either end).
    parsed = table["analysis"].str.startswith(".", na=False)
    assert parsed.sum() == len(FILL) + 1
    assert table.loc[parsed, "analysis"].str.contains("***", regex=False).sum() == len(FILL) - 1
    assert table["missing_reason"].str.contains("***", regex=False).sum() > 2 * len(FILL)
    written = b"".join(p.read_bytes() for p in (tmp_path / "judge-cache").rglob("*.parquet"))
    outputs = {
        **{f"column {c}": table[c].astype(str).str.cat(sep="\n") for c in table.columns},
        "logs": caplog.text,
        "exception": str(info.value) + repr(info.value),
        "failure record": json.dumps(info.value.marker()),
        "judge cache": written.decode("latin-1"),
    }
    for where, text in outputs.items():
        assert not fragments(text), f"key fragments {fragments(text)} leaked into {where}"


@pytest.mark.parametrize("offset", range(len(ECHO_KEY) + 1))
def test_redactor_clip_leaves_no_fragment_at_either_end(offset):
    from pydantic import SecretStr

    from alt_core.feedback.judge.credentials import Redactor

    redact = Redactor(SecretStr(ECHO_KEY))
    cut_by_server = "error: " + ECHO_KEY[:offset]  # the server cut its own body mid-key
    assert not fragments(redact(cut_by_server))
    assert not fragments(redact(ECHO_KEY[offset:] + " was the key"))
    for text in (
        FILL[:offset] + ECHO_KEY + FILL,
        json.dumps({"k": ECHO_KEY}),
        quote(ECHO_KEY) + FILL,
    ):
        for limit in range(1, 60):
            assert not fragments(redact.clip(text, limit) or "")
