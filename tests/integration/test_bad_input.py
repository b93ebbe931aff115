"""Bad input fails fast (issue 12): the real `alt` command on each bad input, in a
subprocess, must exit 2 with one message naming what, where and the fix, no traceback
(the traceback only with --debug), within seconds (before any engine starts) and with
nothing written. Runs talk to the session's Prefect API, so a case that wrongly got past
preflight would start a flow there, and show it. The last test is a tiny real run with
the CLI's own temporary Prefect server: its output holds no telemetry error and no
traceback. A table of the cases is printed at the end of the module (and written to
BAD_INPUT_TABLE).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from aiohttp import web

from tests.support.judge_server import JudgeServer
from tests.support.runs import tiny_run_config

pytestmark = [pytest.mark.integration]

BAD_INPUT_TABLE = Path("/tmp/alt-bad-input-table.txt")
PREFLIGHT_LIMIT_S = 15.0  # measured: 2 to 5 s on a busy two-core machine
_RESULTS: list[tuple[str, int, float, str]] = []


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float


@pytest.fixture(scope="module", autouse=True)
def case_table(request):
    """Print (and keep in BAD_INPUT_TABLE) every case's exit code, time and message."""
    yield
    if not _RESULTS:
        return
    width = max(len(case) for case, *_ in _RESULTS)
    lines = [f"{'case':<{width}}  exit  seconds  message"]
    lines += [f"{c:<{width}}  {code:>4}  {s:>7.1f}  {m}" for c, code, s, m in _RESULTS]
    BAD_INPUT_TABLE.write_text("\n".join(lines) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


@pytest.fixture(scope="module")
def api_env(prefect_harness) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}


def alt(args: list[str], env: dict[str, str], timeout: int = 120) -> Outcome:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - began)


