"""Sampling: the per-generation table, left truncation, and the real vLLM engine."""

from __future__ import annotations

import pandas as pd
import pytest

from alt_core import store
from alt_core.config import RunConfig
from alt_core.runtime.launcher import WorkerError, run_job
from alt_core.runtime.progress import ProgressLog
from alt_core.sampling import (
    EngineSettings,
    Generation,
    GenerationParams,
    SampleSpec,
    _progress_bar,
    samples_frame,
    tokenize_queries,
)
from alt_core.schemas import SAMPLES


def test_samples_frame_flattens_in_order():
    prompts = pd.DataFrame({"prompt_id": [7, 3], "prompt": ["a", "b"], "query": ["qa", "qb"]})
    gens = [[Generation("x", 2, False), Generation("y", 4, True)], [Generation("z", 1, False)]]
    df = samples_frame(prompts, gens)
    assert list(df.columns) == SAMPLES
    assert df["prompt_id"].tolist() == [7, 7, 3]
    assert df["sample_idx"].tolist() == [0, 1, 0]
    assert df["truncated"].tolist() == [False, True, False]


def test_queries_are_cut_from_the_left(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    full = tok(["the food was great and the room was clean"], add_special_tokens=False)
    cut = tokenize_queries(tok, ["the food was great and the room was clean"], 3)
    assert cut[0] == full["input_ids"][0][-3:]


def test_truncation_keeps_the_conditioning_prefix(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = "the food was great and the room was clean and the staff were friendly"
    query = "feedback: very good input: " + prompt
    prefix_ids = tok("feedback: very good input: ", add_special_tokens=False)["input_ids"]
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    budget = len(prefix_ids) + 4
    (cut,) = tokenize_queries(tok, [query], budget, [prompt])
    assert cut == prefix_ids + prompt_ids[-4:]
    # Within the budget the query is tokenised whole, exactly as training does.
    (whole,) = tokenize_queries(tok, [query], 10_000, [prompt])
    assert whole == tok(query, add_special_tokens=False)["input_ids"]


ENGINE = EngineSettings.from_config(RunConfig(sampling={"max_num_seqs": 256}))


def _spec(tmp_path, model_dir, n_prompts, prompt, **params) -> SampleSpec:
    prompts = pd.DataFrame({"prompt_id": range(n_prompts), "prompt": [prompt] * n_prompts})
    prompts["query"] = prompts["prompt"]
    uri = store.write_table(str(tmp_path / "prompts.parquet"), prompts)
    return SampleSpec(
        model_path=str(model_dir),
        prompts_uri=uri,
        output_uri=str(tmp_path / "out.parquet"),
        start=0,
        stop=n_prompts,
        seed=3,
        params=GenerationParams(**params),
        engine=ENGINE,
    )


def test_vllm_progress_bar_counts_finished_requests_only():
    """As vLLM uses `use_tqdm`: a rendering bar first, then one update per finished
    request with that request's number of outputs."""
    lines: list[str] = []
    progress = ProgressLog(50, "prompts", lines.append, min_interval_s=0)
    bar_class = _progress_bar(progress)
    rendering = bar_class(total=50, desc="Rendering prompts")
    for _ in range(50):
        rendering.update(1)
    rendering.close()
    assert progress.done == 0 and lines == []
    processed = bar_class(total=50, desc="Processed prompts", dynamic_ncols=True)
    for _ in range(50):
        processed.update(4)
    processed.close()
    assert progress.done == 50 and lines[-1] == "progress 50/50 prompts" and len(lines) == 10


def test_worker_failure_names_the_cause(tmp_path):
    spec = SampleSpec(
        model_path=str(tmp_path / "no-such-model"),
        prompts_uri=str(tmp_path / "absent.parquet"),
        output_uri=str(tmp_path / "o.parquet"),
        start=0,
        stop=1,
        seed=0,
        params=GenerationParams.evaluation(RunConfig()),
        engine=ENGINE,
    )
    with pytest.raises(WorkerError, match=r"(?s)sample-0 failed \(exit code 1\).*not committed"):
        run_job("sample", spec, name="sample-0", log=lambda _: None)


def test_evaluation_params_are_greedy_with_one_sample_and_sampled_with_more():
    greedy = GenerationParams.evaluation(RunConfig())
    assert (greedy.n, greedy.temperature, greedy.top_p) == (1, 0.0, 1.0)
    config = RunConfig.model_validate(
        {"evaluation": {"samples_per_prompt": 25, "temperature": 0.8, "top_p": 0.95}}
    )
    sampled = GenerationParams.evaluation(config)
    assert (sampled.n, sampled.temperature, sampled.top_p) == (25, 0.8, 0.95)
    assert sampled.max_new_tokens == config.sampling.max_new_tokens
