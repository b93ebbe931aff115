"""Resumable training state: the checkpoints a killed training run continues from.

Every `checkpoint_every` optimizer steps, and after the last one, `save_checkpoint`
writes the full state into `<state_dir>/step-<N>`:

- model, optimizer and LR schedule through Accelerate's `save_state` (under DeepSpeed
  every process writes its ZeRO partition of the weights and the optimizer state);
- every process's RNG states (python, numpy, torch, CUDA) in `rng-rank<R>.pt`, as plain
  ints and tensors. This is our own file because Accelerate names its RNG file by its own
  process index, which is 0 on every process when DeepSpeed runs several on CPUs (see
  `Dist`);
- `resume.json`: the position in the data order (epoch, step within the epoch), the loss
  records so far, the size and SHA-256 of every file of the checkpoint, and the key of the
  inputs.

A checkpoint is written into a temporary folder, flushed to disk, and renamed when
complete, with `resume.json` written last: a folder `step-<N>` whose `resume.json` reads,
whose files all have their recorded sizes and which holds no file it does not list is
complete. `usable_checkpoints` skips (and removes) anything else, saying why, so a
half-written or damaged newest checkpoint falls back to the one before; the one about to
be loaded is also checked against its hashes (`verify_checkpoint`). `resume_key` hashes
what decides the result (the inputs' content, the training config, the seed): state saved
for other inputs is discarded, not resumed.

Loading never runs code from the folder (`safe_load.data_only_loads`): every
`torch.load` made while a checkpoint loads, DeepSpeed's and Accelerate's included (they
ask for full pickles), is forced to torch's weights-only unpickler, which builds tensors,
containers, numbers and the few classes of `safe_load.allowed_classes` and nothing else.
docs/operating.md ("What a run folder must be trusted with") says what the hashes do and
do not protect against.

The state folder must be one that every training process sees (one machine, or a shared
file system).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alt_core import store
from alt_core.training.dist import Dist
from alt_core.training.safe_load import data_only_loads, unsafe_files
from alt_core.training.spec import TrainingError, TrainSpec

METRICS_FILE = "train_metrics.json"
STATE_FILE = "resume.json"
RNG_FILE = "rng-rank{rank}.pt"
PREFIX = "step-"
TMP_PREFIX = ".tmp-step-"
LOCK_FILE = ".lock"
# 2: per-file SHA-256 in resume.json and a data-only RNG file. Format-1 checkpoints
# cannot be checked or loaded without a full unpickler; they are discarded.
FORMAT = 2
# Spec fields that say where things go, how often state is saved and what the run is
# called, not what is trained; the inputs' paths are replaced by their content ids.
_SPEC_NOT_IN_KEY = {
    "run_name",
    "output_dir",
    "state_dir",
    "checkpoint_every",
    "keep_checkpoints",
    "policy_path",
    "reference_path",
    "train_table",
    "state_uri",
}


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete, damaged or saved for other inputs."""


@dataclass
class Progress:
    """How far training got: optimizer steps done, their records, seconds spent."""

    step: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    resumed_from: int | None = None


# ------------------------------------------------------------------------- identity


