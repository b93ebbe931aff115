"""The Docker files, checked without a Docker engine (none runs on these machines): the
compose file parses and wires its services together, and every image, file, extra and
command the files name is one the project really has."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import yaml

from deployments.setup import DEFAULT_POOL
from tests.support import REPO_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = REPO_ROOT
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    # Join continuation lines so each instruction is one line.
    return (DOCKER / "worker.Dockerfile").read_text().replace("\\\n", " ")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions(dockerfile: str, name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in dockerfile.splitlines()
            if line.startswith(f"{name} ")]  # fmt: skip


def test_compose_has_server_worker_and_s3(compose):
    services = compose["services"]
    assert set(services) == {"prefect-server", "worker", "s3"}
    server = services["prefect-server"]
    assert server["image"].startswith("prefecthq/prefect:3")
    assert server["command"].startswith("prefect server start")
    port = re.search(r"--port (\d+)", server["command"]).group(1)
    assert f"{port}:{port}" in server["ports"]
    s3 = services["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs")
    assert s3["command"].split()[:2] == ["server", "-s3"]
    s3_port = re.search(r"-s3\.port=(\d+)", s3["command"]).group(1)

    worker = services["worker"]
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == f"http://prefect-server:{port}/api"
    assert env["AWS_ENDPOINT_URL"] == f"http://s3:{s3_port}"
    assert env["ALT_WORK_POOL"] == DEFAULT_POOL and env["ALT_GPU_LIMIT"]
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    gpus = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    build = worker["build"]
    assert (DOCKER / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKER / "worker.Dockerfile"


def test_dockerfile_installs_the_gpu_extra_on_a_cuda_base(dockerfile, pyproject):
    (base,) = _instructions(dockerfile, "FROM")
    assert base.startswith("nvidia/cuda:") and "devel" in base  # nvcc for DeepSpeed ops
    extras = pyproject["project"]["optional-dependencies"]
    installs = [r for r in _instructions(dockerfile, "RUN") if "pip install -e" in r]
    (install,) = installs
    wanted = re.search(r'pip install -e "\.\[([\w,]+)\]"', install).group(1).split(",")
    assert "gpu" in wanted and set(wanted) <= set(extras)
    assert any(req.startswith("vllm") for req in extras["gpu"])
    assert any(dep.startswith("deepspeed") for dep in pyproject["project"]["dependencies"])


def test_dockerfile_copies_every_package_and_file_it_needs(dockerfile, pyproject):
    copied = []
    for args in _instructions(dockerfile, "COPY"):
        *sources, _dest = shlex.split(args)
        copied += sources
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= set(copied), "a package pyproject.toml installs is not copied"
    ignored = (DOCKER / "worker.Dockerfile.dockerignore").read_text().split()
    assert not set(copied) & set(ignored)


def test_commands_are_ones_the_project_has(dockerfile, pyproject):
    from deployments.cli import _parser

    assert pyproject["project"]["scripts"]["alt"] == "deployments.cli:main"
    smoke = next(r for r in _instructions(dockerfile, "RUN") if "alt presets" in r)
    assert _parser().parse_args(["presets"]).command == "presets" and smoke
    (entry,) = _instructions(dockerfile, "ENTRYPOINT")
    assert yaml.safe_load(entry) == ["alt-worker-entrypoint"]
    script = (DOCKER / "worker-entrypoint.sh").read_text()
    assert 'exec prefect worker start --pool "$ALT_WORK_POOL"' in script
    assert "python -m deployments.setup --pool" in script
    assert "prefect --no-prompt deploy --all" in script
    subprocess.run(["sh", "-n", str(DOCKER / "worker-entrypoint.sh")], check=True)


def test_setup_accepts_the_flags_the_entrypoint_passes(monkeypatch):
    """The entrypoint's setup call parses (the server-side effects are tested against a
    real server in test_prefect_server)."""
    from deployments import setup

    calls = []
    monkeypatch.setattr(setup, "ensure_work_pool", lambda name: calls.append(("pool", name)))
    monkeypatch.setattr(setup, "ensure_gpu_limit", lambda n, s: calls.append(("limit", n, s)))
    monkeypatch.setattr(setup, "ensure_bucket", lambda b: calls.append(("bucket", b)))
    argv = ["--pool", DEFAULT_POOL, "--gpu-limit", "alt-gpu-x", "--bucket", "alt-runs"]
    assert setup.main(argv) == 0
    assert calls == [("bucket", "alt-runs"), ("pool", DEFAULT_POOL), ("limit", "alt-gpu-x", 1)]
