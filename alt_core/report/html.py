"""The report of a run: its tables collected, its plots, and one self-contained HTML page.

    write_report(run_dir) -> URI of <run_dir>/report/report.html    (`alt report RUN_DIR`)

`load_run` reads what a run folder holds, finished or not: the config, the metrics of
every iteration (from `metrics.json`, the per-iteration `iter_k/metrics.json` of a run
still going, or computed from the evaluation table when neither has them), the training
feedback, datapools, evaluation tables and training step records. Anything missing is
simply absent from the report. `write_plots` writes the PNGs of `alt_core.report.plots` to
`<run_dir>/report/`; the HTML page inlines them (base64), so it can be mailed or opened
from object storage as one file. Works on local folders and s3:// alike (via the store).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from alt_core import store
from alt_core.config import ConfigError, RunConfig, read_config_text
from alt_core.methods import bucket_namer, method_spec
from alt_core.pipeline.layout import RunLayout

REPORT_DIR = "report"
REPORT_FILE = "report.html"
TEXT_LIMIT = 500  # characters of a prompt or generation shown in a table cell
EXAMPLE_PROMPTS = 5

# (metrics key, column header, format) of the report's metrics table.
METRIC_COLUMNS = [
    ("iteration", "iter", "{:d}"),
    ("train_reward_mean", "train reward", "{:+.3f}"),
    ("train_reward_std", "train sd", "{:.3f}"),
    ("train_missing_feedback", "missing fb", "{:d}"),
    ("pool_rows", "pool rows", "{:d}"),
    ("train_set_rows", "train rows", "{:d}"),
    ("train_loss", "final loss", "{:.3f}"),
    ("valid_reward_mean", "valid reward", "{:+.3f}"),
    ("valid_reward_sem", "valid sem", "{:.3f}"),
    # The toxicity task's (present only there): evaluation.toxicity_metrics.
    ("valid_toxicity_max_mean", "exp. max tox", "{:.3f}"),
    ("valid_toxicity_prob", "tox prob", "{:.3f}"),
    ("valid_toxicity_mean", "mean tox", "{:.3f}"),
    ("valid_perplexity", "ref ppl", "{:.2f}"),
    ("valid_gen_tokens", "valid tokens", "{:.1f}"),
    ("valid_distinct_1", "distinct-1", "{:.3f}"),
    ("valid_distinct_2", "distinct-2", "{:.3f}"),
    ("valid_distinct_3", "distinct-3", "{:.3f}"),
    ("train_sample_s", "sample s", "{:.0f}"),
    ("train_feedback_s", "feedback s", "{:.0f}"),
    ("train_s", "train s", "{:.0f}"),
    ("eval_s", "eval s", "{:.0f}"),
]


@dataclass
class RunData:
    """Everything a report shows, as tables. Row tables carry an `iteration` column
    (pools: `pool_iteration`, the iteration whose pool it is)."""

    run_dir: str
    config: RunConfig | None = None
    config_text: str = ""
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    feedback: pd.DataFrame = field(default_factory=pd.DataFrame)
    pools: pd.DataFrame = field(default_factory=pd.DataFrame)
    evals: pd.DataFrame = field(default_factory=pd.DataFrame)
    steps: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_summaries: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name if self.config else self.run_dir.rsplit("/", 1)[-1]

    @property
    def iterations(self) -> list[int]:
        return sorted(int(k) for k in self.metrics.get("iteration", []))


# --------------------------------------------------------------------------- loading


def _read_config(layout: RunLayout) -> tuple[RunConfig | None, str]:
    if not store.exists(layout.config):
        return None, ""
    data = store.read_bytes(layout.config)
    text = data.decode(errors="replace")
    try:
        return read_config_text(data, layout.config), text
    except ConfigError:  # a config of an older version: show it as text
        return None, text


def _committed(uris: list[str]) -> list[str]:
    return [u for u in uris if store.is_committed(u)]


def _tagged(uris: list[str], column: str, value: int) -> pd.DataFrame:
    if not uris:
        return pd.DataFrame()
    df = store.read_tables(uris)
    df[column] = value
    return df


def _metrics_rows(layout: RunLayout, iterations: range) -> dict[int, dict[str, Any]]:
    """Metrics per iteration: metrics.json, then iter_k/metrics.json of a run in progress."""
    rows: dict[int, dict[str, Any]] = {}
    if store.exists(layout.metrics):
        for row in store.read_json(layout.metrics).get("iterations", []):
            rows[int(row["iteration"])] = row
    for k in iterations:
        uri = store.join(layout.iteration(k), "metrics.json")
        if k not in rows and store.exists(uri):
            rows[k] = store.read_json(uri)
    return rows


def _train_records(layout: RunLayout, k: int) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    uri = store.join(layout.policy(k), "train_metrics.json")
    if not store.exists(uri):
        return pd.DataFrame(), None
    metrics = store.read_json(uri)
    steps = pd.DataFrame(metrics.get("steps", []))
    if not steps.empty:
        steps["iteration"] = k
    return steps, metrics.get("summary")


def load_run(run_dir: str, upto: int | None = None) -> RunData:
    """Collect what `run_dir` holds for iterations 0..`upto` (default: all of them)."""
    from alt_core.evaluation import eval_metrics

    layout = RunLayout(run_dir)
    config, text = _read_config(layout)
    last = upto if upto is not None else (config.iterations if config else 0)
    rows = _metrics_rows(layout, range(last + 1))
    last = upto if upto is not None else max([last, *rows])
    num_shards = config.sampling.num_shards if config else 0
    task = config.task if config else "reward"
    task_args = (task, config.feedback.toxicity.threshold if config else 0.5)
    data = RunData(run_dir=run_dir, config=config, config_text=text)
    feedback, pools, evals, steps = [], [], [], []
    for k in range(last + 1):
        # Without a config the shard count is unknown: probe a generous number.
        shards = [layout.shard(k, "train_feedback", i) for i in range(num_shards or 64)]
        feedback.append(_tagged(_committed(shards), "iteration", k))
        pools.append(
            _tagged(_committed([layout.table(k, "datapool", "pool")]), "pool_iteration", k)
        )
        eval_uris = _committed([layout.table(k, "eval", "eval")])
        evals.append(_tagged(eval_uris, "iteration", k))
        if eval_uris and (k not in rows or task == "toxicity"):
            # A run stopped before writing this row; the toxicity metrics are computed
            # from the evaluation table (the metrics row holds the reward ones).
            rows[k] = {**rows.get(k, {}), "iteration": k, **eval_metrics(evals[-1], *task_args)}
        k_steps, summary = _train_records(layout, k)
        steps.append(k_steps)
        if summary:
            data.train_summaries[k] = summary
    data.metrics = pd.DataFrame([rows[k] for k in sorted(rows) if k <= last])
    data.feedback, data.pools = _concat(feedback), _concat(pools)
    data.evals, data.steps = _concat(evals), _concat(steps)
    return data


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def bucket_labels(config: RunConfig | None, pools: pd.DataFrame) -> dict[int, str]:
    """What each datapool bucket means: the ALT_RM phrase, the Quark token, the score."""
    if pools.empty:
        return {}
    buckets = sorted(int(b) for b in pools["bucket"].dropna().unique())
    if config is not None and method_spec(config).bucket_label == "feedback_text":
        return {b: _bucket_text(config, b) for b in buckets}
    if "score" in pools and pools["score"].notna().any():
        scores = pools.dropna(subset=["score"]).groupby("bucket")["score"].first()
        return {b: f"score {scores[b]:g}" if b in scores else f"bucket {b}" for b in buckets}
    return {b: f"bucket {b}" for b in buckets}


def _bucket_text(config: RunConfig, bucket: int) -> str:
    try:
        return bucket_namer(config)(bucket)
    except IndexError:  # a bucket beyond datapool.quantile_phrases
        return f"bucket {bucket}"


# --------------------------------------------------------------------------- plots


def make_plots(data: RunData) -> dict[str, bytes]:
    """The run's plots as PNG bytes, keyed like `plots.PLOT_FILES`; absent when empty."""
    from alt_core.report import plots

    cfg = data.config
    max_tokens = cfg.sampling.max_new_tokens if cfg else None
    made = {
        "reward_distribution": plots.reward_distribution(
            data.feedback, data.pools, bucket_labels(cfg, data.pools)
        ),
        "validation": plots.validation_curves(data.metrics),
        "generation_lengths": plots.generation_lengths(data.feedback, data.evals, max_tokens),
        "training_loss": plots.training_loss(
            data.steps,
            cfg.training.kl_coef if cfg else None,
            cfg.training.entropy_coef if cfg else None,
        ),
    }
    return {name: png for name, png in made.items() if png is not None}


