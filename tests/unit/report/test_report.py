"""The run report: plots and the self-contained HTML page, on a run folder made here.

The folder is written with the store and the real schemas, as the pipeline writes it
(config.yaml, feedback shards, datapools, evaluation tables, training metrics, metrics
JSON), so the report reads exactly what a run leaves behind.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from alt_core import store
from alt_core.config import RunConfig, dump_config
from alt_core.pipeline.layout import RunLayout
from alt_core.report import plots
from alt_core.report.html import load_run, make_plots, write_report
from alt_core.schemas import EVAL, FEEDBACK, POOL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NASTY = "<script>alert('x')</script> & <b>bold</b>"


def _feedback(rng, k: int, shard: int, prompts: int = 6, n: int = 5) -> pd.DataFrame:
    rows = prompts * n
    pid = np.repeat(np.arange(shard * prompts, (shard + 1) * prompts), n)
    reward = np.clip(rng.normal(0.1 * k, 0.4, rows), -1, 1)
    reward[0] = np.nan  # one generation without feedback
    df = pd.DataFrame(
        {
            "prompt_id": pid,
            "prompt": [f"Review {p}: the food was" for p in pid],
            "query": [f"Excellent. input: Review {p}: the food was" for p in pid],
            "sample_idx": np.tile(np.arange(n), prompts),
            "generation": [f"quite good number {i}" for i in range(rows)],
            "num_tokens": rng.integers(3, 13, rows),
            "truncated": rng.random(rows) < 0.2,
            "reward": reward,
            "feedback": None,
            "score": np.nan,
            "analysis": None,
            "missing_reason": [("empty generation" if np.isnan(r) else None) for r in reward],
        }
    )
    return df[FEEDBACK]


def _pool(feedback: pd.DataFrame, k: int, phrases: list[str]) -> pd.DataFrame:
    pool = feedback.dropna(subset=["reward"]).copy()
    rank = pool.groupby("prompt_id")["reward"].rank(ascending=False, method="first") - 1
    pool["bucket"] = np.minimum(rank, 4).astype("int64")
    pool["feedback"] = pool["bucket"].map(lambda b: phrases[b])
    pool["iteration"] = k
    return pool[POOL].reset_index(drop=True)


def _eval(rng, k: int, n: int = 8) -> pd.DataFrame:
    gen = [f"iteration {k} says lovely things {i}" for i in range(n)]
    gen[0] = NASTY
    df = pd.DataFrame(
        {
            "prompt_id": np.arange(n),
            "prompt": [f"Valid prompt {i}" for i in range(n)],
            "query": [("Excellent. input: " if k else "") + f"Valid prompt {i}" for i in range(n)],
            "generation": gen,
            "num_tokens": rng.integers(4, 12, n),
            "truncated": False,
            "reward": np.clip(rng.normal(0.15 * k, 0.3, n), -1, 1),
            "ref_nll": rng.uniform(10, 20, n),
            "ref_tokens": np.full(n, 8),
        }
    )
    return df[EVAL]


def _train_metrics(rng, k: int, steps: int = 6) -> dict:
    records = [
        {
            "step": s,
            "epoch": 0,
            "loss": 3.0 - 0.1 * s - 0.2 * k,
            "nll": 3.1 - 0.1 * s - 0.2 * k,
            "kl": 0.01 * s,
            "entropy": 2.5 - 0.05 * s,
            "lr": 1e-3,
            "tokens": 100,
            "response_tokens": 40,
        }
        for s in range(1, steps + 1)
    ]
    summary = {
        "steps": steps,
        "final_loss": records[-1]["loss"],
        "mean_nll": 2.8,
        "mean_kl": 0.03,
        "mean_entropy": 2.4,
        "tokens_per_s": 1234.0,
        "train_seconds": 12.0,
    }
    return {"summary": summary, "steps": records}


def make_fake_run(root, iterations: int = 2, finished: bool = True) -> str:
    """A run folder as the pipeline leaves it: iteration 0 evaluated, then K iterations."""
    config = RunConfig.model_validate(
        {"name": "fake", "iterations": iterations, "sampling": {"num_shards": 2}}
    )
    run_dir = str(root / "run")
    layout = RunLayout(run_dir)
    store.write_bytes_atomic(layout.config, dump_config(config).encode())
    rng = np.random.default_rng(0)
    rows = []
    for k in range(iterations + 1):
        ev = _eval(rng, k)
        store.write_table(layout.table(k, "eval", "eval"), ev)
        row = {"iteration": k, "valid_reward_mean": float(ev["reward"].mean()),
               "valid_reward_sem": 0.05, "valid_perplexity": 30.0 - 3 * k}  # fmt: skip
        if k:
            shards = [_feedback(rng, k, i) for i in range(2)]
            for i, fb in enumerate(shards):
                store.write_table(layout.shard(k, "train_feedback", i), fb)
            fb = pd.concat(shards)
            phrases = config.datapool.quantile_phrases
            store.write_table(layout.table(k, "datapool", "pool"), _pool(fb, k, phrases))
            store.write_json(store.join(layout.policy(k), "train_metrics.json"),
                             _train_metrics(rng, k))  # fmt: skip
            row.update(train_reward_mean=float(fb["reward"].mean()), train_loss=2.0 - 0.1 * k,
                       train_missing_feedback=1, pool_rows=58)  # fmt: skip
            store.write_json(store.join(layout.iteration(k), "metrics.json"), row)
        rows.append(row)
    if finished:
        store.write_json(layout.metrics, {"run_dir": run_dir, "iterations": rows})
    return run_dir


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(data)).size


def test_report_is_self_contained_with_every_plot(tmp_path):
    run_dir = make_fake_run(tmp_path)
    uri = write_report(run_dir)
    assert uri == f"{run_dir}/report/report.html"
    page = store.read_bytes(uri).decode()

    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,', page)
    assert images == list(plots.PLOT_FILES)
    # Self-contained: nothing is fetched from elsewhere.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script>" not in page and "&lt;script&gt;alert" in page  # generations escaped
    for text in ("Metrics per iteration", "valid reward", "Excellent.", "Valid prompt 0",
                 "iteration 2 says lovely things 1", "Horrible.", "method: alt_rm"):  # fmt: skip
        assert text in page, text
    for name, file in plots.PLOT_FILES.items():
        png = store.read_bytes(f"{run_dir}/report/{file}")
        assert png.startswith(PNG_MAGIC), name
        width, height = _png_size(png)
        assert width > 400 and height > 200, (name, width, height)


def test_partial_run_reads_iteration_metrics_and_eval_tables(tmp_path):
    run_dir = make_fake_run(tmp_path, iterations=3, finished=False)
    data = load_run(run_dir)
    assert data.iterations == [0, 1, 2, 3]
    # Iteration 0 has no metrics file until the run ends: computed from its eval table.
    first = data.metrics.set_index("iteration").loc[0]
    expected = store.read_table(RunLayout(run_dir).table(0, "eval", "eval"))["reward"].mean()
    assert first["valid_reward_mean"] == pytest.approx(expected)
    assert set(data.feedback["iteration"]) == {1, 2, 3} and len(data.feedback) == 3 * 60
    assert set(data.pools["pool_iteration"]) == {1, 2, 3}
    assert sorted(data.train_summaries) == [1, 2, 3]
    assert len(data.steps) == 18
    assert set(make_plots(data)) == set(plots.PLOT_FILES)


def test_plots_of_an_empty_run_are_absent_not_errors(tmp_path):
    empty = pd.DataFrame()
    assert plots.reward_distribution(empty, empty) is None
    assert plots.validation_curves(empty) is None
    assert plots.generation_lengths(empty, empty) is None
    assert plots.training_loss(empty) is None
    config = RunConfig(name="fresh")
    run_dir = tmp_path / "fresh"
    store.write_bytes_atomic(str(run_dir / "config.yaml"), dump_config(config).encode())
    page = store.read_bytes(write_report(str(run_dir))).decode()
    assert "No iteration has finished yet" in page and "Nothing to plot yet" in page


def test_report_of_a_missing_run_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no ALT run"):
        write_report(str(tmp_path / "nowhere"))


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)),
                None)  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    """The page renders: Chromium's screenshot of it is a picture, not a blank page."""
    from PIL import Image, ImageStat

    page = write_report(make_fake_run(tmp_path))
    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--hide-scrollbars",
           f"--screenshot={shot}", "--window-size=1400,2400", f"file://{page}"]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    image = Image.open(shot).convert("L")
    assert image.size == (1400, 2400)
    assert ImageStat.Stat(image).stddev[0] > 20, "the screenshot is (nearly) uniform"