def resume_key(spec: TrainSpec) -> str:
    """A hash of what decides the trained weights: the content of the policy, reference
    and training table (their commit hashes; a plain path stands for itself), the
    training config (less its throughput-only fields, by the rule the train stage's
    fingerprint uses: `pipeline.fingerprints.training_identity`), the added tokens and
    the seed."""
    from alt_core.pipeline.fingerprints import content_id, training_identity

    fields = spec.model_dump(mode="json", exclude=_SPEC_NOT_IN_KEY)
    fields["training"] = training_identity(spec.training)
    paths = {
        "policy": spec.policy_path,
        "reference": spec.reference_path,
        "train_table": spec.train_table,
    }
    inputs = {name: content_id(path) for name, path in paths.items() if path}
    blob = json.dumps({"spec": fields, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finished_summary(spec: TrainSpec, key: str | None = None) -> dict[str, Any] | None:
    """The saved summary when `spec.output_dir` already holds the final model of this very
    training (same resume key), else None. The metrics file is written after the model,
    so its presence means the model was complete."""
    path = Path(spec.output_dir) / METRICS_FILE
    if not any(path.parent.glob("*.safetensors")):
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or "summary" not in metrics:
        return None
    if metrics.get("resume_key") != (key or resume_key(spec)):
        return None
    return metrics["summary"]


# --------------------------------------------------------------------------- reading


def checkpoint_path(state_dir: Path, step: int) -> Path:
    return state_dir / f"{PREFIX}{step:08d}"


def _step_of(path: Path) -> int | None:
    digits = path.name[len(PREFIX) :]
    return int(digits) if path.name.startswith(PREFIX) and digits.isdigit() else None


def read_checkpoint(path: Path, key: str) -> dict[str, Any]:
    """The resume record of the complete checkpoint `path` saved for `key`; raises
    CheckpointError naming what is wrong otherwise."""
    try:
        record = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no {STATE_FILE}: the save did not finish") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"unreadable {STATE_FILE}: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{STATE_FILE} is not a format-{FORMAT} resume record")
    if record.get("resume_key") != key:
        raise CheckpointError(
            f"saved for other inputs or settings (key {record.get('resume_key')}, now {key})"
        )
    if record.get("step") != _step_of(path):
        raise CheckpointError(f"records step {record.get('step')} but is named {path.name}")
    files = record.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(f, dict) and isinstance(f.get("bytes"), int) for f in files.values()
    ):
        raise CheckpointError(f"{STATE_FILE} lists no files")
    for rel, saved in files.items():
        try:
            actual = (path / rel).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise CheckpointError(f"file {rel} is missing") from None
        if actual != saved["bytes"]:
            raise CheckpointError(f"file {rel} has {actual} bytes, {saved['bytes']} were saved")
    # Accelerate and DeepSpeed load some files only if they exist (custom objects, a
    # sampler, a scaler): a file the save did not write is never loaded. (The store's
    # manifest of a fetched copy is JSON that only the store reads.)
    extra = sorted(set(_files_of(path)) - set(files) - {STATE_FILE, store.DIR_COMMIT})
    if extra:
        raise CheckpointError(f"file {extra[0]} was not saved with this checkpoint")
    return record


def verify_checkpoint(path: Path, record: dict[str, Any]) -> None:
    """Check every file of the checkpoint `path` against the SHA-256 its save recorded
    (`record` from `read_checkpoint`); raises CheckpointError naming the first that
    differs. Reads every byte: done only for the checkpoint about to be loaded."""
    for rel, saved in record["files"].items():
        if _sha256(path / rel) != saved.get("sha256"):
            raise CheckpointError(
                f"file {rel} does not match the SHA-256 recorded when it was saved"
            )


def _files_of(folder: Path) -> list[str]:
    """Every file under `folder` (symlinks included), relative to it."""
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()
    )


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def usable_checkpoints(
    state_dir: Path, key: str, log: Callable[[str], None]
) -> list[tuple[Path, dict[str, Any]]]:
    """Complete checkpoints for `key`, newest first. Everything else in `state_dir` of
    ours (unfinished saves, damaged checkpoints, state of other inputs) is removed, with
    a line to `log` saying why. Call on one process only."""
    if not state_dir.is_dir():
        return []
    usable = []
    for path in sorted(state_dir.iterdir(), reverse=True):
        if path.name.startswith(TMP_PREFIX) or ".tmp-" in path.name:
            log(f"removing {path}: a checkpoint whose save or download was interrupted")
            shutil.rmtree(path, ignore_errors=True)
        elif _step_of(path) is not None:
            try:
                usable.append((path, read_checkpoint(path, key)))
            except CheckpointError as exc:
                log(f"skipping and removing checkpoint {path}: {exc}")
                shutil.rmtree(path, ignore_errors=True)
    return usable


# ------------------------------------------------------------ the run store's copy


def mirror_checkpoint(path: Path, state_uri: str, keep: int) -> str:
    """Copy the complete local checkpoint `path` into the run store under `state_uri`,
    committed with a hash manifest, then drop the store's checkpoints beyond the newest
    `keep` (and any copy that a kill left uncommitted). Returns the copy's URI."""
    uri = store.put_dir(path, store.join(state_uri, path.name), meta={"step": _step_of(path)})
    names = _stored_names(state_uri)
    kept = _committed_newest_first(state_uri, names)[:keep]
    for name in names:
        if name not in kept:
            store.remove(store.join(state_uri, name))
    return uri


def stored_checkpoints(state_uri: str) -> list[str]:
    """Names of the committed checkpoint copies under `state_uri`, newest first."""
    return _committed_newest_first(state_uri, _stored_names(state_uri))


