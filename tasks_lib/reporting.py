"""What a person sees of an iteration in the Prefect UI, without reading logs.

`publish_iteration` runs at the end of each iteration and attaches to the flow run:
- a table artifact of the iteration's metrics;
- a markdown artifact: what was sampled, the feedback distribution, missing feedback,
  the datapool buckets, training figures, the validation result and examples;
- the run's plots, written as PNG to `<run_dir>/report/` and linked from the markdown.

Reporting is a courtesy: a failure here is logged as a warning with its cause and never
fails an iteration whose work is committed (`alt report RUN_DIR` redoes it any time).
"""

from __future__ import annotations

import html
import os
from typing import Any

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from alt_core import store
from alt_core.config import RunConfig
from alt_core.report.html import (
    METRIC_COLUMNS,
    RunData,
    bucket_labels,
    format_cell,
    load_run,
    make_plots,
    short,
    write_plots,
)
from tasks_lib.common import artifact_key, logger

EXAMPLES = 5
PLOT_TITLES = {
    "training_loss": "training loss, KL and entropy",
    "reward_distribution": "reward distribution per bucket",
    "validation": "validation reward and perplexity",
    "generation_lengths": "generation lengths",
}


@task(name="publish-iteration", cache_policy=NO_CACHE)
def publish_iteration(
    config: RunConfig, run_dir: str, iteration: int, row: dict[str, Any]
) -> dict[str, Any]:
    """Plots and Prefect artifacts of `iteration`; returns the plot URIs and artifact keys."""
    log = logger()
    out: dict[str, Any] = {"plots": {}, "artifacts": []}
    try:
        data = load_run(run_dir, upto=iteration)
        out["plots"] = write_plots(run_dir, make_plots(data))
    except Exception as exc:  # noqa: BLE001 - see the module docstring
        log.warning(f"iteration {iteration}: plots not written ({type(exc).__name__}: {exc})")
        data = RunData(run_dir=run_dir, config=config)
    prefix = artifact_key("alt", config.name, "iter", iteration)
    try:
        create_table_artifact(
            table=metric_rows(row),
            key=f"{prefix}-metrics",
            description=f"Metrics of iteration {iteration} of {run_dir}",
        )
        create_markdown_artifact(
            markdown=iteration_markdown(config, data, iteration, row, out["plots"]),
            key=f"{prefix}-summary",
            description=f"What iteration {iteration} sampled, scored, trained and evaluated",
        )
        out["artifacts"] = [f"{prefix}-metrics", f"{prefix}-summary"]
    except Exception as exc:  # noqa: BLE001 - see the module docstring
        log.warning(f"iteration {iteration}: artifacts not created ({type(exc).__name__}: {exc})")
    return out


def metric_rows(row: dict[str, Any]) -> list[dict[str, str]]:
    """The metrics row as (metric, value) pairs: known metrics first, formatted."""
    known = {key: fmt for key, _, fmt in METRIC_COLUMNS}
    order = [k for k in known if k in row] + sorted(k for k in row if k not in known)
    return [
        {"metric": k, "value": format_cell(row[k], known.get(k, "{:.4g}"))}
        for k in order
        if not isinstance(row[k], dict | list)
    ]


def cell(text: Any, limit: int = 300) -> str:
    """Text safe in a markdown table cell: one line, no pipes, no raw HTML."""
    s = html.escape(short(text, limit)).replace("|", "\\|").replace("`", "'")
    return " ".join(s.split())


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def link(uri: str) -> str:
    return uri if store.is_remote(uri) else "file://" + os.path.abspath(uri)


def conditioning(feedback: pd.DataFrame) -> str:
    """The text prepended to the prompts this iteration sampled with."""
    if feedback.empty:
        return "unknown"
    first = feedback.iloc[0]
    query, prompt = str(first["query"]), str(first["prompt"])
    if query == prompt:
        return "none (the raw prompt)"
    prefix = query[: -len(prompt)] if query.endswith(prompt) else query
    return f"`{prefix.strip()}`"


def _sampled(config: RunConfig, fb: pd.DataFrame) -> list[str]:
    if fb.empty:
        return ["No training samples were found for this iteration."]
    prompts = fb["prompt_id"].nunique()
    return [
        f"- **{len(fb)} generations** for {prompts} distinct prompts "
        f"({config.sampling.num_generations} per prompt, temperature "
        f"{config.sampling.temperature:g}, top-p {config.sampling.top_p:g})",
        f"- conditioned on: {conditioning(fb)}",
        f"- generated tokens: mean {fb['num_tokens'].mean():.1f}; "
        f"{fb['truncated'].mean():.0%} cut off at {config.sampling.max_new_tokens}",
    ]


