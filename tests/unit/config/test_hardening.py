"""Config hardening: a key given twice, numbers that are not finite or out of bounds,
preset and template names that leave their folders, and errors that never quote a file
that may not be a template."""

from __future__ import annotations

import json

import pytest

from alt_core.config import (
    PRESET_DIR,
    ConfigError,
    RunConfig,
    dump_config,
    list_presets,
    load_config,
    load_run_config,
    validate_config,
)
from alt_core.feedback.judge.templates import TEMPLATE_DIR, load_template

SECRET = "sk-PLANTED-7f3a9c2e"


def _write(path, text):
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------ duplicate keys


def test_duplicate_key_in_a_config_file_names_key_lines_and_file(tmp_path):
    path = _write(tmp_path / "dup.yaml", "name: a\ntraining:\n  epochs: 1\n  epochs: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(config_file=path)
    msg = str(err.value)
    assert path in msg
    assert "key 'epochs' is given twice (line 3 and line 4)" in msg


def test_duplicate_key_in_a_preset_is_refused(tmp_path, monkeypatch):
    import alt_core.config.loading as loading

    _write(tmp_path / "twice.yaml", "name: a\nname: b\n")
    monkeypatch.setattr(loading, "PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"preset .*twice\.yaml .*key 'name' is given twice"):
        load_config("twice")


def test_a_binary_config_file_is_named_not_decoded(tmp_path):
    path = tmp_path / "blob.yaml"
    path.write_bytes(b"\xff\xfe\x00" + SECRET.encode())
    with pytest.raises(ConfigError) as err:
        load_config(config_file=str(path))
    assert str(err.value) == f"config file {path} is not a text file (not UTF-8)"


def test_merge_keys_are_not_duplicates(tmp_path):
    path = _write(tmp_path / "merge.yaml", "training:\n  <<: {epochs: 1}\n  epochs: 2\n")
    assert load_config(config_file=path).training.epochs == 2


def test_duplicate_key_in_an_override_value_is_refused():
    with pytest.raises(ConfigError, match=r"override .*key 'seed' is given twice"):
        load_config("demo", overrides=["feedback.judge.extra_body={seed: 1, seed: 2}"])


def test_duplicate_key_in_a_run_config_yaml(tmp_path):
    run_config = tmp_path / "config.yaml"
    run_config.write_text(dump_config(load_config("demo")) + "seed: 3\n")
    with pytest.raises(ConfigError) as err:
        load_run_config(str(run_config))
    msg = str(err.value)
    assert str(run_config) in msg and "key 'seed' is given twice" in msg
    assert "repair" in msg and "--run-dir" in msg


# ------------------------------------------------------------------ garbage config.yaml


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe\x00garbage", "not a text file"),
        (b"name: [demo\n", "not valid YAML"),
        (b"just words\n", "must hold a mapping"),
        (b"iterations: -3\n", "iterations"),
    ],
)
def test_a_garbage_run_config_is_a_config_error_naming_file_and_fix(tmp_path, content, problem):
    run_config = tmp_path / "config.yaml"
    run_config.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_run_config(str(run_config))
    msg = str(err.value)
    assert str(run_config) in msg and problem in msg
    assert "repair" in msg and "alt run" in msg


def test_alt_status_and_resume_report_a_garbage_config_without_a_traceback(tmp_path, capsys):
    from alt_core.pipeline.status import run_status
    from deployments.cli import main

    (tmp_path / "config.yaml").write_bytes(b"name: [demo\n")
    for command in ("status", "resume"):
        assert main([command, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path}/config.yaml" in err and "not valid YAML" in err
        assert "Traceback" not in err
    with pytest.raises(ConfigError, match="not valid YAML"):
        run_status(str(tmp_path))


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    "value", [".inf", "-.inf", ".nan", "nan", "1e23", "1.0e+23", "2.5", "true"]
)
def test_counts_are_integers_only(value):
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=[f"data.prompts_per_iteration={value}"])
    assert "data.prompts_per_iteration: Input should be a valid integer" in str(err.value)


def test_json_floats_are_not_counts():
    """A JSON client (the Prefect API) sends 1e18 as a float; lax pydantic would take it as
    the int 10**18."""
    data = load_config("demo").model_dump(mode="json")
    data["data"]["prompts_per_iteration"] = json.loads("1e18")
    with pytest.raises(ConfigError, match="data.prompts_per_iteration: Input should be a valid"):
        validate_config(data)


def test_counts_have_upper_bounds():
    with pytest.raises(ConfigError, match=r"data.prompts_per_iteration: .*less than or equal"):
        load_config("demo", overrides=["data.prompts_per_iteration=1000000000000"])
    with pytest.raises(ConfigError, match=r"seed: .*less than or equal"):
        load_config("demo", overrides=[f"seed={2**64}"])


@pytest.mark.parametrize(
    "field", ["training.learning_rate", "training.kl_coef", "sampling.cpu_kvcache_gib"]
)
@pytest.mark.parametrize("value", [".inf", ".nan", "nan", "inf"])
def test_floats_are_finite(field, value):
    with pytest.raises(ConfigError, match=rf"{field}: Input should be a finite number"):
        load_config("demo", overrides=[f"{field}={value}"])


