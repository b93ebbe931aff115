"""alt_core.preflight: every check on its own, the error that lists them, and the CLI's
exit status and message (no engine starts: each case fails before one would)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from alt_core import preflight as pf
from alt_core.config import JudgeConfig
from alt_core.config.toxicity import PerspectiveConfig
from alt_core.preflight import (
    PreflightError,
    Problem,
    check_judge,
    check_model,
    check_perspective,
    preflight,
)
from tests.support.perspective_server import PerspectiveServer
from tests.support.runs import tiny_run_config


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def config_for(tmp_path, model_dir, **overrides):
    return tiny_run_config(tmp_path, model_dir, **overrides)


# ---------------------------------------------------------------------------- run folder


def test_a_new_local_run_folder_passes_and_is_not_left_behind(tmp_path, model_dir):
    run_dir = tmp_path / "runs" / "a" / "b"
    assert preflight(config_for(tmp_path, model_dir), str(run_dir), writes=True) == []
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case", ["file", "parent_file", "proc"])
def test_an_unusable_run_folder_is_named(tmp_path, model_dir, case):
    (tmp_path / "afile").write_text("x")
    run_dir = {
        "file": tmp_path / "afile",
        "parent_file": tmp_path / "afile" / "run",
        "proc": "/proc/alt-run",
    }[case]
    with pytest.raises(PreflightError) as caught:
        preflight(config_for(tmp_path, model_dir), str(run_dir), writes=True)
    (problem,) = caught.value.problems
    assert problem.what == "run folder" and str(run_dir) in str(caught.value)
    assert (tmp_path / "afile").read_text() == "x"


def test_status_needs_an_existing_readable_folder(tmp_path):
    preflight(None, str(tmp_path), writes=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PreflightError, match="does not exist; check the path"):
        preflight(None, str(tmp_path / "missing"), writes=False)
    with pytest.raises(PreflightError, match="is a file, not a run folder"):
        preflight(None, str(tmp_path / "afile"), writes=False)
    assert not (tmp_path / "missing").exists()


# -------------------------------------------------------------------------------- models


def test_models_in_local_folders(tmp_path, model_dir):
    assert check_model("model.policy", "demo") is None
    assert check_model("model.policy", str(model_dir)) is None
    committed = tmp_path / "committed"
    committed.mkdir()
    (committed / "_COMMIT.json").write_text("{}")
    assert check_model("model.policy", str(committed)) is None
    missing = check_model("model.policy", str(tmp_path / "nope"))
    assert (
        missing and "does not exist" in missing.message and "checkpoint folder" in missing.message
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = check_model("model.reference", str(empty))
    assert bare and "no config.json" in bare.message and bare.where == str(empty)


def test_a_tokenizer_folder_may_hold_tokenizer_files_only(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{}")
    assert check_model("model.tokenizer", str(folder), pf._TOKENIZER_FILES) is None
    assert check_model("model.policy", str(folder)) is not None


def test_a_hub_name_offline_and_uncached_is_an_error(offline_hub):
    problem = check_model("model.tokenizer", "nobody/no-such-model")
    assert problem is not None
    assert "HF_HUB_OFFLINE is set" in problem.message and "hf download" in problem.message


def test_a_hub_name_in_the_cache_passes_offline(offline_hub, tmp_path):
    snapshot = tmp_path / "hf-cache" / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    refs = tmp_path / "hf-cache" / "models--org--cached" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    assert check_model("model.policy", "org/cached") is None


# --------------------------------------------------------------------------------- judge


class _Judge(BaseHTTPRequestHandler):
    status = 200
    models = ["scripted-judge"]

    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"data": [{"id": m} for m in self.models]}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_at():
    servers = []

    def start(status: int = 200, models=("scripted-judge",)) -> str:
        handler = type("Handler", (_Judge,), {"status": status, "models": list(models)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def judge(url: str, **fields) -> JudgeConfig:
    return JudgeConfig(base_url=url, model="scripted-judge", api_key_env="ALT_TEST_KEY", **fields)


def test_a_judge_that_answers_and_serves_the_model(judge_at):
    assert check_judge(judge(judge_at())) == (None, None)


def test_an_unreachable_judge_is_named_by_its_url():
    url = closed_port_url()
    problem, _ = check_judge(judge(url))
    assert problem and f"{url}/models cannot be reached" in problem.message
    assert "feedback.judge.base_url" in problem.message


def test_a_refused_key_names_the_variable_never_the_key(judge_at, monkeypatch):
    monkeypatch.setenv("ALT_TEST_KEY", "sk-secret-value-1234")
    problem, _ = check_judge(judge(judge_at(401)))
    assert problem and "rejected the API key (env var ALT_TEST_KEY" in problem.message
    assert "sk-secret" not in problem.message
    monkeypatch.delenv("ALT_TEST_KEY")
    problem, _ = check_judge(judge(judge_at(401)))
    assert problem and "ALT_TEST_KEY is unset" in problem.message


def test_what_the_judge_check_cannot_tell_is_a_note(judge_at):
    problem, note = check_judge(judge(judge_at(404)))
    assert problem is None and "model name was not checked" in note
    problem, note = check_judge(judge(judge_at(401), api_key_secret_block="judge-key"))
    assert problem is None and "Secret block 'judge-key'" in note


def test_a_judge_that_serves_another_model(judge_at):
    problem, _ = check_judge(judge(judge_at(models=["other"])))
    assert problem and "does not serve model 'scripted-judge'" in problem.message


def test_the_judge_is_checked_only_when_the_run_uses_it(tmp_path, model_dir):
    url = closed_port_url()
    lmu = {"provider": "judge", "judge": {"base_url": url, "model": "m", "template": "tldr_lmu"}}
    config = config_for(tmp_path, model_dir, method="alt_lmu", feedback=lmu)
    with pytest.raises(PreflightError, match="cannot be reached"):
        preflight(config, str(tmp_path / "run"), writes=True)
    preflight(None, str(tmp_path), writes=False)  # status never asks the judge


# --------------------------------------------------------------------------- perspective

SECRET = "sekret-perspective-key-123"


def perspective(url: str, **fields) -> PerspectiveConfig:
    return PerspectiveConfig(base_url=url, api_key_env="ALT_TEST_PERSPECTIVE_KEY", **fields)


def test_perspective_with_its_key_answers_one_request(monkeypatch):
    monkeypatch.setenv("ALT_TEST_PERSPECTIVE_KEY", SECRET)
    with PerspectiveServer(key=SECRET) as server:
        assert check_perspective(perspective(server.url)) == (None, None)
    (request,) = server.requests
    assert request["path"].endswith("/comments:analyze") and SECRET not in request["path"]
    assert request["body"]["requestedAttributes"] == {"TOXICITY": {}}


def test_perspective_refusing_the_key_names_the_endpoint_and_variable_never_the_key(monkeypatch):
    monkeypatch.setenv("ALT_TEST_PERSPECTIVE_KEY", SECRET)
    with PerspectiveServer(key="another-key") as server:
        problem, _ = check_perspective(perspective(server.url))
    assert problem is not None
    assert f"{server.url}/comments:analyze" in problem.message
    assert "ALT_TEST_PERSPECTIVE_KEY" in problem.message and SECRET not in problem.message
    with PerspectiveServer(script={"preflight": ["malformed"]}, key=SECRET) as server:
        problem, _ = check_perspective(perspective(server.url))
    assert problem is not None and "without a TOXICITY score" in problem.message


def test_an_unreachable_perspective_is_named_by_its_endpoint(monkeypatch):
    monkeypatch.setenv("ALT_TEST_PERSPECTIVE_KEY", SECRET)
    url = closed_port_url()
    problem, _ = check_perspective(perspective(url))
    assert problem is not None and f"{url}/comments:analyze cannot be reached" in problem.message
    assert "base_url" in problem.message and SECRET not in problem.message


def test_perspective_without_a_key_is_a_note_and_asks_nothing(monkeypatch):
    monkeypatch.delenv("ALT_TEST_PERSPECTIVE_KEY", raising=False)
    with PerspectiveServer() as server:
        problem, note = check_perspective(perspective(server.url))
        assert problem is None and "was not checked" in note and "ALT_TEST_PERSPECTIVE_KEY" in note
        problem, note = check_perspective(perspective(server.url, api_key_secret_block="pk"))
        assert problem is None and "'pk'" in note
    assert server.requests == []
    with PerspectiveServer(script={"preflight": ["429"]}) as server:
        monkeypatch.setenv("ALT_TEST_PERSPECTIVE_KEY", SECRET)
        problem, note = check_perspective(perspective(server.url))
    assert problem is None and "HTTP 429" in note


def test_the_cli_exits_2_when_perspective_refuses_the_key(tmp_path, model_dir, capsys, cli_env,
                                                         monkeypatch):  # fmt: skip
    import yaml

    from deployments.cli import main

    monkeypatch.setenv("ALT_TEST_PERSPECTIVE_KEY", SECRET)
    with PerspectiveServer(key="another-key") as server:
        feedback = {"provider": "perspective", "toxicity": {"perspective": {
            "base_url": server.url, "api_key_env": "ALT_TEST_PERSPECTIVE_KEY"}}}  # fmt: skip
        config = config_for(tmp_path, model_dir, feedback=feedback)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        code = main(["run", "--config", str(path), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{server.url}/comments:analyze" in err and SECRET not in err


# --------------------------------------------------------------------------- prompt data


def test_prompt_files_are_read_with_their_column(tmp_path, model_dir):
    config = config_for(tmp_path, model_dir)
    missing = config.model_copy(deep=True)
    missing.data.train_path = str(tmp_path / "nope.jsonl")
    with pytest.raises(PreflightError, match="prompt file not found") as caught:
        preflight(missing, str(tmp_path / "run"), writes=True)
    assert caught.value.problems[0].what == "data.train_path"
    other = tmp_path / "other.jsonl"
    pd.DataFrame({"text": ["a", "b"]}).to_json(other, orient="records", lines=True)
    wrong = config.model_copy(deep=True)
    wrong.data.valid_path = str(other)
    with pytest.raises(PreflightError, match="has no column 'prompt'"):
        preflight(wrong, str(tmp_path / "run"), writes=True)
    assert not (tmp_path / "run").exists()


def test_every_failure_is_listed_in_one_error(tmp_path, model_dir):
    config = config_for(tmp_path, model_dir)
    config.model.policy = str(tmp_path / "no-model")
    config.data.train_path = str(tmp_path / "nope.jsonl")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PreflightError) as caught:
        preflight(config, str(tmp_path / "afile"), writes=True)
    assert [p.what for p in caught.value.problems] == [
        "run folder",
        "model.policy",
        "data.train_path",
    ]
    assert str(caught.value).startswith("3 problems found before the run started:\n  - ")


def test_a_flow_that_the_command_starts_does_not_check_again(tmp_path, model_dir, monkeypatch):
    """`alt run` checks, then runs the alt_run flow in its process, which checks too (for
    runs from the UI): inside `checked`, that second preflight of the same config and
    folder asks nothing; another folder, and the same one after the block, are checked."""
    from alt_core.config import absolute_paths, config_from_preset

    config = absolute_paths(config_for(tmp_path, model_dir))
    run_dir = str(tmp_path / "run")
    calls: list[str] = []
    folder_check = pf._run_folder
    monkeypatch.setattr(pf, "_run_folder", lambda d: calls.append(d) or folder_check(d))
    with pf.checked(config, run_dir, writes=True) as notes:
        assert notes == [] and calls == [run_dir]
        # What the flow checks: its config as flows.run.alt_run rebuilds it.
        again = absolute_paths(config_from_preset(None, config))
        assert preflight(again, run_dir, writes=True) == []
        assert calls == [run_dir]
        other = str(tmp_path / "other")
        preflight(config, other, writes=True)
        assert calls == [run_dir, other]
    preflight(config, run_dir, writes=True)
    assert calls == [run_dir, other, run_dir]


def test_a_failed_check_marks_nothing(tmp_path, model_dir):
    config = config_for(tmp_path, model_dir)
    config.model.policy = str(tmp_path / "no-model")
    with pytest.raises(PreflightError), pf.checked(config, str(tmp_path / "run"), writes=True):
        pass
    assert not pf._PASSED


def test_an_error_needs_a_problem():
    with pytest.raises(ValueError):
        PreflightError([])
    assert str(PreflightError([Problem("judge", "u", "the judge at u is down")])) == (
        "the judge at u is down"
    )


# ----------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(monkeypatch):
    """main() sets Prefect's quiet defaults in os.environ: undo them after the test."""
    from deployments.cli import QUIET_PREFECT

    for names in QUIET_PREFECT:
        for name in names:
            monkeypatch.setenv(name, "")
            monkeypatch.delenv(name)