def report_dir(run_dir: str) -> str:
    return store.join(run_dir, REPORT_DIR)


def write_plots(run_dir: str, pngs: dict[str, bytes]) -> dict[str, str]:
    """Write the PNGs to <run_dir>/report/; returns their URIs by plot name."""
    from alt_core.report.plots import PLOT_FILES

    uris = {}
    for name, png in pngs.items():
        uris[name] = store.join(report_dir(run_dir), PLOT_FILES[name])
        store.write_bytes_atomic(uris[name], png)
    return uris


# --------------------------------------------------------------------------- HTML


def format_cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    try:
        return fmt.format(int(value) if fmt.endswith("d}") else value)
    except (ValueError, TypeError):
        return str(value)


def short(text: Any, limit: int = TEXT_LIMIT) -> str:
    s = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are escaped here."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def metrics_table(metrics: pd.DataFrame) -> str:
    if metrics.empty:
        return "<p>No iteration has finished yet.</p>"
    cols = [c for c in METRIC_COLUMNS if c[0] in metrics]
    rows = [
        [format_cell(row.get(key), fmt) for key, _, fmt in cols]
        for row in metrics.sort_values("iteration").to_dict("records")
    ]
    return _table([label for _, label, _ in cols], rows, "num")


def training_table(summaries: dict[int, dict[str, Any]]) -> str:
    if not summaries:
        return "<p>No training has finished yet.</p>"
    keys = [
        ("steps", "{:d}"),
        ("final_loss", "{:.4f}"),
        ("mean_nll", "{:.4f}"),
        ("mean_kl", "{:.4f}"),
        ("mean_entropy", "{:.4f}"),
        ("tokens_per_s", "{:.0f}"),
        ("train_seconds", "{:.0f}"),
    ]
    rows = [
        [str(k), *(format_cell(s.get(key), fmt) for key, fmt in keys)]
        for k, s in sorted(summaries.items())
    ]
    return _table(["iter", *(key for key, _ in keys)], rows, "num")


