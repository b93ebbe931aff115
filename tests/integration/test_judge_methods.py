"""Integration tier of `tests.unit.feedback.judge.test_judge_methods`: the real engines on the tiny model."""

from __future__ import annotations

import pytest

from alt_core import store
from alt_core.datapool import top_feedback
from alt_core.pipeline.layout import RunLayout


@pytest.mark.integration
@pytest.mark.slow
def test_alt_lmu_iteration_end_to_end(tmp_path, tiny_model_dir, prefect_harness):
    from flows.run import alt_run
    from tests.support.runs import tiny_run_config

    config = tiny_run_config(
        tmp_path,
        tiny_model_dir,
        method="alt_lmu",
        feedback={"provider": "rule_critic"},
        datapool={"num_samples_per_prompt": 4},
    )
    run_dir = str(tmp_path / "run")
    (row,) = alt_run(config=config, run_dir=run_dir)
    layout = RunLayout(run_dir)

    feedback = store.read_tables([layout.shard(1, "train_feedback", i) for i in range(2)])
    assert len(feedback) == 60 and feedback["score"].between(0, 3).all()
    pool = store.read_table(layout.table(1, "datapool", "pool"))
    assert len(pool) == 60 and pool["score"].notna().all()
    assert pool["score"].tolist() == feedback["score"].tolist()  # scores kept in the pool
    train = store.read_table(layout.table(1, "datapool", "train"))
    assert train["query"].str.startswith("feedback: ").all()
    assert train["query"].str.contains(" input: Review ").all()
    assert (train.groupby("prompt_id").size() <= 4).all()

    exemplar = top_feedback(pool)
    evaluation = store.read_table(layout.table(1, "eval", "eval"))
    assert evaluation["query"].str.startswith(f"feedback: {exemplar} input: ").all()
    assert store.dir_committed(layout.policy(1))
    for key in ("train_reward_mean", "valid_reward_mean", "valid_perplexity", "train_loss"):
        assert row[key] == row[key], f"{key} is NaN"
