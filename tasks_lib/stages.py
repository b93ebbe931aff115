"""Prefect tasks, one per stage: each calls one `alt_core` entry point and returns URIs.

A task whose outputs are already committed returns them without redoing the work, so
rerunning a flow over the same run folder (a retry from the UI, `alt resume`, a new flow
run) redoes only what is missing. Keys are the artifact paths, which depend on the run,
iteration, stage and shard, never on the flow-run id.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from alt_core import store
from alt_core.config import RunConfig, dump_config
from alt_core.pipeline import fingerprints as fps
from alt_core.pipeline import stages as pipeline
from alt_core.pipeline.fingerprints import state
from alt_core.runtime.launcher import run_worker
from alt_core.store import RunLayout
from tasks_lib.common import (
    WORKER_ENV,
    artifact_key,
    logger,
    progress,
    slot_pool,
    worker_log,
)

STAGE_RETRIES = 1
# Feedback providers that load a model and so run in a process and device slot of their own.
DEVICE_PROVIDERS = {"reward_model"}


def reuse(uri: str, expected: str, what: str) -> bool:
    """True when `uri` is committed with the expected fingerprint; says why otherwise."""
    current = state(uri, expected)
    if current == "stale":
        logger().warning(f"{what}: settings or inputs changed since it was committed; redoing it")
    return current == "committed"


def resolve_model(uri: str, config: RunConfig) -> str:
    """A path the engines can load: committed store folders are made local, anything
    else (a hub name, a plain local checkpoint) is passed through."""
    if store.dir_committed(uri):
        return str(store.local_dir(uri, config.storage.local_scratch))
    return uri


@task(name="prepare-run", cache_policy=NO_CACHE, retries=STAGE_RETRIES)
def prepare_run(config: RunConfig, run_dir: str) -> dict[str, str]:
    """Record the config and resolve the starting model and prompt sets."""
    layout = RunLayout(run_dir)
    text = dump_config(config).encode()
    if not store.exists(layout.config) or store.read_bytes(layout.config) != text:
        store.write_bytes_atomic(layout.config, text)
    if config.data.source == "demo":
        from alt_core.tasks.demo.assets import ensure_demo_assets

        assets = ensure_demo_assets(
            config.storage.cache_dir,
            config.data.demo_num_train,
            config.data.demo_num_valid,
            seed=0,
            log=logger().info,
        )
        inputs = pipeline.RunInputs(
            policy_uri=assets.model_uri,
            reference_uri=assets.model_uri,
            train_prompts_uri=assets.train_prompts_uri,
            valid_prompts_uri=assets.valid_prompts_uri,
        )
    else:
        from alt_core.data import load_prompts

        uris = {}
        for split in ("train", "valid"):
            uri = store.join(run_dir, "data", f"{split}_prompts.parquet")
            if not store.is_committed(uri):
                store.write_table(uri, load_prompts(config, split))
            uris[split] = uri
        inputs = pipeline.RunInputs(
            policy_uri=config.model.policy,
            reference_uri=config.model.reference or config.model.policy,
            train_prompts_uri=uris["train"],
            valid_prompts_uri=uris["valid"],
        )
    if config.data.num_valid_prompts and config.data.source == "demo":
        valid = store.read_table(inputs.valid_prompts_uri).head(config.data.num_valid_prompts)
        inputs.valid_prompts_uri = store.join(run_dir, "data", "valid_prompts.parquet")
        if not store.is_committed(inputs.valid_prompts_uri):
            store.write_table(inputs.valid_prompts_uri, valid)
    store.write_json(RunLayout(run_dir).inputs, inputs.to_dict())
    return inputs.to_dict()


@task(name="draw-prompts", cache_policy=NO_CACHE, retries=STAGE_RETRIES)
def draw_prompts(config: RunConfig, run_dir: str, iteration: int, inputs: dict) -> str:
    layout = RunLayout(run_dir)
    uri = layout.table(iteration, "prompts", "prompts")
    exemplar = pipeline.exemplar_for(config, layout, iteration)
    fp = fps.prompts_fingerprint(config, inputs["train_prompts_uri"], iteration, exemplar)
    if reuse(uri, fp, f"prompts of iteration {iteration}"):
        return uri
    return pipeline.draw_iteration_prompts(
        config, pipeline.RunInputs(**inputs), iteration, exemplar, uri, fp
    )


@task(name="eval-prompts", cache_policy=NO_CACHE, retries=STAGE_RETRIES)
def eval_prompts(config: RunConfig, run_dir: str, iteration: int, inputs: dict) -> str:
    layout = RunLayout(run_dir)
    uri = layout.table(iteration, "eval", "prompts")
    exemplar = pipeline.eval_exemplar(config, layout, iteration)
    fp = fps.eval_prompts_fingerprint(config, inputs["valid_prompts_uri"], exemplar)
    if reuse(uri, fp, f"validation prompts of iteration {iteration}"):
        return uri
    valid = store.read_table(inputs["valid_prompts_uri"])
    return pipeline.write_prompts(config, valid, exemplar, uri, fp)


@task(
    name="sample-shard",
    task_run_name="{name}",
    cache_policy=NO_CACHE,
    retries=STAGE_RETRIES,
    retry_delay_seconds=5,
)
def sample_shard(config: RunConfig, spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Generate one shard in its own process, in a device slot of its own."""
    fp = fps.sample_fingerprint(config, spec)
    if reuse(spec["output_uri"], fp, name):
        return {"uri": spec["output_uri"], "skipped": True}
    s = config.sampling
    pool = slot_pool("sample", s.concurrency, s.tensor_parallel_size)
    spec = {**spec, "model_path": resolve_model(spec["model_path"], config), "fingerprint": fp}
    return _shard_in_process_of_its_own(pool, "sample", spec, name)


