"""Runs side by side: `alt compare RUN_DIR... [--out DIR]`.

    write_comparison([run_a, run_b], out) -> URI of <out>/compare.html

One self-contained HTML page (figures inlined) and its PNGs: per iteration and run the
task metric (the expected maximum toxicity on the toxicity task, else the validation
reward ± sem), the reference perplexity, distinct-1/2/3, the task metric against the
training samples used so far, the wall time of each stage (from `iter_NNN/timings.json`,
every attempt included), and the last iteration's generations for the same validation
prompts, one column per run. Runs of different methods on one task are the main use.

Refused with a `CompareError` (the CLI: exit 2, one message): a folder that is not a run,
a run that has not finished, and runs on different tasks (another task kind, data set or
scorer: their metrics do not compare).
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from alt_core import store
from alt_core.pipeline.layout import RunLayout
from alt_core.pipeline.timings import StageTimes
from alt_core.report.html import CSS, METRIC_COLUMNS, RunData, _table, format_cell, load_run, short

COMPARE_FILE = "compare.html"
SIDE_BY_SIDE_PROMPTS = 6
# The stages in the order an iteration runs them; anything else is summed as "other".
STAGE_ORDER = ["prompts", "train_sample", "train_feedback", "datapool", "train",
               "eval_prompts", "eval_sample", "eval_feedback", "eval_join", "perplexity"]  # fmt: skip
# The report's metrics columns the comparison's table of first and last evaluations shows.
SUMMARY_KEYS = ("valid_toxicity_max_mean", "valid_toxicity_prob", "valid_toxicity_mean",
                "valid_reward_mean", "valid_reward_sem", "valid_perplexity", "valid_distinct_1",
                "valid_distinct_2", "valid_distinct_3")  # fmt: skip
SUMMARY_COLUMNS = [c for c in METRIC_COLUMNS if c[0] in SUMMARY_KEYS]


class CompareError(ValueError):
    """Folders that cannot be compared; the message names the folder and the fix."""


@dataclass
class Compared:
    """One run of a comparison: its data, its label and its stage times."""

    label: str
    data: RunData
    stage_seconds: dict[str, float]

    @property
    def metrics(self) -> pd.DataFrame:
        return self.data.metrics.sort_values("iteration")


def task_signature(data: RunData) -> dict[str, Any]:
    """What must agree for two runs' metrics to compare: the task kind, the prompts and
    the scorer of the evaluation."""
    cfg = data.config
    assert cfg is not None
    d, f = cfg.data, cfg.feedback
    prompts: dict[str, Any] = {"source": d.source}
    if d.source == "hf":
        prompts.update(dataset=d.hf_dataset, split=d.valid_split, column=d.prompt_column)
    elif d.source == "file":
        prompts.update(valid=d.valid_path or d.train_path)
    prompts.update(
        valid_prompts=d.num_valid_prompts,
        challenging_only=d.challenging_only,
        toxicity_range=d.prompt_toxicity_range,
        holdout=d.holdout_share,
    )
    scorer: dict[str, Any] = {"provider": f.provider}
    if f.provider == "reward_model":
        scorer["model"] = f.reward_model
    elif f.provider == "toxicity_classifier":
        scorer.update(model=f.toxicity.classifier, label=f.toxicity.toxic_label)
    elif f.provider == "perspective":
        scorer["attribute"] = f.toxicity.perspective.attribute
    elif f.provider == "judge":
        scorer.update(model=f.judge.model, template=f.judge.template)
    return {"task": cfg.task, "prompts": prompts, "scorer": scorer}


def _check_run(run_dir: str) -> RunData:
    layout = RunLayout(run_dir)
    if not store.exists(layout.config):
        raise CompareError(
            f"{run_dir} is not an ALT run folder (no config.yaml); give the folders that "
            f"`alt run` printed as 'run dir:'"
        )
    data = load_run(run_dir)
    if data.config is None:
        raise CompareError(
            f"{run_dir}: its config.yaml cannot be read by this version; rerun it or compare "
            f"runs made by this version"
        )
    done = max(data.iterations, default=0)
    if not store.exists(layout.metrics) or done < data.config.iterations:
        written = "" if store.exists(layout.metrics) else "no metrics.json yet; "
        raise CompareError(
            f"{run_dir} is unfinished ({written}{done} of {data.config.iterations} iterations "
            f"evaluated); finish it with `alt resume {run_dir}` and compare again"
        )
    return data


def check_runs(run_dirs: list[str]) -> list[RunData]:
    """The runs' data, or a CompareError naming the folder that cannot be compared."""
    if len(run_dirs) < 2:
        raise CompareError("alt compare needs at least two run folders")
    runs = [_check_run(d) for d in run_dirs]
    first = task_signature(runs[0])
    for run in runs[1:]:
        other = task_signature(run)
        if other != first:
            keys = [k for k in first if first[k] != other[k]]
            what = "; ".join(f"{k}: {first[k]} vs {other[k]}" for k in keys)
            raise CompareError(
                f"{run.run_dir} is a run on another task than {runs[0].run_dir} ({what}); "
                f"compare runs of one task (the same prompts and scorer), e.g. its alt_rm and "
                f"quark runs"
            )
    return runs