def _config_of(run_dir: str) -> RunConfig:
    import yaml

    return RunConfig.model_validate(yaml.safe_load(store.read_bytes(f"{run_dir}/config.yaml")))


def test_iteration_markdown_tells_what_happened(tmp_path):
    from tasks_lib.reporting import iteration_markdown

    run_dir = make_fake_run(tmp_path)
    row = store.read_json(f"{run_dir}/iter_002/metrics.json")
    links = {"training_loss": f"{run_dir}/report/training_loss.png"}
    md = iteration_markdown(_config_of(run_dir), load_run(run_dir, upto=2), 2, row, links)
    for title in ("# Iteration 2 of `fake`", "## Sampled", "## Feedback", "## Datapool buckets",
                  "## Training", "## Evaluation"):  # fmt: skip
        assert title in md
    assert "**60 generations** for 12 distinct prompts" in md
    assert "conditioned on: `Excellent. input:`" in md
    assert "**Missing feedback: 2 of 60**" in md and "- empty generation: 2" in md
    assert f"[training loss, KL and entropy](file://{run_dir}/report/training_loss.png)" in md
    assert "| Excellent. | 12 |" in md
    assert "<script>" not in md and "&lt;script&gt;" in md  # no raw HTML from generations
    assert "iteration 2 says lovely things 1" in md
    md0 = iteration_markdown(_config_of(run_dir), load_run(run_dir, upto=0), 0, {}, {})
    assert "evaluation only" in md0 and "## Sampled" not in md0 and "Valid prompt 0" in md0


@pytest.mark.slow
def test_publish_iteration_attaches_artifacts_and_writes_plots(tmp_path, prefect_harness):
    import json

    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks_lib.reporting import publish_iteration

    run_dir = make_fake_run(tmp_path)
    row = store.read_json(f"{run_dir}/iter_001/metrics.json")

    @flow(name="alt-test-publish")
    def publish() -> dict:
        return publish_iteration(_config_of(run_dir), run_dir, 1, row)

    out = publish()
    assert out["artifacts"] == ["alt-fake-iter-1-metrics", "alt-fake-iter-1-summary"]
    assert set(out["plots"]) == set(plots.PLOT_FILES)
    assert all(store.read_bytes(uri).startswith(PNG_MAGIC) for uri in out["plots"].values())
    table = json.loads(Artifact.get("alt-fake-iter-1-metrics").data)
    assert {"metric": "valid_reward_mean", "value": f"{row['valid_reward_mean']:+.3f}"} in table
    summary = Artifact.get("alt-fake-iter-1-summary").data
    assert summary.startswith("# Iteration 1 of `fake`") and "reward_distribution.png" in summary
