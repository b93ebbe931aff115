"""A deployment's parameters are a preset plus the fields given in `config`: checked
through the validation Prefect applies to a flow run's parameters (JSON from the API,
merged over the deployment's defaults at the top level, as the server does)."""

from __future__ import annotations

import json
import re

import pytest
from prefect.cli._utilities import load_json_key_values
from prefect.exceptions import ParameterTypeError

from alt_core.config import (
    ConfigError,
    RunSettings,
    config_from_preset,
    list_presets,
    load_config,
)
from deployments import serve
from deployments.flows import scheduled_run, single_iteration
from flows.run import alt_run
from tests.support import REPO_ROOT

DOCS = {
    "docs/operating.md": (REPO_ROOT / "docs" / "operating.md").read_text(),
    "README.md": (REPO_ROOT / "README.md").read_text(),
}


def _flow_run_parameters(flow, preset: str, cli_params: list[str]) -> dict:
    """What the flow body receives for `prefect deployment run ... --param ...`: the CLI
    parses each value as JSON, the server lays them over the deployment's parameters
    (top-level keys), the JSON travels, and the engine validates it into the signature."""
    parameters = dict(serve.preset_parameters(preset))
    parameters.update(load_json_key_values(cli_params, "parameter"))
    return flow.validate_parameters(json.loads(json.dumps(parameters)))


def _as_overrides(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _as_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def test_the_docs_example_runs_the_preset_with_the_given_fields():
    params = _flow_run_parameters(
        alt_run,
        "demo",
        [
            "run_dir=runs/ui-1",
            'config={"name": "ui-1", "iterations": 2, "data": {"prompts_per_iteration": 128}}',
        ],
    )
    # Prefect keeps what the JSON set, section by section.
    assert isinstance(params["config"], RunSettings)
    assert params["config"].model_fields_set == {"name", "iterations", "data"}
    assert params["config"].data.model_fields_set == {"prompts_per_iteration"}
    assert params["preset"] == "demo" and params["run_dir"] == "runs/ui-1"
    config = config_from_preset(params["preset"], params["config"])
    expected = load_config(
        "demo", overrides=["name=ui-1", "iterations=2", "data.prompts_per_iteration=128"]
    )
    assert config == expected
    assert config.training.learning_rate == load_config("demo").training.learning_rate


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_config_param_in_the_docs_means_the_preset_plus_its_fields(doc):
    examples = re.findall(r"--param config='(\{.*?\})'", DOCS[doc])
    assert examples, doc
    for example in examples:
        for flow in (alt_run, single_iteration):
            params = _flow_run_parameters(flow, "demo", ["run_dir=r", f"config={example}"])
            expected = load_config("demo", overrides=_as_overrides(json.loads(example)))
            assert config_from_preset(params["preset"], params["config"]) == expected


@pytest.mark.parametrize("preset", list_presets())
def test_the_untouched_form_is_exactly_the_preset(preset):
    for flow in (alt_run, single_iteration, scheduled_run):
        extra = ["runs_root=runs"] if flow is scheduled_run else ["run_dir=r"]
        params = _flow_run_parameters(flow, preset, extra)
        assert params["preset"] == preset
        assert config_from_preset(preset, params["config"]) == load_config(preset)


def test_the_served_deployments_carry_their_preset():
    for d in serve.build_deployments(preset="tldr_alt_rm"):
        assert d.parameters["preset"] == "tldr_alt_rm"
        assert d.parameters["config"] == load_config("tldr_alt_rm").model_dump(mode="json")


def test_fields_are_judged_against_the_preset_not_the_model_defaults():
    """With the model defaults (the demo task), a policy of one's own is refused; over
    the TL;DR preset it is just a field. A partial feedback section keeps the preset's
    provider (the cross-field rules never resolve it against the defaults)."""
    params = _flow_run_parameters(
        alt_run, "tldr_alt_rm", ["run_dir=r", 'config={"model": {"policy": "my/sft"}}']
    )
    config = config_from_preset("tldr_alt_rm", params["config"])
    assert config == load_config("tldr_alt_rm", overrides=["model.policy=my/sft"])
    params = _flow_run_parameters(
        alt_run, "hh_alt_lmc", ["run_dir=r", 'config={"feedback": {"judge": {"model": "j"}}}']
    )
    config = config_from_preset("hh_alt_lmc", params["config"])
    assert config.feedback.provider == "judge" and config.feedback.judge.model == "j"
    assert config.feedback.judge.template == load_config("hh_alt_lmc").feedback.judge.template


def test_a_dict_valued_field_is_replaced_not_merged():
    config = config_from_preset("demo", {"feedback": {"judge": {"extra_body": {"seed": 1}}}})
    assert config.feedback.judge.extra_body == {"seed": 1}
    again = config_from_preset("demo", {"feedback": {"judge": {"extra_body": {"top_p": 0.5}}}})
    assert again.feedback.judge.extra_body == {"top_p": 0.5}


def test_without_a_preset_the_config_is_the_whole_configuration():
    full = load_config("demo", overrides=["iterations=1"])
    assert config_from_preset(None, full) is full  # `alt run` passes its RunConfig through
    params = alt_run.validate_parameters({"config": full, "run_dir": "r"})
    assert params["config"] is full and params["preset"] is None
    partial = alt_run.validate_parameters({"config": {"name": "x"}, "run_dir": "r"})
    config = config_from_preset(None, partial["config"])
    assert config.training.learning_rate == 2e-5  # the model default, as asked


def test_an_unknown_preset_or_contradictory_fields_are_config_errors():
    with pytest.raises(ConfigError, match="unknown preset 'nope'; available presets: demo"):
        config_from_preset("nope", {})
    with pytest.raises(ConfigError, match="sampling.num_shards"):
        config_from_preset("demo", {"data": {"prompts_per_iteration": 1}})
    # A value outside its field's rules is refused by Prefect's validation already.
    with pytest.raises(ParameterTypeError, match="prompts_per_iteration"):
        alt_run.validate_parameters({"config": {"data": {"prompts_per_iteration": 1e18}}})
