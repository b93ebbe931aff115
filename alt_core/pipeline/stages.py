"""One function per stage: the body that turns a planned `Node` into committed outputs.

`run_node` is the one entry point the Prefect tasks call: it reuses outputs already
committed with the node's fingerprint (a retry, `alt resume` or a new flow run over the
same folder redo only what is missing or stale) and otherwise runs the stage's body.
Bodies that need a device or an engine (sampling, a reward model, perplexity, training)
run their work as a job in a child process through `alt_core.runtime.launcher`, in a
device slot of `alt_core.runtime.slots`; the rest run in this process. Nothing here
knows about Prefect: the orchestrator passes logging and progress hooks in a `StageEnv`,
and unit tests call the bodies directly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alt_core import methods, store
from alt_core.config import RunConfig, dump_config
from alt_core.pipeline import fingerprints as fps
from alt_core.pipeline.dag import Node
from alt_core.pipeline.layout import RunInputs, RunLayout
from alt_core.pipeline.specs import (
    DatapoolSpec,
    FeedbackSpec,
    JoinSpec,
    PerplexitySpec,
    PromptsSpec,
    StageResult,
    TrainStageSpec,
)
from alt_core.runtime.faults import crash_if, shard_point
from alt_core.runtime.launcher import run_job
from alt_core.runtime.progress import artifact_key, progress_fraction
from alt_core.runtime.slots import slot_pool
from alt_core.sampling.spec import SampleSpec
from alt_core.schemas import EVAL, PROMPTS

Update = Callable[[float], None]
# Feedback providers that load a model and so run in a process and device slot of their own.
DEVICE_PROVIDERS = {"reward_model"}


def _no_progress(_key: str, _description: str) -> Update:
    return lambda _pct: None


@dataclass(frozen=True)
class StageEnv:
    """What the orchestrator lends a stage: where its lines go, and a factory of progress
    bars (key, description) -> update(percent)."""

    log: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    progress: Callable[[str, str], Update] = _no_progress

    def job_log(self, name: str, update: Update | None = None) -> Callable[[str], None]:
        """A job's lines, tagged with its name; its progress lines move `update`."""

        def emit(line: str) -> None:
            self.log(f"[{name}] {line}")
            pct = progress_fraction(line)
            if update is not None and pct is not None:
                update(pct)

        return emit


# ---------------------------------------------------------------------- the entry point


def run_node(config: RunConfig, node: Node, env: StageEnv | None = None) -> StageResult:
    """Reuse the node's committed outputs when their fingerprint matches; else run it."""
    env = env or StageEnv()
    fp = node.fingerprint(config)
    checked = [(uri, *fps.inspect(uri, fp)) for uri in node.outputs]
    states = [state for _, state, _ in checked]
    if all(s == "committed" for s in states):
        reused = REUSED.get(node.stage)
        stats = reused(node) if reused else {}
        return StageResult(stage=node.stage, outputs=node.outputs, skipped=True, stats=stats)
    for uri, state, problem in checked:
        if state == "corrupt":
            env.warn(f"{node.name}: the committed {uri} is damaged ({problem}); redoing it")
    if "stale" in states:
        env.warn(f"{node.name}: settings or inputs changed since it was committed; redoing it")
    stats = BODIES[node.stage](config, node, fp, env)
    return StageResult(stage=node.stage, outputs=node.outputs, stats=stats)


def resolve_model(uri: str, config: RunConfig) -> str:
    """A path the engines can load: committed store folders are made local, anything
    else (a hub name, a plain local checkpoint) is passed through."""
    if store.dir_committed(uri):
        return str(store.local_dir(uri, config.storage.local_scratch))
    return uri


# ---------------------------------------------------------------------- before iteration 1


