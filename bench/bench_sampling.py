"""Benchmark: vLLM (CPU build here) against transformers' generate, same model and prompts.

Run: .venv/bin/python bench/bench_sampling.py [--prompts 64] [--n 8] [--tokens 32]
         [--layers 4] [--width 128]

The default model has the demo policy's shape (4 layers, 128 wide, about 1M parameters);
vLLM's lead grows with the model, since the per-step overhead both pay weighs less.

Both backends run through the pipeline's own sampling shard (`alt_core.sampling`), in a
worker process each, on the same tiny GPT-2 made here. Engine start-up is reported apart
from generation, since the pipeline pays it once per shard.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pandas as pd  # noqa: E402

from alt_core import store  # noqa: E402
from alt_core.config import RunConfig  # noqa: E402
from alt_core.runtime.launcher import run_job  # noqa: E402
from alt_core.sampling import EngineSettings, GenerationParams, SampleSpec  # noqa: E402


def run(backend: str, model: Path, prompts_uri: str, out: Path, args) -> dict:
    spec = SampleSpec(
        model_path=str(model),
        prompts_uri=prompts_uri,
        output_uri=str(out / f"{backend}.parquet"),
        start=0,
        stop=args.prompts,
        seed=0,
        params=GenerationParams(
            n=args.n, temperature=0.9, top_p=0.9, max_new_tokens=args.tokens, max_prompt_tokens=512
        ),
        engine=EngineSettings.from_config(RunConfig(model={"dtype": args.dtype})),
        backend=backend,
    )
    env = spec.engine.process_env()
    return run_job("sample", spec, name=backend, env=env, log=lambda _line: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
        help="vLLM's weights dtype (auto: fp32 on CPUs, like the trainer)",
    )  # fmt: skip
    parser.add_argument("--layers", type=int, default=4, help="GPT-2 blocks of the test model")
    parser.add_argument("--width", type=int, default=128, help="its hidden size (heads of 64)")
    args = parser.parse_args()
    from tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(
            root / "model", n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64)
        )
        prompts = pd.DataFrame(
            {"prompt_id": range(args.prompts), "prompt": ["The food was"] * args.prompts}
        )
        prompts["query"] = prompts["prompt"]
        uri = store.write_table(str(root / "prompts.parquet"), prompts)
        vllm = run("vllm", model, uri, root, args)
        hf = run("hf", model, uri, root, args)
    ratio = vllm["tokens_per_s"] / max(hf["tokens_per_s"], 1e-9)
    print(
        f"sampling throughput ({args.layers}x{args.width} GPT-2, {args.prompts} prompts x "
        f"{args.n} x {args.tokens} tokens): "
        f"vLLM {vllm['tokens_per_s']:.0f} tok/s (engine start {vllm['engine_s']:.0f}s) vs "
        f"transformers generate {hf['tokens_per_s']:.0f} tok/s = {ratio:.1f}x"
    )


if __name__ == "__main__":
    main()
