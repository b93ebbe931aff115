"""A tiny one-iteration run config over the tiny model: the integration tier's run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

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


# The tiny run the fault, signal and lock tests kill and resume: transformers sampling
# (the pipeline is under test, not the engine), two shards, a short KL-regularised training.
HF_SAMPLING = {"backend": "hf", "num_generations": 5, "max_new_tokens": 12, "num_shards": 2}


def hf_run_config_file(tmp_path, model_dir, checkpoint_every: int) -> Path:
    """`config.yaml` in `tmp_path` of that run, checkpointing every `checkpoint_every` steps."""
    config = tiny_run_config(
        tmp_path,
        model_dir,
        sampling=HF_SAMPLING,
        training={
            "learning_rate": 1e-3,
            "epochs": 1,
            "per_device_batch_size": 4,
            "kl_coef": 0.05,
            "entropy_coef": 0.01,
            "max_seq_len": 64,
            "checkpoint_every": checkpoint_every,
        },
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path
