"""Stage helpers: sharding, seeds, conditioning of prompts per iteration."""

from __future__ import annotations

import pandas as pd
import pytest

from alt_core import methods
from alt_core.config import RunConfig
from alt_core.pipeline import dag as pipeline
from alt_core.pipeline.layout import RunLayout


def test_shard_bounds_cover_rows_contiguously():
    assert pipeline.shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert pipeline.shard_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_shard_bounds_errors():
    with pytest.raises(ValueError, match="empty prompt set"):
        pipeline.shard_bounds(0, 1)
    with pytest.raises(ValueError, match="at most 3"):
        pipeline.shard_bounds(3, 5)


def test_stage_seeds_differ_by_stage_and_iteration_and_repeat():
    c = RunConfig()
    assert pipeline.stage_seed(c, 1, "prompts") == pipeline.stage_seed(c, 1, "prompts")
    assert pipeline.stage_seed(c, 1, "prompts") != pipeline.stage_seed(c, 2, "prompts")
    assert pipeline.stage_seed(c, 1, "prompts") != pipeline.stage_seed(c, 1, "train")


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("alt_rm", "Excellent. input: Tell me"),
        ("quark", "_QUANTILE_TOKEN_0_Tell me"),
    ],
)
def test_conditioning_on_exemplar(method, expected):
    config = RunConfig(method=method)
    prompts = pd.Series(["Tell me"])
    exemplar = methods.default_exemplar(config)
    assert methods.condition_prompts(config, prompts, exemplar).tolist() == [expected]
    assert methods.condition_prompts(config, prompts, None).tolist() == ["Tell me"]


def test_judge_prefix_default():
    config = RunConfig(method="alt_lmu", feedback={"provider": "rule_critic"})
    q = methods.compose_queries(config, pd.Series(["Concise."]), pd.Series(["Post"]))
    assert q.tolist() == ["feedback: Concise. input: Post"]


def test_first_iteration_samples_raw_prompts(tmp_path):
    config = RunConfig()
    layout = RunLayout(str(tmp_path))
    assert pipeline.exemplar_for(config, layout, 1) is None
    assert pipeline.exemplar_for(config, layout, 2) == "Excellent."
    assert pipeline.eval_exemplar(config, layout, 0) is None
    assert pipeline.eval_exemplar(config, layout, 1) == "Excellent."
