"""A tiny one-iteration run config over the tiny model: the integration tier's run."""

from __future__ import annotations

import pandas as pd

from alt_core.config import RunConfig


def _prompt_file(path, n):
    pd.DataFrame({"prompt": [f"Review {i}: The food was" for i in range(n)]}).to_json(
        path, orient="records", lines=True
    )
    return str(path)


def tiny_run_config(tmp_path, model_dir, **overrides) -> RunConfig:
    data = {
        "name": "it",
        "method": "alt_rm",
        "iterations": 1,
        "model": {"policy": str(model_dir)},
        "data": {
            "source": "file",
            "train_path": _prompt_file(tmp_path / "train.jsonl", 40),
            "valid_path": _prompt_file(tmp_path / "valid.jsonl", 8),
            "prompts_per_iteration": 12,
            "max_prompt_tokens": 32,
        },
        "sampling": {"num_generations": 5, "max_new_tokens": 12, "num_shards": 2, "concurrency": 1},
        "feedback": {"provider": "sentiment"},
        "datapool": {"num_samples_per_quantile": 1},
        "training": {
            "learning_rate": 1e-3,
            "epochs": 1,
            "per_device_batch_size": 8,
            "kl_coef": 0.05,
            "entropy_coef": 0.01,
            "max_seq_len": 64,
        },
        "evaluation": {"evaluate_initial": False},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return RunConfig.model_validate(data)