def cli_config(tmp_path, model_dir) -> str:
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_for(tmp_path, model_dir).model_dump(mode="json")))
    return str(path)


def test_the_cli_exits_2_with_one_message(tmp_path, model_dir, capsys, cli_env):
    from deployments.cli import main

    (tmp_path / "afile").write_text("x")
    args = [
        "run",
        "--config",
        cli_config(tmp_path, model_dir),
        "--run-dir",
        str(tmp_path / "afile"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run folder") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert main(["--debug", *args]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main([*args, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_status_of_a_missing_folder(tmp_path, capsys, cli_env):
    from deployments.cli import main

    assert main(["status", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert f"run folder {tmp_path / 'missing'} does not exist" in err
    assert not (tmp_path / "missing").exists()


def test_prefect_is_quiet_unless_the_user_says_otherwise():
    from deployments.cli import quiet_prefect

    env = {"PREFECT_API_DATABASE_TIMEOUT": "5", "PREFECT_SERVER_ANALYTICS_ENABLED": "true"}
    quiet_prefect(env)
    assert env == {
        "PREFECT_API_DATABASE_TIMEOUT": "5",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    fresh: dict[str, str] = {}
    quiet_prefect(fresh)
    assert fresh["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert fresh["PREFECT_SERVER_DATABASE_TIMEOUT"] == "60"
