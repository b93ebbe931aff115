"""Local paths in a config are made absolute once, when a run starts, so config.yaml
records where the files are and a run continued from another directory finds them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from alt_core.config import (
    RunConfig,
    absolute_paths,
    absolute_uri,
    dump_config,
    load_config,
    read_config_text,
)
from alt_core.feedback.judge.templates import TEMPLATE_DIR


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with prompt files, a local model folder and a template, and a
    config file that names them by relative paths."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.jsonl").write_text('{"prompt": "train"}\n')
    (root / "data" / "valid.jsonl").write_text('{"prompt": "valid"}\n')
    (root / "models" / "sft").mkdir(parents=True)
    (root / "judge.yaml").write_text((TEMPLATE_DIR / "tldr_lmu.yaml").read_text())
    (root / "run.yaml").write_text(
        "method: alt_lmu\n"
        "model: {policy: models/sft, reference: gpt2, tokenizer: EleutherAI/gpt-j-6b}\n"
        "data: {source: file, train_path: data/train.jsonl, valid_path: ./data/valid.jsonl}\n"
        "feedback: {provider: judge, judge_cache: judge-cache, judge: {template: judge.yaml}}\n"
        "storage: {cache_dir: ./runs/.cache, local_scratch: ~/scratch}\n"
    )
    monkeypatch.chdir(root)
    return root


def test_local_paths_become_absolute_and_names_stay(project):
    config = absolute_paths(load_config(config_file="run.yaml"))
    assert config.data.train_path == str(project / "data" / "train.jsonl")
    assert config.data.valid_path == str(project / "data" / "valid.jsonl")
    assert config.model.policy == str(project / "models" / "sft")
    assert config.model.reference == "gpt2"  # hub names stay
    assert config.model.tokenizer == "EleutherAI/gpt-j-6b"
    assert config.feedback.judge.template == str(project / "judge.yaml")
    assert config.feedback.judge_cache == str(project / "judge-cache")
    assert config.storage.cache_dir == str(project / "runs" / ".cache")
    assert config.storage.local_scratch == os.path.expanduser("~/scratch")


def test_uris_built_in_names_and_the_demo_stay_as_they_are(project):
    demo = load_config("demo", overrides=["storage.cache_dir=s3://bucket/cache"])
    resolved = absolute_paths(demo)
    assert resolved.model.policy == "demo"
    assert resolved.storage.cache_dir == "s3://bucket/cache"
    assert resolved.feedback.judge.template == demo.feedback.judge.template  # built-in
    assert absolute_uri("file:///data/x") == "file:///data/x"


def test_it_is_idempotent_and_leaves_its_input_alone(project):
    loaded = load_config(config_file="run.yaml")
    once = absolute_paths(loaded)
    assert absolute_paths(once) == once
    assert loaded.data.train_path == "data/train.jsonl"
    assert isinstance(once, RunConfig)


def test_paths_are_taken_against_the_base_given(project, tmp_path):
    config = absolute_paths(load_config("demo"), base=tmp_path / "elsewhere")
    assert config.storage.cache_dir == str(tmp_path / "elsewhere" / "runs" / ".cache")


def test_a_resolved_config_points_at_the_same_files_from_another_directory(
    project, tmp_path, monkeypatch
):
    recorded = dump_config(absolute_paths(load_config(config_file="run.yaml")))
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    config = absolute_paths(read_config_text(recorded, "config.yaml"))
    assert Path(config.data.train_path).read_text() == '{"prompt": "train"}\n'
    assert Path(config.model.policy).is_dir()
    assert Path(config.storage.cache_dir) == project / "runs" / ".cache"
    assert dump_config(config) == recorded


# ------------------------------------------------------------------ the alt command


@pytest.fixture
def captured(monkeypatch):
    """deployments.cli with the run and the report replaced by recorders."""
    import alt_core.report.html as report_html
    from deployments import cli

    calls: dict = {}
    # The preflight (its own tests: tests/unit/test_preflight.py) would ask the hub and
    # the judge the config names; only the paths the CLI hands on are under test here.
    monkeypatch.setattr(cli, "preflight", lambda *a, **k: [])
    monkeypatch.setattr(cli, "checked", lambda *a, **k: contextlib.nullcontext([]))
    monkeypatch.setattr(cli, "execute", lambda config, run_dir: calls.update(run=(config, run_dir)))
    monkeypatch.setattr(
        cli, "show_status", lambda run_dir, *a, **k: calls.update(status=run_dir) or 0
    )
    monkeypatch.setattr(report_html, "write_report", lambda run_dir: calls.update(report=run_dir))
    return cli, calls


def test_run_records_absolute_paths_and_run_folder(project, captured):
    cli, calls = captured
    cli.main(["run", "--config", "run.yaml", "--run-dir", "runs/exp1"])
    config, run_dir = calls["run"]
    assert run_dir == str(project / "runs" / "exp1")
    assert config.data.train_path == str(project / "data" / "train.jsonl")
    assert str(project / "data" / "train.jsonl") in dump_config(config)
    assert "./" not in dump_config(config)
    cli.main(["run", "--preset", "demo", "storage.cache_dir=cache"])
    config, run_dir = calls["run"]
    assert config.storage.cache_dir == str(project / "cache")
    assert os.path.isabs(run_dir)


def test_every_command_that_takes_a_run_folder_resolves_it(project, captured, tmp_path):
    cli, calls = captured
    run = project / "runs" / "old"
    run.mkdir(parents=True)
    # A run recorded before paths were resolved: its relative paths are taken from here.
    (run / "config.yaml").write_text(dump_config(load_config(config_file="run.yaml")))
    cli.main(["resume", "runs/old"])
    config, run_dir = calls["run"]
    assert run_dir == str(run)
    assert config.data.valid_path == str(project / "data" / "valid.jsonl")
    cli.main(["status", "runs/old"])
    cli.main(["report", "runs/../runs/old"])
    assert calls["status"] == calls["report"] == str(run)
    cli.main(["status", "s3://bucket/runs/x"])
    assert calls["status"] == "s3://bucket/runs/x"
