"""Deployments, prefect.yaml and GPU slots: they build, their forms are typed and
documented, the schedule parses, and the global concurrency limit guards device slots."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import threading
import time

import pytest
import yaml

from alt_core.config import RunConfig, RunSettings, load_config
from alt_core.runtime import slots as common
from deployments import serve
from deployments.setup import DEFAULT_POOL, ensure_gpu_limit
from tests.support import REPO_ROOT

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def deployments():
    return {d.name: d for d in serve.build_deployments()}


def test_the_served_deployments_build_from_importable_flows(deployments):
    assert set(deployments) == {serve.RUN, serve.ITERATION, serve.NIGHTLY}
    flows = {d.name: d.flow_name for d in deployments.values()}
    assert flows[serve.RUN] == "alt-run" and flows[serve.ITERATION] == "alt-single-iteration"
    for d in deployments.values():
        module, _, attr = d.entrypoint.rpartition(".")
        flow = getattr(importlib.import_module(module), attr)
        assert flow.name == d.flow_name, d.entrypoint


def _definitions(schema) -> dict:
    return schema.definitions if hasattr(schema, "definitions") else schema["definitions"]


def test_parameter_forms_hold_every_config_field_with_its_description(deployments):
    # Models only (enums like Method have no fields). The parameter is RunSettings: the
    # RunConfig fields, its cross-field rules checked once merged over the preset.
    expected = {
        k: v for k, v in RunSettings.model_json_schema()["$defs"].items() if "properties" in v
    }
    for d in deployments.values():
        schema = d._parameter_openapi_schema
        assert schema.properties["config"]["$ref"] == "#/definitions/RunSettings"
        defs = _definitions(schema)
        assert set(expected) <= set(defs), d.name  # every config section, nested ones too
        for title in expected:
            props = defs[title]["properties"]
            assert set(props) == set(expected[title]["properties"]), (d.name, title)
            if title == "RunSettings":
                continue  # sections are documented by their own fields
            undocumented = [f for f, p in props.items() if not p.get("description")]
            assert not undocumented, (d.name, title, undocumented)
    iteration = deployments[serve.ITERATION]._parameter_openapi_schema.properties
    assert iteration["iteration"]["default"] == 1 and iteration["run_dir"]["description"]


def test_forms_are_prefilled_with_a_valid_preset(deployments):
    demo = load_config("demo")
    for name in (serve.RUN, serve.ITERATION, serve.NIGHTLY):
        assert RunConfig.model_validate(deployments[name].parameters["config"]) == demo


def test_example_schedule_parses_and_is_paused_by_default(deployments):
    from prefect.server.schemas.schedules import CronSchedule

    (schedule,) = deployments[serve.NIGHTLY].schedules
    assert schedule.active is False
    assert schedule.schedule.cron == serve.NIGHTLY_CRON
    dates = asyncio.run(CronSchedule(cron=serve.NIGHTLY_CRON, timezone="UTC").get_dates(n=3))
    assert [d.hour for d in dates] == [3, 3, 3]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(dates)] == [86400, 86400]
    (active,) = next(
        d for d in serve.build_deployments(schedule_active=True) if d.name == serve.NIGHTLY
    ).schedules
    assert active.active is True


def test_prefect_yaml_matches_the_served_deployments(deployments):
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"]: d for d in spec["deployments"]}
    served = {f"{name}{serve.POOL_SUFFIX}": d for name, d in deployments.items()}
    assert set(names) == {*served, serve.SHARD}
    for name, d in served.items():  # the same flows as the served deployments
        module, _, func = d.entrypoint.rpartition(".")
        assert names[name]["entrypoint"] == f"{module.replace('.', '/')}.py:{func}"
    demo = load_config("demo")
    for d in names.values():
        path, _, func = d["entrypoint"].partition(":")
        assert (ROOT / path).is_file(), d["entrypoint"]
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, func).name, d["entrypoint"]
        assert d["work_pool"]["name"] == DEFAULT_POOL
        if "config" in d.get("parameters", {}):
            assert RunConfig.model_validate(d["parameters"]["config"]) == demo
            assert d["parameters"]["preset"] == "demo"  # partial configs take the rest from it
    (schedule,) = names[serve.NIGHTLY + serve.POOL_SUFFIX]["schedules"]
    assert schedule == {"cron": serve.NIGHTLY_CRON, "timezone": "UTC", "active": False}


# ------------------------------------------------------------------ GPU slots


def test_host_devices_hands_each_holder_its_own_devices(tmp_path, monkeypatch):
    monkeypatch.setenv(common.DEVICE_LOCK_DIR_ENV, str(tmp_path))
    seen, inside, lock = [], threading.Barrier(2), threading.Lock()

    def hold():
        with common.host_devices(1, total=2, wait_s=5) as devices:
            with lock:
                seen.append(devices)
            inside.wait(timeout=5)  # both hold their device at the same time

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == [[0], [1]]
    with common.host_devices(2, total=2) as devices:  # released: all free again
        assert devices == [0, 1]


def test_host_devices_says_why_it_waited_in_vain(tmp_path, monkeypatch):
    monkeypatch.setenv(common.DEVICE_LOCK_DIR_ENV, str(tmp_path))
    busy = pytest.raises(RuntimeError, match="no 1 free device")
    with common.host_devices(1, total=1), busy, common.host_devices(1, total=1, wait_s=0.5):
        pass


def test_without_the_variable_slots_stay_process_local(monkeypatch):
    monkeypatch.delenv(common.GPU_LIMIT_ENV, raising=False)
    assert type(common.slot_pool("test-local", 1)).__name__ == "SlotPool"


@pytest.mark.slow
def test_global_limit_is_strict_and_sized(prefect_harness, monkeypatch):
    from prefect.client.orchestration import get_client

    monkeypatch.setenv(common.GPU_LIMIT_ENV, "alt-test-missing")
    missing = pytest.raises(RuntimeError, match="prefect gcl create alt-test-missing")
    with missing, common.slot_pool("test-missing", 1).slot():
        pass

    name = ensure_gpu_limit("alt-test-slots", 1)
    assert ensure_gpu_limit(name, 1) == name  # idempotent
    monkeypatch.setenv(common.GPU_LIMIT_ENV, name)
    too_big = pytest.raises(RuntimeError, match="needs 2 devices")
    with too_big, common.slot_pool("test-too-big", 1, devices_per_slot=2).slot():
        pass
    pool = common.slot_pool("test-held", 1)
    with get_client(sync_client=True) as client:
        with pool.slot() as slot:
            env = slot.env
            assert "OMP_NUM_THREADS" in env  # CPU: the local core group
            held = client.read_global_concurrency_limit_by_name(name).active_slots
        time.sleep(0.5)
        after = client.read_global_concurrency_limit_by_name(name).active_slots
    assert (held, after) == (1, 0)
