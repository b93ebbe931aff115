"""What decides whether a kept engine may switch in place, and whether a switch is
trusted (`sampling.engines`, `sampling.probe`); the engine itself is in
tests/integration/test_engine_switch.py."""

from __future__ import annotations

import json
import math

import pytest

from alt_core import store
from alt_core.runtime.resident import weights_id
from alt_core.sampling import probe
from alt_core.sampling.engines import structure_id


def _folder(tmp_path, name="m", **config):
    root = tmp_path / name
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, **config}))
    (root / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (root / "model.safetensors").write_bytes(b"weights-1")
    return root


def test_structure_ignores_bookkeeping_but_not_the_model_or_tokenizer(tmp_path):
    base = structure_id(str(_folder(tmp_path)))
    same = _folder(tmp_path, "n", _name_or_path="/elsewhere", transformers_version="9.9")
    (same / "tokenizer_config.json").write_text('{"is_local": true, "local_files_only": false}')
    (tmp_path / "m" / "tokenizer_config.json").write_text("{}")
    base = structure_id(str(tmp_path / "m"))
    assert structure_id(str(same)) == base  # what transformers adds when it saves a copy
    assert structure_id(str(_folder(tmp_path, "o", vocab_size=1030))) != base  # Quark's tokens
    tok = _folder(tmp_path, "p")
    (tok / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0, "b": 1}}}')
    assert structure_id(str(tok)) != base
    assert structure_id("org/hub-model") == "ref:org/hub-model"


def test_weights_id_follows_the_commit_record_or_the_files(tmp_path):
    root = _folder(tmp_path)
    first = weights_id(str(root))
    (root / "model.safetensors").write_bytes(b"weights-22")
    assert weights_id(str(root)) != first
    store.put_dir(root, str(root))  # a committed folder: the recorded hashes decide
    committed = weights_id(str(root))
    (root / "alt_probe.json").write_text("{}")
    store.put_dir(root, str(root))
    assert weights_id(str(root)) == committed  # only the safetensors count


def test_probe_check():
    record = {"token_ids": [1, 2, 3], "logprobs": [-1.0, -2.0], "dtype": "torch.float32"}
    old = {"token_ids": [1, 2, 3], "logprobs": [-1.5, -2.5], "dtype": "torch.float32"}
    assert probe.check([-1.0, -2.0 + 1e-4], record, old) is None
    assert "differ by" in probe.check([-1.2, -2.2], record, old)
    assert "differ by" in probe.check([-1.0, math.nan], record, old)
    # 16-bit kernels are allowed more, but the engine must be nearer this checkpoint
    # than the previous one (when the two are told apart by more than the tolerance).
    half = {**record, "dtype": "torch.bfloat16"}
    previous = {**half, "logprobs": [-1.15, -2.15]}
    assert probe.check([-1.05, -2.05], half, previous) is None
    assert "previous checkpoint" in probe.check([-1.09, -2.09], half, previous)
    assert probe.check([-1.09, -2.09], half, None) is None
    # A 16-bit engine is allowed as much against an fp32 trainer.
    assert probe.check([-1.05, -2.05], record, None, engine_dtype="torch.bfloat16") is None
    assert probe.check([-1.05, -2.05], record, None) is not None


def test_probe_record_round_trip(tmp_path):
    probe.write(tmp_path, [5, 6, 7], [-0.5, -0.25], "torch.float32")
    assert probe.read(tmp_path)["logprobs"] == [-0.5, -0.25]
    (tmp_path / probe.PROBE_FILE).write_text('{"token_ids": [1, 2], "logprobs": []}')
    assert probe.read(tmp_path) is None  # malformed: treated as no record
    assert probe.read(tmp_path / "missing") is None


@pytest.mark.parametrize("text", [probe.PROBE_TEXT])
def test_probe_ids_are_cut(text):
    class Tok:
        def __call__(self, t, add_special_tokens):
            return {"input_ids": list(range(len(t.split())))}

    assert len(probe.probe_ids(Tok())) == min(probe.PROBE_TOKENS, len(text.split()))
