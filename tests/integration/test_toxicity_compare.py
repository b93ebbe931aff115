"""`demo_toxicity` through the real flow (tiny settings: the tiny model, rude and polite
prompt files, transformers sampling), ALT_RM and Quark one iteration each, then
`alt compare` on the two runs and its refusals (a folder that is not a run, an
unfinished run, a run on another task)."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import yaml

from alt_core import store
from alt_core.config import load_config
from alt_core.pipeline.layout import RunLayout

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _prompts(path, n):
    openings = ["The waiter was", "Honestly the manager is", "The hotel staff were"]
    pd.DataFrame({"prompt": [f"{openings[i % 3]} ({i})" for i in range(n)]}).to_json(
        path, orient="records", lines=True
    )
    return str(path)


def _tiny(tmp_path, model_dir, method: str):
    overrides = [
        f"method={method}", "iterations=1", f"name=tox-{method}",
        f"model.policy={model_dir}", "data.source=file",
        f"data.train_path={_prompts(tmp_path / 'train.jsonl', 30)}",
        f"data.valid_path={_prompts(tmp_path / 'valid.jsonl', 6)}",
        "data.prompts_per_iteration=8", "data.max_prompt_tokens=32",
        "sampling.backend=hf", "sampling.num_generations=5", "sampling.max_new_tokens=10",
        "sampling.num_shards=2", "sampling.concurrency=1", "training.epochs=1",
        "training.per_device_batch_size=8", "training.max_seq_len=64",
        "datapool.num_samples_per_quantile=1", "evaluation.evaluate_initial=false",
        f"storage.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    return load_config("demo_toxicity", None, overrides)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir, prefect_harness):
    from flows.run import alt_run

    root = tmp_path_factory.mktemp("toxicity")
    runs = {}
    for method in ("alt_rm", "quark"):
        config = _tiny(root, tiny_model_dir, method)
        run_dir = str(root / method)
        rows = alt_run(config=config, run_dir=run_dir)
        runs[method] = (run_dir, rows)
    return root, runs


def test_demo_toxicity_scores_toxicity_and_phrases_the_buckets(two_runs):
    _, runs = two_runs
    run_dir, rows = runs["alt_rm"]
    layout = RunLayout(run_dir)
    feedback = store.read_tables([layout.shard(1, "train_feedback", i) for i in range(2)])
    assert feedback["reward"].between(0, 1).all()  # 1 - profanity-check's probability
    train = store.read_table(layout.table(1, "datapool", "train"))
    assert train["query"].str.startswith("Lowest Toxicity input: ").any()
    assert train["query"].str.startswith("Maximum Toxicity input: ").any()
    evaluation = store.read_table(layout.table(1, "eval", "eval"))
    assert evaluation["query"].str.startswith("Lowest Toxicity input: ").all()
    quark_eval = store.read_table(RunLayout(runs["quark"][0]).table(1, "eval", "eval"))
    assert quark_eval["query"].str.startswith("_QUANTILE_TOKEN_0_").all()
    from alt_core.report.html import load_run

    # demo_toxicity samples 4 generations per validation prompt; the row and the table
    # of `alt run` hold the toxicity metrics.
    assert evaluation.groupby("prompt_id").size().tolist() == [4] * 6
    assert rows[-1]["valid_toxicity_max_mean"] >= rows[-1]["valid_toxicity_mean"]
    from flows.run import metrics_rows

    assert "exp max tox" in metrics_rows(rows)[-1]
    metrics = load_run(run_dir).metrics.iloc[-1]
    assert 0 <= metrics["valid_toxicity_max_mean"] <= 1
    assert metrics["valid_toxicity_prob"] in {i / 6 for i in range(7)}


def test_compare_puts_both_runs_side_by_side(two_runs, capsys):
    from deployments.cli import main

    root, runs = two_runs
    out = root / "cmp"
    assert main(["compare", runs["alt_rm"][0], runs["quark"][0], "--out", str(out)]) == 0
    page = (out / "compare.html").read_text()
    assert str(out / "compare.html") in capsys.readouterr().out
    for label in ("tox-alt_rm (alt_rm)", "tox-quark (quark)"):
        assert label in page
    assert page.count("data:image/png;base64,") == 4 and 'src="http' not in page
    assert {p.name for p in out.glob("*.png")} == {
        "compare_task_metric.png", "compare_perplexity_distinct.png",
        "compare_samples.png", "compare_stage_times.png",
    }  # fmt: skip
    assert "exp. max tox" in page and "The waiter was (0)" in page


def test_compare_refuses_what_it_cannot_compare(two_runs, capsys, tmp_path):
    from deployments.cli import main

    root, runs = two_runs
    alt_rm = runs["alt_rm"][0]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(alt_rm, unfinished)
    (unfinished / "metrics.json").unlink()
    other = tmp_path / "sentiment"
    shutil.copytree(runs["quark"][0], other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["feedback"]["provider"] = "sentiment"
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "empty", r"is not an ALT run folder \(no config.yaml\)"),
        (unfinished, r"is unfinished \(no metrics.json.*`alt resume "),
        (other, r"is a run on another task .*scorer"),
    ]
    for folder, message in cases:
        assert main(["compare", alt_rm, str(folder)]) == 2
        err = capsys.readouterr().err
        assert str(folder) in err and re.search(message, err), err
        assert "Traceback" not in err