def prepare_run(config: RunConfig, run_dir: str, log: Callable[[str], None] = print) -> RunInputs:
    """Check the files the config names, record the config, and resolve the starting model
    and prompt sets (run-level, once). A config that arrived as flow parameters (the
    Prefect UI, a deployment) is checked here as `load_config` checks one from a file."""
    from alt_core.config import check_config_files

    check_config_files(config)
    layout = RunLayout(run_dir)
    text = dump_config(config).encode()
    if not store.exists(layout.config) or store.read_bytes(layout.config) != text:
        store.write_bytes_atomic(layout.config, text)
    if config.data.source == "demo":
        from alt_core.tasks.demo.assets import (
            TOXICITY_RUDE_SHARE,
            DemoModelSettings,
            ensure_demo_assets,
        )

        # The toxicity demo's base model learns from a corpus with some rude reviews, so
        # it writes toxic text to align away from; the sentiment demo's corpus has none.
        toxic = config.task == "toxicity"
        assets = ensure_demo_assets(
            config.storage.cache_dir,
            config.data.demo_num_train,
            config.data.demo_num_valid,
            seed=0,
            log=log,
            settings=DemoModelSettings(rude_share=TOXICITY_RUDE_SHARE) if toxic else None,
        )
        policy = reference = assets.model_uri
        train_uri, valid_uri = assets.train_prompts_uri, assets.valid_prompts_uri
        if config.data.num_valid_prompts:
            valid = store.read_table(valid_uri).head(config.data.num_valid_prompts)
            valid_uri = store.join(run_dir, "data", "valid_prompts.parquet")
            if not store.is_committed(valid_uri):
                store.write_table(valid_uri, valid)
    else:
        from alt_core.data import load_prompts

        uris = {}
        for split in ("train", "valid"):
            uri = store.join(run_dir, "data", f"{split}_prompts.parquet")
            if not store.is_committed(uri):
                store.write_table(uri, load_prompts(config, split))
            uris[split] = uri
        policy, reference = config.model.policy, config.model.reference or config.model.policy
        train_uri, valid_uri = uris["train"], uris["valid"]
    inputs = RunInputs(
        policy_uri=policy,
        reference_uri=reference,
        train_prompts_uri=train_uri,
        valid_prompts_uri=valid_uri,
    )
    store.write_json(layout.inputs, inputs.model_dump())
    return inputs


# ---------------------------------------------------------------------- the bodies


def write_prompts(
    config: RunConfig, prompts: pd.DataFrame, exemplar: str | None, uri: str, fingerprint: str
) -> str:
    df = prompts[["prompt_id", "prompt"]].reset_index(drop=True).copy()
    df["query"] = methods.condition_prompts(config, df["prompt"], exemplar)
    return store.write_table(
        uri, df[PROMPTS], meta={"exemplar": exemplar, "fingerprint": fingerprint}
    )


def prompts(config: RunConfig, node: Node, fp: str, env: StageEnv) -> dict[str, Any]:
    """Draw the iteration's prompts (or take all validation prompts) and condition them."""
    spec = _spec(node, PromptsSpec)
    table = store.read_table(spec.source_uri)
    if spec.draw is not None:
        from alt_core.data import draw_prompts

        table = draw_prompts(table, spec.draw, spec.seed)
    write_prompts(config, table, spec.exemplar, spec.output_uri, fp)
    return {"rows": len(table)}


def sample(config: RunConfig, node: Node, fp: str, env: StageEnv) -> dict[str, Any]:
    """Generate one shard in its own process, in a device slot of its own."""
    spec = _spec(node, SampleSpec)
    s = config.sampling
    spec = spec.model_copy(
        update={"model_path": resolve_model(spec.model_path, config), "fingerprint": fp}
    )
    pool = slot_pool("sample", s.concurrency, s.tensor_parallel_size)
    update = env.progress(artifact_key(node.name), node.name)
    with pool.slot() as slot:
        result = run_job(
            "sample",
            spec,
            name=node.name,
            env={**slot.env, **spec.engine.process_env()},
            num_threads=slot.num_threads,
            log=env.job_log(node.name, update),
            keep=s.engine_reuse,
        )
    update(100.0)
    env.log(f"{node.name}: {result}")
    return result


def feedback(config: RunConfig, node: Node, fp: str, env: StageEnv) -> dict[str, Any]:
    """Score one samples shard: a reward model in its own process and device slot; a
    lexicon scorer or a remote judge, which need no device, in this process."""
    spec = _spec(node, FeedbackSpec).model_copy(update={"fingerprint": fp})
    update = env.progress(artifact_key(node.name), node.name)
    log = env.job_log(node.name, update)
    if config.feedback.provider in DEVICE_PROVIDERS:
        with slot_pool("feedback", config.feedback.concurrency).slot() as slot:
            result = run_job(
                "feedback", spec, name=node.name, env=slot.env,
                num_threads=slot.num_threads, log=log, keep=config.sampling.engine_reuse,
            )  # fmt: skip
    else:
        # No device, so no slot: the task runner bounds how many run at once.
        result = score_feedback(spec, log=log)
    update(100.0)
    env.log(f"{node.name}: {result}")
    return result


