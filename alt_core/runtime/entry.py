"""Entry point of shard processes: `python -m alt_core.runtime.entry KIND SPEC.json`.

KIND is `sample`, `feedback` or `perplexity`. The parent (`alt_core.runtime.launcher.run_worker`)
streams this process's output and reads the JSON result from its last line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from alt_core import store
from alt_core.runtime.faults import crash_if, shard_point
from alt_core.runtime.launcher import emit_result


def _threads_from_slot() -> None:
    n = os.environ.get("ALT_NUM_THREADS")
    if n:
        import torch

        torch.set_num_threads(int(n))


def run_sample(spec: dict[str, Any]) -> dict[str, Any]:
    from alt_core.sampling import SampleSpec, sample_shard

    return sample_shard(SampleSpec.from_dict(spec))


def run_feedback(spec: dict[str, Any], log: Callable[[str], None] = print) -> dict[str, Any]:
    """Score one samples shard with the configured provider and commit the result; slow
    providers (a judge, a reward model) report their progress to `log`."""
    from alt_core.config import RunConfig
    from alt_core.feedback import get_provider
    from alt_core.schemas import FEEDBACK, OPTIONAL_FEEDBACK

    config = RunConfig.model_validate(spec["config"])
    samples = store.read_table(spec["input_uri"])
    t0 = time.perf_counter()
    provider = get_provider(config)
    provider.progress = log
    scored = provider.score(samples)
    out = samples.copy()
    # A judge's raw answer is kept beside the parsed columns, so a missing judgement can
    # be read with the reason it is missing.
    columns = FEEDBACK + [c for c in OPTIONAL_FEEDBACK if c in scored.columns]
    for col in columns:
        if col not in out.columns:
            out[col] = scored[col].to_numpy() if col in scored.columns else None
    crash_if(shard_point(spec["output_uri"]))
    store.write_table(
        spec["output_uri"], out[columns], meta={"fingerprint": spec.get("fingerprint", "")}
    )
    missing = int(out["reward"].isna().sum())
    stats = getattr(provider, "last_stats", {}) or {}
    return {
        "rows": len(out),
        "missing": missing,
        "seconds": round(time.perf_counter() - t0, 2),
        **{f"judge_{k}": v for k, v in stats.items()},
    }


def run_perplexity(spec: dict[str, Any]) -> dict[str, Any]:
    from alt_core.evaluation import reference_nll

    df = store.read_table(spec["input_uri"])
    nll, count = reference_nll(
        spec["reference_path"],
        df["prompt"].tolist(),
        df["generation"].tolist(),
        spec.get("batch_size", 16),
    )
    df["ref_nll"] = nll
    crash_if("perplexity")
    df["ref_tokens"] = count
    store.write_table(spec["output_uri"], df, meta={"fingerprint": spec.get("fingerprint", "")})
    return {"rows": len(df)}


KINDS = {"sample": run_sample, "feedback": run_feedback, "perplexity": run_perplexity}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in KINDS:
        print(
            f"usage: python -m alt_core.runtime.entry {{{','.join(KINDS)}}} SPEC.json",
            file=sys.stderr,
        )
        return 2
    _threads_from_slot()
    with open(argv[1]) as fh:
        spec = json.load(fh)
    emit_result(KINDS[argv[0]](spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
