"""Config loading: presets, overrides, and errors that name the field and the fix."""

from __future__ import annotations

import pytest

from alt_core.config import (
    ConfigError,
    Method,
    RunConfig,
    list_presets,
    load_config,
)


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_loads_and_opens_with_its_command(preset):
    from alt_core.config import PRESET_DIR

    config = load_config(preset=preset)
    assert isinstance(config, RunConfig)
    first_line = (PRESET_DIR / f"{preset}.yaml").read_text().splitlines()[0]
    assert first_line.startswith("#"), "a preset starts with a comment"
    assert f"--preset {preset}" in (PRESET_DIR / f"{preset}.yaml").read_text()


def test_overrides_are_typed_and_nested():
    config = load_config("demo", overrides=["method=quark", "iterations=2", "training.epochs=1"])
    assert config.method is Method.QUARK
    assert config.iterations == 2
    assert config.training.epochs == 1


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ConfigError, match=r"training\.learnin_rate: unknown setting"):
        load_config("demo", overrides=["training.learnin_rate=1e-4"])


def test_bad_value_names_field_value_and_rule():
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=["training.learning_rate=-1"])
    assert "training.learning_rate" in str(err.value)
    assert "-1" in str(err.value)
    assert "greater than 0" in str(err.value)


def test_unknown_method_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=["method=ppo"])
    for allowed in ("quark", "alt_rm", "alt_lmu", "alt_lmc", "steerlm"):
        assert allowed in str(err.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*demo"):
        load_config("nope")


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(config_file=str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [alt_rm\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_file=str(bad))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(config_file=str(scalar))


def test_more_shards_than_prompts_is_refused():
    with pytest.raises(ConfigError, match="sampling.num_shards"):
        load_config("demo", overrides=["data.prompts_per_iteration=2", "sampling.num_shards=4"])


def test_method_and_provider_must_agree():
    with pytest.raises(ConfigError, match="needs a scalar reward"):
        load_config("demo", overrides=["feedback.provider=rule_critic"])
    with pytest.raises(ConfigError, match="needs textual feedback"):
        load_config("demo", overrides=["method=alt_lmu", "feedback.provider=sentiment"])
    # On the demo, `auto` picks the provider each method needs.
    assert load_config("demo", overrides=["method=alt_lmu"]).feedback.provider == "rule_critic"
    assert load_config("demo").feedback.provider == "sentiment"


def test_phrases_must_match_quantiles():
    with pytest.raises(ConfigError, match="one per quantile"):
        load_config("demo", overrides=["datapool.num_quantiles=3"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("demo", overrides=["iterations"])


def test_section_hash_is_stable_and_selective():
    from alt_core.pipeline.fingerprints import config_identity, digest

    def section_hash(config, *sections):
        return digest(config_identity(config, sections))

    a = load_config("demo")
    b = load_config("demo", overrides=["training.epochs=5"])
    assert section_hash(a, "sampling") == section_hash(b, "sampling")
    assert section_hash(a, "training") != section_hash(b, "training")


def test_cli_takes_overrides_before_and_after_options(capsys):
    from deployments.cli import main

    assert main(["config", "iterations=2", "--preset", "demo", "seed=5"]) == 0
    out = capsys.readouterr().out
    assert "iterations: 2" in out and "seed: 5" in out
    with pytest.raises(SystemExit):
        main(["presets", "--bogus"])
