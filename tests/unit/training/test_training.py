"""The trainer: data layout, freezing, schedule, the worker, and one real DeepSpeed run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from alt_core.config import TrainingConfig
from alt_core.losses import IGNORE_INDEX
from alt_core.training.loop import (
    TrainingError,
    TrainSpec,
    add_tokens,
    check_finite,
    collate,
    epoch_batches,
    find_transformer_blocks,
    freeze_lower_layers,
    linear_warmup_decay,
    tokenise_train_table,
)
from alt_core.training.worker import ensure_single_process_env, worker_command

CONTROL = "_QUANTILE_TOKEN_0_"
TEXT = [
    "the movie was great and the actors were wonderful",
    "a terrible plot with boring scenes and bad acting",
    "i loved the music and the story was touching",
    "the food was cold but the service was friendly",
    "this book is a delight from the first page to the last",
    "the weather today is sunny with a light breeze",
] * 20


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _tiny_gpt2(vocab_size: int, n_layer: int = 2, eos_id: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=32,
        n_head=2,
        n_positions=128,
        vocab_size=vocab_size,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    return GPT2LMHeadModel(config)


def _policy_dir(tmp_path: Path, tokenizer_dir: Path) -> tuple[Path, int]:
    """A tiny GPT-2 checkpoint with the test tokenizer; returns (folder, vocabulary size)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    folder = tmp_path / "policy"
    _tiny_gpt2(len(tok), eos_id=tok.eos_token_id).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, len(tok)


def _table(n: int = 4) -> pd.DataFrame:
    prompts = [TEXT[i % 6] for i in range(n)]
    return pd.DataFrame(
        {
            "prompt_id": range(n),
            "query": [CONTROL + p for p in prompts],
            "reference_query": prompts,
            "response": [" " + TEXT[(i + 1) % 6][: 10 + 3 * i] for i in range(n)],
            "append_eos": [i % 2 == 0 for i in range(n)],
            "bucket": 0,
        }
    )


# ---------------------------------------------------------------------- data layout


def test_collate_aligns_policy_and_reference_responses(tokenizer):
    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tok.add_tokens([CONTROL])
    table = _table(3)
    data = tokenise_train_table(table, tok, max_seq_len=128)
    pad = tok.eos_token_id
    batch = collate(data, [0, 1, 2], pad_id=pad)
    width = batch.prompt_width
    assert width == max(len(q) for q in data.query_ids)  # the policy query is the longer
    assert batch.input_ids.shape == batch.ref_input_ids.shape == batch.labels.shape

    for row in range(3):
        query, ref, resp = data.query_ids[row], data.reference_ids[row], data.response_ids[row]
        assert len(ref) < len(query)  # the reference lacks the control token
        # prompts are left-padded to the shared width ...
        assert batch.input_ids[row, width - len(query) : width].tolist() == query
        assert batch.ref_input_ids[row, width - len(ref) : width].tolist() == ref
        assert batch.attention_mask[row, : width - len(query)].sum() == 0
        assert batch.ref_attention_mask[row, : width - len(ref)].sum() == 0
        # ... so the responses start at the same column in both inputs, right-padded
        span = slice(width, width + len(resp))
        assert batch.input_ids[row, span].tolist() == resp
        assert batch.ref_input_ids[row, span].tolist() == resp
        assert batch.attention_mask[row, width + len(resp) :].sum() == 0
        # labels only on response tokens
        assert batch.labels[row, span].tolist() == resp
        assert torch.all(batch.labels[row, :width] == IGNORE_INDEX)
        assert torch.all(batch.labels[row, width + len(resp) :] == IGNORE_INDEX)
        # positions count from the first real token of each input
        assert batch.position_ids[row, width - len(query)] == 0
        assert batch.ref_position_ids[row, width - len(ref)] == 0
        assert batch.position_ids[row, width] == len(query)
        assert batch.ref_position_ids[row, width] == len(ref)