def assert_refused(case: str, outcome: Outcome, *needles: str) -> None:
    """Exit 2, one `error:` message (a config error may take two lines) holding every
    needle, no traceback, no flow, in seconds."""
    message = outcome.err.strip()
    _RESULTS.append((case, outcome.code, outcome.seconds, " / ".join(message.splitlines())))
    assert outcome.code == 2, outcome.err
    assert message.startswith("error: ") and message.count("error:") == 1, outcome.err
    for needle in needles:
        assert needle in message, (needle, message)
    assert "Traceback" not in outcome.err + outcome.out
    assert "flow run" not in (outcome.err + outcome.out).lower()  # no flow started
    assert outcome.seconds < PREFLIGHT_LIMIT_S


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def fake_model(tmp_path) -> Path:
    """Enough of a model folder for preflight (no engine starts in these cases)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def write_config(tmp_path: Path, model: Path | str, **overrides) -> str:
    config = tiny_run_config(tmp_path, model, **overrides).model_dump(mode="json")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def run_args(config: str, run_dir: str | Path, *more: str) -> list[str]:
    return ["run", "--config", config, "--run-dir", str(run_dir), *more]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def judge_settings(tmp_path: Path, url: str) -> dict:
    return {
        "method": "alt_lmu",
        "feedback": {
            "provider": "judge",
            "judge_cache": str(tmp_path / "judge-cache"),
            "judge": {
                "base_url": url,
                "model": "scripted-judge",
                "template": "tldr_lmu",
                "api_key_env": "ALT_BAD_INPUT_KEY",
            },
        },
        "datapool": {"num_samples_per_prompt": 4},
    }


class RefusingJudge(JudgeServer):
    """A loopback judge that refuses every key."""

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "invalid api key"}}, status=401)


# ---------------------------------------------------------------------------- run folder


def test_run_folder_is_a_file(tmp_path, fake_model, api_env):
    target = tmp_path / "afile"
    target.write_text("keep me")
    outcome = alt(run_args(write_config(tmp_path, fake_model), target), api_env)
    assert_refused("run folder is a file", outcome, str(target), "is a file", "choose another")
    assert target.read_text() == "keep me"


def test_run_folder_is_a_file_with_debug(tmp_path, fake_model, api_env):
    target = tmp_path / "afile"
    target.write_text("keep me")
    outcome = alt(["--debug", *run_args(write_config(tmp_path, fake_model), target)], api_env)
    message = outcome.err.strip().splitlines()[-1]
    _RESULTS.append(("run folder is a file, --debug", outcome.code, outcome.seconds, message))
    assert outcome.code == 2 and "Traceback" in outcome.err and message.startswith("error: ")
    assert target.read_text() == "keep me"


def test_run_folder_under_proc(tmp_path, fake_model, api_env):
    outcome = alt(run_args(write_config(tmp_path, fake_model), "/proc/alt-run"), api_env)
    assert_refused("run folder under /proc", outcome, "/proc/alt-run", "choose a folder on a disk")
    assert not Path("/proc/alt-run").exists()


def test_run_folder_parent_is_a_file(tmp_path, fake_model, api_env):
    parent = tmp_path / "afile"
    parent.write_text("keep me")
    outcome = alt(run_args(write_config(tmp_path, fake_model), parent / "run"), api_env)
    assert_refused("run folder's parent is a file", outcome, str(parent), "is a file")
    assert parent.read_text() == "keep me"


def test_s3_bucket_does_not_exist(tmp_path, fake_model, s3_server, api_env):
    env = {**api_env, **s3_server.env()}
    run_dir = "s3://alt-no-such-bucket/run"
    outcome = alt(run_args(write_config(tmp_path, fake_model), run_dir), env)
    assert_refused("s3:// bucket does not exist", outcome, "alt-no-such-bucket", "create it")
    buckets = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert "alt-no-such-bucket" not in buckets


# ------------------------------------------------------------------------ models and data


def test_model_path_does_not_exist(tmp_path, api_env):
    missing = tmp_path / "no-model"
    run_dir = tmp_path / "run"
    outcome = alt(run_args(write_config(tmp_path, missing), run_dir), api_env)
    assert_refused("model path does not exist", outcome, "model.policy", str(missing),
                   "does not exist", "checkpoint folder")  # fmt: skip
    assert not run_dir.exists()


def test_tokenizer_not_resolvable_offline(tmp_path, fake_model, api_env):
    env = {**api_env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"),
           "HF_HUB_CACHE": str(tmp_path / "hf-home" / "hub")}  # fmt: skip
    config = write_config(tmp_path, fake_model, model__tokenizer="nobody/no-such-tokenizer")
    run_dir = tmp_path / "run"
    outcome = alt(run_args(config, run_dir), env)
    assert_refused("tokenizer hub name, offline and uncached", outcome, "model.tokenizer",
                   "nobody/no-such-tokenizer", "HF_HUB_OFFLINE is set", "hf download")  # fmt: skip
    assert not run_dir.exists()


def test_prompt_file_does_not_exist(tmp_path, fake_model, api_env):
    missing = str(tmp_path / "nope.jsonl")
    config = write_config(tmp_path, fake_model, data__train_path=missing)
    run_dir = tmp_path / "run"
    outcome = alt(run_args(config, run_dir), api_env)
    assert_refused("prompt file does not exist", outcome, "prompt file not found", missing,
                   "data.train_path")  # fmt: skip
    assert not run_dir.exists()


def test_prompt_file_lacks_the_column(tmp_path, fake_model, api_env):
    other = tmp_path / "text.jsonl"
    pd.DataFrame({"text": ["a review"] * 8}).to_json(other, orient="records", lines=True)
    config = write_config(tmp_path, fake_model, data__valid_path=str(other))
    run_dir = tmp_path / "run"
    outcome = alt(run_args(config, run_dir), api_env)
    assert_refused("prompt file lacks the prompt column", outcome, str(other),
                   "no column 'prompt'", "data.prompt_column")  # fmt: skip
    assert not run_dir.exists()


def test_unknown_setting(tmp_path, fake_model, api_env):
    run_dir = tmp_path / "run"
    outcome = alt(run_args(write_config(tmp_path, fake_model), run_dir, "training.nope=1"), api_env)
    assert_refused("an unknown setting (existing check)", outcome, "training.nope")
    assert not run_dir.exists()


# --------------------------------------------------------------------------------- judge


def test_judge_unreachable(tmp_path, fake_model, api_env):
    url = closed_port_url()
    config = write_config(tmp_path, fake_model, **judge_settings(tmp_path, url))
    run_dir = tmp_path / "run"
    outcome = alt(run_args(config, run_dir), api_env)
    assert_refused("judge unreachable (closed port)", outcome, f"{url}/models",
                   "cannot be reached", "feedback.judge.base_url")  # fmt: skip
    assert not run_dir.exists()


def test_judge_refuses_the_key(tmp_path, fake_model, api_env):
    key = "sk-bad-input-" + "x" * 24
    run_dir = tmp_path / "run"
    with RefusingJudge() as server:
        url = server.url
        config = write_config(tmp_path, fake_model, **judge_settings(tmp_path, url))
        outcome = alt(run_args(config, run_dir), {**api_env, "ALT_BAD_INPUT_KEY": key})
    assert_refused("judge answers 401", outcome, url,
                   "rejected the API key (env var ALT_BAD_INPUT_KEY")  # fmt: skip
    assert key not in outcome.err + outcome.out
    assert not run_dir.exists()


# ------------------------------------------------------------------ a damaged run folder


@pytest.fixture
def garbage_run(tmp_path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: [unclosed\n  method: {{ nope\n")
    return run_dir


@pytest.mark.parametrize("command", ["resume", "status"])
def test_garbage_config_yaml(garbage_run, command, api_env):
    before = snapshot(garbage_run)
    outcome = alt([command, str(garbage_run)], api_env)
    assert_refused(f"garbage config.yaml, alt {command}", outcome,
                   str(garbage_run / "config.yaml"))  # fmt: skip
    assert snapshot(garbage_run) == before


def test_resume_of_a_folder_that_holds_no_run(tmp_path, api_env):
    outcome = alt(["resume", str(tmp_path)], api_env)
    assert_refused("resume of a folder with no run (existing check)", outcome, "no config.yaml")


def test_status_of_a_missing_folder(tmp_path, api_env):
    missing = tmp_path / "missing"
    outcome = alt(["status", str(missing)], api_env)
    assert_refused("status of a missing folder", outcome, str(missing), "does not exist")
    assert not missing.exists()


# ------------------------------------------------------------------------ a quiet run


@pytest.mark.slow
def test_a_tiny_run_is_quiet(tmp_path, tiny_model_dir):
    """The CLI's own temporary Prefect server: no telemetry error, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a fresh database, no server
    env["PREFECT_LOGGING_LEVEL"] = "INFO"  # the server's lines too
    config = write_config(tmp_path, tiny_model_dir, sampling={"backend": "hf",
                          "num_generations": 2, "max_new_tokens": 8, "num_shards": 1})  # fmt: skip
    run_dir = tmp_path / "run"
    outcome = alt(run_args(config, run_dir, "data.prompts_per_iteration=4"), env, timeout=900)
    said = outcome.out + outcome.err
    _RESULTS.append(("a tiny run (quiet output)", outcome.code, outcome.seconds,
                     said.strip().splitlines()[-1] if said.strip() else ""))  # fmt: skip
    assert outcome.code == 0, said[-3000:]
    assert "Starting temporary server" in said  # the server this test is about
    assert "telemetry" not in said.lower(), said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    assert "database is locked" not in said
