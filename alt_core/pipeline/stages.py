"""The stages of one ALT iteration as plain functions over URIs.

Each function reads committed inputs, writes committed outputs at the deterministic
paths of `RunLayout`, and returns their URIs. Nothing here knows about Prefect: the
tasks in `tasks_lib` wrap these functions, and tests can call them directly.

Seeds: every stage derives its own seed from the run seed, the iteration and a stage
salt, so a rerun of a stage draws exactly what the first run drew.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from alt_core import store
from alt_core.config import RunConfig
from alt_core.methods import condition_prompts, default_exemplar, quantile_tokens, uses_judge
from alt_core.runtime.faults import crash_if
from alt_core.sampling import EngineSettings, GenerationParams, SampleSpec
from alt_core.schemas import EVAL, PROMPTS
from alt_core.store import RunLayout


def stage_seed(config: RunConfig, iteration: int, stage: str) -> int:
    return (config.seed * 1_000_003 + iteration * 7_919 + zlib.crc32(stage.encode())) % 2**31


@dataclass
class RunInputs:
    """Where a run's starting points live (resolved once, before iteration 1)."""

    policy_uri: str
    reference_uri: str
    train_prompts_uri: str
    valid_prompts_uri: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def shard_bounds(num_rows: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges; the first `num_rows % num_shards` get one more."""
    if num_rows <= 0:
        raise ValueError("cannot shard an empty prompt set")
    if num_shards > num_rows:
        raise ValueError(
            f"{num_shards} shards for {num_rows} prompts: lower sampling.num_shards / "
            f"feedback.num_shards to at most {num_rows}"
        )
    base, extra = divmod(num_rows, num_shards)
    bounds, start = [], 0
    for i in range(num_shards):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def exemplar_for(config: RunConfig, layout: RunLayout, iteration: int) -> str | None:
    """Exemplar feedback for sampling in `iteration` (None: the raw prompt).

    Iteration 1 samples from the initial policy with the raw prompt; later iterations
    condition on the feedback that names the behaviour we want. For judge methods it is
    chosen from the previous iteration's pool (see `alt_core.datapool.choose_exemplar`).
    """
    if iteration <= 1:
        return None
    if not uses_judge(config):
        return default_exemplar(config)
    from alt_core.datapool import choose_exemplar

    pool = store.read_table(layout.table(iteration - 1, "datapool", "pool"))
    return choose_exemplar(pool, config)


def eval_exemplar(config: RunConfig, layout: RunLayout, iteration: int) -> str | None:
    """Validation is conditioned like the next iteration's sampling; the initial
    policy (iteration 0) has never seen feedback, so it gets the raw prompt."""
    return None if iteration == 0 else exemplar_for(config, layout, iteration + 1)


def write_prompts(
    config: RunConfig, prompts: pd.DataFrame, exemplar: str | None, uri: str, fingerprint: str
) -> str:
    df = prompts[["prompt_id", "prompt"]].reset_index(drop=True).copy()
    df["query"] = condition_prompts(config, df["prompt"], exemplar)
    return store.write_table(
        uri, df[PROMPTS], meta={"exemplar": exemplar, "fingerprint": fingerprint}
    )


def draw_iteration_prompts(
    config: RunConfig,
    inputs: RunInputs,
    iteration: int,
    exemplar: str | None,
    uri: str,
    fingerprint: str,
) -> str:
    from alt_core.data import draw_prompts

    train = store.read_table(inputs.train_prompts_uri)
    drawn = draw_prompts(
        train, config.data.prompts_per_iteration, stage_seed(config, iteration, "prompts")
    )
    return write_prompts(config, drawn, exemplar, uri, fingerprint)


def sample_specs(
    config: RunConfig,
    prompts_uri: str,
    model_path: str,
    out_uri: Callable[[int], str],
    *,
    seed: int,
    greedy: bool,
    num_rows: int,
) -> list[SampleSpec]:
    s = config.sampling
    params = GenerationParams(
        n=1 if greedy else s.num_generations,
        temperature=0.0 if greedy else s.temperature,
        top_p=1.0 if greedy else s.top_p,
        max_new_tokens=(config.evaluation.max_new_tokens or s.max_new_tokens)
        if greedy
        else s.max_new_tokens,
        max_prompt_tokens=config.data.max_prompt_tokens,
    )
    engine = EngineSettings(
        tensor_parallel_size=s.tensor_parallel_size,
        gpu_memory_utilization=s.gpu_memory_utilization,
        cpu_kvcache_gib=s.cpu_kvcache_gib,
        enforce_eager=s.enforce_eager,
        max_num_seqs=s.max_num_seqs,
        dtype=config.model.dtype,
        trust_remote_code=config.model.trust_remote_code,
    )
    shards = shard_bounds(num_rows, min(s.num_shards, num_rows) if greedy else s.num_shards)
    return [
        SampleSpec(
            model_path=model_path,
            prompts_uri=prompts_uri,
            output_uri=out_uri(i),
            start=start,
            stop=stop,
            seed=seed,
            params=params,
            engine=engine,
            backend=s.backend,
        )
        for i, (start, stop) in enumerate(shards)
    ]


def feedback_specs(
    config: RunConfig, sample_uris: list[str], out_uri: Callable[[int], str]
) -> list[dict[str, Any]]:
    """One feedback shard per sampling shard: each starts as soon as its samples are
    committed, so feedback overlaps with the sampling of the other shards."""
    cfg = config.model_dump(mode="json")
    return [
        {"config": cfg, "input_uri": uri, "output_uri": out_uri(i)}
        for i, uri in enumerate(sample_uris)
    ]


def shard_specs(
    config: RunConfig,
    layout: RunLayout,
    iteration: int,
    stage: str,
    prompts_uri: str,
    model_uri: str,
    *,
    greedy: bool,
    num_rows: int,
) -> tuple[list[SampleSpec], list[dict[str, Any]]]:
    """The sampling shards of a stage (`train` or `eval`) and their feedback shards, at
    the run layout's paths; used by the flow that runs them and by `alt status`."""
    samples = sample_specs(
        config,
        prompts_uri,
        model_uri,
        lambda i: layout.shard(iteration, f"{stage}_samples", i),
        seed=stage_seed(config, iteration, f"{stage}-sample"),
        greedy=greedy,
        num_rows=num_rows,
    )
    feedback = feedback_specs(
        config,
        [s.output_uri for s in samples],
        lambda i: layout.shard(iteration, f"{stage}_feedback", i),
    )
    return samples, feedback


def update_datapool(
    config: RunConfig,
    layout: RunLayout,
    iteration: int,
    feedback_uris: list[str],
    fingerprint: str,
) -> dict[str, Any]:
    """Flush, add, re-bucket and draw the balanced training set; commit pool and set."""
    from alt_core.datapool import draw_training_set, pool_stats, update_pool
    from alt_core.schemas import POOL

    new_rows = store.read_tables(feedback_uris)
    if iteration > 1:
        pool = store.read_table(layout.table(iteration - 1, "datapool", "pool"))
    else:
        pool = pd.DataFrame(columns=POOL)
    rng = np.random.default_rng(stage_seed(config, iteration, "datapool"))
    pool = update_pool(pool, new_rows, config, iteration, rng)
    train = draw_training_set(pool, config, rng)
    if train.empty:
        raise ValueError(
            f"iteration {iteration}: the training set is empty (every generation lacked "
            f"feedback: {int(new_rows['reward'].isna().sum())} of {len(new_rows)} missing)"
        )
    meta = {"fingerprint": fingerprint}
    pool_uri = store.write_table(layout.table(iteration, "datapool", "pool"), pool, meta=meta)
    crash_if("datapool")
    train_uri = store.write_table(layout.table(iteration, "datapool", "train"), train, meta=meta)
    return {"pool_uri": pool_uri, "train_uri": train_uri, "stats": pool_stats(pool)}


def added_tokens(config: RunConfig) -> list[str]:
    from alt_core.config import Method

    if config.method == Method.QUARK:
        return quantile_tokens(config.datapool.num_quantiles)
    return []


def feedback_summary(feedback: pd.DataFrame) -> dict[str, Any]:
    reward = feedback["reward"].astype(float)
    return {
        "train_samples": len(feedback),
        "train_reward_mean": float(reward.mean()),
        "train_reward_std": float(reward.std(ddof=0)),
        "train_missing_feedback": int(reward.isna().sum()),
        "train_truncated_share": float(feedback["truncated"].mean()) if len(feedback) else 0.0,
        "train_gen_tokens": float(feedback["num_tokens"].mean()) if len(feedback) else 0.0,
    }


def eval_frame(scored: pd.DataFrame) -> pd.DataFrame:
    out = scored.copy()
    for col in EVAL:
        if col not in out.columns:
            out[col] = np.nan
    return out[EVAL]
