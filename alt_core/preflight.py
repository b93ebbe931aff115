"""Preflight: check what a run needs before any engine starts, and write nothing.

`preflight(config, run_dir, writes=...)` runs every check, collects every failure and
raises one `PreflightError` that lists them all (so a user fixes everything in one go
instead of meeting the problems one run at a time); each `Problem` is one line naming
what is wrong, where (the path, URI or URL) and the fix. What could not be checked is
returned as notes, never silently skipped.

- the run folder: `writes=True` (run, resume, the deployed flows): it can be created and
  written (`alt_core.store.check_writable`: for s3:// the bucket exists, the credentials
  are accepted, a test object is written and deleted); `writes=False` (status): it exists
  and can be read, and nothing else is checked (a judge that is down must not keep
  anyone from looking at a run);
- the models (policy, reference, tokenizer, reward model): a local folder exists and
  holds a config.json (or is a committed store folder); a hub name is in the local
  Hugging Face cache or, unless HF_HUB_OFFLINE is set, the hub knows it (one metadata
  request with a short timeout). `model.policy: demo` is built on first use: no check;
- the LLM judge, when the run uses one: one GET {base_url}/models with a short timeout
  (unreachable, a refused key and a model the judge does not serve are failures);
- the Perspective API, when the run scores with it and its key is in the environment: one
  comments:analyze request for a short text (unreachable, a refused key and an answer
  without the attribute's score are failures); without the key, a note that it was not
  checked;
- the prompt data: every prompt file loads with its prompt column (`alt_core.data`); a
  `datasets` data set exists (a local folder, or the hub knows it).

A local run folder that does not exist is created and removed again by the check, so a
failed preflight leaves nothing behind.

A command that checks before it starts a flow in its own process (`alt run`, `alt
resume`) does so inside `checked(...)`: while it runs, the flow's own preflight of the
same config and folder (which a run started from the UI needs) returns at once instead
of asking the store, the hub and the judge a second time.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alt_core import store
from alt_core.config import JudgeConfig, RunConfig
from alt_core.config.toxicity import PerspectiveConfig

# One request to the hub or the judge waits this long at most.
HUB_TIMEOUT_S = 10.0
JUDGE_TIMEOUT_S = 5.0
_MODEL_FILES = ("config.json", store.DIR_COMMIT)
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json", store.DIR_COMMIT)
_BUILT_IN_MODEL = "demo"


@dataclass(frozen=True)
class Problem:
    """One failed check: `message` is the whole line shown to the user."""

    what: str  # the input: "run folder", "model.policy", "judge", "data.train_path", ...
    where: str  # its path, URI or URL
    message: str  # what is wrong there, and the fix

    def __str__(self) -> str:
        return self.message


class PreflightError(ValueError):
    """The run cannot start; `problems` holds every failed check, one line each."""

    def __init__(self, problems: list[Problem]):
        if not problems:
            raise ValueError("PreflightError needs at least one problem")
        self.problems = list(problems)
        if len(problems) == 1:
            text = problems[0].message
        else:
            lines = "\n".join(f"  - {p.message}" for p in problems)
            text = f"{len(problems)} problems found before the run started:\n{lines}"
        super().__init__(text)


# The checks that passed in this process, while the command that ran them runs its flow.
_PASSED: set[tuple[str, str, bool]] = set()
_PASSED_LOCK = threading.Lock()


def _key(config: RunConfig | None, run_dir: str, writes: bool) -> tuple[str, str, bool]:
    return (config.model_dump_json() if config is not None else "", run_dir, writes)


@contextlib.contextmanager
def checked(config: RunConfig | None, run_dir: str, *, writes: bool) -> Iterator[list[str]]:
    """Run `preflight` and yield its notes; inside the block, a preflight of the same
    config, folder and `writes` in this process passes without checking again (and
    returns no notes: these were shown here)."""
    notes = preflight(config, run_dir, writes=writes)
    key = _key(config, run_dir, writes)
    with _PASSED_LOCK:
        held = key in _PASSED
        _PASSED.add(key)
    try:
        yield notes
    finally:
        if not held:
            with _PASSED_LOCK:
                _PASSED.discard(key)


def preflight(config: RunConfig | None, run_dir: str, *, writes: bool) -> list[str]:
    """Check the run folder and, with `writes` and a config, every input the run reads;
    raise PreflightError listing every failure, else return notes on what was not checked.
    Inside `checked(...)` of the same arguments: no check, no notes."""
    with _PASSED_LOCK:
        if _key(config, run_dir, writes) in _PASSED:
            return []
    problems: list[Problem] = []
    notes: list[str] = []
    folder = _run_folder(run_dir) if writes else _readable_folder(run_dir)
    problems += [folder] if folder else []
    if writes and config is not None:
        problems += _models(config)
        if config.feedback.provider == "judge":
            judge, note = check_judge(config.feedback.judge)
            problems += [judge] if judge else []
            notes += [note] if note else []
        if config.feedback.provider == "perspective":
            api, note = check_perspective(config.feedback.toxicity.perspective)
            problems += [api] if api else []
            notes += [note] if note else []
        data, data_notes = _prompt_data(config)
        problems += data
        notes += data_notes
    if problems:
        raise PreflightError(problems)
    return notes


# ---------------------------------------------------------------------------- run folder


def _run_folder(run_dir: str) -> Problem | None:
    try:
        store.check_writable(run_dir)
    except store.StoreError as exc:
        return Problem("run folder", run_dir, str(exc))
    return None


def _readable_folder(run_dir: str) -> Problem | None:
    if store.is_remote(run_dir):
        try:
            found = store.exists(run_dir)
        except (store.StoreError, OSError) as exc:
            return Problem("run folder", run_dir, f"run folder {run_dir} cannot be read: {exc}")
        if not found:
            return Problem(
                "run folder",
                run_dir,
                f"run folder {run_dir} does not exist (nothing is stored under it); check the "
                "bucket and the path",
            )
        return None
    path = Path(run_dir.removeprefix("file://"))
    if not path.exists():
        why = "does not exist"
    elif not path.is_dir():
        why = "is a file, not a run folder"
    elif not os.access(path, os.R_OK | os.X_OK):
        why = f"cannot be read by this user ({os.getuid()})"
    else:
        return None
    return Problem("run folder", run_dir, f"run folder {path} {why}; check the path")


# -------------------------------------------------------------------------------- models


def _models(config: RunConfig) -> list[Problem]:
    fields: list[tuple[str, str, tuple[str, ...]]] = [
        ("model.policy", config.model.policy, _MODEL_FILES)
    ]
    if config.model.reference:
        fields.append(("model.reference", config.model.reference, _MODEL_FILES))
    if config.model.tokenizer:
        fields.append(("model.tokenizer", config.model.tokenizer, _TOKENIZER_FILES))
    if config.feedback.provider == "reward_model" and config.feedback.reward_model:
        fields.append(("feedback.reward_model", config.feedback.reward_model, _MODEL_FILES))
    problems = [check_model(field, value, files) for field, value, files in fields]
    return [p for p in problems if p]


def check_model(field: str, value: str, files: tuple[str, ...] = _MODEL_FILES) -> Problem | None:
    """Whether `value` (the config field `field`) names a model the engines can load: a
    local or store folder holding one of `files`, or a hub name that resolves."""
    if value == _BUILT_IN_MODEL:
        return None
    if store.is_remote(value):
        try:
            found = any(store.exists(store.join(value, name)) for name in files)
        except (store.StoreError, OSError) as exc:
            return Problem(field, value, f"{field} {value} cannot be read: {exc}")
        if found:
            return None
        return Problem(
            field,
            value,
            f"{field} {value} holds no model (no {' or '.join(files)}); point {field} at a "
            "checkpoint folder",
        )
    path = Path(value).expanduser()
    if path.is_absolute() or value.startswith(".") or value.count("/") > 1 or path.exists():
        return _local_model(field, path, files)
    return _hub_model(field, value, files[0], repo_type="model")


def _local_model(field: str, path: Path, files: tuple[str, ...]) -> Problem | None:
    if not path.exists():
        why = "does not exist"
    elif not path.is_dir():
        why = "is a file, not a model folder"
    elif not any((path / name).is_file() for name in files):
        why = f"is not a model folder (no {files[0]})"
    else:
        return None
    return Problem(
        field,
        str(path),
        f"{field} {path} {why}; point {field} at a checkpoint folder (with {files[0]}) or a "
        "Hugging Face hub name",
    )


def _hub_model(field: str, name: str, filename: str, repo_type: str) -> Problem | None:
    """A hub name resolves from the local cache, else (online) from one metadata request."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(name, filename, repo_type=repo_type)
    except HFValidationError:  # not a repository id: a local path that is not there
        return _local_model(field, Path(name), (filename,))
    if isinstance(cached, str):
        return None
    kind = "data set" if repo_type == "dataset" else "model"
    if constants.is_offline_mode():
        return Problem(
            field,
            name,
            f"{field} {name!r} is neither a local folder nor in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set: download the {kind} "
            f"(`hf download {name}`{' --repo-type dataset' if repo_type == 'dataset' else ''}) "
            f"where the hub can be reached, point {field} at a local folder, or unset "
            "HF_HUB_OFFLINE",
        )
    api = HfApi()
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        info(name, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return Problem(
            field,
            name,
            f"{field} {name!r} is a gated {kind} on the Hugging Face hub: accept its terms and "
            "set HF_TOKEN, or point it at a local folder",
        )
    except RepositoryNotFoundError:
        return Problem(
            field,
            name,
            f"{field} {name!r} is neither a local folder nor a {kind} on the Hugging Face hub; "
            "fix the name or the path",
        )
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        return Problem(
            field,
            name,
            f"{field} {name!r} is not a local folder, not in the Hugging Face cache, and the "
            f"hub did not answer ({type(exc).__name__}); check the network, or download it "
            "and set HF_HUB_OFFLINE=1",
        )
    return None


# --------------------------------------------------------------------------------- judge


def check_judge(judge: JudgeConfig) -> tuple[Problem | None, str | None]:
    """One GET {base_url}/models: the judge answers, takes the key and serves the model.
    Returns a problem, or a note on what was not checked. The key is never in either."""
    import httpx

    url, env = f"{judge.base_url}/models", judge.api_key_env
    key = None if judge.api_key_secret_block else os.environ.get(env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = min(judge.timeout_s, JUDGE_TIMEOUT_S)
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        why = (
            f"did not answer in {timeout:g} s"
            if isinstance(exc, httpx.TimeoutException)
            else f"cannot be reached ({type(exc).__name__}: {exc})"
        )
        fix = "start the judge, or fix feedback.judge.base_url"
        return _judge_problem(judge, f"the judge at {url} {why}; {fix}"), None
    code = response.status_code
    if code in (401, 403):
        if judge.api_key_secret_block:
            return None, (
                "judge: the API key was not checked (it comes from the Prefect Secret block "
                f"{judge.api_key_secret_block!r}, read when the feedback stage starts)"
            )
        if key:
            return _judge_problem(
                judge,
                f"the judge at {judge.base_url} rejected the API key (env var {env}, HTTP "
                f"{code}); put a valid key in {env}",
            ), None
        return _judge_problem(
            judge,
            f"the judge at {judge.base_url} asks for an API key (HTTP {code}) and {env} is "
            f"unset; set {env} (feedback.judge.api_key_env names the variable)",
        ), None
    if code >= 400:  # not every server lists its models; it answered, which is what counts
        return None, f"judge: {url} answered HTTP {code}; the model name was not checked"
    served = _served_models(response)
    if served and judge.model not in served:
        return _judge_problem(
            judge,
            f"the judge at {judge.base_url} does not serve model {judge.model!r} (it serves "
            f"{', '.join(sorted(served)[:10])}); fix feedback.judge.model",
        ), None
    return None, None


def _judge_problem(judge: JudgeConfig, message: str) -> Problem:
    return Problem("judge", judge.base_url, message)


def _served_models(response) -> set[str]:
    try:
        data = response.json().get("data", [])
        return {str(m["id"]) for m in data if isinstance(m, dict) and "id" in m}
    except (ValueError, AttributeError, TypeError):
        return set()


# --------------------------------------------------------------------------- perspective

_PERSPECTIVE_FIELD = "feedback.toxicity.perspective"


def check_perspective(api: PerspectiveConfig) -> tuple[Problem | None, str | None]:
    """One comments:analyze request for a short text, when the key is in the environment:
    the API answers, takes the key and scores the attribute. Returns a problem, or a note
    on what was not checked. The key is never in either (it travels in a header)."""
    import httpx

    url, env = f"{api.base_url}/comments:analyze", api.api_key_env
    key = None if api.api_key_secret_block else os.environ.get(env)
    if not key:
        where = (
            f"the Prefect Secret block {api.api_key_secret_block!r}, read when the feedback "
            "stage starts"
            if api.api_key_secret_block
            else f"{env}, which is unset here"
        )
        return None, f"perspective: {url} was not checked (its API key comes from {where})"
    body = {"comment": {"text": "preflight check"}, "requestedAttributes": {api.attribute: {}},
            "languages": list(api.languages), "doNotStore": True}  # fmt: skip
    timeout = min(api.timeout_s, JUDGE_TIMEOUT_S)
    try:
        response = httpx.post(url, json=body, headers={"X-Goog-Api-Key": key}, timeout=timeout)
    except httpx.HTTPError as exc:
        why = (
            f"did not answer in {timeout:g} s"
            if isinstance(exc, httpx.TimeoutException)
            else f"cannot be reached ({type(exc).__name__})"
        )
        fix = f"check the network, or fix {_PERSPECTIVE_FIELD}.base_url"
        return Problem(
            "perspective", api.base_url, f"the Perspective API at {url} {why}; {fix}"
        ), None
    code = response.status_code
    # Perspective answers 400 (API_KEY_INVALID) or 403 (the API not enabled for the key).
    if code in (400, 401, 403):
        return Problem(
            "perspective",
            api.base_url,
            f"the Perspective API at {url} refused the request (HTTP {code}): the key in {env} "
            f"is invalid or not enabled for the Perspective API; put a valid key in {env}",
        ), None
    if code == 429 or code >= 500:  # busy or over quota now: it answered, the run retries
        return None, f"perspective: {url} answered HTTP {code}; the key was not checked"
    if code >= 400:
        return Problem(
            "perspective", api.base_url,
            f"the Perspective API at {url} answered HTTP {code}; fix {_PERSPECTIVE_FIELD}.base_url",
        ), None  # fmt: skip
    try:
        response.json()["attributeScores"][api.attribute]["summaryScore"]["value"]
    except (ValueError, KeyError, TypeError):
        return Problem(
            "perspective", api.base_url,
            f"the Perspective API at {url} answered without a {api.attribute} score; fix "
            f"{_PERSPECTIVE_FIELD}.attribute or .base_url",
        ), None  # fmt: skip
    return None, None


# --------------------------------------------------------------------------- prompt data


def _prompt_data(config: RunConfig) -> tuple[list[Problem], list[str]]:
    data = config.data
    if data.source == "file":
        from alt_core.data import DataError, load_prompts

        problems = []
        for split in ("train", "valid"):
            path = (data.train_path if split == "train" else data.valid_path) or ""
            try:
                load_prompts(config, split)
            except DataError as exc:
                problems.append(Problem(f"data.{split}_path", path, str(exc)))
        return problems, []
    if data.source == "hf" and data.hf_dataset:
        name = data.hf_dataset
        if Path(name).expanduser().exists():
            return [], []
        if _offline():
            note = (
                f"data.hf_dataset: {name!r} was not checked (offline: the datasets cache is "
                "read when the run starts)"
            )
            return [], [note]
        problem = _hub_model("data.hf_dataset", name, "README.md", repo_type="dataset")
        return ([problem] if problem else []), []
    return [], []


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_DATASETS_OFFLINE") == "1"
