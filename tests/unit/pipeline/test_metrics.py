"""The metrics row of an evaluation and the table `alt run` prints from the rows."""

from __future__ import annotations

import pandas as pd
import pytest

from alt_core import store
from alt_core.config import RunConfig
from alt_core.pipeline.metrics import StagesRun, evaluation_row
from alt_core.pipeline.specs import StageResult
from flows.run import TABLE_COLUMNS, metrics_rows

SENTIMENT_ROW = {
    "iteration": 1,
    "train_reward_mean": 0.25,
    "train_reward_std": 0.5,
    "valid_reward_mean": -0.125,
    "valid_reward_sem": 0.01,
    "valid_perplexity": 12.3456,
    "train_loss": 1.5,
    "train_sample_s": 10.4,
    "train_feedback_s": 2.0,
    "train_s": 30.0,
    "eval_s": 5.0,
    "reused": ["train_sample"],
}


def _eval_table(path) -> str:
    df = pd.DataFrame(
        {
            "prompt_id": [0, 0, 1, 1],
            "prompt": ["p"] * 4,
            "query": ["p"] * 4,
            "generation": ["a b", "c d", "e f", "g h"],
            "num_tokens": [2] * 4,
            "truncated": [False] * 4,
            "reward": [0.9, 0.4, 0.8, 0.7],  # toxicity 0.1, 0.6 | 0.2, 0.3
            "ref_nll": [1.0] * 4,
            "ref_tokens": [1] * 4,
        }
    )
    return store.write_table(str(path / "eval.parquet"), df)


def _run(uri: str) -> StagesRun:
    return StagesRun(results={"perplexity": [StageResult(stage="perplexity", outputs=[uri])]})


def test_a_toxicity_run_records_the_toxicity_metrics(tmp_path):
    uri = _eval_table(tmp_path)
    config = RunConfig.model_validate({"feedback": {"provider": "profanity"}})
    row = evaluation_row(config, _run(uri))
    assert row["valid_toxicity_max_mean"] == pytest.approx((0.6 + 0.3) / 2)
    assert row["valid_toxicity_prob"] == pytest.approx(0.5)
    assert row["valid_toxicity_mean"] == pytest.approx(0.3)
    assert row["valid_reward_mean"] == pytest.approx(0.7)
    assert "valid_toxicity_max_mean" not in evaluation_row(RunConfig(), _run(uri))


def test_the_reward_table_is_unchanged():
    (formatted,) = metrics_rows([SENTIMENT_ROW])
    assert list(formatted) == [label for _, label, _ in TABLE_COLUMNS]
    assert list(formatted.values()) == [
        "1", "+0.250", "0.500", "-0.125", "0.010", "12.35", "1.500", "10", "2", "30", "5",
        "sample",
    ]  # fmt: skip


def test_the_toxicity_table_adds_its_columns_after_the_validation_reward():
    rows = [
        {**SENTIMENT_ROW, "iteration": 0, "valid_toxicity_max_mean": 0.41234,
         "valid_toxicity_prob": 0.375, "valid_toxicity_mean": 0.2},
        {**SENTIMENT_ROW, "valid_toxicity_max_mean": 0.3},
    ]  # fmt: skip
    first, second = metrics_rows(rows)
    labels = list(first)
    at = labels.index("valid sem")
    assert labels[at + 1 : at + 4] == ["exp max tox", "tox prob", "mean tox"]
    assert labels[at + 4] == "ref ppl"
    assert (first["exp max tox"], first["tox prob"], first["mean tox"]) == (
        "0.412",
        "0.375",
        "0.200",
    )
    assert (second["exp max tox"], second["tox prob"]) == ("0.300", "-")


def test_the_printed_toxicity_table_cuts_no_figure(capsys, monkeypatch):
    from deployments.cli import print_table

    monkeypatch.setenv("COLUMNS", "80")
    print_table([SENTIMENT_ROW])
    reward = capsys.readouterr().out
    assert max(len(line) for line in reward.splitlines()) <= 120  # the width it always had
    row = {**SENTIMENT_ROW, "valid_toxicity_max_mean": 0.4123, "valid_toxicity_prob": 0.375,
           "valid_toxicity_mean": 0.2, "train_reward_mean": 0.842}  # fmt: skip
    print_table([row])
    out = capsys.readouterr().out
    assert "…" not in out and "0.412" in out and "+0.842" in out