def _stored_names(state_uri: str) -> list[str]:
    """Names of the checkpoint folders under `state_uri`, committed or not."""
    return [n for n in store.list_names(state_uri) if _step_of(Path(n)) is not None]


def _committed_newest_first(state_uri: str, names: list[str]) -> list[str]:
    committed = [n for n in names if store.dir_committed(store.join(state_uri, n))]
    return sorted(committed, reverse=True)


def fetch_newer_checkpoint(
    state_dir: Path, state_uri: str, local_step: int, log: Callable[[str], None]
) -> Path | None:
    """Download the newest checkpoint copy in the run store that is newer than
    `local_step` (the newest usable local one, 0 for none) into `state_dir`: a training
    restarted on another machine, or after its scratch disk was lost, continues from the
    store. A copy that fails its hash check is skipped for the next older one."""
    for name in stored_checkpoints(state_uri):
        step = _step_of(Path(name))
        if step is None or step <= local_step:
            return None
        uri = store.join(state_uri, name)
        try:
            started = time.time()
            path = store.get_dir(uri, checkpoint_path(state_dir, step))
        except store.ArtifactError as exc:
            log(f"cannot fetch the stored checkpoint {uri}: {exc}; trying an older one")
            continue
        log(f"fetched the training state of step {step} from {uri} ({time.time() - started:.1f} s)")
        return path
    return None


# --------------------------------------------------------------------------- writing


