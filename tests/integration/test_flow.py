"""One short ALT iteration through the real Prefect flow, real vLLM (CPU build), real
DeepSpeed (CPU accelerator), on a tiny model made in the test."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from alt_core import store
from alt_core.pipeline.layout import RunLayout

pytestmark = [pytest.mark.integration, pytest.mark.slow]


from tests.support.runs import tiny_run_config  # noqa: E402


def test_one_iteration_end_to_end(tmp_path, tiny_model_dir, prefect_harness):
    from flows.run import alt_run

    config = tiny_run_config(tmp_path, tiny_model_dir)
    run_dir = str(tmp_path / "run")
    rows = alt_run(config=config, run_dir=run_dir)

    layout = RunLayout(run_dir)
    assert store.exists(layout.config)
    prompts = store.read_table(layout.table(1, "prompts", "prompts"))
    assert len(prompts) == 12 and (prompts["query"] == prompts["prompt"]).all()
    samples = store.read_tables([layout.shard(1, "train_samples", i) for i in range(2)])
    assert len(samples) == 12 * 5
    feedback = store.read_tables([layout.shard(1, "train_feedback", i) for i in range(2)])
    assert len(feedback) == 60 and feedback["reward"].between(-1, 1).all()
    pool = store.read_table(layout.table(1, "datapool", "pool"))
    assert set(pool["bucket"]) <= set(range(5)) and len(pool) == 60
    train = store.read_table(layout.table(1, "datapool", "train"))
    assert train["query"].str.contains(" input: ").all()
    assert store.dir_committed(layout.policy(1))
    evaluation = store.read_table(layout.table(1, "eval", "eval"))
    assert len(evaluation) == 8
    assert evaluation["query"].str.startswith("Excellent. input: ").all()
    assert (evaluation["ref_tokens"] >= 0).all()

    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(store.local_dir(layout.policy(1)) / "model.safetensors"))
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed, "training did not change any parameter"

    (row,) = rows
    assert row["iteration"] == 1
    for key in ("train_reward_mean", "valid_reward_mean", "valid_perplexity", "train_loss"):
        assert row[key] == row[key], f"{key} is NaN"
    assert store.read_json(layout.metrics)["iterations"][0]["iteration"] == 1

    # Every shard and the training published a progress artifact that reached 100%.
    from prefect.artifacts import Artifact

    for key in ("iter-1-train-sample-0", "iter-1-train-feedback-1", "iter-1-eval-sample-1",
                "train-iter-1"):  # fmt: skip
        artifact = Artifact.get(key)
        assert artifact is not None and float(artifact.data) == 100.0, (key, artifact)
