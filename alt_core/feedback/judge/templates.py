"""Judge prompt templates: data files (alt_core/feedback/judge/templates/*.yaml) with their parser.

A template holds a system message, optional few-shot (user, assistant) pairs, a user
message with `{prompt}` and `{generation}` placeholders, the repair message sent after an
answer that does not parse (`{reason}` placeholder), and the parser name with its
settings. Placeholders are filled in one pass, so braces elsewhere (a JSON example in the
instructions) and placeholder-like text inside a prompt are left alone.

The content hash covers everything that changes what the judge is asked or how its answer
is read; it is part of the cache key, so editing a template never reuses stale answers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alt_core import store
from alt_core.config.judge import JudgeConfigError
from alt_core.feedback.judge.parsers import Judgement, make_parser

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
_PLACEHOLDER = re.compile(r"\{(prompt|generation|reason)\}")


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

    @model_validator(mode="after")
    def _check(self) -> JudgeTemplate:
        if "{generation}" not in self.user:
            raise ValueError("the user message must contain the {generation} placeholder")
        if "{reason}" not in self.repair:
            raise ValueError("the repair message must contain the {reason} placeholder")
        make_parser(self.parser, self.settings)  # rejects unknown parsers and bad settings
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
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if looks_like_path:
        source = name_or_path
        if store.is_remote(source):
            raw = store.read_bytes(source).decode()
        elif Path(source).is_file():
            raw = Path(source).read_text()
        else:
            raise JudgeConfigError(f"judge template file not found: {source}")
    else:
        path = TEMPLATE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise JudgeConfigError(
                f"unknown judge template {name_or_path!r}; built-in templates: "
                f"{', '.join(list_templates())} (or give a path to a YAML file)"
            )
        source, raw = str(path), path.read_text()
    try:
        data = yaml.safe_load(raw)
        return JudgeTemplate.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise JudgeConfigError(f"judge template {source} is invalid: {exc}") from None
