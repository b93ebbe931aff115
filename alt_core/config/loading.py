"""Building a RunConfig: presets, YAML files, `key=value` overrides, and errors that say
what to change.

`load_config` reads a preset or a YAML file, applies the overrides and validates; every
problem becomes a `ConfigError` that names the field, the value (never under
feedback.judge) and what is allowed. `validate_config` validates a mapping the same way
and then runs `check_config_files`, the checks that read files and so are not pydantic
validators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from alt_core.config.judge import JudgeConfigError
from alt_core.config.models import RunConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration that cannot be run; the message says what to change."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} {path} must hold a mapping of settings, got {type(data).__name__}"
        )
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML (numbers, booleans, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value, e.g. training.epochs=1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


# Values under these config paths are never echoed in errors: the judge section is
# where an API key pasted into the wrong field would land.
_HIDDEN_INPUTS = (("feedback", "judge"),)


def _shown_input(err: Any) -> str:
    """' (got VALUE)' for an error's input, or '' where showing it could leak a secret:
    under feedback.judge, or a whole section (a mapping, which may hold the judge's)."""
    loc = tuple(str(p) for p in err["loc"])
    if any(loc[: len(hidden)] == hidden for hidden in _HIDDEN_INPUTS):
        return " (value hidden)"
    value = err.get("input")
    if "input" not in err or isinstance(value, dict | BaseModel):
        return ""
    return f" (got {value!r})"


def _problems(lines: list[str]) -> str:
    return "\n".join([f"invalid configuration ({len(lines)} problem(s)):", *lines])


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown setting (check the spelling; see `alt config --help`)")
        elif err["type"] in ("model_type", "dict_type"):
            lines.append(f"  {loc}: must be a mapping of settings{_shown_input(err)}")
        else:
            lines.append(f"  {loc}: {msg}{_shown_input(err)}")
    return _problems(lines)


def check_config_files(config: RunConfig) -> None:
    """The checks that read files, run before any work: the judge template (built-in or a
    local file) must be one the method's parser reads. `validate_config` calls this; call
    it too for a RunConfig built otherwise (a Prefect flow parameter)."""
    # Imported here: the judge package (httpx, pandas) is not needed to read a config.
    from alt_core.feedback.judge.provider import check_judge_template

    try:
        check_judge_template(config)
    except JudgeConfigError as exc:
        raise ConfigError(_problems([f"  feedback.judge.template: {exc}"])) from None


def validate_config(data: dict[str, Any]) -> RunConfig:
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    check_config_files(config)
    return config


def load_config(
    preset: str | None = None, config_file: str | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Build a RunConfig from a preset or a YAML file, then `key=value` overrides."""
    if preset and config_file:
        raise ConfigError("give either --preset or --config, not both")
    data: dict[str, Any] = {}
    if preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"unknown preset {preset!r}; available presets: {', '.join(list_presets())}"
            )
        data = _read_yaml(path, "preset")
    elif config_file:
        data = _read_yaml(Path(config_file), "config file")
    return validate_config(apply_overrides(data, list(overrides or [])))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
