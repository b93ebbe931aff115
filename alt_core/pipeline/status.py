"""`alt status RUN_DIR`: what a rerun of the run would reuse, redo, or do first.

The walk plans every stage of the DAG (`alt_core.pipeline.dag`) exactly as the flow
does and checks each node's outputs against its fingerprint. An output is

- committed: present, intact, made from the current settings and inputs;
- stale: present, but its settings or an input changed (or an input will be redone);
- missing: not committed yet (never run, or killed mid-way);
- failed: its last attempt failed and committed nothing (a feedback shard with too many
  missing judgements), with the cause;
- corrupt: committed, but its data no longer matches the commit record (a damaged or
  edited file): a rerun redoes it. `verify=True` (`alt status --verify`) hashes every
  file of every committed folder; otherwise folders are checked by size and, once per
  process, by hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alt_core import store
from alt_core.config import RunConfig, load_run_config
from alt_core.pipeline import dag
from alt_core.pipeline import fingerprints as fps
from alt_core.pipeline.layout import RunInputs, RunLayout

# A stage that fails without committing leaves this record beside the output it did not
# write ({"cause": ..., "message": ...}); the next commit of that output removes it.
FAILED_SUFFIX = ".failed.json"
_WORST_FIRST = ("failed", "corrupt", "stale", "missing")


@dataclass
class StageStatus:
    iteration: int
    stage: str
    states: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        for worst in _WORST_FIRST:
            if worst in self.states:
                return worst
        return "committed" if self.states else "missing"

    @property
    def detail(self) -> str:
        parts = []
        if len(self.states) > 1:
            done = self.states.count("committed")
            parts.append(f"{done}/{len(self.states)} parts committed")
        return "; ".join(parts + sorted(set(self.notes)))


class _Walk:
    """Carries which outputs will be redone, so their dependants are reported stale."""

    def __init__(self, config: RunConfig, layout: RunLayout, inputs: RunInputs, verify: bool):
        self.config, self.layout, self.inputs, self.verify = config, layout, inputs, verify
        self.redo: set[str] = set()
        self.rows: list[StageStatus] = []

    def _output(self, row: StageStatus, uri: str, inputs: list[str], expected: str | None) -> str:
        problem = None
        if expected is None or any(u in self.redo for u in inputs):
            state = "stale" if fps.present(uri) else "missing"
        else:
            state, problem = fps.inspect(uri, expected, full=self.verify)
        if state == "corrupt":
            row.notes.append(f"{_name(uri)}: {problem}")
        if state == "missing" and (failure := _failure(uri)):
            state = "failed"
            row.notes.append(f"failed: {failure}")
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
                states = [self._output(row, u, [], None) for u in exc.outputs]
                row.states += states or ["missing"]
                continue
            planned[stage.name] = nodes
            for node in nodes:
                expected = self._expected(node)
                row.states += [self._output(row, u, node.inputs, expected) for u in node.outputs]

    def _expected(self, node: dag.Node) -> str | None:
        """The fingerprint, or None when an input it hashes is not readable yet."""
        if any(u in self.redo for u in node.inputs):
            return None
        try:
            return node.fingerprint(self.config)
        except (store.ArtifactError, FileNotFoundError, KeyError):
            return None


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _failure(uri: str) -> str | None:
    """The cause recorded by the last failed attempt at `uri`, if one failed."""
    try:
        record = store.read_json(uri + FAILED_SUFFIX)
    except (FileNotFoundError, ValueError):
        return None
    return str(record.get("cause") or "unknown cause") if isinstance(record, dict) else None


def run_status(
    run_dir: str, config: RunConfig | None = None, verify: bool = False
) -> list[dict[str, Any]]:
    """Per iteration and stage: committed, stale, missing, failed or corrupt; `verify`
    checks every committed file's full hash."""
    layout = RunLayout(run_dir)
    if config is None:
        if not store.exists(layout.config):
            raise FileNotFoundError(f"{run_dir} holds no run (no config.yaml); check the path")
        config = load_run_config(layout.config)
    if not store.exists(layout.inputs):
        return [{"iteration": 0, "stage": "prepare", "state": "missing", "detail": ""}]
    inputs = RunInputs.model_validate(store.read_json(layout.inputs))
    walk = _Walk(config, layout, inputs, verify)
    if config.evaluation.evaluate_initial:
        walk.walk(dag.EVALUATION, 0)
    for k in range(1, config.iterations + 1):
        walk.walk(dag.ITERATION, k)
        walk.walk(dag.EVALUATION, k)
    return [
        {"iteration": r.iteration, "stage": r.stage, "state": r.state, "detail": r.detail}
        for r in walk.rows
    ]
