"""Where a run's artifacts live: deterministic URIs under one run folder.

<run>/config.yaml, inputs.json, metrics.json
<run>/data/{train,valid}_prompts.parquet              (file and hub prompt sources)
<run>/iter_NNN/prompts/prompts.parquet
<run>/iter_NNN/{train,eval}_samples/shard_SSS.parquet
<run>/iter_NNN/{train,eval}_feedback/shard_SSS.parquet
<run>/iter_NNN/datapool/{pool,train}.parquet
<run>/iter_NNN/policy/                                 (a committed checkpoint folder)
<run>/iter_NNN/eval/{prompts,scored,eval}.parquet, metrics.json
<run>/iter_NNN/metrics.json, timings.json                (every attempt's stage times)
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from alt_core.store import join


class RunInputs(BaseModel):
    """Where a run's starting points live (resolved once, before iteration 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy_uri: str
    reference_uri: str
    train_prompts_uri: str
    valid_prompts_uri: str


class RunLayout:
    """Deterministic URIs of a run's artifacts."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir.rstrip("/")

    def iteration(self, k: int) -> str:
        return join(self.run_dir, f"iter_{k:03d}")

    def stage(self, k: int, stage: str) -> str:
        return join(self.iteration(k), stage)

    def shard(self, k: int, stage: str, shard: int) -> str:
        return join(self.stage(k, stage), f"shard_{shard:03d}.parquet")

    def table(self, k: int, stage: str, name: str) -> str:
        return join(self.stage(k, stage), f"{name}.parquet")

    def timings(self, k: int) -> str:
        """Every attempt's time per stage of iteration k (`pipeline.timings`)."""
        return join(self.iteration(k), "timings.json")

    def policy(self, k: int) -> str:
        return join(self.iteration(k), "policy")

    def training_state(self, k: int) -> str:
        """The run store's copy of iteration k's resumable training state (remote runs)."""
        return join(self.iteration(k), "policy.state")

    @property
    def config(self) -> str:
        return join(self.run_dir, "config.yaml")

    @property
    def inputs(self) -> str:
        """Where the run's starting model and prompt sets were resolved to."""
        return join(self.run_dir, "inputs.json")

    @property
    def metrics(self) -> str:
        return join(self.run_dir, "metrics.json")
