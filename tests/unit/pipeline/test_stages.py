"""Every stage body, called directly on a run folder made in the test.

The bodies that run an engine (sampling, perplexity, training) go through the real job
launcher on the tiny model (integration tier); the others are unit tests.
"""

from __future__ import annotations

import pandas as pd

from alt_core import store
from alt_core.config import RunConfig
from alt_core.pipeline import dag, stages
from alt_core.pipeline import fingerprints as fps
from alt_core.pipeline.layout import RunInputs, RunLayout
from alt_core.pipeline.specs import StageResult
from tests.unit.test_datapool import feedback_rows

QUIET = stages.StageEnv(log=lambda _line: None, warn=lambda _line: None)


def _prompts(n: int) -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": range(n), "prompt": [f"The food was {i}" for i in range(n)]})


def _run(tmp_path, policy: str = "gpt2", **config) -> tuple[RunConfig, dag.Ctx]:
    data = {"prompts_per_iteration": 6, "max_prompt_tokens": 32}
    base = {"data": data, "sampling": {"num_shards": 2, "num_generations": 2}}
    config_ = RunConfig.model_validate({**base, **config})
    inputs = RunInputs(
        policy_uri=policy,
        reference_uri=policy,
        train_prompts_uri=store.write_table(str(tmp_path / "train.parquet"), _prompts(20)),
        valid_prompts_uri=store.write_table(str(tmp_path / "valid.parquet"), _prompts(4)),
    )
    return config_, dag.Ctx(config_, RunLayout(str(tmp_path / "run")), inputs, 1)


def _run_stage(config, ctx, stage: dag.Stage, planned) -> list[StageResult]:
    planned[stage.name] = nodes = stage.plan(ctx, planned)
    return [stages.run_node(config, node, QUIET) for node in nodes]


def test_prompts_body_draws_and_conditions(tmp_path):
    config, ctx = _run(tmp_path)
    (node,) = dag.plan_prompts(ctx, {})
    (result,) = [stages.run_node(config, node, QUIET)]
    table = store.read_table(result.uri)
    assert len(table) == 6 and (table["query"] == table["prompt"]).all()  # iteration 1: raw
    assert fps.recorded_fingerprint(result.uri) == node.fingerprint(config)
    later = dag.Ctx(config, ctx.layout, ctx.inputs, 2)
    (node2,) = dag.plan_prompts(later, {})
    stages.run_node(config, node2, QUIET)
    drawn = store.read_table(node2.outputs[0])
    assert drawn["query"].str.startswith("Excellent. input: The food was").all()
    assert drawn["prompt_id"].tolist() != table["prompt_id"].tolist()  # own seed


def test_eval_prompts_body_takes_every_validation_prompt(tmp_path):
    config, ctx = _run(tmp_path)
    (node,) = dag.plan_eval_prompts(ctx, {})
    stages.run_node(config, node, QUIET)
    table = store.read_table(node.outputs[0])
    assert table["prompt_id"].tolist() == [0, 1, 2, 3]
    assert table["query"].str.startswith("Excellent. input: ").all()  # as iteration 2 samples


def test_run_node_reuses_committed_outputs_and_redoes_stale_ones(tmp_path, monkeypatch):
    config, ctx = _run(tmp_path)
    (node,) = dag.plan_prompts(ctx, {})
    first = stages.run_node(config, node, QUIET)
    assert not first.skipped

    def refuse(*_args):
        raise AssertionError("a committed stage ran again")

    monkeypatch.setitem(stages.BODIES, "prompts", refuse)
    assert stages.run_node(config, node, QUIET).skipped
    monkeypatch.undo()
    warnings: list[str] = []
    changed = config.model_copy(update={"seed": 5})
    (node,) = dag.plan_prompts(dag.Ctx(changed, ctx.layout, ctx.inputs, 1), {})
    env = stages.StageEnv(log=lambda _line: None, warn=warnings.append)
    assert not stages.run_node(changed, node, env).skipped
    assert "settings or inputs changed" in warnings[0]


def test_run_node_redoes_a_damaged_output_and_says_which_file(tmp_path):
    config, ctx = _run(tmp_path)
    (node,) = dag.plan_prompts(ctx, {})
    stages.run_node(config, node, QUIET)
    path = tmp_path / "run" / "iter_001" / "prompts" / "prompts.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert fps.inspect(node.outputs[0], node.fingerprint(config)) == (
        "corrupt",
        "it does not match its commit hash",
    )
    warnings: list[str] = []
    env = stages.StageEnv(log=lambda _line: None, warn=warnings.append)
    assert not stages.run_node(config, node, env).skipped
    assert warnings == [
        f"{node.name}: the committed {node.outputs[0]} is damaged "
        "(it does not match its commit hash); redoing it"
    ]
    assert fps.state(node.outputs[0], node.fingerprint(config)) == "committed"