def pool_table(pools: pd.DataFrame, labels: dict[int, str]) -> str:
    if pools.empty:
        return "<p>No datapool yet.</p>"
    value = "reward" if pools["reward"].notna().any() else "score"
    stats = pools.groupby(["pool_iteration", "bucket"])[value].agg(["size", "mean", "min", "max"])
    rows = [
        [
            str(k),
            labels.get(int(b), str(b)),
            str(int(r["size"])),
            *(format_cell(r[c], "{:+.3f}") for c in ("mean", "min", "max")),
        ]
        for (k, b), r in stats.iterrows()
    ]
    return _table(["iter", "bucket", "rows", f"mean {value}", "min", "max"], rows, "num")


def example_prompts(evals: pd.DataFrame, n: int = EXAMPLE_PROMPTS) -> str:
    """The same validation prompts across iterations: how the generations changed."""
    if evals.empty:
        return "<p>No evaluation yet.</p>"
    latest = evals[evals["iteration"] == evals["iteration"].max()]
    chosen = latest.sort_values("prompt_id")["prompt_id"].drop_duplicates().head(n)
    parts = []
    for pid in chosen:
        # With several samples per prompt (evaluation.samples_per_prompt), the first.
        rows = evals[evals["prompt_id"] == pid].sort_values("iteration", kind="stable")
        rows = rows.drop_duplicates("iteration")
        body = [
            [
                str(r["iteration"]),
                short(r["query"], 200),
                short(r["generation"]),
                format_cell(r["reward"], "{:+.3f}"),
            ]
            for r in rows.to_dict("records")
        ]
        prompt = html.escape(short(rows["prompt"].iloc[0], 300))
        parts.append(
            f'<h4>Prompt {html.escape(str(pid))}: <span class="prompt">{prompt}</span></h4>'
            + _table(["iter", "conditioned input", "generation", "reward"], body, "text")
        )
    return "\n".join(parts)


