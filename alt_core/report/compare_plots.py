"""The plots of `alt compare`: one line (or bar) per run, the same colour in every plot.

Pure functions over `alt_core.report.compare.Compared` runs, drawn with the helpers of
`alt_core.report.plots` (matplotlib's object API, no pyplot); each returns PNG bytes or
None when no run has the figures it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from alt_core.report.plots import _figure, _png

if TYPE_CHECKING:
    from alt_core.report.compare import Compared

PLOT_FILES = {
    "task_metric": "compare_task_metric.png",
    "perplexity_distinct": "compare_perplexity_distinct.png",
    "samples": "compare_samples.png",
    "stage_times": "compare_stage_times.png",
}
CAPTIONS = {
    "task_metric": "The task metric per iteration (0 = the initial policy): on the toxicity "
    "task the expected maximum toxicity over each prompt's samples and the toxicity "
    "probability (lower is better); otherwise the validation reward ± sem.",
    "perplexity_distinct": "Fluency and diversity per iteration: perplexity of the validation "
    "generations under each run's reference model, and distinct-1/2/3.",
    "samples": "The task metric against the training generations sampled so far (sample "
    "efficiency).",
    "stage_times": "Wall time of each stage, summed over iterations and every attempt "
    "(iter_NNN/timings.json).",
}


def _toxic(runs: list[Compared]) -> bool:
    cfg = runs[0].data.config
    return cfg is not None and cfg.task == "toxicity"


def _metric(runs: list[Compared]) -> tuple[str, str | None, str]:
    """(metrics key, its error key, axis label) of the task metric."""
    if _toxic(runs):
        return "valid_toxicity_max_mean", "valid_toxicity_max_sem", "expected max toxicity"
    return "valid_reward_mean", "valid_reward_sem", "validation reward"


def _colors(runs: list[Compared]) -> list[tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(len(runs))]


def _iteration_ticks(ax, runs: list[Compared]) -> None:
    ticks = sorted({int(k) for r in runs for k in r.metrics["iteration"]})
    ax.set_xticks(ticks)
    ax.set_xlabel("iteration")


def task_metric(runs: list[Compared]) -> bytes | None:
    key, err, label = _metric(runs)
    if not any(key in r.metrics for r in runs):
        return None
    toxic = _toxic(runs)
    fig, axes = _figure(2 if toxic else 1, width=6.0)
    for run, color in zip(runs, _colors(runs), strict=True):
        m = run.metrics
        if key not in m:
            continue
        yerr = m[err] if err and err in m else None
        axes[0].errorbar(m["iteration"], m[key], yerr=yerr, marker="o", capsize=4,
                         color=color, label=run.label)  # fmt: skip
        if toxic and "valid_toxicity_prob" in m:
            axes[1].plot(m["iteration"], m["valid_toxicity_prob"], "o-", color=color,
                         label=run.label)  # fmt: skip
    axes[0].set(title=label.capitalize() + (" (± sem over prompts)" if err else ""), ylabel=label)
    axes[0].legend(fontsize=8)
    if toxic:
        axes[1].set(title="Toxicity probability (a sample >= threshold)", ylabel="share of prompts")
    for ax in axes:
        _iteration_ticks(ax, runs)
    return _png(fig)


def perplexity_distinct(runs: list[Compared]) -> bytes | None:
    if not any("valid_perplexity" in r.metrics for r in runs):
        return None
    fig, axes = _figure(4, width=3.6, height=3.3)
    panels = [("valid_perplexity", "Reference perplexity")] + [
        (f"valid_distinct_{n}", f"Distinct-{n}") for n in (1, 2, 3)
    ]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for run, color in zip(runs, _colors(runs), strict=True):
            if key in run.metrics:
                ax.plot(run.metrics["iteration"], run.metrics[key], "o-", color=color,
                        label=run.label)  # fmt: skip
        ax.set(title=title)
        _iteration_ticks(ax, runs)
    axes[0].legend(fontsize=8)
    return _png(fig)


def samples(runs: list[Compared]) -> bytes | None:
    key, _, label = _metric(runs)
    if not any(key in r.metrics and "train_samples" in r.metrics for r in runs):
        return None
    fig, (ax,) = _figure(1, width=6.0)
    for run, color in zip(runs, _colors(runs), strict=True):
        m = run.metrics
        if key not in m or "train_samples" not in m:
            continue
        used = m["train_samples"].fillna(0).cumsum()
        ax.plot(used, m[key], "o-", color=color, label=run.label)
    ax.set(title=f"{label.capitalize()} against samples used", xlabel="training generations "
           "sampled so far", ylabel=label)  # fmt: skip
    ax.legend(fontsize=8)
    return _png(fig)


def stage_times(runs: list[Compared]) -> bytes | None:
    from alt_core.report.compare import STAGE_ORDER

    if not any(r.stage_seconds for r in runs):
        return None
    present = [s for s in STAGE_ORDER if any(s in r.stage_seconds for r in runs)]
    others = sorted({s for r in runs for s in r.stage_seconds} - set(STAGE_ORDER))
    stages = present + others
    fig, (ax,) = _figure(1, width=8.0, height=0.9 + 0.55 * len(runs))
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    left = np.zeros(len(runs))
    y = np.arange(len(runs))
    for i, stage in enumerate(stages):
        widths = np.array([r.stage_seconds.get(stage, 0.0) for r in runs])
        ax.barh(y, widths, left=left, color=cmap(i % 20), label=stage)
        left += widths
    ax.set_yticks(y, [r.label for r in runs])
    ax.invert_yaxis()
    ax.set(title="Wall time per stage (all iterations)", xlabel="seconds")
    ax.legend(fontsize=7, ncol=min(len(stages), 5), loc="upper center",
              bbox_to_anchor=(0.5, -0.35 - 0.05 * len(runs)))  # fmt: skip
    return _png(fig)


def compare_plots(runs: list[Compared]) -> dict[str, bytes]:
    """Every plot as PNG bytes, keyed like PLOT_FILES; absent when empty."""
    made = {
        "task_metric": task_metric(runs),
        "perplexity_distinct": perplexity_distinct(runs),
        "samples": samples(runs),
        "stage_times": stage_times(runs),
    }
    return {name: png for name, png in made.items() if png is not None}
