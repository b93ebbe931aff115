"""Shared fixtures: one tiny model, one Prefect harness per test session.

Engines are real in the integration tier: vLLM's CPU build, DeepSpeed's CPU
accelerator, Prefect (a temporary local API). Models are tiny and made here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A real S3 server (SeaweedFS on loopback): the `s3_server` and `s3_run_root` fixtures;
# the training tests' tokenizer (`tokenizer_dir`).
pytest_plugins = ["tests.support.s3_server", "tests.support.tokenizer"]

# Keep Prefect's database and settings out of the user's home, and engine chatter low.
_HOME = Path(os.environ.get("PYTEST_PREFECT_HOME", "/tmp/alt-test-prefect-home"))
os.environ.setdefault("PREFECT_HOME", str(_HOME))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.support.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
