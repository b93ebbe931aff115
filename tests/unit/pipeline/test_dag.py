"""The DAG declaration and its fingerprints: what invalidates which stage."""

from __future__ import annotations

import pandas as pd
import pytest
from pydantic import Field

from alt_core import store
from alt_core.config import RunConfig, TrainingConfig
from alt_core.pipeline import dag
from alt_core.pipeline import fingerprints as fps
from alt_core.pipeline.layout import RunInputs, RunLayout
from alt_core.training.spec import TrainSpec
from alt_core.training.state import resume_key

DEMO = {"data": {"prompts_per_iteration": 8}, "sampling": {"num_shards": 2}}


def _config(**changes) -> RunConfig:
    data = {"data": dict(DEMO["data"]), "sampling": dict(DEMO["sampling"])}
    for dotted, value in changes.items():
        section, _, field = dotted.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return RunConfig.model_validate(data)


@pytest.fixture
def run(tmp_path):
    """A run folder with committed prompt tables for iteration 1 and its evaluation."""
    layout = RunLayout(str(tmp_path / "run"))
    table = pd.DataFrame({"prompt_id": range(8), "prompt": [f"p{i}" for i in range(8)]})
    table["query"] = table["prompt"]
    for uri in (layout.table(1, "prompts", "prompts"), layout.table(1, "eval", "prompts")):
        store.write_table(uri, table)
    inputs = RunInputs(
        policy_uri="gpt2", reference_uri="gpt2",
        train_prompts_uri=store.write_table(str(tmp_path / "train.parquet"), table),
        valid_prompts_uri=store.write_table(str(tmp_path / "valid.parquet"), table),
    )  # fmt: skip
    return layout, inputs


def fingerprints(config: RunConfig, run, stages) -> dict[str, list[str]]:
    """Every node's fingerprint, planned as the flow plans them, per stage."""
    layout, inputs = run
    planned: dict[str, list[dag.Node]] = {}
    for stage in stages:
        planned[stage.name] = stage.plan(dag.Ctx(config, layout, inputs, 1), planned)
    return {name: [n.fingerprint(config) for n in nodes] for name, nodes in planned.items()}


def changed_stages(run, stages, **changes) -> set[str]:
    before, after = (
        fingerprints(_config(), run, stages),
        fingerprints(_config(**changes), run, stages),
    )
    return {name for name in before if before[name] != after[name]}


@pytest.mark.parametrize(
    "changes",
    [
        {"evaluation__max_new_tokens": 7},
        {"evaluation__batch_size": 3},
        {"data__num_valid_prompts": 4},
    ],
)
def test_eval_settings_leave_every_iteration_stage_valid(run, changes):
    assert changed_stages(run, dag.ITERATION, **changes) == set()


def test_eval_generation_length_restales_eval_sampling(run):
    changed = changed_stages(run, dag.EVALUATION, evaluation__max_new_tokens=7)
    assert changed == {"eval_sample"}  # feedback and later follow through their inputs


@pytest.mark.parametrize(
    "changes",
    [{"sampling__temperature": 0.3}, {"sampling__top_p": 0.5}, {"sampling__num_generations": 3}],
)
def test_train_sampling_settings_leave_greedy_evaluation_valid(run, changes):
    assert changed_stages(run, dag.EVALUATION, **changes) == set()
    assert "train_sample" in changed_stages(run, dag.ITERATION, **changes)


def test_eval_length_follows_the_sampling_length_when_unset(run):
    assert changed_stages(run, dag.EVALUATION, sampling__max_new_tokens=9) == {"eval_sample"}
    fixed = {"evaluation__max_new_tokens": 12}
    before = fingerprints(_config(**fixed), run, dag.EVALUATION)
    after = fingerprints(_config(**fixed, sampling__max_new_tokens=9), run, dag.EVALUATION)
    assert before == after


