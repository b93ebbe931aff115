"""The sampling shard: tokenise queries, generate, commit the samples table.

Queries are tokenised here and cut from the left to `max_prompt_tokens`, so the engine
sees exactly the tokens the trainer will see. Every prompt row gets its own seed,
derived from the iteration seed and its row number, so the samples do not depend on how
the prompt set was sharded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from alt_core import store
from alt_core.runtime.faults import crash_if, shard_point
from alt_core.runtime.progress import ProgressLog
from alt_core.sampling.backends import Generation
from alt_core.sampling.engines import backend_for
from alt_core.sampling.spec import SampleSpec
from alt_core.schemas import PROMPTS, SAMPLES, require_columns


def tokenize_queries(
    tokenizer: Any, queries: list[str], max_prompt_tokens: int, prompts: list[str] | None = None
) -> list[list[int]]:
    """Token ids per query, at most `max_prompt_tokens`. An over-long query loses the
    start of its raw prompt, never the conditioning prefix (`query = prefix + prompt`):
    cutting the feedback off would sample unconditioned."""
    ids = tokenizer(queries, add_special_tokens=False)["input_ids"]
    prompts = prompts if prompts is not None else [""] * len(queries)
    out = []
    for query, prompt, row in zip(queries, prompts, ids, strict=True):
        if len(row) <= max_prompt_tokens:
            out.append(row)
            continue
        prefix = query[: len(query) - len(prompt)] if prompt and query.endswith(prompt) else ""
        head = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        if len(head) >= max_prompt_tokens:  # the prefix alone does not fit: keep its end
            out.append(head[-max_prompt_tokens:])
            continue
        tail = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prefix else row
        out.append(head + tail[len(tail) - (max_prompt_tokens - len(head)) :])
    return out


def samples_frame(prompts: pd.DataFrame, generations: list[list[Generation]]) -> pd.DataFrame:
    """Flatten per-prompt generations into one row per generation (SAMPLES columns)."""
    counts = [len(g) for g in generations]
    rows = prompts.loc[prompts.index.repeat(counts), PROMPTS].reset_index(drop=True)
    flat = [g for gens in generations for g in gens]
    rows["sample_idx"] = [i for c in counts for i in range(c)]
    rows["generation"] = [g.text for g in flat]
    rows["num_tokens"] = [g.num_tokens for g in flat]
    rows["truncated"] = [g.truncated for g in flat]
    return rows[SAMPLES]


def sample_shard(spec: SampleSpec, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate for rows [start, stop) of the prompt table and commit the samples."""
    from transformers import AutoTokenizer

    prompts = store.read_table(spec.prompts_uri).iloc[spec.start : spec.stop]
    require_columns(prompts, PROMPTS, spec.prompts_uri)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    prompt_ids = tokenize_queries(
        tokenizer,
        prompts["query"].tolist(),
        spec.params.max_prompt_tokens,
        prompts["prompt"].tolist(),
    )
    seeds = [spec.seed * 1_000_003 + spec.start + i for i in range(len(prompts))]
    t0 = time.perf_counter()
    backend, how = backend_for(spec, log)
    t1 = time.perf_counter()
    log(
        f"engine ready ({how}) in {t1 - t0:.1f}s; "
        f"generating {len(prompts)} prompts x {spec.params.n}"
    )
    progress = ProgressLog(len(prompts), "prompts", log)
    generations = backend.generate(prompt_ids, spec.params, seeds, progress)
    t2 = time.perf_counter()
    df = samples_frame(prompts.reset_index(drop=True), generations)
    crash_if(shard_point(spec.output_uri))
    # How the engine came ("fresh", "kept", "switched") is kept in the commit record, not
    # in the table: the samples are the same either way.
    store.write_table(spec.output_uri, df, meta={"fingerprint": spec.fingerprint, "engine": how})
    tokens = int(df["num_tokens"].sum())
    return {
        "rows": len(df),
        "tokens": tokens,
        "engine": how,
        "engine_s": round(t1 - t0, 2),
        "generate_s": round(t2 - t1, 2),
        "tokens_per_s": round(tokens / max(t2 - t1, 1e-9), 1),
        "truncated_share": float(df["truncated"].mean()) if len(df) else 0.0,
    }