def _feedback_shards(ctx: dag.Ctx) -> list[dag.Node]:
    """Two committed sample shards (as a sampling stage leaves them) and their nodes."""
    rows = feedback_rows({0: [0.1, 0.9, 0.5], 1: [0.3, 0.2, 0.8]})
    samples = []
    for i, part in enumerate((rows.iloc[:3], rows.iloc[3:])):
        uri = ctx.layout.shard(1, "train_samples", i)
        store.write_table(uri, part[["prompt_id", "prompt", "query", "sample_idx", "generation",
                                     "num_tokens", "truncated"]])  # fmt: skip
        samples.append(dag.Node("train_sample", f"s{i}", 1, [], [uri], None))  # type: ignore[arg-type]
    return dag.plan_train_feedback(ctx, {"train_sample": samples})


def test_feedback_body_scores_a_shard_in_process(tmp_path):
    config, ctx = _run(tmp_path, feedback={"provider": "sentiment"})
    results = [stages.run_node(config, node, QUIET) for node in _feedback_shards(ctx)]
    scored = store.read_tables([r.uri for r in results])
    assert len(scored) == 6 and scored["reward"].between(-1, 1).all()
    assert results[0].stats["rows"] == 3 and results[0].stats["missing"] == 0


def test_datapool_body_buckets_and_draws(tmp_path):
    config, ctx = _run(tmp_path, feedback={"provider": "sentiment"})
    for i, part in enumerate((feedback_rows({0: [0.1, 0.9, 0.5]}), feedback_rows({1: [0.3, 0.8]}))):
        store.write_table(ctx.layout.shard(1, "train_feedback", i), part)
    feedback = [
        dag.Node("train_feedback", f"f{i}", 1, [], [ctx.layout.shard(1, "train_feedback", i)], None)  # type: ignore[arg-type]
        for i in range(2)
    ]
    (result,) = _run_stage(config, ctx, dag.STAGES["datapool"], {"train_feedback": feedback})
    pool = store.read_table(ctx.layout.table(1, "datapool", "pool"))
    train = store.read_table(ctx.layout.table(1, "datapool", "train"))
    assert len(pool) == 5 and result.stats == {"pool_rows": 5, "train_set_rows": len(train)}
    best = train[train["bucket"] == 0]
    assert best["query"].str.startswith("Excellent. input: ").all()
    again = stages.run_node(config, dag.plan_datapool(ctx, {"train_feedback": feedback})[0])
    assert again.skipped and again.stats == result.stats


def test_eval_join_body_fills_every_eval_column(tmp_path):
    from alt_core.schemas import EVAL

    config, ctx = _run(tmp_path)
    ctx = dag.Ctx(config, ctx.layout, ctx.inputs, 1)
    uris = []
    for i in range(2):
        uris.append(
            store.write_table(ctx.layout.shard(1, "eval_feedback", i), feedback_rows({i: [0.5]}))
        )
    nodes = [dag.Node("eval_feedback", f"f{i}", 1, [], [u], None) for i, u in enumerate(uris)]  # type: ignore[arg-type]
    (result,) = _run_stage(config, ctx, dag.STAGES["eval_join"], {"eval_feedback": nodes})
    joined = store.read_table(result.uri)
    assert list(joined.columns) == EVAL and len(joined) == 2 and joined["ref_nll"].isna().all()


def test_prepare_run_records_the_config_and_the_prompt_sets(tmp_path):
    for split, n in (("train", 5), ("valid", 3)):
        _prompts(n).to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
    config = RunConfig.model_validate(
        {
            "model": {"policy": "some/model"},
            "feedback": {"provider": "sentiment"},
            "data": {"source": "file", "train_path": str(tmp_path / "train.jsonl"),
                     "valid_path": str(tmp_path / "valid.jsonl"), "prompts_per_iteration": 2},
        }
    )  # fmt: skip
    run_dir = str(tmp_path / "run")
    inputs = stages.prepare_run(config, run_dir, log=lambda _line: None)
    assert inputs.policy_uri == inputs.reference_uri == "some/model"
    assert store.commit_info(inputs.valid_prompts_uri)["rows"] == 3
    assert RunInputs.model_validate(store.read_json(RunLayout(run_dir).inputs)) == inputs


def test_prepare_run_builds_the_rude_corpus_for_the_toxicity_demo_only(tmp_path, monkeypatch):
    import alt_core.tasks.demo.assets as demo

    asked = []

    def fake_ensure(cache_dir, num_train, num_valid, seed, log=print, settings=None):
        asked.append(settings)
        table = store.write_table(str(tmp_path / "p.parquet"), _prompts(4)[["prompt_id", "prompt"]])
        return demo.DemoAssets("demo-model", table, table)

    monkeypatch.setattr(demo, "ensure_demo_assets", fake_ensure)
    for provider in ("sentiment", "profanity"):
        config = RunConfig.model_validate(
            {"feedback": {"provider": provider}, "data": {"num_valid_prompts": 2}}
        )
        stages.prepare_run(config, str(tmp_path / provider), log=lambda _line: None)
    assert asked == [None, demo.DemoModelSettings(rude_share=demo.TOXICITY_RUDE_SHARE)]


# ---------------------------------------------------------------------- integration
