"""Loading never runs code: a pickle planted in a checkpoint or a model folder is refused.

Each test plants a pickle whose unpickling would create a marker file (`Payload`), in one
of the places a resume or a model load reads, and asserts the marker never appears. The
first test shows the payload is live: a full unpickler does run it.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from alt_core.training import state as train_state
from alt_core.training.dist import Dist
from alt_core.training.safe_load import data_only_loads
from alt_core.training.state import (
    RNG_FILE,
    STATE_FILE,
    Checkpointer,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    rng_states,
    set_rng_states,
    usable_checkpoints,
    verify_checkpoint,
)


class Payload:
    """Unpickles by running Python source that creates `marker`: any code could run in
    its place, in any process (it needs no module of ours to be importable)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code from a checkpoint ran')",)


def plant(path: Path, marker: Path) -> None:
    """Replace `path` with a torch file whose state dict carries the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": {"weight": torch.zeros(2)}, "extra": Payload(marker)}, path)


def rehash(folder: Path) -> None:
    """Rewrite the checkpoint's manifest to match its files, as someone with write
    access to the state folder can: only the data-only loading stands in the way then."""
    record = json.loads((folder / STATE_FILE).read_text())
    (folder / STATE_FILE).unlink()
    record.pop("files")
    train_state._write_record(folder, record)


class LoadsLikeDeepSpeed:
    """An accelerator whose `load_state` unpickles every `.pt`, `.bin` and `.pkl` of the
    folder the way DeepSpeed's checkpoint engine does: `weights_only=False`."""

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def load_state(self, folder: str) -> None:
        for path in sorted(Path(folder).rglob("*")):
            if path.suffix in {".pt", ".bin", ".pkl"} and not path.name.startswith("rng-rank"):
                torch.load(path, weights_only=False)
                self.loaded.append(path.name)


def checkpoint(state_dir: Path, step: int, key: str = "k") -> Path:
    """A checkpoint folder as `save_checkpoint` leaves it, with data-only files."""
    tmp = state_dir / f"{train_state.TMP_PREFIX}{step:08d}"
    (tmp / "pytorch_model").mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(3) * step}}, tmp / "pytorch_model" / "states.pt")
    torch.save({"last_epoch": step}, tmp / "scheduler.bin")
    torch.save(rng_states(), tmp / RNG_FILE.format(rank=0))
    record = {"resume_key": key, "step": step, "epoch": 0, "step_in_epoch": step,
              "total_steps": 12, "steps_per_epoch": 12, "train_seconds": 1.0,
              "records": [{"step": s} for s in range(1, step + 1)]}  # fmt: skip
    train_state._write_record(tmp, record)
    final = train_state.checkpoint_path(state_dir, step)
    tmp.rename(final)
    return final


def checkpointer(state_dir: Path, accelerator, lines: list[str]) -> Checkpointer:
    return Checkpointer(accelerator, Dist(), state_dir, "k", every=4, keep=3, total_steps=12,
                        steps_per_epoch=12, say=lines.append)  # fmt: skip


# --------------------------------------------------------------------- the payload


