"""Integration tier of `tests.unit.sampling.test_sampling`: the real engines on the tiny model."""

from __future__ import annotations

import pandas as pd
import pytest

from alt_core import store
from alt_core.runtime.launcher import run_job
from tests.unit.sampling.test_sampling import ENGINE, _spec


@pytest.mark.integration
def test_vllm_shard_with_long_seeded_prompts(tmp_path, tiny_model_dir):
    """256 seeded prompts of 64 tokens exceed vLLM's default step budget; its CPU build
    crashes when it splits such a prefill, so the backend must size the budget."""
    long = "the food was great and the staff were friendly but the room was dirty " * 4
    spec = _spec(
        tmp_path, tiny_model_dir, 256, long,
        n=4, temperature=0.9, top_p=0.9, max_new_tokens=8, max_prompt_tokens=64,
    )  # fmt: skip
    lines: list[str] = []
    env = ENGINE.process_env()
    result = run_job("sample", spec, name="s", env=env, log=lines.append)
    df = store.read_table(spec.output_uri)
    assert result["rows"] == len(df) == 1024
    # vLLM's finished requests drive the shard's progress lines.
    progress = [x.split("progress ", 1)[1] for x in lines if "progress " in x]
    assert progress[-1] == "256/256 prompts" and len(progress) <= 10, progress
    assert (df["num_tokens"] <= 8).all() and df["truncated"].any()
    # Seeds per prompt row: the same shard again gives the same samples.
    again = spec.model_copy(update={"output_uri": str(tmp_path / "again.parquet")})
    run_job("sample", again, name="s", env=env, log=lambda _: None)
    pd.testing.assert_frame_equal(df, store.read_table(again.output_uri))