def test_eos_appended_only_where_asked(tokenizer):
    table = _table(4)
    data = tokenise_train_table(table, tokenizer, max_seq_len=128)
    eos = tokenizer.eos_token_id
    for row, append in enumerate(table["append_eos"]):
        plain = tokenizer(table["response"][row], add_special_tokens=False)["input_ids"]
        expected = plain + [eos] if append else plain
        assert data.response_ids[row] == expected


def test_control_token_is_one_token_after_adding(tokenizer):
    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    model = _tiny_gpt2(len(tok))
    assert add_tokens(tok, model, [CONTROL]) == 1
    assert model.get_input_embeddings().num_embeddings == len(tok)
    ids = tok(CONTROL + "the movie")["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids(CONTROL)
    assert add_tokens(tok, model, [CONTROL]) == 0  # adding twice is a no-op


def test_long_queries_lose_tokens_from_the_left(tokenizer):
    table = _table(2)
    full = tokenise_train_table(table, tokenizer, max_seq_len=256)
    cut = tokenise_train_table(table, tokenizer, max_seq_len=12)
    assert cut.stats["queries_truncated"] == 2
    assert cut.stats["reference_queries_truncated"] == 2
    for row in range(2):
        total = len(cut.query_ids[row]) + len(cut.response_ids[row])
        assert total == 12
        assert cut.query_ids[row] == full.query_ids[row][-len(cut.query_ids[row]) :]
        assert cut.response_ids[row] == full.response_ids[row]


def test_table_problems_are_reported(tokenizer):
    with pytest.raises(Exception, match="append_eos"):
        tokenise_train_table(_table(2).drop(columns=["append_eos"]), tokenizer, 64)
    with pytest.raises(TrainingError, match="no rows"):
        tokenise_train_table(_table(2).iloc[:0], tokenizer, 64)
    bad = _table(2)
    bad.loc[0, "response"] = None
    with pytest.raises(TrainingError, match="response"):
        tokenise_train_table(bad, tokenizer, 64)


def test_epoch_batches_are_seeded_permutations_split_over_processes():
    first = epoch_batches(10, 3, seed=1, epoch=0)
    assert first == epoch_batches(10, 3, seed=1, epoch=0)
    assert sorted(i for b in first for i in b) == list(range(10))
    assert [len(b) for b in first] == [3, 3, 3, 1]
    assert first != epoch_batches(10, 3, seed=1, epoch=1)
    ranks = [epoch_batches(10, 2, seed=1, epoch=0, rank=r, world_size=4) for r in range(4)]
    assert len({len(r) for r in ranks}) == 1  # every process runs the same micro-batch count
    seen = {i for r in ranks for b in r for i in b}
    assert seen == set(range(10))


def test_linear_warmup_then_decay():
    factors = [linear_warmup_decay(s, warmup_steps=2, total_steps=6) for s in range(6)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert linear_warmup_decay(0, 0, 1) == 1.0  # no warmup: the first update is at full rate


def test_non_finite_loss_stops_training_with_the_step_number():
    terms = {k: torch.tensor(1.0) for k in ("nll", "kl", "entropy")}
    check_finite(torch.tensor(2.5), {**terms, "loss": torch.tensor(2.5)}, step=3, micro_batch=1)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TrainingError, match="at step 7 \\(micro-batch 2\\)"):
            check_finite(torch.tensor(bad), {**terms, "nll": torch.tensor(bad)}, 7, 2)


# ------------------------------------------------------------------------ freezing


def test_freeze_gpt2_bottom_blocks_and_embeddings():
    model = _tiny_gpt2(300, n_layer=4)
    counts = freeze_lower_layers(model, 0.5)
    assert counts["blocks"] == 4 and counts["blocks_frozen"] == 2 and counts["blocks_trained"] == 2
    blocks = model.transformer.h
    assert not any(p.requires_grad for b in blocks[:2] for p in b.parameters())
    assert all(p.requires_grad for b in blocks[2:] for p in b.parameters())
    assert not model.transformer.wte.weight.requires_grad
    assert not model.transformer.wpe.weight.requires_grad
    assert model.transformer.ln_f.weight.requires_grad
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["params_trainable"] == trainable < counts["params"]
    assert counts["input_embeddings_trainable"] == 0


def test_freeze_keeps_input_embeddings_when_tokens_were_added():
    model = _tiny_gpt2(300, n_layer=4)
    counts = freeze_lower_layers(model, 0.3, keep_input_embeddings=True)
    assert counts["blocks_trained"] == 1  # 0.3 * 4 = 1.2 -> 1
    assert model.transformer.wte.weight.requires_grad
    assert not model.transformer.wpe.weight.requires_grad
    assert counts["input_embeddings_trainable"] == 1


def test_ratio_one_freezes_nothing():
    model = _tiny_gpt2(300)
    counts = freeze_lower_layers(model, 1.0)
    assert counts["blocks_frozen"] == 0
    assert counts["params_trainable"] == counts["params"]
    with pytest.raises(ValueError):
        freeze_lower_layers(model, 0.0)


@pytest.mark.parametrize(
    ("model_fn", "path"),
    [
        (
            lambda: LlamaForCausalLM(
                LlamaConfig(
                    vocab_size=64,
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=3,
                    num_attention_heads=2,
                    num_key_value_heads=2,
                )  # fmt: skip
            ),
            "model.layers",
        ),
        (
            lambda: GPTNeoXForCausalLM(
                GPTNeoXConfig(
                    vocab_size=64,
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=3,
                    num_attention_heads=2,
                )  # fmt: skip
            ),
            "gpt_neox.layers",
        ),
    ],
)
def test_blocks_found_in_llama_and_neox(model_fn, path):
    model = model_fn()
    found, blocks = find_transformer_blocks(model)
    assert found == path and len(blocks) == 3
    counts = freeze_lower_layers(model, 0.34)
    assert counts["blocks_frozen"] == 2
    assert not model.get_input_embeddings().weight.requires_grad


# -------------------------------------------------------------------- spec, worker


def test_spec_round_trips_through_json():
    spec = TrainSpec(
        policy_path="/p",
        reference_path="/r",
        train_table="s3://bucket/train.parquet",
        output_dir="/out",
        training={"epochs": 1, "kl_coef": 0.1},
        added_tokens=[CONTROL],
        seed=7,
    )
    again = TrainSpec.from_json(spec.to_json())
    assert again == spec
    assert isinstance(again.training, TrainingConfig) and again.training.epochs == 1


def test_spec_needs_reference_when_kl_is_on():
    with pytest.raises(ValueError, match="reference_path"):
        TrainSpec(policy_path="/p", train_table="t", output_dir="o", training={"kl_coef": 0.1})
    TrainSpec(policy_path="/p", train_table="t", output_dir="o", training={"kl_coef": 0.0})
    with pytest.raises(ValueError):
        TrainSpec(policy_path="/p", train_table="t", output_dir="o", unknown=1)


def test_single_process_env_only_when_no_launcher():
    env: dict[str, str] = {}
    assert ensure_single_process_env(env)
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "1" and env["LOCAL_RANK"] == "0"
    assert int(env["MASTER_PORT"]) > 0 and env["MASTER_ADDR"]
    launched = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "1234"}
    assert not ensure_single_process_env(launched)
    assert launched == {"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "1234"}


def test_worker_command_uses_accelerate_for_several_processes(tmp_path):
    spec = TrainSpec(policy_path="/p", train_table="t", output_dir="o", training={"kl_coef": 0})
    single = worker_command(spec, tmp_path / "s.json")
    assert single[1:3] == ["-m", "alt_core.runtime.entry"]
    spec.training.num_processes = 2
    multi = worker_command(spec, tmp_path / "s.json")
    assert multi[1:3] == ["-m", "accelerate.commands.launch"]
    assert multi[multi.index("--num_processes") + 1] == "2"
    assert multi[-3:] == ["-m", "alt_core.runtime.entry", str(tmp_path / "s.json")]


# ----------------------------------------------------------------- real DeepSpeed

QUIET_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