@task(
    name="feedback-shard",
    task_run_name="{name}",
    cache_policy=NO_CACHE,
    retries=STAGE_RETRIES,
    retry_delay_seconds=5,
)
def feedback_shard(config: RunConfig, spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Score one samples shard: a reward model in its own process and device slot; a
    lexicon scorer or a remote judge, which need no device, in this process."""
    fp = fps.feedback_fingerprint(config, spec["input_uri"])
    if reuse(spec["output_uri"], fp, name):
        return {"uri": spec["output_uri"], "skipped": True}
    spec = {**spec, "fingerprint": fp}
    pool = slot_pool("feedback", config.feedback.concurrency)
    if config.feedback.provider in DEVICE_PROVIDERS:
        return _shard_in_process_of_its_own(pool, "feedback", spec, name)
    from alt_core.runtime.entry import run_feedback

    # No device, so no slot: the task runner bounds how many run at once.
    update = progress(artifact_key(name), name)
    result = run_feedback(spec, log=worker_log(name, update))
    update(100.0)
    logger().info(f"{name}: {result}")
    return {"uri": spec["output_uri"], **result}


def _shard_in_process_of_its_own(pool, kind: str, spec: dict[str, Any], name: str) -> dict:
    """Run `alt_core.runtime.entry KIND` for one shard in a free device slot of `pool`."""
    update = progress(artifact_key(name), name)
    with pool.slot() as env:
        result = run_worker(
            ["alt_core.runtime.entry", kind], spec, name=name, env={**WORKER_ENV, **env},
            log=worker_log(name, update),
        )  # fmt: skip
    update(100.0)
    logger().info(f"{name}: {result}")
    return {"uri": spec["output_uri"], **result}


@task(name="update-datapool", cache_policy=NO_CACHE, retries=STAGE_RETRIES)
def update_datapool(
    config: RunConfig, run_dir: str, iteration: int, feedback_uris: list[str]
) -> dict[str, Any]:
    layout = RunLayout(run_dir)
    pool_uri = layout.table(iteration, "datapool", "pool")
    train_uri = layout.table(iteration, "datapool", "train")
    previous = [layout.table(iteration - 1, "datapool", "pool")] if iteration > 1 else []
    fp = fps.datapool_fingerprint(config, feedback_uris, previous)
    what = f"datapool of iteration {iteration}"
    if reuse(pool_uri, fp, what) and reuse(train_uri, fp, what):
        from alt_core.datapool import pool_stats

        stats = pool_stats(store.read_table(pool_uri))
        return {"pool_uri": pool_uri, "train_uri": train_uri, "stats": stats}
    return pipeline.update_datapool(config, layout, iteration, feedback_uris, fp)


@task(name="train-policy", cache_policy=NO_CACHE, retries=STAGE_RETRIES, retry_delay_seconds=5)
def train_policy(
    config: RunConfig,
    run_dir: str,
    iteration: int,
    train_uri: str,
    policy_in: str,
    reference: str,
) -> dict[str, Any]:
    """Conditional SFT of the policy of iteration k-1 into the policy of iteration k."""
    from alt_core.training.loop import TrainSpec
    from alt_core.training.state import finished_summary
    from alt_core.training.worker import launch_training

    layout = RunLayout(run_dir)
    out_uri = layout.policy(iteration)
    fp = fps.train_fingerprint(config, train_uri, policy_in, reference)
    if reuse(out_uri, fp, f"policy of iteration {iteration}"):
        return {"uri": out_uri, "skipped": True, **_train_summary(out_uri)}
    remote = store.is_remote(out_uri)
    # A local run keeps its training state in the run folder (beside `local_out`); a
    # remote one trains in local scratch and copies every checkpoint to the run store.
    local_out = _local_training_dir(config, out_uri) if remote else Path(f"{out_uri}.partial")
    state_uri = layout.training_state(iteration) if remote else None
    spec = TrainSpec(
        policy_path=resolve_model(policy_in, config),
        reference_path=resolve_model(reference, config) if config.training.kl_coef > 0 else None,
        train_table=train_uri,
        output_dir=str(local_out),
        training=config.training,
        added_tokens=pipeline.added_tokens(config),
        seed=pipeline.stage_seed(config, iteration, "train"),
        # The trackers' run name becomes a folder and a W&B project: keep it to safe characters.
        run_name=re.sub(r"[^\w.-]+", "-", f"{config.name}-iter-{iteration:03d}"),
        checkpoint_every=config.training.checkpoint_every,
        keep_checkpoints=config.training.keep_checkpoints,
        state_uri=state_uri,
    )
    if finished_summary(spec) is None and local_out.exists():
        # A finished-but-uncommitted model is kept; anything else in the partial output is
        # redone, except tracker logs, which a resumed training continues. The training
        # state next to it survives, so a killed training resumes.
        for item in local_out.iterdir():
            if item.name != "trackers":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    update = progress(f"train-iter-{iteration}", f"training, iteration {iteration}")
    pool = slot_pool("train", 1, config.training.num_processes)
    with pool.slot() as env:
        summary = launch_training(spec, env={**WORKER_ENV, **env}, log=worker_log("train", update))
    if remote:
        store.put_dir(local_out, out_uri, meta={"iteration": iteration, "fingerprint": fp})
        shutil.rmtree(local_out, ignore_errors=True)
    else:
        if os.path.exists(out_uri):
            shutil.rmtree(out_uri)
        os.replace(local_out, out_uri)
        store.put_dir(out_uri, out_uri, meta={"iteration": iteration, "fingerprint": fp})
    shutil.rmtree(spec.resolved_state_dir, ignore_errors=True)
    if state_uri:
        store.remove(state_uri)  # the committed policy supersedes it
    update(100.0)
    return {"uri": out_uri, **summary}


def _local_training_dir(config: RunConfig, out_uri: str) -> Path:
    """A fixed local folder per remote policy URI, so a restarted training finds its state."""
    digest = hashlib.sha256(out_uri.encode()).hexdigest()[:16]
    root = Path(config.storage.local_scratch or tempfile.gettempdir())
    return root / "alt-train" / digest / "policy.partial"


def _train_summary(policy_uri: str) -> dict[str, Any]:
    uri = store.join(policy_uri, "train_metrics.json")
    if not store.exists(uri):
        return {}
    return store.read_json(uri).get("summary", {})


@task(name="reference-perplexity", cache_policy=NO_CACHE, retries=STAGE_RETRIES)
def reference_perplexity(config: RunConfig, input_uri: str, output_uri: str, reference: str) -> str:
    fp = fps.perplexity_fingerprint(config, input_uri, reference)
    if reuse(output_uri, fp, "reference perplexity"):
        return output_uri
    spec = {
        "input_uri": input_uri,
        "output_uri": output_uri,
        "reference_path": resolve_model(reference, config),
        "batch_size": config.evaluation.batch_size,
        "fingerprint": fp,
    }
    pool = slot_pool("feedback", config.feedback.concurrency)
    _shard_in_process_of_its_own(pool, "perplexity", spec, "perplexity")
    return output_uri


@task(name="join-eval-feedback", cache_policy=NO_CACHE, retries=STAGE_RETRIES)
def join_eval_feedback(config: RunConfig, uri: str, feedback_uris: list[str]) -> str:
    fp = fps.join_fingerprint(config, feedback_uris)
    if reuse(uri, fp, "evaluation feedback"):
        return uri
    scored = pipeline.eval_frame(store.read_tables(feedback_uris))
    return store.write_table(uri, scored, meta={"fingerprint": fp})