def test_the_planted_pickle_runs_code_under_a_full_unpickler(tmp_path):
    marker = tmp_path / "MARKER"
    plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_data_only_loads_overrides_a_caller_asking_for_a_full_unpickler(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    plant(tmp_path / "evil.pt", marker)
    # Even with torch's opposite switch set in the environment.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with data_only_loads(), pytest.raises(Exception, match="exec"):
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert not marker.exists()
    import os

    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored on the way out
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# ------------------------------------------------------------------------ RNG state


def test_rng_file_is_plain_data_and_continues_every_generator(tmp_path):
    torch.save(rng_states(), tmp_path / "rng.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "rng.pt") == []
    first = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert first[:3] == again[:3] and torch.equal(first[3], again[3])


def test_a_malicious_rng_file_is_refused_even_with_a_matching_manifest(tmp_path):
    marker = tmp_path / "MARKER"
    path = checkpoint(tmp_path / "state", 4)
    plant(path / RNG_FILE.format(rank=0), marker)
    rehash(path)
    verify_checkpoint(path, read_checkpoint(path, "k"))  # the hashes cannot tell
    with pytest.raises(CheckpointError, match="refused to unpickle .* never runs code"):
        load_checkpoint(LoadsLikeDeepSpeed(), Dist(), path)
    assert not marker.exists()


# ------------------------------------------------------------------ the hash manifest


def test_resume_record_holds_size_and_sha256_of_every_file(tmp_path):
    path = checkpoint(tmp_path, 4)
    files = json.loads((path / STATE_FILE).read_text())["files"]
    assert sorted(files) == ["pytorch_model/states.pt", "rng-rank0.pt", "scheduler.bin"]
    import hashlib

    data = (path / "scheduler.bin").read_bytes()
    assert files["scheduler.bin"] == {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_a_file_changed_after_its_save_fails_its_hash(tmp_path):
    path = checkpoint(tmp_path, 4)
    states = path / "pytorch_model" / "states.pt"
    data = bytearray(states.read_bytes())
    data[-30] ^= 1  # same size: only the hash sees it
    states.write_bytes(bytes(data))
    record = read_checkpoint(path, "k")
    with pytest.raises(CheckpointError, match="pytorch_model/states.pt does not match the SHA-256"):
        verify_checkpoint(path, record)


def test_a_file_the_save_did_not_write_makes_the_checkpoint_unusable(tmp_path):
    """Accelerate loads custom_checkpoint_<i>.pkl with weights_only=False when it exists."""
    marker = tmp_path / "MARKER"
    path = checkpoint(tmp_path / "state", 4)
    plant(path / "custom_checkpoint_0.pkl", marker)
    with pytest.raises(CheckpointError, match="custom_checkpoint_0.pkl was not saved"):
        read_checkpoint(path, "k")
    lines: list[str] = []
    assert usable_checkpoints(tmp_path / "state", "k", lines.append) == []
    assert "custom_checkpoint_0.pkl was not saved with this checkpoint" in lines[0]
    assert not marker.exists()


def test_format_1_checkpoints_are_discarded(tmp_path):
    path = checkpoint(tmp_path, 4)
    record = json.loads((path / STATE_FILE).read_text())
    (path / STATE_FILE).write_text(json.dumps({**record, "format": 1}))
    with pytest.raises(CheckpointError, match="not a format-2 resume record"):
        read_checkpoint(path, "k")


def test_resume_skips_a_tampered_checkpoint_and_one_that_will_not_unpickle(tmp_path):
    marker = tmp_path / "MARKER"
    state_dir = tmp_path / "state"
    for step in (4, 8, 12):
        checkpoint(state_dir, step)
    # Step 12: a planted pickle, the manifest left alone; step 8: manifest rewritten too.
    plant(state_dir / "step-00000012" / "scheduler.bin", marker)
    plant(state_dir / "step-00000008" / "pytorch_model" / "states.pt", marker)
    rehash(state_dir / "step-00000008")
    lines: list[str] = []
    accelerator = LoadsLikeDeepSpeed()
    progress = checkpointer(state_dir, accelerator, lines).resume()
    assert progress.resumed_from == 4 and progress.step == 4
    assert not marker.exists()
    text = "\n".join(lines)
    assert "removing checkpoint" in text and "step-00000012: file scheduler.bin has" in text
    assert "cannot load" in text and "step-00000008" in text and "refused to unpickle" in text
    assert not (state_dir / "step-00000012").exists()  # failed its hashes: removed
    assert accelerator.loaded[-2:] == ["states.pt", "scheduler.bin"]  # step 4's, data only


def test_resume_starts_fresh_when_every_checkpoint_fails_its_hashes(tmp_path):
    path = checkpoint(tmp_path / "state", 4)
    scheduler = path / "scheduler.bin"
    scheduler.write_bytes(scheduler.read_bytes().replace(b"last_epoch", b"LAST_EPOCH"))
    lines: list[str] = []
    accelerator = LoadsLikeDeepSpeed()
    progress = checkpointer(tmp_path / "state", accelerator, lines).resume()
    assert progress.step == 0 and progress.resumed_from is None and not accelerator.loaded
    assert "scheduler.bin does not match the SHA-256" in lines[-1] and not path.exists()


# ----------------------------------------------------- what the libraries unpickle


def test_deepspeed_checkpoint_engine_gets_data_only(tmp_path):
    """DeepSpeed's torch engine loads every ZeRO file with weights_only=False; within
    data_only_loads its optimizer state still loads (the allow-list) and a payload does not."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    optim = {"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0),
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
             "base_optimizer_state": {"state": {0: {"exp_avg": torch.ones(4)}}}}  # fmt: skip
    torch.save(optim, tmp_path / "optim_states.pt")
    marker = tmp_path / "MARKER"
    plant(tmp_path / "model_states.pt", marker)
    engine = TorchCheckpointEngine()
    with data_only_loads():
        loaded = engine.load(str(tmp_path / "optim_states.pt"))
        with pytest.raises(Exception, match="exec"):
            engine.load(str(tmp_path / "model_states.pt"))
    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["loss_scaler"].cur_scale == 1.0
    assert loaded["param_slice_mappings"][0]["w"].numel == 4
    assert not marker.exists()


@pytest.fixture
def accelerate_checkpoint(tmp_path):
    """A real Accelerate checkpoint (no DeepSpeed) with a registered custom object: every
    file Accelerate's own loader reads on resume."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    folder = tmp_path / "state" / "step-00000004"
    accelerator.save_state(str(folder), safe_serialization=False)
    torch.save(rng_states(), folder / RNG_FILE.format(rank=0))
    yield accelerator, folder
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize(
    "name",
    ["optimizer.bin", "scheduler.bin", "pytorch_model.bin", "custom_checkpoint_0.pkl"],
)
def test_accelerate_files_with_a_payload_are_refused(accelerate_checkpoint, tmp_path, name):
    accelerator, folder = accelerate_checkpoint
    load_checkpoint(accelerator, Dist(), folder)  # as saved: loads
    marker = tmp_path / "MARKER"
    plant(folder / name, marker)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_checkpoint(accelerator, Dist(), folder)
    assert not marker.exists()


def test_accelerate_random_states_with_a_payload_do_not_run(accelerate_checkpoint, tmp_path):
    """Accelerate swallows a random-states file it cannot load; ours sets the RNGs after."""
    accelerator, folder = accelerate_checkpoint
    marker = tmp_path / "MARKER"
    plant(folder / "random_states_0.pkl", marker)
    load_checkpoint(accelerator, Dist(), folder)
    assert not marker.exists()


# ------------------------------------------------------------------- model folders


def _bin_only_model(source: Path, target: Path, marker: Path) -> Path:
    """The tiny model's folder with its safetensors replaced by a pickled state dict."""
    shutil.copytree(source, target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()
    plant(target / "pytorch_model.bin", marker)
    return target


def _load_policy(path: str) -> None:
    from alt_core.training.model import load_policy
    from alt_core.training.spec import TrainSpec

    spec = TrainSpec(policy_path=path, train_table="t", output_dir="o",
                     training={"kl_coef": 0.0})  # fmt: skip
    load_policy(spec)


def _load_reference(path: str) -> None:
    from types import SimpleNamespace

    from alt_core.training.model import load_reference
    from alt_core.training.spec import TrainSpec

    spec = TrainSpec(policy_path=path, reference_path=path, train_table="t", output_dir="o")
    load_reference(spec, SimpleNamespace(mixed_precision="no", device="cpu"))


def _reference_nll(path: str) -> None:
    from alt_core.evaluation import reference_nll

    reference_nll(path, ["a"], ["b"])


def _hf_sampler(path: str) -> None:
    from alt_core.sampling.backends import HFBackend

    HFBackend(path)


def _reward_model(path: str) -> None:
    from alt_core.feedback.reward_model import RewardModelProvider

    RewardModelProvider(path, device="cpu")


@pytest.mark.parametrize(
    "load", [_load_policy, _load_reference, _reference_nll, _hf_sampler, _reward_model]
)
def test_a_pickled_model_file_is_never_read(tiny_model_dir, tmp_path, load):
    marker = tmp_path / "MARKER"
    folder = _bin_only_model(tiny_model_dir, tmp_path / "policy", marker)
    with pytest.raises(Exception, match="safetensors"):
        load(str(folder))
    assert not marker.exists()


def test_vllm_is_told_to_read_safetensors_only(monkeypatch):
    import sys
    from types import SimpleNamespace

    from alt_core.sampling.backends import VLLMBackend
    from alt_core.sampling.spec import EngineSettings

    seen: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=lambda **kw: seen.update(kw)))
    VLLMBackend("/models/policy", EngineSettings.model_construct(
        dtype="auto", tensor_parallel_size=1, gpu_memory_utilization=0.5, enforce_eager=True,
        max_num_seqs=4, trust_remote_code=False, cpu_kvcache_gib=1.0), seed=0,
        max_prompt_tokens=8)  # fmt: skip
    assert seen["load_format"] == "safetensors" and seen["trust_remote_code"] is False
