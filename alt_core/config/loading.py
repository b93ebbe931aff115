"""Building a RunConfig: presets, YAML files, `key=value` overrides, and errors that say
what to change.

`load_config` reads a preset or a YAML file, applies the overrides and validates; every
problem becomes a `ConfigError` that names the field, the value (never under
feedback.judge) and what is allowed. `validate_config` validates a mapping the same way
and then runs `check_config_files`, the checks that read files and so are not pydantic
validators. Every YAML text is read by `load_yaml`, which refuses a key given twice (plain
PyYAML keeps the last one silently).

Around a run: `load_run_config` reads a run folder's recorded config.yaml back;
`config_from_preset` builds the config a deployed flow runs (a preset, with the flow's
`config` parameter on top); `absolute_paths` turns every local path in a config into an
absolute one, once, when the run starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from alt_core.config.judge import JudgeConfigError, template_is_path
from alt_core.config.models import RunConfig, RunSettings

PRESET_DIR = Path(__file__).parent / "presets"
# A preset is named by its file's stem: no path separators, no dots.
_PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class ConfigError(ValueError):
    """A configuration that cannot be run; the message says what to change."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


# --------------------------------------------------------------------------- YAML


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping gives one key twice."""

    def __init__(self, key: Any, node: yaml.Node, first_line: int) -> None:
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=node.start_mark)
        self.key, self.line, self.first_line = key, node.start_mark.line + 1, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Checked before the base class expands merge keys (`<<: *anchor`), whose keys a
        # mapping may override on purpose.
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKeyError(key, key_node, seen[key])
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base class says so
                pass
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse a YAML text safely; a key given twice raises `DuplicateKeyError`."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(exc: yaml.YAMLError, show_text: bool = True) -> str:
    """What is wrong with a YAML text and where, without quoting the text (PyYAML's own
    message prints the offending lines). show_text=False leaves out the key and the
    parser's words too, which may hold a fragment of the text: for files that may not be
    ours to show (a judge template path could point anywhere)."""
    if isinstance(exc, DuplicateKeyError):
        key = f"key {exc.key!r}" if show_text else "a key"
        return f"{key} is given twice (line {exc.first_line} and line {exc.line}); keep one"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
    problem = getattr(exc, "problem", None)
    return f"{problem} ({where})" if problem and show_text else f"syntax error at {where}"


def _parse_settings(text: str, where: str) -> dict[str, Any]:
    """A YAML text that must hold a mapping of settings; `where` names it in errors."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text file (not UTF-8)") from None
    return _parse_settings(text, f"{what} {path}")


def preset_path(preset: str) -> Path:
    """The file of a built-in preset; only names of files in PRESET_DIR resolve."""
    path = PRESET_DIR / f"{preset}.yaml"
    if not _PRESET_NAME.fullmatch(preset) or not path.is_file():
        raise ConfigError(
            f"unknown preset {preset!r}; available presets: {', '.join(list_presets())}"
        )
    return path


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML (numbers, booleans, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value, e.g. training.epochs=1")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except DuplicateKeyError as exc:
        raise ConfigError(f"override {item!r}: {yaml_problem(exc)}") from None
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
        data = _read_yaml(preset_path(preset), "preset")
    elif config_file:
        data = _read_yaml(Path(config_file), "config file")
    return validate_config(apply_overrides(data, list(overrides or [])))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- around a run


def read_config_text(text: str | bytes, where: str) -> RunConfig:
    """A run folder's recorded config (the text of `where`, its config.yaml) as a
    RunConfig. Whatever is wrong (not text, not YAML, a key twice, an invalid setting) is
    a ConfigError that names the file and the way out."""
    fix = (
        f"repair {where}, or record the settings anew with `alt run --preset NAME "
        "(or --config FILE) --run-dir <its run folder>` (work committed with the same "
        "settings is reused)"
    )
    try:
        if isinstance(text, bytes):
            text = text.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not a text file (not UTF-8); {fix}") from None
    try:
        return validate_config(_parse_settings(text, where))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}\n{fix}") from None


def load_run_config(uri: str) -> RunConfig:
    """Read a run folder's config.yaml (local or in the store) back; see `read_config_text`."""
    from alt_core import store

    return read_config_text(store.read_bytes(uri), uri)


