"""Kept engines (`sampling.engine_reuse`) against an engine per shard, side by side.

1. The demo (`alt run --preset demo`, 3 iterations by default), reuse off then on, in
   fresh run folders: wall time and the sum of the sampling stages' times (train and
   eval sampling of every iteration, iteration 0's evaluation included), and whether
   the two metrics tables are equal to the last digit (wall times aside).
   Goal: sampling stages <= 0.4x, the whole run <= 0.6x.
2. One sampling stage after the first, on a kept engine, against a bare vLLM `generate`
   on an already started engine with the same prompts, seeds and settings: one shard
   of the demo's evaluation (128 prompts) on one slot. Goal: bare/stage >= 0.9.

Run it on a quiet machine: `python bench/bench_engine_reuse.py [--iterations N]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLING = ("train_sample", "eval_sample")
# Metrics that are times, not results.
TIMES = {"train_sample_s", "train_feedback_s", "train_s", "eval_s", "datapool_s", "reused"}


def _demo(run_dir: Path, iterations: int, reuse: bool) -> tuple[float, float, list[dict]]:
    cmd = [
        str(REPO / ".venv" / "bin" / "alt"), "run", "--preset", "demo", "--run-dir", str(run_dir),
        f"iterations={iterations}", f"sampling.engine_reuse={str(reuse).lower()}",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    sampling = 0.0
    for timings in sorted(run_dir.glob("iter_*/timings.json")):
        for attempt in json.loads(timings.read_text())["attempts"]:
            if attempt["stage"] in SAMPLING:
                sampling += attempt["seconds"]
    rows = json.loads((run_dir / "metrics.json").read_text())["iterations"]
    return wall, sampling, [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def demo_side_by_side(iterations: int, root: Path) -> None:
    off = _demo(root / "off", iterations, reuse=False)
    on = _demo(root / "on", iterations, reuse=True)
    print(f"demo, {iterations} iterations: reuse off {off[0]:.0f}s (sampling {off[1]:.0f}s), "
          f"reuse on {on[0]:.0f}s (sampling {on[1]:.0f}s)")  # fmt: skip
    print(f"metrics tables equal: {off[2] == on[2]}")
    print(f"ratio on/off: wall {on[0] / off[0]:.2f}x (goal <= 0.6), "
          f"sampling stages {on[1] / off[1]:.2f}x (goal <= 0.4)")  # fmt: skip


def _stage_vs_bare(root: Path) -> None:
    """Runs in one process: a kept worker (as the flow uses it) and a bare engine."""
    from alt_core import store
    from alt_core.config import config_from_preset
    from alt_core.runtime import workers
    from alt_core.runtime.launcher import run_job
    from alt_core.runtime.slots import SlotPool
    from alt_core.sampling import SampleSpec, tokenize_queries
    from alt_core.sampling.backends import VLLMBackend
    from alt_core.sampling.spec import EngineSettings, GenerationParams
    from alt_core.tasks.demo.assets import ensure_demo_assets

    config = config_from_preset("demo", {})
    assets = ensure_demo_assets(
        config.storage.cache_dir, config.data.demo_num_train, config.data.demo_num_valid, seed=0
    )
    prompts = store.read_table(assets.valid_prompts_uri).head(128).copy()
    prompts["query"] = "Excellent. input: " + prompts["prompt"]
    prompts_uri = store.write_table(
        str(root / "prompts.parquet"), prompts[["prompt_id", "prompt", "query"]]
    )
    params = GenerationParams.train(config)
    engine = EngineSettings.from_config(config)
    slot = SlotPool(1).slot_for(0)
    env = {**slot.env, **engine.process_env()}

    def spec(i: int) -> SampleSpec:
        return SampleSpec(
            model_path=assets.model_uri if not store.dir_committed(assets.model_uri)
            else str(store.local_dir(assets.model_uri)),
            prompts_uri=prompts_uri, output_uri=str(root / f"stage-{i}.parquet"),
            start=0, stop=len(prompts), seed=5, params=params, engine=engine,
        )  # fmt: skip

    run_job("sample", spec(0), name="warm", env=env, num_threads=slot.num_threads,
            log=lambda _: None, keep=True)  # fmt: skip
    t0 = time.perf_counter()
    run_job("sample", spec(1), name="stage", env=env, num_threads=slot.num_threads,
            log=lambda _: None, keep=True)  # fmt: skip
    stage = time.perf_counter() - t0
    workers.close_all()

    # The bare engine: the same prompt tokens, seeds and settings, timed after a warm-up.
    from transformers import AutoTokenizer

    path = spec(0).model_path
    ids = tokenize_queries(AutoTokenizer.from_pretrained(path), prompts["query"].tolist(),
                           params.max_prompt_tokens, prompts["prompt"].tolist())  # fmt: skip
    seeds = [5 * 1_000_003 + i for i in range(len(ids))]
    import os

    os.environ.update(env)
    backend = VLLMBackend(path, engine, 5, params.max_prompt_tokens)
    backend.generate(ids, params, seeds)
    t0 = time.perf_counter()
    backend.generate(ids, params, seeds)
    bare = time.perf_counter() - t0
    backend.close()
    print(f"one sampling stage on a kept engine {stage:.2f}s, bare generate {bare:.2f}s")
    print(f"ratio bare/stage: {bare / stage:.2f} (goal >= 0.9)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alt-bench-reuse-") as tmp:
        root = Path(tmp)
        _stage_vs_bare(root)
        if not args.skip_demo:
            demo_side_by_side(args.iterations, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