def score_feedback(spec: FeedbackSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score one samples shard with the configured provider and commit the result; slow
    providers (a judge, a reward model) report their progress to `log`. A shard with more
    missing feedback than `feedback.max_missing_share` is not committed: a failure record
    (`<output>.failed.json`, which `alt status` shows) is written and the error raised."""
    from alt_core.feedback import get_provider
    from alt_core.feedback.base import FeedbackIncompleteError, check_complete
    from alt_core.schemas import FEEDBACK, OPTIONAL_FEEDBACK

    samples = store.read_table(spec.input_uri)
    t0 = time.perf_counter()
    provider = get_provider(spec.config)
    provider.progress = log
    scored = provider.score(samples)
    # <run>/iter_NNN/<stage>/shard_NNN.parquet (RunLayout.shard)
    run_dir, *where = spec.output_uri.rsplit("/", 3)
    failure = spec.output_uri + ".failed.json"
    try:
        causes = check_complete(
            scored,
            spec.config.feedback.max_missing_share,
            shard="/".join(where).removesuffix(".parquet"),
            rerun=f"alt resume {run_dir}",
            provider=provider,
        )
    except FeedbackIncompleteError as exc:
        store.write_json(failure, exc.marker())
        raise
    out = samples.copy()
    # A judge's raw answer is kept beside the parsed columns, so a missing judgement can
    # be read with the reason it is missing.
    columns = FEEDBACK + [c for c in OPTIONAL_FEEDBACK if c in scored.columns]
    for col in columns:
        if col not in out.columns:
            out[col] = scored[col].to_numpy() if col in scored.columns else None
    crash_if(shard_point(spec.output_uri))
    store.write_table(spec.output_uri, out[columns], meta={"fingerprint": spec.fingerprint})
    store.remove(failure)  # an earlier attempt's failure, now mended
    stats = getattr(provider, "last_stats", {}) or {}
    return {
        "rows": len(out),
        "missing": int(out["reward"].isna().sum()),
        **{f"missing_{cause}": n for cause, n in causes.items()},
        "seconds": round(time.perf_counter() - t0, 2),
        **{f"judge_{k}": v for k, v in stats.items()},
    }


def datapool(config: RunConfig, node: Node, fp: str, env: StageEnv) -> dict[str, Any]:
    """Flush, add, re-bucket and draw the balanced training set; commit pool and set."""
    from alt_core.datapool import draw_training_set, pool_stats, update_pool
    from alt_core.schemas import POOL

    spec = _spec(node, DatapoolSpec)
    new_rows = store.read_tables(spec.feedback_uris)
    if spec.previous_pool_uri:
        pool = store.read_table(spec.previous_pool_uri)
    else:
        pool = pd.DataFrame(columns=POOL)
    rng = np.random.default_rng(spec.seed)
    pool = update_pool(pool, new_rows, config, spec.iteration, rng)
    train = draw_training_set(pool, config, rng)
    if train.empty:
        raise ValueError(
            f"iteration {spec.iteration}: the training set is empty (every generation lacked "
            f"feedback: {int(new_rows['reward'].isna().sum())} of {len(new_rows)} missing)"
        )
    meta = {"fingerprint": fp}
    store.write_table(spec.pool_uri, pool, meta=meta)
    crash_if("datapool")
    store.write_table(spec.train_uri, train, meta=meta)
    return {"pool_rows": pool_stats(pool).get("rows"), "train_set_rows": len(train)}


def _datapool_reused(node: Node) -> dict[str, Any]:
    from alt_core.datapool import pool_stats

    spec = _spec(node, DatapoolSpec)
    train = store.commit_info(spec.train_uri)
    if train is None:  # run_node reuses only committed outputs
        raise store.ArtifactError(f"{spec.train_uri} is not committed")
    pool = pool_stats(store.read_table(spec.pool_uri))
    return {"pool_rows": pool.get("rows"), "train_set_rows": int(train["rows"])}


def train(config: RunConfig, node: Node, fp: str, env: StageEnv) -> dict[str, Any]:
    """Conditional SFT of the policy of iteration k-1 into the policy of iteration k."""
    from alt_core.training.spec import TrainSpec
    from alt_core.training.state import finished_summary
    from alt_core.training.worker import launch_training

    spec = _spec(node, TrainStageSpec)
    out_uri, remote = spec.output_uri, store.is_remote(spec.output_uri)
    # A local run keeps its training state in the run folder (beside `local_out`); a
    # remote one trains in local scratch and copies every checkpoint to the run store.
    local_out = _local_training_dir(config, out_uri) if remote else Path(f"{out_uri}.partial")
    job = TrainSpec(
        policy_path=resolve_model(spec.policy_uri, config),
        reference_path=resolve_model(spec.reference_uri, config)
        if config.training.kl_coef > 0
        else None,
        train_table=spec.train_uri,
        output_dir=str(local_out),
        training=config.training,
        added_tokens=spec.added_tokens,
        seed=spec.seed,
        run_name=spec.run_name,
        checkpoint_every=config.training.checkpoint_every,
        keep_checkpoints=config.training.keep_checkpoints,
        state_uri=spec.state_uri,
    )
    if finished_summary(job) is None and local_out.exists():
        # A finished-but-uncommitted model is kept; anything else in the partial output is
        # redone, except tracker logs, which a resumed training continues. The training
        # state next to it survives, so a killed training resumes.
        for item in local_out.iterdir():
            if item.name != "trackers":
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    k = node.iteration
    update = env.progress(f"train-iter-{k}", f"training, iteration {k}")
    pool = slot_pool("train", 1, config.training.num_processes)
    with pool.slot() as slot:
        summary = launch_training(
            job, env=slot.env, num_threads=slot.num_threads, log=env.job_log("train", update)
        )
    meta = {"iteration": k, "fingerprint": fp}
    if remote:
        store.put_dir(local_out, out_uri, meta=meta)
        shutil.rmtree(local_out, ignore_errors=True)
    else:
        if os.path.exists(out_uri):
            shutil.rmtree(out_uri)
        os.replace(local_out, out_uri)
        store.put_dir(out_uri, out_uri, meta=meta)
    shutil.rmtree(job.resolved_state_dir, ignore_errors=True)
    if spec.state_uri:
        store.remove(spec.state_uri)  # the committed policy supersedes it
    update(100.0)
    return summary


def _local_training_dir(config: RunConfig, out_uri: str) -> Path:
    """A fixed local folder per remote policy URI, so a restarted training finds its state."""
    digest = hashlib.sha256(out_uri.encode()).hexdigest()[:16]
    root = Path(config.storage.local_scratch or tempfile.gettempdir())
    return root / "alt-train" / digest / "policy.partial"


def _train_reused(node: Node) -> dict[str, Any]:
    uri = store.join(node.outputs[0], "train_metrics.json")
    return store.read_json(uri).get("summary", {}) if store.exists(uri) else {}


def eval_join(config: RunConfig, node: Node, fp: str, env: StageEnv) -> dict[str, Any]:
    """The evaluation feedback shards as one table with every EVAL column."""
    spec = _spec(node, JoinSpec)
    scored = store.read_tables(spec.feedback_uris).copy()
    for col in EVAL:
        if col not in scored.columns:
            scored[col] = np.nan
    store.write_table(spec.output_uri, scored[EVAL], meta={"fingerprint": fp})
    return {"rows": len(scored)}


def perplexity(config: RunConfig, node: Node, fp: str, env: StageEnv) -> dict[str, Any]:
    """Reference perplexity of the evaluation generations, in a process of its own."""
    spec = _spec(node, PerplexitySpec)
    spec = spec.model_copy(
        update={"reference_path": resolve_model(spec.reference_path, config), "fingerprint": fp}
    )
    update = env.progress(artifact_key(node.name), node.name)
    with slot_pool("feedback", config.feedback.concurrency).slot() as slot:
        result = run_job(
            "perplexity", spec, name="perplexity", env=slot.env,
            num_threads=slot.num_threads, log=env.job_log("perplexity", update),
            keep=config.sampling.engine_reuse,
        )  # fmt: skip
    update(100.0)
    return result


def score_perplexity(spec: PerplexitySpec) -> dict[str, Any]:
    """The job's side: summed reference NLL and token count of every generation."""
    from alt_core.evaluation import reference_nll

    df = store.read_table(spec.input_uri)
    nll, count = reference_nll(
        spec.reference_path, df["prompt"].tolist(), df["generation"].tolist(), spec.batch_size
    )
    df["ref_nll"] = nll
    crash_if("perplexity")
    df["ref_tokens"] = count
    store.write_table(spec.output_uri, df, meta={"fingerprint": spec.fingerprint})
    return {"rows": len(df)}


# ---------------------------------------------------------------------- the registry


def _spec(node: Node, kind: type) -> Any:
    if not isinstance(node.spec, kind):
        raise TypeError(f"{node.name}: expected a {kind.__name__}, got {type(node.spec).__name__}")
    return node.spec


Body = Callable[[RunConfig, Node, str, StageEnv], dict[str, Any]]
BODIES: dict[str, Body] = {
    "prompts": prompts,
    "eval_prompts": prompts,
    "train_sample": sample,
    "eval_sample": sample,
    "train_feedback": feedback,
    "eval_feedback": feedback,
    "datapool": datapool,
    "train": train,
    "eval_join": eval_join,
    "perplexity": perplexity,
}
# What a reused (already committed) stage reports, where the flow needs figures of it.
REUSED: dict[str, Callable[[Node], dict[str, Any]]] = {
    "datapool": _datapool_reused,
    "train": _train_reused,
}
