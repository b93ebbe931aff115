"""`alt status RUN_DIR`: what a rerun of the run would reuse, redo, or do first.

The walk plans every stage of the DAG (`alt_core.pipeline.dag`) exactly as the flow
does and checks each node's outputs against its fingerprint. An output is

- committed: present, intact, made from the current settings and inputs;
- stale: present, but its settings or an input changed (or an input will be redone);
- missing: not committed yet (never run, killed mid-way, or corrupt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from alt_core import store
from alt_core.config import RunConfig
from alt_core.pipeline import dag
from alt_core.pipeline import fingerprints as fps
from alt_core.pipeline.layout import RunInputs, RunLayout


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

    def __init__(self, config: RunConfig, layout: RunLayout, inputs: RunInputs):
        self.config, self.layout, self.inputs = config, layout, inputs
        self.redo: set[str] = set()
        self.rows: list[StageStatus] = []

    def _output(self, uri: str, inputs: list[str], expected: str | None) -> str:
        if expected is None or any(u in self.redo for u in inputs):
            state = "stale" if fps.present(uri) else "missing"
        else:
            state = fps.state(uri, expected)
        if state != "committed":
            self.redo.add(uri)
        return state

    def _row(self, k: int, label: str) -> StageStatus:
        """Stages sharing a label (the evaluation's join and perplexity) share a row."""
        if self.rows and (self.rows[-1].iteration, self.rows[-1].stage) == (k, label):
            return self.rows[-1]
        self.rows.append(StageStatus(k, label))
        return self.rows[-1]

    def walk(self, stages: tuple[dag.Stage, ...], k: int) -> None:
        ctx = dag.Ctx(self.config, self.layout, self.inputs, k)
        planned: dict[str, list[dag.Node]] = {}
        for stage in stages:
            row = self._row(k, stage.label)
            try:
                nodes = stage.plan(ctx, planned)
            except dag.NotReady as exc:
                states = [self._output(u, [], None) for u in exc.outputs]
                row.states += states or ["missing"]
                continue
            planned[stage.name] = nodes
            for node in nodes:
                expected = self._expected(node)
                row.states += [self._output(u, node.inputs, expected) for u in node.outputs]

    def _expected(self, node: dag.Node) -> str | None:
        """The fingerprint, or None when an input it hashes is not readable yet."""
        if any(u in self.redo for u in node.inputs):
            return None
        try:
            return node.fingerprint(self.config)
        except (store.ArtifactError, FileNotFoundError, KeyError):
            return None


def run_status(run_dir: str, config: RunConfig | None = None) -> list[dict[str, Any]]:
    """Per iteration and stage: committed, stale or missing."""
    layout = RunLayout(run_dir)
    if config is None:
        if not store.exists(layout.config):
            raise FileNotFoundError(f"{run_dir} holds no run (no config.yaml); check the path")
        config = RunConfig.model_validate(yaml.safe_load(store.read_bytes(layout.config)))
    if not store.exists(layout.inputs):
        return [{"iteration": 0, "stage": "prepare", "state": "missing", "detail": ""}]
    walk = _Walk(config, layout, RunInputs.model_validate(store.read_json(layout.inputs)))
    if config.evaluation.evaluate_initial:
        walk.walk(dag.EVALUATION, 0)
    for k in range(1, config.iterations + 1):
        walk.walk(dag.ITERATION, k)
        walk.walk(dag.EVALUATION, k)
    return [
        {"iteration": r.iteration, "stage": r.stage, "state": r.state, "detail": r.detail}
        for r in walk.rows
    ]
