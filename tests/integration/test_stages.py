"""Integration tier of `tests.unit.pipeline.test_stages`: the real engines on the tiny model."""

from __future__ import annotations

import pytest

from alt_core import store
from alt_core.pipeline import dag
from alt_core.pipeline import fingerprints as fps
from tests.unit.pipeline.test_stages import _run, _run_stage


@pytest.mark.integration
@pytest.mark.slow
def test_engine_bodies_sample_score_and_train(tmp_path, tiny_model_dir):
    """Sampling (transformers' generate through the job launcher), perplexity and
    training bodies on the tiny model, chained as the DAG plans them."""
    config, ctx = _run(
        tmp_path,
        policy=str(tiny_model_dir),
        feedback={"provider": "sentiment"},
        sampling={"backend": "hf", "num_shards": 2, "num_generations": 2, "max_new_tokens": 6},
        datapool={"num_samples_per_quantile": 1},
        training={"epochs": 1, "per_device_batch_size": 4, "max_seq_len": 64, "kl_coef": 0.05},
        evaluation={"max_new_tokens": 4},
    )
    planned: dict[str, list[dag.Node]] = {}
    results = {s.name: _run_stage(config, ctx, s, planned) for s in dag.ITERATION}
    samples = store.read_tables([r.uri for r in results["train_sample"]])
    assert len(samples) == 6 * 2 and (samples["num_tokens"] <= 6).all()
    assert [r.stats["rows"] for r in results["train_sample"]] == [6, 6]
    (trained,) = results["train"]
    assert (
        store.dir_committed(trained.uri)
        and trained.stats["final_loss"] == trained.stats["final_loss"]
    )
    assert fps.recorded_fingerprint(trained.uri) == planned["train"][0].fingerprint(config)
    evaluation: dict[str, list[dag.Node]] = {}
    for stage in dag.EVALUATION:
        _run_stage(config, ctx, stage, evaluation)
    scored = store.read_table(ctx.layout.table(1, "eval", "eval"))
    assert len(scored) == 4 and (scored["num_tokens"] <= 4).all()
    assert (scored["ref_tokens"] > 0).all() and scored["ref_nll"].notna().all()
    # Everything is committed now: a second pass reuses all of it.
    again: dict[str, list[dag.Node]] = {}
    for stage in (*dag.ITERATION,):
        assert all(r.skipped for r in _run_stage(config, ctx, stage, again)), stage.name