def _feedback(fb: pd.DataFrame) -> list[str]:
    if fb.empty:
        return []
    value = "reward" if fb["reward"].notna().any() else "score"
    q = fb[value].describe(percentiles=[0.1, 0.25, 0.5, 0.75, 0.9])
    cols = ["mean", "std", "min", "10%", "25%", "50%", "75%", "90%", "max"]
    lines = [md_table(cols, [[format_cell(q.get(c), "{:+.3f}") for c in cols]])]
    missing = fb[fb["reward"].isna() & fb["score"].isna()]
    lines.append(f"\n**Missing feedback: {len(missing)} of {len(fb)}**")
    if len(missing):
        reasons = missing["missing_reason"].fillna("unknown").value_counts().head(5)
        lines += [f"- {cell(reason, 120)}: {n}" for reason, n in reasons.items()]
    return lines


def _pool(config: RunConfig, pool: pd.DataFrame) -> list[str]:
    if pool.empty:
        return []
    labels = bucket_labels(config, pool)
    value = "reward" if pool["reward"].notna().any() else "score"
    stats = pool.groupby("bucket")[value].agg(["size", "mean"])
    rows = [
        [cell(labels.get(int(b), b)), str(int(r["size"])), format_cell(r["mean"], "{:+.3f}")]
        for b, r in stats.iterrows()
    ]
    return [md_table(["bucket", "rows", f"mean {value}"], rows)]


def _training(data: RunData, iteration: int, plots: dict[str, str]) -> list[str]:
    lines = []
    summary = data.train_summaries.get(iteration)
    if summary:
        terms = ", ".join(
            f"{t} {format_cell(summary.get(f'mean_{t}'), '{:.4f}')}"
            for t in ("nll", "kl", "entropy")
        )
        lines.append(
            f"- {summary.get('steps')} optimizer steps, final loss "
            f"{format_cell(summary.get('final_loss'), '{:.4f}')}; means: {terms}"
        )
    if plots:
        figures = " · ".join(f"[{PLOT_TITLES[n]}]({link(u)})" for n, u in plots.items())
        lines.append(f"- figures: {figures}")
    return lines


def _evaluation(data: RunData, iteration: int, row: dict[str, Any]) -> list[str]:
    lines = [
        f"- validation reward **{format_cell(row.get('valid_reward_mean'), '{:+.3f}')}** "
        f"± {format_cell(row.get('valid_reward_sem'), '{:.3f}')} (sem); perplexity under the "
        f"reference model {format_cell(row.get('valid_perplexity'), '{:.2f}')}"
    ]
    ev = data.evals
    ev = ev[ev["iteration"] == iteration] if not ev.empty else ev
    if not ev.empty:
        sample = ev.sort_values("prompt_id").head(EXAMPLES)
        rows = [
            [cell(r["prompt"], 160), cell(r["query"], 200), cell(r["generation"]),
             format_cell(r["reward"], "{:+.3f}")]
            for r in sample.to_dict("records")
        ]  # fmt: skip
        lines += ["", md_table(["prompt", "conditioned input", "generation", "reward"], rows)]
    return lines


def iteration_markdown(
    config: RunConfig, data: RunData, iteration: int, row: dict[str, Any], plots: dict[str, str]
) -> str:
    """The iteration's summary as markdown (pure: reads nothing but its arguments)."""
    fb = data.feedback
    fb = fb[fb["iteration"] == iteration] if not fb.empty else fb
    pool = data.pools
    pool = pool[pool["pool_iteration"] == iteration] if not pool.empty else pool
    head = [f"Run folder `{data.run_dir}`, method `{config.method.value}`."]
    if iteration == 0:  # the initial policy: evaluated, never trained
        head.append("Iteration 0 is the initial policy: evaluation only.")
        body = []
    else:
        body = [
            ("## Sampled", _sampled(config, fb)),
            ("## Feedback", _feedback(fb)),
            ("## Datapool buckets", _pool(config, pool)),
            ("## Training", _training(data, iteration, plots)),
        ]
    sections = [
        (f"# Iteration {iteration} of `{config.name}`", head),
        *body,
        ("## Evaluation", _evaluation(data, iteration, row)),
    ]
    return "\n\n".join(f"{title}\n\n" + "\n".join(lines) for title, lines in sections if lines)