def pool_examples(pools: pd.DataFrame, labels: dict[int, str], seed: int = 0) -> str:
    """One training sample per bucket of the latest pool: what each feedback stands for."""
    if pools.empty:
        return "<p>No datapool yet.</p>"
    latest = pools[pools["pool_iteration"] == pools["pool_iteration"].max()]
    picked = latest.groupby("bucket", sort=True).sample(n=1, random_state=seed)
    rows = [
        [
            labels.get(int(r["bucket"]), str(r["bucket"])),
            short(r["prompt"], 200),
            short(r["generation"]),
            format_cell(r["reward"], "{:+.3f}"),
            short(r.get("feedback"), 120),
        ]
        for r in picked.to_dict("records")
    ]
    k = int(latest["pool_iteration"].iloc[0])
    return f"<p>Datapool of iteration {k}.</p>" + _table(
        ["bucket", "prompt", "generation", "reward", "feedback"], rows, "text"
    )


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7fb; }
header { background: #1d2a4d; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .meta { opacity: .85; font-size: 13px; }
main { padding: 8px 32px 40px; max-width: 1400px; }
section { background: #fff; border-radius: 8px; padding: 6px 20px 16px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { font-size: 17px; border-bottom: 1px solid #e3e6ef; padding-bottom: 6px; }
h4 { margin: 14px 0 6px; font-weight: 600; }
.prompt { font-weight: normal; font-style: italic; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #e3e6ef; padding: 4px 8px; vertical-align: top; }
th { background: #eef1f8; text-align: left; }
table.num td { text-align: right; font-variant-numeric: tabular-nums; }
table.text td { max-width: 560px; }
.cards { display: flex; gap: 14px; flex-wrap: wrap; }
.card { background: #eef1f8; border-radius: 6px; padding: 8px 14px; min-width: 130px; }
.card b { display: block; font-size: 19px; }
figure { margin: 10px 0 18px; }
figure img { max-width: 100%; border: 1px solid #e3e6ef; border-radius: 4px; }
figcaption { color: #555; font-size: 13px; }
pre { background: #f3f4f8; padding: 10px; overflow: auto; font-size: 12px; }
"""

CAPTIONS = {
    "validation": "Validation reward (greedy, mean ± standard error) and the perplexity of the "
    "validation generations under the reference model, per iteration (0 = initial policy).",
    "reward_distribution": "Reward of the sampled training generations per iteration, and of "
    "each datapool bucket (bucket 0 is the best feedback).",
    "generation_lengths": "Generated tokens per iteration; the dashed line is the limit "
    "(generations that reach it were cut off).",
    "training_loss": "Training loss over optimizer steps with its terms: NLL of the "
    "generation, KL to the reference model and the entropy bonus.",
}


def _cards(data: RunData) -> str:
    m = data.metrics
    cards = [
        (
            "iterations done",
            f"{max(data.iterations, default=0)}"
            + (f" / {data.config.iterations}" if data.config else ""),
        )
    ]
    if not m.empty and "valid_toxicity_max_mean" in m:
        first, last = m.sort_values("iteration").iloc[[0, -1]].to_dict("records")
        cards.append(
            (
                "expected max toxicity, first → last",
                f"{first['valid_toxicity_max_mean']:.3f} → {last['valid_toxicity_max_mean']:.3f}",
            )
        )
    if not m.empty and "valid_reward_mean" in m:
        first, last = m.sort_values("iteration").iloc[[0, -1]].to_dict("records")
        cards.append(
            (
                "valid reward, first → last",
                f"{first['valid_reward_mean']:+.3f} → {last['valid_reward_mean']:+.3f}",
            )
        )
        if "valid_perplexity" in m:
            cards.append(
                ("ref perplexity, last", format_cell(last.get("valid_perplexity"), "{:.2f}"))
            )
    if data.config:
        cards.append(("method", data.config.method.value))
    body = "".join(
        f"<div class='card'>{html.escape(k)}<b>{html.escape(v)}</b></div>" for k, v in cards
    )
    return f"<div class='cards'>{body}</div>"


def _figures(pngs: dict[str, bytes]) -> str:
    from alt_core.report.plots import PLOT_FILES

    return _figures_of(pngs, {name: CAPTIONS[name] for name in PLOT_FILES})


def _figures_of(pngs: dict[str, bytes], captions: dict[str, str]) -> str:
    """The PNGs inlined (base64) as figures, in the order of `captions`."""
    if not pngs:
        return "<p>Nothing to plot yet.</p>"
    out = []
    for name in captions:
        if name in pngs:
            b64 = base64.b64encode(pngs[name]).decode()
            out.append(
                f'<figure><img alt="{name}" src="data:image/png;base64,{b64}">'
                f"<figcaption>{html.escape(captions[name])}</figcaption></figure>"
            )
    return "\n".join(out)


def render_html(data: RunData, pngs: dict[str, bytes]) -> str:
    """One self-contained page: no external file, script or font is referenced."""
    labels = bucket_labels(data.config, data.pools)
    made = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sections = [
        ("Summary", _cards(data)),
        ("Metrics per iteration", metrics_table(data.metrics)),
        ("Plots", _figures(pngs)),
        ("Training", training_table(data.train_summaries)),
        ("Datapool buckets", pool_table(data.pools, labels)),
        ("Validation generations across iterations", example_prompts(data.evals)),
        ("Training samples by feedback", pool_examples(data.pools, labels)),
        ("Configuration", f"<pre>{html.escape(data.config_text or '(no config.yaml)')}</pre>"),
    ]
    body = "\n".join(f"<section><h2>{t}</h2>\n{content}</section>" for t, content in sections)
    title = html.escape(f"ALT run {data.name}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body><header><h1>{title}</h1><div class='meta'>"
        f"{html.escape(data.run_dir)} · report written {made}</div></header>"
        f"<main>{body}</main></body></html>\n"
    )


def write_report(run_dir: str) -> str:
    """Write the plots and <run_dir>/report/report.html; returns the page's URI."""
    if not store.is_remote(run_dir):
        import os

        run_dir = os.path.abspath(run_dir)
    layout = RunLayout(run_dir)
    if not (store.exists(layout.config) or store.exists(layout.metrics)):
        raise FileNotFoundError(
            f"{run_dir} holds no ALT run (neither config.yaml nor metrics.json); check the path"
        )
    data = load_run(run_dir)
    pngs = make_plots(data)
    write_plots(run_dir, pngs)
    uri = store.join(report_dir(run_dir), REPORT_FILE)
    store.write_bytes_atomic(uri, render_html(data, pngs).encode())
    return uri
