"""`alt status RUN_DIR`: what a rerun of the run would reuse, redo, or do first.

The walk follows the iteration DAG and computes each output's expected fingerprint
exactly as the stage tasks do (`alt_core.pipeline.fingerprints`). An output is

- committed: present, intact, made from the current settings and inputs;
- stale: present, but its settings or an input changed (or an input will be redone);
- missing: not committed yet (never run, killed mid-way, or corrupt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alt_core import store
from alt_core.config import RunConfig
from alt_core.methods import uses_judge
from alt_core.pipeline import fingerprints as fps
from alt_core.pipeline import stages as pipeline
from alt_core.store import RunLayout


@dataclass
class StageStatus:
    iteration: int
    stage: str
    states: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        for worst in ("stale", "missing"):
            if worst in self.states:
                return worst
        return "committed" if self.states else "missing"

    @property
    def detail(self) -> str:
        if len(self.states) <= 1:
            return ""
        done = self.states.count("committed")
        return f"{done}/{len(self.states)} parts committed"


class _Walk:
    """Carries which outputs will be redone, so their dependants are reported stale."""

    def __init__(self, config: RunConfig, layout: RunLayout, inputs: dict[str, str]):
        self.config, self.layout, self.inputs = config, layout, inputs
        self.redo: set[str] = set()
        self.rows: list[StageStatus] = []

    def check(self, uri: str, inputs: list[str], expected: str | None) -> str:
        if expected is None or any(u in self.redo for u in inputs):
            present = store.is_committed(uri) or store.dir_committed(uri)
            state = "stale" if present else "missing"
        else:
            state = fps.state(uri, expected)
        if state != "committed":
            self.redo.add(uri)
        return state

    def stage(self, k: int, name: str, states: list[str]) -> None:
        self.rows.append(StageStatus(k, name, states))

    def expected(self, fn, *args) -> str | None:
        """The fingerprint, or None when an input it hashes is not readable yet."""
        try:
            return fn(*args)
        except (store.ArtifactError, FileNotFoundError, KeyError):
            return None

    def sample_and_feedback(self, k: int, stage: str, prompts_uri: str, model: str, greedy: bool):
        info = store.commit_info(prompts_uri)
        if info is None:
            self.stage(k, f"{stage} samples", ["missing"])
            self.stage(k, f"{stage} feedback", ["missing"])
            return None
        specs, fb_specs = pipeline.shard_specs(
            self.config, self.layout, k, stage, prompts_uri, model,
            greedy=greedy, num_rows=info["rows"],
        )  # fmt: skip
        sample_states, feedback_states, feedback_uris = [], [], []
        for spec, fb in zip(specs, fb_specs, strict=True):
            fp = self.expected(fps.sample_fingerprint, self.config, spec.to_dict())
            sample_states.append(self.check(spec.output_uri, [prompts_uri, model], fp))
            fp = self.expected(fps.feedback_fingerprint, self.config, spec.output_uri)
            feedback_states.append(self.check(fb["output_uri"], [spec.output_uri], fp))
            feedback_uris.append(fb["output_uri"])
        self.stage(k, f"{stage} samples", sample_states)
        self.stage(k, f"{stage} feedback", feedback_states)
        return feedback_uris

    def evaluation(self, k: int, policy: str) -> None:
        uri = self.layout.table(k, "eval", "prompts")
        fp = self.expected(
            lambda: fps.eval_prompts_fingerprint(
                self.config,
                self.inputs["valid_prompts_uri"],
                pipeline.eval_exemplar(self.config, self.layout, k),
            )
        )
        self.stage(k, "eval prompts", [self.check(uri, [], fp)])
        feedback = self.sample_and_feedback(k, "eval", uri, policy, greedy=True)
        if feedback is None:
            self.stage(k, "eval", ["missing"])
            return
        scored = self.layout.table(k, "eval", "scored")
        scored_state = self.check(
            scored, feedback, self.expected(fps.join_fingerprint, self.config, feedback)
        )
        out = self.layout.table(k, "eval", "eval")
        ref = self.inputs["reference_uri"]
        fp = self.expected(fps.perplexity_fingerprint, self.config, scored, ref)
        self.stage(k, "eval", [scored_state, self.check(out, [scored], fp)])

    def iteration(self, k: int) -> None:
        layout, config = self.layout, self.config
        policy_in = self.inputs["policy_uri"] if k == 1 else layout.policy(k - 1)
        prompts = layout.table(k, "prompts", "prompts")
        previous_pool = [layout.table(k - 1, "datapool", "pool")] if k > 1 else []
        fp = self.expected(
            lambda: fps.prompts_fingerprint(
                config,
                self.inputs["train_prompts_uri"],
                k,
                pipeline.exemplar_for(config, layout, k),
            )
        )
        # Judge methods take the exemplar from the previous pool; reward methods' is fixed.
        exemplar_deps = previous_pool if uses_judge(config) else []
        self.stage(k, "prompts", [self.check(prompts, exemplar_deps, fp)])
        feedback = self.sample_and_feedback(k, "train", prompts, policy_in, greedy=False)
        pool = layout.table(k, "datapool", "pool")
        train = layout.table(k, "datapool", "train")
        if feedback is None:
            fp = None
            feedback = []
        else:
            fp = self.expected(fps.datapool_fingerprint, config, feedback, previous_pool)
        deps = [*feedback, *previous_pool]
        self.stage(k, "datapool", [self.check(pool, deps, fp), self.check(train, deps, fp)])
        out = layout.policy(k)
        ref = self.inputs["reference_uri"]
        fp = self.expected(fps.train_fingerprint, config, train, policy_in, ref)
        self.stage(k, "train", [self.check(out, [train, policy_in], fp)])
        self.evaluation(k, out)


def run_status(run_dir: str, config: RunConfig | None = None) -> list[dict[str, Any]]:
    """Per iteration and stage: committed, stale or missing."""
    layout = RunLayout(run_dir)
    if config is None:
        import yaml

        if not store.exists(layout.config):
            raise FileNotFoundError(f"{run_dir} holds no run (no config.yaml); check the path")
        config = RunConfig.model_validate(yaml.safe_load(store.read_bytes(layout.config)))
    if not store.exists(layout.inputs):
        return [{"iteration": 0, "stage": "prepare", "state": "missing", "detail": ""}]
    walk = _Walk(config, layout, store.read_json(layout.inputs))
    if config.evaluation.evaluate_initial:
        walk.evaluation(0, walk.inputs["policy_uri"])
    for k in range(1, config.iterations + 1):
        walk.iteration(k)
    return [
        {"iteration": r.iteration, "stage": r.stage, "state": r.state, "detail": r.detail}
        for r in walk.rows
    ]