def test_judge_numbers_are_finite_and_hidden():
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=["feedback.judge.requests_per_minute=.inf"])
    assert "feedback.judge.requests_per_minute: Input should be a finite number" in str(err.value)
    assert "inf" not in str(err.value).split("finite number")[1]  # the value stays hidden
    with pytest.raises(ConfigError, match="feedback.judge.max_tokens: Input should be a valid"):
        load_config("demo", overrides=["feedback.judge.max_tokens=1.0e+23"])


def test_learning_rate_has_an_upper_bound():
    with pytest.raises(ConfigError, match=r"training.learning_rate: .*less than or equal to 1"):
        load_config("demo", overrides=["training.learning_rate=1e23"])


def test_every_count_field_documents_an_upper_bound():
    """Every integer field of the form (the JSON schema the Prefect UI shows) has a
    maximum, and refuses a float."""
    schema = RunConfig.model_json_schema()
    counts = {}
    for model, spec in [("RunConfig", schema), *schema["$defs"].items()]:
        for name, prop in spec.get("properties", {}).items():
            options = prop.get("anyOf", [prop])
            integer = [o for o in options if o.get("type") == "integer"]
            if integer and "enum" not in prop:
                counts[f"{model}.{name}"] = integer[0]
    assert {"DataConfig.prompts_per_iteration", "DataConfig.num_valid_prompts"} <= set(counts)
    assert {"JudgeConfig.max_tokens", "TrainingConfig.checkpoint_every", "RunConfig.seed"} <= set(
        counts
    )
    assert len(counts) >= 30
    assert not [name for name, prop in counts.items() if "maximum" not in prop]


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_is_within_the_bounds(preset):
    config = load_config(preset)
    assert validate_config(config.model_dump(mode="json")) == config


# ------------------------------------------------------------------ names and files


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "../presets/demo", "demo/../demo", "demo.yaml", ".", "", "/demo"]
)
def test_preset_names_resolve_only_inside_the_preset_folder(name):
    with pytest.raises(ConfigError) as err:
        load_config(name or "x y")
    assert f"unknown preset {(name or 'x y')!r}; available presets: " in str(err.value)
    assert all(p in str(err.value) for p in list_presets())
    assert (PRESET_DIR / "demo.yaml").is_file()


@pytest.mark.parametrize("name", ["..", "../templates/tldr_lmu", "tldr_lmu\\..", ".hidden"])
def test_built_in_template_names_resolve_only_inside_the_templates_folder(name):
    from alt_core.config import JudgeConfigError

    with pytest.raises(JudgeConfigError) as err:
        load_template(name)
    if "/" not in name:  # a name with a separator is a file path: "not found"
        assert "unknown judge template" in str(err.value)
        assert "tldr_lmu" in str(err.value)  # the built-in list
    assert (TEMPLATE_DIR / "tldr_lmu.yaml").is_file()


_NOT_TEMPLATES = {
    "passwd": f"root:x:0:0:{SECRET}:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/false\n",
    "env.yaml": f"OPENAI_API_KEY: {SECRET}\n{SECRET}: 1\n",
    "broken.yaml": f"key: [{SECRET}\n",
    "tab.yaml": f"a:\n\t{SECRET}: 1\n",
    "twice.yaml": f"{SECRET}: 1\n{SECRET}: 2\n",
    "parser.yaml": f"name: x\nparser: {SECRET}\nsystem: s\nuser: '{{generation}}'\n"
    "repair: '{reason}'\n",
    "settings.yaml": "name: x\nparser: steerlm\nsystem: s\nuser: '{generation}'\n"
    f"repair: '{{reason}}'\nsettings: {{attributes: {{{SECRET}: [3, 1]}}}}\n",
    "types.yaml": f"name: {SECRET}\nparser: lmu\nsystem: [{SECRET}]\nuser: x\nrepair: x\n",
}


@pytest.mark.parametrize("file_name", sorted(_NOT_TEMPLATES))
def test_an_invalid_template_file_is_named_but_never_quoted(tmp_path, file_name):
    path = _write(tmp_path / file_name, _NOT_TEMPLATES[file_name])
    overrides = [
        "method=alt_lmu",
        "feedback.provider=judge",
        f"feedback.judge.template={path}",
    ]
    with pytest.raises(ConfigError) as err:
        load_config("demo", overrides=overrides)
    msg = str(err.value)
    assert "feedback.judge.template" in msg and path in msg and "is invalid" in msg
    assert SECRET not in msg
    assert SECRET not in repr(err.value.__cause__) and err.value.__suppress_context__


def test_a_binary_template_file_is_refused_without_its_bytes(tmp_path):
    from alt_core.config import JudgeConfigError

    path = tmp_path / "blob.yaml"
    path.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(JudgeConfigError) as err:
        load_template(str(path))
    assert "not a text file" in str(err.value) and SECRET not in str(err.value)


def test_a_valid_template_file_given_by_path_still_loads(tmp_path):
    text = (TEMPLATE_DIR / "tldr_lmu.yaml").read_text()
    path = _write(tmp_path / "mine.yaml", text)
    assert load_template(path) == load_template("tldr_lmu")