def stage_seconds(run_dir: str, iterations: list[int]) -> dict[str, float]:
    """Wall seconds per stage over every iteration and attempt (timings.json)."""
    layout = RunLayout(run_dir)
    total: dict[str, float] = {}
    for k in iterations:
        for attempt in StageTimes(store.join(layout.iteration(k), "timings.json")).attempts:
            stage = str(attempt.get("stage"))
            total[stage] = total.get(stage, 0.0) + float(attempt.get("seconds") or 0.0)
    return total


def _labels(runs: list[RunData]) -> list[str]:
    """`name (method)`, made unique by the folder name where names repeat."""
    labels = [f"{r.name} ({r.config.method.value})" if r.config else r.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} · {r.run_dir.rstrip('/').rsplit('/', 1)[-1]}" for lab, r in
                  zip(labels, runs, strict=True)]  # fmt: skip
    return labels


def collect(run_dirs: list[str]) -> list[Compared]:
    runs = check_runs(run_dirs)
    return [
        Compared(label, run, stage_seconds(run.run_dir, run.iterations))
        for label, run in zip(_labels(runs), runs, strict=True)
    ]


# --------------------------------------------------------------------------- page


def side_by_side(runs: list[Compared], n: int = SIDE_BY_SIDE_PROMPTS) -> str:
    """The last iteration's generations of the same validation prompts, a column per run."""
    lasts = []
    for run in runs:
        evals = run.data.evals
        if evals.empty:
            return "<p>A run has no evaluation table.</p>"
        lasts.append(evals[evals["iteration"] == evals["iteration"].max()])
    common = set(lasts[0]["prompt_id"])
    for last in lasts[1:]:
        common &= set(last["prompt_id"])
    if not common:
        return "<p>The runs share no validation prompt.</p>"
    toxic = runs[0].data.config is not None and runs[0].data.config.task == "toxicity"
    value = "toxicity" if toxic else "reward"
    rows = []
    for pid in sorted(common)[:n]:
        prompt = lasts[0].loc[lasts[0]["prompt_id"] == pid, "prompt"].iloc[0]
        cells = [short(prompt, 200)]
        for last in lasts:
            row = last[last["prompt_id"] == pid].iloc[0]
            score = 1.0 - row["reward"] if toxic else row["reward"]
            cells.append(
                f"{short(row['generation'], 300)}  [{value} {format_cell(score, '{:.3f}')}]"
            )
        rows.append(cells)
    iters = ", ".join(f"{r.label}: iteration {int(r.data.evals['iteration'].max())}" for r in runs)
    return f"<p>{html.escape(iters)}; the first sample of each prompt.</p>" + _table(
        ["prompt", *(r.label for r in runs)], rows, "text"
    )


def summary_table(runs: list[Compared]) -> str:
    """Each run's first and last evaluation, and its cost."""
    present = [c for c in SUMMARY_COLUMNS if any(c[0] in r.metrics for r in runs)]
    rows = []
    for run in runs:
        m = run.metrics
        for which, row in (("first", m.iloc[0]), ("last", m.iloc[-1])):
            cells = [run.label, f"{which} (iter {int(row['iteration'])})"]
            cells += [format_cell(row.get(key), fmt) for key, _, fmt in present]
            if which == "last":
                samples = m["train_samples"].sum() if "train_samples" in m else np.nan
                cells += [
                    format_cell(samples, "{:d}"),
                    format_cell(sum(run.stage_seconds.values()), "{:.0f}"),
                ]
            else:
                cells += ["", ""]
            rows.append(cells)
    header = ["run", "evaluation", *(label for _, label, _ in present), "samples", "wall s"]
    return _table(header, rows, "num")


def render_compare(runs: list[Compared], pngs: dict[str, bytes]) -> str:
    from alt_core.report.compare_plots import CAPTIONS
    from alt_core.report.html import _figures_of

    made = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    folders = "".join(
        f"<li>{html.escape(r.label)}: {html.escape(r.data.run_dir)}</li>" for r in runs
    )
    sections = [
        ("Runs", f"<ul>{folders}</ul>" + summary_table(runs)),
        ("Per iteration", _figures_of(pngs, CAPTIONS)),
        ("The same validation prompts, last iteration", side_by_side(runs)),
    ]
    body = "\n".join(f"<section><h2>{t}</h2>\n{content}</section>" for t, content in sections)
    task = runs[0].data.config.task if runs[0].data.config else "reward"
    title = html.escape(f"ALT runs compared ({task} task)")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body><header><h1>{title}</h1><div class='meta'>"
        f"{len(runs)} runs · written {made}</div></header><main>{body}</main></body></html>\n"
    )


def write_comparison(run_dirs: list[str], out_dir: str | None = None) -> str:
    """Write the PNGs and <out_dir>/compare.html (default: <first run>/compare); returns
    the page's URI."""
    from alt_core.report.compare_plots import PLOT_FILES, compare_plots

    runs = collect(run_dirs)
    out = out_dir or store.join(runs[0].data.run_dir, "compare")
    pngs = compare_plots(runs)
    for name, png in pngs.items():
        store.write_bytes_atomic(store.join(out, PLOT_FILES[name]), png)
    uri = store.join(out, COMPARE_FILE)
    store.write_bytes_atomic(uri, render_compare(runs, pngs).encode())
    return uri