def _merge_sections(base: dict[str, Any], top: Mapping[str, Any], model: type[BaseModel]):
    """`top` over `base`: a config section (a sub-model) is merged field by field, any
    other value (a list, a dict-valued field such as judge.extra_body) replaces the base's."""
    out = dict(base)
    for key, value in top.items():
        field = model.model_fields.get(key)
        section = field.annotation if field else None
        if (
            isinstance(section, type)
            and issubclass(section, BaseModel)
            and isinstance(value, Mapping)
            and isinstance(out.get(key), dict)
        ):
            out[key] = _merge_sections(out[key], value, section)
        else:
            out[key] = value
    return out


def config_from_preset(preset: str | None, settings: BaseModel | Mapping[str, Any]) -> RunConfig:
    """The config a deployed flow runs: the preset's settings with `settings` on top, then
    validated as a whole (cross-field rules and the judge template check included).

    For a model (a flow's `config` parameter), `settings` are the fields it sets: pydantic
    keeps `model_fields_set` in every nested section, and Prefect validates a parameter
    that arrives as JSON into the model, so the partial JSON `{"data":
    {"prompts_per_iteration": 128}}` overrides that one field and keeps the preset's other
    data settings. A mapping is an override tree of the same shape. A whole form (every
    field set) gives exactly that form. Without a preset, `settings` is the whole config:
    a RunConfig is returned as it is, and fields left out take the model defaults."""
    if preset is None:
        if isinstance(settings, RunConfig):
            return settings
        if isinstance(settings, BaseModel):
            settings = settings.model_dump(mode="json")
        return validate_config(dict(settings))
    if isinstance(settings, BaseModel):
        settings = settings.model_dump(mode="json", exclude_unset=True)
    base = _read_yaml(preset_path(preset), "preset")
    return validate_config(_merge_sections(base, settings, RunSettings))


def absolute_uri(path: str, base: str | Path | None = None) -> str:
    """An absolute local path for `path` (relative to `base`, default the working
    directory; `~` expanded); a URI (s3://, file://, ...) is returned as it is."""
    if "://" in path:
        return path
    return os.path.normpath(os.path.join(base or os.getcwd(), os.path.expanduser(path)))


# Config fields that are always local paths or URIs (folders and files the run reads or
# writes), and those that are paths only when they name something on disk (a model or a
# dataset may also be a hub name, such as gpt2 or Anthropic/hh-rlhf, which stays as it is).
_PATH_FIELDS = (
    "storage.cache_dir",
    "storage.local_scratch",
    "feedback.judge_cache",
    "data.train_path",
    "data.valid_path",
)
_MAYBE_PATH_FIELDS = (
    "model.policy",
    "model.reference",
    "model.tokenizer",
    "feedback.reward_model",
    "data.hf_dataset",
)
_BUILT_IN_MODEL = "demo"  # model.policy=demo: the built-in model, never a folder


def _is_local_path(value: str, base: Path) -> bool:
    if value == _BUILT_IN_MODEL or "://" in value:
        return False
    explicit = value.startswith(("/", "./", "../", "~")) or value in (".", "..")
    return explicit or (base / os.path.expanduser(value)).exists()


def absolute_paths(config: RunConfig, base: str | Path | None = None) -> RunConfig:
    """A copy of `config` with every local path absolute (relative ones taken against
    `base`, default the working directory): the run folder's cache and scratch folders,
    the judge cache, prompt files, a local dataset, local model folders and a judge
    template file. URIs (s3://), hub names and built-in names stay as they are. Called
    once where a run starts, so config.yaml records where the files are, and a resume
    from another directory finds the same ones; applying it again changes nothing."""
    root = Path(base) if base is not None else Path.cwd()
    out = config.model_copy(deep=True)
    template = out.feedback.judge.template
    if template_is_path(template) and "://" not in template:
        out.feedback.judge.template = absolute_uri(template, root)
    for dotted in (*_PATH_FIELDS, *_MAYBE_PATH_FIELDS):
        section_name, name = dotted.split(".")
        section = getattr(out, section_name)
        value = getattr(section, name)
        if value is None or "://" in value:
            continue
        if dotted in _PATH_FIELDS or _is_local_path(value, root):
            setattr(section, name, absolute_uri(value, root))
    return out
