"""The parent flow: K ALT iterations over one run folder, then the metrics table."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from alt_core import store
from alt_core.config import RunConfig, RunSettings, absolute_paths, absolute_uri, config_from_preset
from alt_core.pipeline.layout import RunLayout
from alt_core.preflight import preflight
from alt_core.report.html import format_cell
from alt_core.runtime import workers
from alt_core.runtime.runlock import RunLock
from flows.iteration import alt_iteration, evaluate_policy
from tasks_lib import stages
from tasks_lib.common import artifact_key, jobs_end_with_the_flow_run
from tasks_lib.reporting import publish_iteration

TABLE_COLUMNS = [
    ("iteration", "iter", "{:d}"),
    ("train_reward_mean", "train reward", "{:+.3f}"),
    ("train_reward_std", "train sd", "{:.3f}"),
    ("valid_reward_mean", "valid reward", "{:+.3f}"),
    ("valid_reward_sem", "valid sem", "{:.3f}"),
    ("valid_perplexity", "ref ppl", "{:.2f}"),
    ("train_loss", "loss", "{:.3f}"),
    ("train_sample_s", "sample s", "{:.0f}"),
    ("train_feedback_s", "feedback s", "{:.0f}"),
    ("train_s", "train s", "{:.0f}"),
    ("eval_s", "eval s", "{:.0f}"),
    ("reused", "reused", "{}"),
]
# The toxicity task's columns (`alt_core.evaluation.toxicity_metrics`), after the
# validation reward; a table without them (the reward tasks) is unchanged.
TOXICITY_COLUMNS = [
    ("valid_toxicity_max_mean", "exp max tox", "{:.3f}"),
    ("valid_toxicity_prob", "tox prob", "{:.3f}"),
    ("valid_toxicity_mean", "mean tox", "{:.3f}"),
]
# The table's names for the stages a resumed attempt reused (the times above include
# what the earlier attempts spent on them).
_REUSED_LABELS = {
    "train_sample": "sample",
    "train_feedback": "feedback",
    "datapool": "pool",
    "train": "train",
    "perplexity": "eval",
}


def reused_label(stages: list[str] | None) -> str | None:
    if stages is None:  # a row written before stages recorded it
        return None
    names = [label for stage, label in _REUSED_LABELS.items() if stage in stages]
    return ",".join(names) or "-"


def table_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """TABLE_COLUMNS, with TOXICITY_COLUMNS after the validation reward when a row has
    them."""
    if not any(TOXICITY_COLUMNS[0][0] in row for row in rows):
        return TABLE_COLUMNS
    at = [key for key, _, _ in TABLE_COLUMNS].index("valid_reward_sem") + 1
    return [*TABLE_COLUMNS[:at], *TOXICITY_COLUMNS, *TABLE_COLUMNS[at:]]


def metrics_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    columns = table_columns(rows)
    return [
        {
            label: format_cell(reused_label(row.get(key)) if key == "reused" else row.get(key), fmt)
            for key, label, fmt in columns
        }
        for row in rows
    ]


@flow(name="alt-run", log_prints=True)
def alt_run(config: RunSettings, run_dir: str, preset: str | None = None) -> list[dict[str, Any]]:
    """A full ALT run: evaluate the initial policy, then K iterations.

    Args:
        config: The run configuration: method, model, data, sampling, feedback, datapool,
            training, evaluation and storage settings (every field is documented). With
            a preset, the settings given over it: a field left out keeps the preset's
            value (the form holds the whole preset, so the form is what runs).
        run_dir: The run folder, a local path or an s3:// URI. Rerunning over the same
            folder reuses the committed work and redoes only what is missing or stale.
        preset: The preset `config` is given over (a deployment sets the one it was
            served with). None: `config` is the whole configuration, and a field left
            out takes the model's default.
    """
    # Local paths resolved once, here, so config.yaml records where the files are.
    run_config, run_dir = absolute_paths(config_from_preset(preset, config)), absolute_uri(run_dir)
    for note in preflight(run_config, run_dir, writes=True):  # before anything is written
        print(f"note: {note}")
    # A cancel or SIGTERM from Prefect's runner ends the jobs too (runtime.stop).
    # One run per folder (runtime.runlock); its kept engines end with it (runtime.workers).
    with jobs_end_with_the_flow_run(), RunLock(run_dir), workers.kept_for_the_run():
        return run_all(run_config, run_dir)


def run_all(config: RunConfig, run_dir: str) -> list[dict[str, Any]]:
    """The body of `alt_run`, for a checked config and an absolute run folder."""
    layout = RunLayout(run_dir)
    inputs = stages.prepare_run(config, run_dir)
    rows: list[dict[str, Any]] = []
    if config.evaluation.evaluate_initial:
        initial = {"iteration": 0, **evaluate_policy(config, run_dir, 0, inputs)}
        publish_iteration(config, run_dir, 0, initial)
        rows.append(initial)
    for k in range(1, config.iterations + 1):
        rows.append(alt_iteration(config, run_dir, k, inputs))
    store.write_json(layout.metrics, {"run_dir": run_dir, "iterations": rows})
    create_table_artifact(
        table=metrics_rows(rows),
        key=artifact_key("alt-metrics", config.name),
        description=f"Per-iteration metrics of {run_dir} (iteration 0: the initial policy)",
    )
    return rows