@pytest.mark.parametrize(
    "changes",
    [
        {"sampling__concurrency": 4},
        {"sampling__cpu_kvcache_gib": 3.0},
        {"sampling__tensor_parallel_size": 2},
        {"feedback__concurrency": 3},
        {"feedback__judge": {"max_concurrency": 2, "max_retries": 1, "timeout_s": 3.0}},
        {"training__checkpoint_every": 3},
        {"training__log_every": 1},
        {"training__report_to": ["tensorboard"]},
        {"storage__local_scratch": "/elsewhere"},
        {"name": "renamed"},
    ],
)
def test_throughput_settings_change_no_fingerprint(run, changes):
    assert changed_stages(run, dag.ITERATION, **changes) == set()
    assert changed_stages(run, dag.EVALUATION, **changes) == set()


def test_result_settings_change_the_stages_that_use_them(run):
    assert changed_stages(run, dag.ITERATION, training__learning_rate=1e-3) == {"train"}
    assert changed_stages(run, dag.ITERATION, datapool__drop_factor=0.5) == {"datapool"}
    assert changed_stages(run, dag.ITERATION, datapool__prompt_prefix=" in: ") == {
        "prompts",
        "datapool",
    }
    assert "train_feedback" in changed_stages(run, dag.ITERATION, feedback__max_length=100)


class TrainingWithANewKnob(TrainingConfig):
    new_knob: float = Field(0.5, description="A setting added after the run was made.")


class RunConfigWithANewKnob(RunConfig):
    training: TrainingWithANewKnob = Field(default_factory=TrainingWithANewKnob)


def test_a_new_training_field_restales_the_policy_without_editing_a_list(run):
    layout, inputs = run
    ctx = lambda config: dag.Ctx(config, layout, inputs, 1)  # noqa: E731
    old, new = RunConfig.model_validate(DEMO), RunConfigWithANewKnob.model_validate(DEMO)
    (node,) = dag.plan_train(ctx(old), {})
    (same,) = dag.plan_train(ctx(new), {})
    assert node.fingerprint(old) != same.fingerprint(new)
    # The training's own resume key follows the same rule.
    spec = dict(policy_path="/p", reference_path="/r", train_table="t", output_dir="o")
    assert resume_key(TrainSpec(**spec, training=old.training)) != resume_key(
        TrainSpec(**spec, training=new.training)
    )


def test_throughput_paths_name_real_fields():
    dumped = RunConfig().model_dump(mode="json")
    for dotted in fps.THROUGHPUT_ONLY:
        node = dumped
        for part in dotted.split("."):
            assert part in node, f"THROUGHPUT_ONLY names {dotted}, which is not a config field"
            node = node[part]


def test_declared_sections_name_real_fields():
    dumped = RunConfig().model_dump(mode="json")
    for stage in dag.STAGES.values():
        for dotted in (*stage.config, *stage.ignore):
            node = dumped
            for part in dotted.split("."):
                assert part in node, f"stage {stage.name} names {dotted}"
                node = node[part]


def test_config_identity_drops_throughput_and_ignored_fields():
    config = RunConfig()
    part = fps.config_identity(config, ["sampling", "model"], ignore=["model.reference"])
    assert "concurrency" not in part["sampling"] and "temperature" in part["sampling"]
    assert "reference" not in part["model"] and "dtype" in part["model"]


def test_every_stage_has_a_body_and_known_upstreams():
    from alt_core.pipeline.stages import BODIES

    for stages in (dag.ITERATION, dag.EVALUATION):
        seen: set[str] = set()
        for stage in stages:
            assert stage.name in BODIES
            assert set(stage.after) <= seen and (stage.per_shard_of in seen | {None})
            seen.add(stage.name)


def test_sample_shards_and_names(run):
    layout, inputs = run
    config = _config()
    ctx = dag.Ctx(config, layout, inputs, 1)
    (prompts,) = dag.plan_prompts(ctx, {})
    samples = dag.plan_train_sample(ctx, {"prompts": [prompts]})
    assert [(n.spec.start, n.spec.stop) for n in samples] == [(0, 4), (4, 8)]
    assert [n.name for n in samples] == ["iter-1-train-sample-0", "iter-1-train-sample-1"]
    assert samples[0].inputs == [layout.table(1, "prompts", "prompts"), "gpt2"]
    feedback = dag.plan_train_feedback(ctx, {"train_sample": samples})
    assert [n.inputs for n in feedback] == [n.outputs for n in samples]
    with pytest.raises(dag.NotReady):
        dag.plan_datapool(ctx, {})


