"""Judge prompt templates: data files (alt_core/feedback/judge/templates/*.yaml) with their parser.

A template holds a system message, optional few-shot (user, assistant) pairs, a user
message with `{prompt}` and `{generation}` placeholders, the repair message sent after an
answer that does not parse (`{reason}` placeholder), and the parser name with its
settings. Placeholders are filled in one pass, so braces elsewhere (a JSON example in the
instructions) and placeholder-like text inside a prompt are left alone.

The content hash covers everything that changes what the judge is asked or how its answer
is read; it is part of the cache key, so editing a template never reuses stale answers.

A built-in name resolves only to a file of the templates folder. A template file given by
path may be any file, so an error about one never quotes it: it names the line, or the
field and pydantic's rule, and leaves out the file's keys and values.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from alt_core import store
from alt_core.config.judge import JudgeConfigError, template_is_path
from alt_core.config.loading import load_yaml, yaml_problem
from alt_core.feedback.judge.parsers import PARSERS, Judgement, make_parser

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
_PLACEHOLDER = re.compile(r"\{(prompt|generation|reason)\}")
_BUILT_IN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# This module's own messages (safe to show: they quote nothing from the file).
_TEMPLATE_ERROR = "template"


def _refuse(problem: str) -> PydanticCustomError:
    return PydanticCustomError(_TEMPLATE_ERROR, "{problem}", {"problem": problem})


class FewShot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(..., description="An example request, written out in full.")
    assistant: str = Field(..., description="The answer the judge should give to it.")


class JudgeTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Template name.")
    description: str = Field("", description="What the template judges (not hashed).")
    parser: str = Field(..., description="Parser of the answers: lmu, lmc or steerlm.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Parser settings.")
    system: str = Field(..., description="System message.")
    few_shot: list[FewShot] = Field(default_factory=list, description="Worked examples.")
    user: str = Field(..., description="User message with {prompt} and {generation}.")
    repair: str = Field(..., description="Follow-up after an unparseable answer; has {reason}.")

    @field_validator("parser")
    @classmethod
    def _known_parser(cls, value: str) -> str:
        if value not in PARSERS:
            raise _refuse(f"unknown parser; known parsers: {', '.join(PARSERS)}")
        return value

    @model_validator(mode="after")
    def _check(self) -> JudgeTemplate:
        if "{generation}" not in self.user:
            raise _refuse("the user message must contain the {generation} placeholder")
        if "{reason}" not in self.repair:
            raise _refuse("the repair message must contain the {reason} placeholder")
        try:
            make_parser(self.parser, self.settings)
        except ValidationError as exc:
            raise _refuse(
                f"settings do not suit the {self.parser} parser: "
                + "; ".join(_problems(exc, prefix="settings"))
            ) from None
        return self

    # Computed on each use rather than cached: `model_copy(update=...)` would carry a
    # cached value over to a template with different content.
    @property
    def content_hash(self) -> str:
        content = self.model_dump(mode="json", exclude={"description"})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def parser_fn(self) -> Callable[[str], Judgement]:
        """The answer parser bound to this template's settings."""
        return make_parser(self.parser, self.settings)

    def parse(self, answer: str) -> Judgement:
        """Parse one answer; raises ParseError with a reason."""
        return self.parser_fn()(answer)

    def messages(self, prompt: str, generation: str) -> list[dict[str, str]]:
        """The chat messages that ask for one judgement."""
        out = [{"role": "system", "content": self.system}]
        for shot in self.few_shot:
            out += [
                {"role": "user", "content": shot.user},
                {"role": "assistant", "content": shot.assistant},
            ]
        out.append(
            {"role": "user", "content": fill(self.user, prompt=prompt, generation=generation)}
        )
        return out

    def repair_messages(
        self, messages: list[dict[str, str]], answer: str, reason: str
    ) -> list[dict[str, str]]:
        """The conversation continued with the bad answer and a request for the format."""
        return [
            *messages,
            {"role": "assistant", "content": answer},
            {"role": "user", "content": fill(self.repair, reason=reason)},
        ]


def fill(template: str, **values: str) -> str:
    """Replace {prompt}, {generation} and {reason} in one pass (other braces stay)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def list_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


def load_template(name_or_path: str) -> JudgeTemplate:
    """A built-in template by name, or a template file (local path or store URI)."""
    if template_is_path(name_or_path):
        source = name_or_path
        if store.is_remote(source):
            data = store.read_bytes(source)
        elif Path(source).is_file():
            data = Path(source).read_bytes()
        else:
            raise JudgeConfigError(f"judge template file not found: {source}")
        return _parse(data, source, quote=False)
    path = TEMPLATE_DIR / f"{name_or_path}.yaml"
    if not _BUILT_IN_NAME.fullmatch(name_or_path) or not path.is_file():
        raise JudgeConfigError(
            f"unknown judge template {name_or_path!r}; built-in templates: "
            f"{', '.join(list_templates())} (or give a path to a YAML file)"
        )
    return _parse(path.read_bytes(), str(path), quote=True)


def _parse(data: bytes, source: str, quote: bool) -> JudgeTemplate:
    """The template in `data`; a JudgeConfigError names `source` and what is wrong (with
    the YAML parser's words only when `quote`, for a built-in template)."""
    invalid = f"judge template {source} is invalid"
    try:
        raw = load_yaml(data.decode())
    except UnicodeDecodeError:
        raise JudgeConfigError(f"{invalid}: not a text file (not UTF-8)") from None
    except yaml.YAMLError as exc:
        raise JudgeConfigError(f"{invalid}: not valid YAML, {yaml_problem(exc, quote)}") from None
    if not isinstance(raw, dict):
        raise JudgeConfigError(
            f"{invalid}: it must hold a mapping of template fields "
            f"({', '.join(JudgeTemplate.model_fields)}), not a {type(raw).__name__}"
        )
    try:
        return JudgeTemplate.model_validate(raw)
    except ValidationError as exc:
        raise JudgeConfigError(f"{invalid}: " + "; ".join(_problems(exc))) from None


# Field names that may appear in an error's location; any other key came from the file.
_MODELS: tuple[type[BaseModel], ...] = (JudgeTemplate, FewShot, *(m for m, _ in PARSERS.values()))
_FIELD_NAMES = frozenset(name for model in _MODELS for name in model.model_fields)
# Quoted or bracketed text in a message: where a validator shows the value it refuses.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]")


def _problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """'field: rule' for each error, quoting nothing from the file: a key that is not a
    field name shows as <key>, and a message of a validator outside this module loses
    its quoted parts, shown as <value> (pydantic's own messages never hold the input)."""
    out = []
    for err in exc.errors():
        parts = [prefix] if prefix else []
        parts += [
            str(p) if isinstance(p, int) or p in _FIELD_NAMES else "<key>" for p in err["loc"]
        ]
        loc = ".".join(parts) or "<top level>"
        if err["type"] == "extra_forbidden":
            out.append(f"{loc}: unknown field (its name is not shown)")
        elif err["type"] == _TEMPLATE_ERROR:
            out.append(f"{loc}: {err['msg']}" if err["loc"] else err["msg"])
        elif err["type"] == "value_error":
            out.append(f"{loc}: {_QUOTED.sub('<value>', err['msg'].removeprefix('Value error, '))}")
        else:
            out.append(f"{loc}: {err['msg']}")
    return out
