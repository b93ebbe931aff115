"""The method table: one entry per method, and the rules read from it."""

from __future__ import annotations

import pandas as pd
import pytest

from alt_core.config import ConfigError, RunConfig, check_config_files
from alt_core.methods import (
    JUDGE_METHODS,
    METHODS,
    REWARD_METHODS,
    FeedbackKind,
    Method,
    added_tokens,
    compose_queries,
    feedback_prefix,
    quantile_tokens,
    reference_queries,
)


def test_every_method_has_one_entry_and_one_kind():
    assert set(METHODS) == set(Method)
    assert set(Method) == REWARD_METHODS | JUDGE_METHODS
    assert not REWARD_METHODS & JUDGE_METHODS
    for method, spec in METHODS.items():
        text = spec.feedback is FeedbackKind.TEXT
        assert (spec.judge_parser is not None) == text, method
        assert (spec.bucket_rule == "score_rank") == text, method
        assert (spec.feedback_text == "judge") == text, method


@pytest.mark.parametrize("method", list(Method))
def test_added_tokens_are_quarks_quantile_tokens(method):
    config = RunConfig(
        method=method, datapool={"num_quantiles": 3, "quantile_phrases": list("abc")}
    )
    if method is Method.QUARK:
        assert (
            added_tokens(config)
            == quantile_tokens(3)
            == [
                "_QUANTILE_TOKEN_0_",
                "_QUANTILE_TOKEN_1_",
                "_QUANTILE_TOKEN_2_",
            ]
        )
    else:
        assert added_tokens(config) == []


def test_prefix_and_reference_rules():
    feedback, prompt = pd.Series(["F"]), pd.Series(["P"])
    expected = {
        Method.QUARK: ("FP", "P"),
        Method.ALT_RM: ("F input: P", "F input: P"),
        Method.ALT_LMU: ("feedback: F input: P", "feedback: F input: P"),
    }
    for method, (query, reference) in expected.items():
        config = RunConfig(method=method)
        got = compose_queries(config, feedback, prompt)
        assert got.tolist() == [query]
        assert reference_queries(config, got, prompt).tolist() == [reference]
    assert (
        feedback_prefix(RunConfig(method=Method.ALT_RM, datapool={"feedback_prefix": "X"})) == "X"
    )


def test_file_checks_run_for_a_config_built_without_load_config():
    """A RunConfig built directly (a Prefect flow parameter) skips the template check
    until check_config_files runs it; load_config runs it itself."""
    config = RunConfig(method=Method.ALT_LMC, feedback={"provider": "judge"})
    with pytest.raises(ConfigError, match="needs 'lmc'.*hh_lmc"):
        check_config_files(config)
    check_config_files(RunConfig(method=Method.ALT_LMC))
