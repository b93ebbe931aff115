"""Integration tier of `tests.unit.training.test_training`: the real engines on the tiny model."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2LMHeadModel,
)

from alt_core.store import write_table
from alt_core.training.loop import (
    METRICS_FILE,
    TrainingError,
    TrainSpec,
    tokenise_train_table,
)
from alt_core.training.worker import launch_training
from tests.unit.training.test_training import CONTROL, QUIET_ENV, _policy_dir, _table


@pytest.mark.integration
def test_worker_failure_names_the_cause(tmp_path):
    spec = TrainSpec(
        policy_path=str(tmp_path / "no-such-model"),
        train_table=str(tmp_path / "missing.parquet"),
        output_dir=str(tmp_path / "out"),
        training={"kl_coef": 0.0},
    )
    with pytest.raises(TrainingError) as info:
        launch_training(spec, env=QUIET_ENV, log=lambda _line: None)
    message = str(info.value)
    assert "exited with code 1" in message
    assert "training failed" in message and "no-such-model" in message


@pytest.mark.integration
def test_deepspeed_zero2_training_end_to_end(tmp_path, tokenizer_dir):
    policy_dir, vocab = _policy_dir(tmp_path, tokenizer_dir)
    before = GPT2LMHeadModel.from_pretrained(policy_dir).state_dict()
    table_uri = write_table(str(tmp_path / "train.parquet"), _table(16))
    spec = TrainSpec(
        policy_path=str(policy_dir),
        reference_path=str(policy_dir),
        train_table=table_uri,
        output_dir=str(tmp_path / "trained"),
        training={
            "learning_rate": 1e-3,
            "epochs": 2,
            "per_device_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "kl_coef": 0.05,
            "entropy_coef": 0.06,
            "unfrozen_layers_ratio": 0.5,
            "zero_stage": 2,
            "max_seq_len": 64,
        },
        added_tokens=[CONTROL],
        seed=3,
    )
    lines: list[str] = []
    started = time.time()
    summary = launch_training(spec, env=QUIET_ENV, log=lines.append)
    print(f"integration training wall time: {time.time() - started:.1f} s")

    # 16 rows / 4 per micro-batch / 2 per update = 2 updates per epoch, 2 epochs.
    assert summary["steps"] == 4
    assert any(line.startswith("step 4/4") for line in lines)
    metrics = json.loads((tmp_path / "trained" / METRICS_FILE).read_text())
    assert [r["step"] for r in metrics["steps"]] == [1, 2, 3, 4]
    for record in metrics["steps"]:
        for key in ("loss", "nll", "kl", "entropy", "lr", "grad_norm"):
            assert record[key] is not None and record[key] == record[key] and abs(record[key]) < 1e6
        assert record["kl"] > 0  # the reference reads the prompt without the control token
        assert record["entropy"] > 0
    assert metrics["summary"]["tokens_per_s"] > 0
    assert summary["freeze"]["blocks_frozen"] == 1 and summary["added_tokens"] == 1

    out = tmp_path / "trained"
    assert (out / "model.safetensors").exists()
    trained_tok = AutoTokenizer.from_pretrained(out)
    control_id = trained_tok.convert_tokens_to_ids(CONTROL)
    assert control_id == vocab  # a new id, after the original vocabulary
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().num_embeddings == len(trained_tok) == vocab + 1
    after = model.state_dict()
    top, bottom = "transformer.h.1.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(after[top], before[top])  # trained
    assert torch.equal(after[bottom], before[bottom])  # frozen by unfrozen_layers_ratio
    # the embeddings train despite the frozen bottom block because a token was added
    assert not torch.equal(
        after["transformer.wte.weight"][:vocab], before["transformer.wte.weight"]
    )
    assert torch.equal(after["transformer.wpe.weight"], before["transformer.wpe.weight"])
    with torch.no_grad():
        logits = model(**trained_tok(CONTROL + "the movie", return_tensors="pt")).logits
    assert torch.isfinite(logits).all()
    assert os.environ.get("WORLD_SIZE") is None  # the worker's env did not leak into pytest


@pytest.mark.integration
def test_two_processes_through_accelerate_launch(tmp_path, tokenizer_dir):
    """The multi-GPU code path (accelerate launch, rank-sharded data, summed metrics),
    run with two DeepSpeed processes on the CPU."""
    policy_dir, _ = _policy_dir(tmp_path, tokenizer_dir)
    spec = TrainSpec(
        policy_path=str(policy_dir),
        train_table=write_table(str(tmp_path / "train.parquet"), _table(8)),
        output_dir=str(tmp_path / "trained"),
        training={"epochs": 1, "per_device_batch_size": 2, "kl_coef": 0.0, "num_processes": 2},
    )
    lines: list[str] = []
    summary = launch_training(spec, env=QUIET_ENV, log=lines.append)
    # 8 rows over 2 processes, 2 per micro-batch: 2 steps, every row seen once.
    assert summary["num_processes"] == 2 and summary["steps"] == 2
    single = tokenise_train_table(_table(8), AutoTokenizer.from_pretrained(tokenizer_dir), 1024)
    expected = sum(
        len(q) + len(r) for q, r in zip(single.query_ids, single.response_ids, strict=True)
    )
    assert summary["tokens"] == expected
    assert sum(line.startswith("step ") for line in lines) == 2  # only rank 0 logs
    AutoModelForCausalLM.from_pretrained(tmp_path / "trained")