def test_shard_node_matches_the_planned_node(run):
    layout, inputs = run
    config = _config()
    ctx = dag.Ctx(config, layout, inputs, 1)
    (prompts,) = dag.plan_prompts(ctx, {})
    (sample, _) = dag.plan_train_sample(ctx, {"prompts": [prompts]})
    (feedback, _) = dag.plan_train_feedback(ctx, {"train_sample": [sample, sample]})
    remote = dag.shard_node(config, "sample", sample.spec.model_dump(), sample.name)
    assert remote.fingerprint(config) == sample.fingerprint(config)
    spec = feedback.spec.model_dump(exclude={"config"})
    remote = dag.shard_node(config, "feedback", spec, feedback.name)
    assert remote.fingerprint(config) == feedback.fingerprint(config)


def test_eval_sample_count_restales_eval_sampling_only(run):
    changes = {"evaluation__samples_per_prompt": 4}
    assert changed_stages(run, dag.ITERATION, **changes) == set()
    assert changed_stages(run, dag.EVALUATION, **changes) == {"eval_sample"}


def test_eval_sampling_settings_are_unused_by_a_greedy_evaluation(run):
    for changes in ({"evaluation__temperature": 0.7}, {"evaluation__top_p": 0.5}):
        assert changed_stages(run, dag.EVALUATION, **changes) == set()
        sampled = {"evaluation__samples_per_prompt": 4}
        before = fingerprints(_config(**sampled), run, dag.EVALUATION)
        after = fingerprints(_config(**sampled, **changes), run, dag.EVALUATION)
        assert {n for n in before if before[n] != after[n]} == {"eval_sample"}
        assert changed_stages(run, dag.ITERATION, **sampled, **changes) == set()


def test_a_greedy_evaluation_hashes_as_before_the_sampling_fields(run):
    """One sample: the eval stages' config part is what it was before the evaluation's
    sampling fields existed, so older run folders keep their committed evaluations."""
    config = _config()
    for name in ("eval_sample", "perplexity"):
        stage = dag.STAGES[name]
        part = fps.config_identity(config, stage.config, stage.ignore)
        assert set(part["evaluation"]) == {"max_new_tokens"} - set(
            f.removeprefix("evaluation.") for f in stage.ignore
        )


PERSPECTIVE = {"provider": "perspective"}


@pytest.mark.parametrize(
    "changes",
    [
        {"max_concurrency": 16, "requests_per_minute": 600.0, "timeout_s": 3.0},
        {"max_retries": 9, "backoff_base_s": 0.5, "backoff_max_s": 9.0, "max_retry_after_s": 5.0},
        {"base_url": "http://127.0.0.1:1/v1alpha1", "api_key_env": "OTHER_KEY"},
        {"api_key_secret_block": "perspective-key", "cache_flush_every": 7},
    ],
)
def test_perspective_throughput_settings_change_no_fingerprint(run, changes):
    def toxic(perspective=None, **toxicity):
        tox = {**toxicity, "perspective": perspective or {}}
        return {"feedback": {**PERSPECTIVE, "toxicity": tox}}

    for stages in (dag.ITERATION, dag.EVALUATION):
        before = fingerprints(_config(**toxic()), run, stages)
        after = fingerprints(_config(**toxic(changes)), run, stages)
        assert before == after
        after = fingerprints(_config(**toxic(batch_size=3, threshold=0.7)), run, stages)
        assert before == after
    # What Perspective is asked does change the feedback.
    asked = fingerprints(_config(**toxic({"attribute": "INSULT"})), run, dag.ITERATION)
    before = fingerprints(_config(**toxic()), run, dag.ITERATION)
    assert {n for n in before if before[n] != asked[n]} == {"train_feedback"}
