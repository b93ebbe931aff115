"""`alt status` on a run folder made in the test: failed and damaged outputs."""

from __future__ import annotations

from alt_core import store
from alt_core.config import dump_config
from alt_core.pipeline import dag, stages
from alt_core.pipeline.status import FAILED_SUFFIX, run_status
from tests.unit.pipeline.test_stages import QUIET, _run


def _started_run(tmp_path):
    config, ctx = _run(tmp_path, evaluation={"evaluate_initial": False}, iterations=1)
    store.write_bytes_atomic(ctx.layout.config, dump_config(config).encode())
    store.write_json(ctx.layout.inputs, ctx.inputs.model_dump())
    (node,) = dag.plan_prompts(ctx, {})
    stages.run_node(config, node, QUIET)
    return config, ctx, node


def _rows(run_dir: str, **kwargs) -> dict[str, dict]:
    return {r["stage"]: r for r in run_status(run_dir, **kwargs) if r["iteration"] == 1}


def test_a_shard_that_failed_is_shown_failed_with_its_cause(tmp_path):
    config, ctx, _ = _started_run(tmp_path)
    shard = ctx.layout.shard(1, "train_feedback", 1)
    store.write_json(shard + FAILED_SUFFIX, {"cause": "unreachable", "message": "..."})
    rows = _rows(ctx.layout.run_dir)
    assert rows["prompts"]["state"] == "committed"
    feedback = next(r for s, r in rows.items() if "feedback" in s)
    assert feedback["state"] == "failed"
    assert feedback["detail"] == "0/2 parts committed; failed: unreachable"


def test_a_damaged_output_is_corrupt_with_the_file_and_the_reason(tmp_path):
    config, ctx, node = _started_run(tmp_path)
    path = tmp_path / "run" / "iter_001" / "prompts" / "prompts.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    rows = _rows(ctx.layout.run_dir, verify=True)
    assert rows["prompts"]["state"] == "corrupt"
    assert rows["prompts"]["detail"] == "prompts.parquet: it does not match its commit hash"
