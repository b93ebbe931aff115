"""Stage fingerprints: what makes a committed output still valid.

A stage's fingerprint hashes the config sections the DAG declares it depends on
(`alt_core.pipeline.dag`), the values its planner resolved from them (shard bounds,
seeds, generation parameters, the exemplar), and the content of its inputs (their commit
hashes). A committed output whose fingerprint matches is reused; one whose fingerprint
differs is stale and redone, and so, through their inputs' changed content, is
everything downstream of it. Nothing depends on a flow-run id, so a retry from the
Prefect UI, `alt resume` and a new flow run over the same folder agree.

Safe by default: a stage hashes WHOLE sections, so a new config field invalidates every
stage whose sections hold it, unless it is named below as throughput-only. The one rule
serves the stage fingerprints and the training's own resume key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from alt_core import store

# Fields that change how fast, where or how robustly a stage runs, never what it
# commits. Every other field of a section a stage depends on is in its fingerprint.
THROUGHPUT_ONLY: tuple[str, ...] = (
    # The run's name and length: iteration k's outputs do not depend on either.
    "name",
    "iterations",
    # Engine placement and memory: how many shards run at once, on how many devices,
    # with how much KV cache and CUDA-graph warm-up. vLLM's outputs for a seeded request
    # do not depend on them.
    "sampling.concurrency",
    "sampling.tensor_parallel_size",
    "sampling.gpu_memory_utilization",
    "sampling.cpu_kvcache_gib",
    "sampling.enforce_eager",
    "sampling.max_num_seqs",
    # Whether engines are kept for the run, and how they sleep between jobs: a kept
    # engine serves exactly the samples a fresh one would (`sampling.engines`).
    "sampling.engine_reuse",
    "sampling.sleep_level",
    # Reward-model and perplexity batch sizes (rows are scored independently), feedback
    # shards at once.
    "feedback.batch_size",
    "feedback.concurrency",
    "evaluation.batch_size",
    # Where the judge answers from, how fast and how patiently; where answers are cached.
    # What it answers is decided by the model, the template and the answer settings.
    "feedback.judge.base_url",
    "feedback.judge.max_concurrency",
    "feedback.judge.requests_per_minute",
    "feedback.judge.tokens_per_minute",
    "feedback.judge.timeout_s",
    "feedback.judge.max_retries",
    "feedback.judge.backoff_base_s",
    "feedback.judge.backoff_max_s",
    "feedback.judge.max_retry_after_s",
    "feedback.judge.api_key_env",
    "feedback.judge.api_key_secret_block",
    "feedback.judge.cache_unparsed",
    "feedback.judge.cache_flush_every",
    "feedback.judge_cache",
    # The same for the Perspective API (the judge's client with its endpoint), and the
    # toxicity classifier's batch size (rows are scored independently, as the reward
    # model's). What it answers is decided by the attribute and the languages.
    "feedback.toxicity.batch_size",
    "feedback.toxicity.perspective.base_url",
    "feedback.toxicity.perspective.max_concurrency",
    "feedback.toxicity.perspective.requests_per_minute",
    "feedback.toxicity.perspective.tokens_per_minute",
    "feedback.toxicity.perspective.timeout_s",
    "feedback.toxicity.perspective.max_retries",
    "feedback.toxicity.perspective.backoff_base_s",
    "feedback.toxicity.perspective.backoff_max_s",
    "feedback.toxicity.perspective.max_retry_after_s",
    "feedback.toxicity.perspective.api_key_env",
    "feedback.toxicity.perspective.api_key_secret_block",
    "feedback.toxicity.perspective.cache_unparsed",
    "feedback.toxicity.perspective.cache_flush_every",
    # The toxic-sample threshold decides a metric computed from the committed evaluation
    # table (`alt_core.evaluation.toxicity_metrics`), not what any stage commits.
    "feedback.toxicity.threshold",
    # How much missing feedback a shard may commit with: it decides whether a shard
    # commits, not what a committed shard holds (its missing rows are in the table).
    "feedback.max_missing_share",
    # How often training state is saved and kept, how often a step line is printed, and
    # which experiment trackers listen: switching one on must not discard a training.
    "training.checkpoint_every",
    "training.keep_checkpoints",
    "training.log_every",
    "training.report_to",
    # Which iterations are evaluated, not what an evaluation finds.
    "evaluation.evaluate_initial",
    # Where artifacts are cached and copied; their content hashes are the inputs.
    "storage",
)

State = Literal["committed", "stale", "missing", "corrupt"]


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)


def _pick(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def config_identity(
    config: Any, sections: Iterable[str], ignore: Iterable[str] = ()
) -> dict[str, Any]:
    """The named config sections (dotted paths), less the throughput-only fields and the
    stage's own `ignore` list: what a stage's fingerprint hashes of the config."""
    dumped = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    picked = {s: copy.deepcopy(_pick(dumped, s)) for s in sections}
    for dotted in (*THROUGHPUT_ONLY, *ignore):
        for section in picked:
            if dotted == section:
                picked[section] = "<throughput-only>"
            elif dotted.startswith(f"{section}.") and isinstance(picked[section], dict):
                _drop(picked[section], dotted[len(section) + 1 :])
    return picked


def training_identity(training: Any) -> dict[str, Any]:
    """The training section as the train stage's fingerprint and the training's resume
    key both see it (the same rule: the whole section less its throughput-only fields)."""
    return config_identity({"training": training.model_dump(mode="json")}, ["training"])["training"]


def content_id(uri: str) -> str:
    """The content hash of a committed table or folder; other references (a hub model
    name, a plain local checkpoint) stand for themselves."""
    info = store.commit_info(uri)
    if info is not None:
        return str(info["sha256"])
    if store.dir_committed(uri):
        manifest = store.read_json(store.join(uri, store.DIR_COMMIT))
        blob = json.dumps(manifest["files"], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()
    return f"ref:{uri}"


def digest(blob: Any) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(
    stage: str, config_part: Mapping[str, Any], inputs: Iterable[str], extra: Mapping[str, Any]
) -> str:
    return digest(
        {
            "stage": stage,
            "config": config_part,
            "inputs": [content_id(u) for u in inputs],
            "extra": dict(extra),
        }
    )


def recorded_fingerprint(uri: str) -> str | None:
    info = store.commit_info(uri)
    if info is not None:
        return info.get("meta", {}).get("fingerprint")
    if store.dir_committed(uri):
        return store.read_json(store.join(uri, store.DIR_COMMIT)).get("meta", {}).get("fingerprint")
    return None


def present(uri: str) -> bool:
    return store.is_committed(uri) or store.dir_committed(uri)


def inspect(uri: str, expected: str, full: bool = False) -> tuple[State, str | None]:
    """The state of one output, and why when it is corrupt. An output counts as committed
    only if its data still matches its commit record (`store.verify`: a table's hash, a
    folder's sizes and hashes), so a damaged output is redone rather than trained on."""
    if not present(uri):
        return "missing", None
    if problem := store.verify(uri, full=full):
        return "corrupt", problem
    return ("committed" if recorded_fingerprint(uri) == expected else "stale"), None


def state(uri: str, expected: str, full: bool = False) -> State:
    return inspect(uri, expected, full)[0]