def rng_states() -> dict[str, Any]:
    """This process's RNG states as ints, floats, tuples and tensors only, so that
    `torch.load(weights_only=True)` reads them back without an allow-list: numpy's key
    (a uint32 array) travels as an int64 tensor."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (
            str(kind),
            torch.from_numpy(np.asarray(key).astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _fsync(path: Path) -> None:
    """Flush `path` (a file or a folder's entries) to disk: a rename is only as durable
    as what it points to."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        _fsync(path)
    manifest = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
    }
    target = folder / STATE_FILE
    with open(target, "w") as fh:
        json.dump({**record, "format": FORMAT, "files": manifest}, fh, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync(folder)


def prune(state_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` checkpoints; returns those removed."""
    steps = sorted((p for p in state_dir.iterdir() if _step_of(p) is not None), reverse=True)
    for old in steps[keep:]:
        shutil.rmtree(old)
    return steps[keep:]


def save_checkpoint(
    accelerator: Any,
    dist: Dist,
    state_dir: Path,
    record: dict[str, Any],
    keep: int,
    state_uri: str | None = None,
) -> Path:
    """Save the full training state of step `record["step"]` on every process, then
    commit it by renaming its folder (rank 0) and, with `state_uri`, copy it into the
    run store. Every process must call this."""
    final = checkpoint_path(state_dir, record["step"])
    tmp = state_dir / f"{TMP_PREFIX}{record['step']:08d}"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # the leftover of a save that was killed
        tmp.mkdir(parents=True)
    dist.barrier()
    accelerator.save_state(str(tmp))
    torch.save(rng_states(), tmp / RNG_FILE.format(rank=dist.rank))
    dist.barrier()
    if dist.is_main:
        _write_record(tmp, record)
        if final.exists():  # a damaged checkpoint of the same step, skipped on resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(state_dir)
        if state_uri:
            mirror_checkpoint(final, state_uri, keep)
        prune(state_dir, keep)
    dist.barrier()
    return final


def load_checkpoint(accelerator: Any, dist: Dist, path: Path) -> None:
    """Restore model, optimizer, schedule and this process's RNG states from `path`,
    unpickling data only (`data_only_loads`); raises CheckpointError when a file holds
    anything else."""
    try:
        with data_only_loads():
            accelerator.load_state(str(path))
            # Ours last: Accelerate restored one process's RNG states on all of them.
            set_rng_states(torch.load(path / RNG_FILE.format(rank=dist.rank), weights_only=True))
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"refused to unpickle {unsafe_files(path, _files_of(path))}: a checkpoint holds "
            "tensors and plain data only, and loading one never runs code from it (the "
            "classes allowed are alt_core.training.safe_load.allowed_classes)"
        ) from None


@contextmanager
def state_lock(state_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `state_dir` while training, so two trainings never write
    the same state (say, a worker left running by a killed parent, and its replacement).
    The OS releases the lock when its holder dies, SIGKILL included."""
    if not enabled:
        yield
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise TrainingError(
                f"another training (pid {holder}) is using the state folder {state_dir}; "
                "wait for it to finish or stop it, then run again"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------ one run's state


@dataclass
class Checkpointer:
    """Where and how often one training run saves its state, and how it resumes."""

    accelerator: Any
    dist: Dist
    state_dir: Path
    key: str  # which inputs the saved state belongs to (`resume_key`)
    every: int  # optimizer steps between saves; 0: only after the last step
    keep: int
    total_steps: int
    steps_per_epoch: int
    say: Callable[[str], None]
    state_uri: str | None = None  # the run store's copy of the state (`TrainSpec.state_uri`)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, step within the epoch) of the update after `step` updates."""
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        return epoch, step_in_epoch

    def save_if_due(self, records: list[dict[str, Any]], seconds: float) -> Path | None:
        """Save the full state every `every` steps and after the last step; every
        process calls this after every optimizer step."""
        step = len(records)
        if step != self.total_steps and not (self.every and step % self.every == 0):
            return None
        epoch, step_in_epoch = self.position(step)
        record = {
            "resume_key": self.key,
            "step": step,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "num_processes": self.dist.world,
            "train_seconds": seconds,
            "records": records,
        }
        started = time.time()
        path = save_checkpoint(
            self.accelerator, self.dist, self.state_dir, record, self.keep, self.state_uri
        )
        self.say(
            f"saved the training state of step {step} in {path} ({time.time() - started:.1f} s)"
        )
        return path

    def resume(self) -> Progress:
        """Load the newest complete checkpoint of these inputs, if there is one (an older
        one where the newest does not load) and say where training stands."""
        found = self._usable() if self.dist.is_main else []
        found = self.dist.broadcast(found)
        tried = False  # a checkpoint that failed its hashes is removed, not tried
        for path, record in found:
            self._check_shape(path, record)
            problem = self._tampered(path, record)
            if problem:
                self.say(f"skipping and removing checkpoint {path}: {problem}")
                continue
            tried, failed = True, torch.zeros(1)
            try:
                load_checkpoint(self.accelerator, self.dist, path)
            except Exception as exc:  # passed its hashes but does not load: try an older one
                self.say(f"rank {self.dist.rank}: cannot load {path}: {type(exc).__name__}: {exc}")
                failed += 1
            if self.dist.sum(failed).item() == 0:
                return self._resumed(path, record)
            self.say(f"checkpoint {path} did not load; falling back to an older one")
        if tried:
            raise TrainingError(
                f"no checkpoint in {self.state_dir} could be loaded (see the lines above); "
                "delete that folder to train from the start"
            )
        return Progress()

    def _tampered(self, path: Path, record: dict[str, Any]) -> str | None:
        """Why the files of `path` differ from the hashes its save recorded (checked on
        the main process, the removal included), or None when they match."""
        problem = None
        if self.dist.is_main:
            try:
                verify_checkpoint(path, record)
            except (CheckpointError, OSError) as exc:
                problem = str(exc)
                shutil.rmtree(path, ignore_errors=True)
        return self.dist.broadcast(problem)

    def _usable(self) -> list[tuple[Path, dict[str, Any]]]:
        found = usable_checkpoints(self.state_dir, self.key, self.say)
        newest = found[0][1]["step"] if found else 0
        if self.state_uri and fetch_newer_checkpoint(
            self.state_dir, self.state_uri, newest, self.say
        ):
            found = usable_checkpoints(self.state_dir, self.key, self.say)
        return found

    def _check_shape(self, path: Path, record: dict[str, Any]) -> None:
        saved = (record["total_steps"], record["steps_per_epoch"])
        if saved != (self.total_steps, self.steps_per_epoch):
            raise TrainingError(
                f"checkpoint {path} was saved for {saved[0]} steps of {saved[1]} per epoch, "
                f"this run has {self.total_steps} of {self.steps_per_epoch}; delete "
                f"{self.state_dir} to train from the start"
            )

    def _resumed(self, path: Path, record: dict[str, Any]) -> Progress:
        step = record["step"]
        done = "; every step was done, writing the final model" if step == self.total_steps else ""
        self.say(
            f"resuming after step {step}/{self.total_steps} (epoch {record['epoch']}, step "
            f"{record['step_in_epoch']} of the epoch) from {path}{done}"
        )
        return Progress(step, record["records"], record["train_seconds"], resumed_from=step)
