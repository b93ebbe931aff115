"""Stage fingerprints: what makes a committed output still valid.

A stage's fingerprint hashes the configuration fields that affect it and the content
of its inputs (their commit hashes). A committed output whose fingerprint matches is
reused; one whose fingerprint differs is stale and redone, and so, through their inputs'
changed content, is everything downstream of it. Nothing depends on a flow-run id, so a
retry from the Prefect UI, `alt resume` and a new flow run over the same folder agree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from alt_core import store
from alt_core.config import RunConfig
from alt_core.config.judge import ANSWER_FIELDS

# Fields that change a stage's output. Throughput knobs (concurrency, batch sizes that
# do not change results, engine memory) are deliberately absent.
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "prompts": (
        "seed",
        "method",
        "data.source",
        "data.prompts_per_iteration",
        "data.prompt_column",
        "datapool.quantile_phrases",
        "datapool.feedback_prefix",
        "datapool.prompt_prefix",
        "datapool.num_quantiles",
    ),
    "eval_prompts": (
        "method",
        "data.num_valid_prompts",
        "datapool.quantile_phrases",
        "datapool.feedback_prefix",
        "datapool.prompt_prefix",
        "datapool.num_quantiles",
    ),
    "sample": (
        "seed",
        "sampling.backend",
        "sampling.num_generations",
        "sampling.temperature",
        "sampling.top_p",
        "sampling.max_new_tokens",
        "sampling.num_shards",
        "model.dtype",
        "data.max_prompt_tokens",
        "evaluation.max_new_tokens",
    ),
    # The judge's endpoint, key, concurrency, rate limits, retries and cache location
    # are left out: they change how fast and where answers come, not what they say.
    # `method` is in because the rule critic answers each method differently.
    "feedback": (
        "method",
        "feedback.provider",
        "feedback.reward_model",
        "feedback.max_length",
        "feedback.judge.model",
        "feedback.judge.template",
        *(f"feedback.judge.{name}" for name in ANSWER_FIELDS),
        "feedback.rule_critic",
    ),
    "datapool": ("seed", "method", "datapool"),
    "train": (
        "seed",
        "method",
        "datapool.num_quantiles",
        "training.learning_rate",
        "training.weight_decay",
        "training.epochs",
        "training.per_device_batch_size",
        "training.gradient_accumulation_steps",
        "training.warmup_ratio",
        "training.max_grad_norm",
        "training.kl_coef",
        "training.entropy_coef",
        "training.unfrozen_layers_ratio",
        "training.zero_stage",
        "training.mixed_precision",
        "training.num_processes",
        "training.max_seq_len",
    ),
    "perplexity": ("data.max_prompt_tokens",),
}

State = Literal["committed", "stale", "missing"]


def content_id(uri: str) -> str:
    """The content hash of a committed table or folder; other references (a hub model
    name, a plain local checkpoint) stand for themselves."""
    info = store.commit_info(uri)
    if info is not None:
        return info["sha256"]
    if store.dir_committed(uri):
        manifest = store.read_json(store.join(uri, store.DIR_COMMIT))
        blob = json.dumps(manifest["files"], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()
    return f"ref:{uri}"


def fingerprint(config: RunConfig, stage: str, inputs: list[str], **extra: object) -> str:
    blob = {
        "stage": stage,
        "config": config.section_hash(*STAGE_FIELDS[stage]),
        "inputs": [content_id(u) for u in inputs],
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded_fingerprint(uri: str) -> str | None:
    info = store.commit_info(uri)
    if info is not None:
        return info.get("meta", {}).get("fingerprint")
    if store.dir_committed(uri):
        return store.read_json(store.join(uri, store.DIR_COMMIT)).get("meta", {}).get("fingerprint")
    return None


def state(uri: str, expected: str) -> State:
    """A table counts as committed only if its bytes still match the commit hash, so a
    corrupted output is redone rather than trained on."""
    if not (store.is_committed(uri, verify=True) or store.dir_committed(uri)):
        return "missing"
    return "committed" if recorded_fingerprint(uri) == expected else "stale"


def is_current(uri: str, expected: str) -> bool:
    return state(uri, expected) == "committed"


# The fingerprint of each stage, computed the same way by the tasks that run it and by
# `alt status`, which reports what a rerun would reuse, redo or do for the first time.


def sample_fingerprint(config: RunConfig, spec: dict) -> str:
    return fingerprint(
        config,
        "sample",
        [spec["prompts_uri"], spec["model_path"]],
        start=spec["start"],
        stop=spec["stop"],
        seed=spec["seed"],
        params=spec["params"],
    )


def feedback_fingerprint(config: RunConfig, samples_uri: str) -> str:
    if config.feedback.provider != "judge":
        return fingerprint(config, "feedback", [samples_uri])
    # A template is named in the config but its text may change under the same name
    # (an edited file): its content hash decides, as it does for the judge's cache.
    from alt_core.feedback.judge import load_template

    template_hash = load_template(config.feedback.judge.template).content_hash
    return fingerprint(config, "feedback", [samples_uri], template=template_hash)


def datapool_fingerprint(
    config: RunConfig, feedback_uris: list[str], previous_pool: list[str]
) -> str:
    return fingerprint(config, "datapool", [*feedback_uris, *previous_pool])


def train_fingerprint(config: RunConfig, train_uri: str, policy_in: str, reference: str) -> str:
    return fingerprint(config, "train", [train_uri, policy_in, reference])


def join_fingerprint(config: RunConfig, feedback_uris: list[str]) -> str:
    return fingerprint(config, "perplexity", feedback_uris, join=True)


def perplexity_fingerprint(config: RunConfig, scored_uri: str, reference: str) -> str:
    return fingerprint(config, "perplexity", [scored_uri, reference])


def prompts_fingerprint(
    config: RunConfig, train_prompts_uri: str, iteration: int, exemplar: str | None
) -> str:
    return fingerprint(
        config, "prompts", [train_prompts_uri], iteration=iteration, exemplar=exemplar
    )


def eval_prompts_fingerprint(
    config: RunConfig, valid_prompts_uri: str, exemplar: str | None
) -> str:
    return fingerprint(config, "eval_prompts", [valid_prompts_uri], exemplar=exemplar)
