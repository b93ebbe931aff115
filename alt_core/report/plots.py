"""Plots of a run as PNG bytes: what people would rather look at than read.

Pure functions over the tables that `alt_core.report.load_run` collects; none of them
opens a file. Each returns PNG bytes, or None when it has nothing to draw (a run that has
not trained yet has no loss curve). matplotlib's object API is used, never pyplot: a
`Figure` made directly holds no global state, needs no display, and is safe in the
threads Prefect runs tasks in.

- `reward_distribution`: sampled rewards per iteration, and the reward of each datapool
  bucket (quantile or judge score) per iteration.
- `validation_curves`: validation reward (± sem) and reference perplexity over iterations.
- `generation_lengths`: generated tokens per iteration, training samples and validation.
- `training_loss`: the loss and its terms (NLL, KL, entropy) over optimizer steps.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import pandas as pd

try:
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "alt_core.report.plots needs matplotlib; install it with `pip install matplotlib` "
        "(it is one of the project's dependencies)"
    ) from exc

# File names under <run_dir>/report/, with the caption the report and artifacts show.
PLOT_FILES = {
    "reward_distribution": "reward_distribution.png",
    "validation": "validation.png",
    "generation_lengths": "generation_lengths.png",
    "training_loss": "training_loss.png",
}
DPI = 100


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _figure(ncols: int, width: float = 5.2, height: float = 3.6) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, list(axes)


def iteration_colors(iterations: Iterable[int]) -> dict[int, tuple]:
    """One colour per iteration, early light to late dark, the same in every plot."""
    import matplotlib

    # Spread over 0..max, whatever subset is given, so iteration k has the same colour
    # in a plot of training samples (1..K) and one of validation (0..K).
    last = max((int(k) for k in iterations), default=0)
    cmap = matplotlib.colormaps["viridis"]
    return {k: cmap(0.85 - 0.75 * k / max(last, 1)) for k in range(last + 1)}


def _value_column(df: pd.DataFrame) -> str | None:
    """The reward when there is one (reward methods), else the judge score."""
    for col in ("reward", "score"):
        if col in df and df[col].notna().any():
            return col
    return None


def _histograms(ax, df: pd.DataFrame, col: str, colors: dict[int, tuple], bins) -> None:
    for k, part in df.groupby("iteration", sort=True):
        values = part[col].dropna().to_numpy(dtype=float)
        if len(values):
            label = f"iter {k} (mean {values.mean():+.2f})" if col != "num_tokens" else f"iter {k}"
            ax.hist(values, bins=bins, histtype="step", lw=1.8, color=colors[k], label=label)
    ax.legend(fontsize=8)


def reward_distribution(
    feedback: pd.DataFrame, pools: pd.DataFrame, bucket_labels: dict[int, str] | None = None
) -> bytes | None:
    """Left: the reward of the sampled generations, one histogram per iteration.
    Right: per iteration, the reward of each datapool bucket as a box (bucket 0 best).

    feedback: rows with `iteration` and `reward` (or `score`); pools: rows with
    `pool_iteration`, `bucket` and `reward` (or `score`).
    """
    col = _value_column(feedback) if not feedback.empty else None
    pool_col = _value_column(pools) if not pools.empty else None
    if col is None and pool_col is None:
        return None
    its = set(feedback.get("iteration", [])) | set(pools.get("pool_iteration", []))
    colors = iteration_colors(its)
    fig, (left, right) = _figure(2)
    if col is not None:
        values = feedback[col].dropna().to_numpy(dtype=float)
        bins = np.linspace(values.min(), values.max(), 31) if len(values) else 10
        _histograms(left, feedback, col, colors, bins)
    left.set(title="Sampled generations", xlabel=col or "reward", ylabel="generations")
    if pool_col is not None:
        _bucket_boxes(right, pools, pool_col, bucket_labels or {})
    right.set(title="Datapool buckets per iteration (0 = best)", ylabel=pool_col or "reward")
    return _png(fig)


def _bucket_boxes(ax, pools: pd.DataFrame, col: str, labels: dict[int, str]) -> None:
    import matplotlib

    its = sorted(pools["pool_iteration"].unique())
    buckets = sorted(int(b) for b in pools["bucket"].dropna().unique())
    width = 0.8 / max(len(buckets), 1)
    cmap = matplotlib.colormaps["RdYlGn_r"]
    for j, b in enumerate(buckets):
        rows = pools[pools["bucket"] == b]
        data = [rows.loc[rows["pool_iteration"] == k, col].dropna().to_numpy(float) for k in its]
        keep = [i for i, d in enumerate(data) if len(d)]
        if not keep:
            continue
        pos = [i - 0.4 + width * (j + 0.5) for i in keep]
        color = cmap(j / max(len(buckets) - 1, 1))
        box = ax.boxplot(
            [data[i] for i in keep],
            positions=pos,
            widths=width * 0.85,
            patch_artist=True,
            showfliers=False,
        )
        for patch in box["boxes"]:
            patch.set(facecolor=color, alpha=0.75)
        ax.plot([], [], "s", color=color, label=labels.get(b, f"bucket {b}"))
    ax.set_xticks(range(len(its)), [f"iter {k}" for k in its])
    # Below the axes: the boxes span the whole reward range, so inside it would hide some.
    ax.legend(fontsize=8, ncols=min(len(buckets), 5), loc="upper center",
              bbox_to_anchor=(0.5, -0.1), frameon=False)  # fmt: skip


def validation_curves(metrics: pd.DataFrame) -> bytes | None:
    """Validation reward (mean ± sem, with the sampled training reward for comparison)
    and reference perplexity, over iterations (0 = the initial policy)."""
    if metrics.empty or "valid_reward_mean" not in metrics:
        return None
    m = metrics.sort_values("iteration")
    fig, (left, right) = _figure(2)
    sem = m.get("valid_reward_sem")
    left.errorbar(
        m["iteration"],
        m["valid_reward_mean"],
        yerr=sem,
        marker="o",
        capsize=4,
        label="validation (greedy, ± sem)",
    )
    if "train_reward_mean" in m and m["train_reward_mean"].notna().any():
        left.plot(
            m["iteration"], m["train_reward_mean"], "s--", alpha=0.7, label="sampled for training"
        )
    left.set(title="Reward over iterations", xlabel="iteration", ylabel="mean reward")
    left.legend(fontsize=8)
    if "valid_perplexity" in m and m["valid_perplexity"].notna().any():
        right.plot(m["iteration"], m["valid_perplexity"], "o-", color="tab:red")
    right.set(
        title="Fluency: perplexity under the reference model",
        xlabel="iteration",
        ylabel="perplexity",
    )
    for ax in (left, right):
        ax.set_xticks(sorted(m["iteration"].astype(int).unique()))
    return _png(fig)


def generation_lengths(
    feedback: pd.DataFrame, evals: pd.DataFrame, max_new_tokens: int | None = None
) -> bytes | None:
    """Generated tokens per iteration: sampled training generations (left) and greedy
    validation generations (right); the dashed line is the generation limit."""
    frames = [df for df in (feedback, evals) if not df.empty and "num_tokens" in df]
    if not frames:
        return None
    lengths = pd.concat([df["num_tokens"] for df in frames]).dropna()
    top = max(int(lengths.max()) if len(lengths) else 1, max_new_tokens or 1)
    bins = np.arange(0, top + 2) - 0.5 if top <= 80 else np.linspace(0, top + 1, 41)
    colors = iteration_colors(pd.concat([df["iteration"] for df in frames]))
    fig, axes = _figure(2)
    for ax, df, title in zip(
        axes, (feedback, evals), ("Training samples", "Validation"), strict=True
    ):
        if not df.empty and "num_tokens" in df:
            _histograms(ax, df, "num_tokens", colors, bins)
        if max_new_tokens:
            ax.axvline(max_new_tokens, ls="--", color="grey", lw=1)
        ax.set(title=f"{title}: generation length", xlabel="generated tokens", ylabel="count")
    return _png(fig)


def training_loss(
    steps: pd.DataFrame, kl_coef: float | None = None, entropy_coef: float | None = None
) -> bytes | None:
    """The training loss and its terms over optimizer steps, iterations one after the
    other: loss = NLL + beta * KL - alpha * entropy.

    steps: one row per optimizer step with `iteration`, `step`, `loss`, `nll`, `kl`,
    `entropy`.
    """
    if steps.empty or "loss" not in steps:
        return None
    s = steps.sort_values(["iteration", "step"]).reset_index(drop=True)
    x = np.arange(1, len(s) + 1)  # global step across iterations
    colors = iteration_colors(s["iteration"])
    fig, axes = _figure(3, width=4.4)
    groups = [("loss", "nll"), ("kl",), ("entropy",)]
    for ax, group in zip(axes, groups, strict=True):
        for k, part in s.groupby("iteration", sort=True):
            for term, style in zip(group, ("-", ":"), strict=False):
                if term in part and part[term].notna().any():
                    label = f"iter {k}" if style == "-" else None
                    ax.plot(x[part.index], part[term], style, color=colors[k], lw=1.6, label=label)
        ax.set(xlabel="optimizer step (all iterations)")
    axes[0].legend(fontsize=8)
    beta = f" (beta = {kl_coef:g})" if kl_coef is not None else ""
    alpha = f" (alpha = {entropy_coef:g})" if entropy_coef is not None else ""
    axes[0].set(title="Loss (solid) and NLL (dotted)")
    axes[1].set(title=f"KL term{beta}")
    axes[2].set(title=f"Entropy bonus{alpha}")
    return _png(fig)
