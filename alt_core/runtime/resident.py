"""What a kept worker keeps between its jobs (the child's side of `runtime.workers`).

A job asks for what it loads through `keep(key, load)`: in a kept worker the value is
loaded once and served to every later job that asks with the same key (a reference
model, a reward model, a toxicity classifier); in a one-off job process `keep` just
loads it. The sampling engine keeps its own state (`sampling.engines`), registered
here so that it sleeps between jobs and closes with the worker.

Between jobs, on a GPU, what holds device memory goes to sleep (`between_jobs`): a kept
vLLM engine through vLLM's sleep mode, a kept torch model by moving to host memory, so
a training that runs on the same GPU meanwhile gets the memory. It wakes when a job asks
for it again. On the CPU nothing sleeps.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Kept:
    value: Any
    sleep: Callable[[], None] | None = None
    wake: Callable[[], None] | None = None
    close: Callable[[], None] | None = None
    asleep: bool = False


_STATE = {"serving": False}
_KEPT: dict[tuple[Any, ...], Kept] = {}
_LOCK = threading.Lock()


def serving() -> bool:
    """Whether this process is a kept worker (jobs after this one will follow)."""
    return _STATE["serving"]


def start_serving() -> None:
    _STATE["serving"] = True


def keep(
    key: tuple[Any, ...],
    load: Callable[[], T],
    *,
    sleep: Callable[[T], None] | None = None,
    wake: Callable[[T], None] | None = None,
    close: Callable[[T], None] | None = None,
) -> T:
    """`load()`, once per key in a kept worker (woken if it sleeps); every call in a
    one-off job process."""
    if not serving():
        return load()
    with _LOCK:
        kept = _KEPT.get(key)
        if kept is None:
            value = load()
            kept = _KEPT[key] = Kept(
                value,
                sleep=(lambda: sleep(value)) if sleep else None,
                wake=(lambda: wake(value)) if wake else None,
                close=(lambda: close(value)) if close else None,
            )
        elif kept.asleep:
            if kept.wake is not None:
                kept.wake()
            kept.asleep = False
        return kept.value


def put(key: tuple[Any, ...], kept: Kept) -> None:
    """Register something a job manages itself (the sampling engine), so that it sleeps
    between jobs and closes with the worker."""
    with _LOCK:
        _KEPT[key] = kept


def forget(key: tuple[Any, ...]) -> None:
    """Unregister without closing (what `put` registered closed itself)."""
    with _LOCK:
        _KEPT.pop(key, None)


def drop(key: tuple[Any, ...]) -> None:
    with _LOCK:
        kept = _KEPT.pop(key, None)
    if kept is not None and kept.close is not None:
        kept.close()


def between_jobs() -> None:
    """After a job of a kept worker: on a GPU, put what holds device memory to sleep."""
    if not _on_gpu():
        return
    with _LOCK:
        items = [k for k in _KEPT.values() if k.sleep is not None and not k.asleep]
    for kept in items:
        assert kept.sleep is not None
        kept.sleep()
        kept.asleep = True


def close() -> None:
    """The worker is exiting: close what it kept (an engine shuts down its processes)."""
    with _LOCK:
        items = list(_KEPT.values())
        _KEPT.clear()
    for kept in items:
        if kept.close is not None:
            kept.close()


def weights_id(model_path: str) -> str:
    """Which weights a model folder holds (part of a kept model's key): the SHA-256s
    its commit record lists for its safetensors, else their names, sizes and
    modification times; a hub name stands for itself."""
    root = Path(model_path)
    if not root.is_dir():
        return f"ref:{model_path}"
    commit = root / "_COMMIT.json"
    if commit.is_file():
        files = json.loads(commit.read_text()).get("files", {})
        picked = {k: v for k, v in sorted(files.items()) if "safetensors" in k}
        if picked:
            return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()
    stats = [
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.glob("*safetensors*"))
    ]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def model_to_host(model: Any) -> None:
    """A kept torch model's sleep: its weights to host memory, the GPU's cache freed."""
    import torch

    model.to("cpu")
    torch.cuda.empty_cache()


def model_to_device(model: Any) -> None:
    model.to("cuda")


def _on_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def kept_model(kind: str, model_path: str, load: Callable[[], T]) -> T:
    """`keep` for a torch model (or a tuple holding one, e.g. with its tokenizer) loaded
    from a folder: keyed by its weights, moved to host memory while it sleeps on a GPU."""

    def models(value: Any) -> list[Any]:
        items = value if isinstance(value, tuple) else (value,)
        return [v for v in items if hasattr(v, "parameters")]

    def sleep(value: Any) -> None:
        for model in models(value):
            model_to_host(model)

    def wake(value: Any) -> None:
        for model in models(value):
            model_to_device(model)

    return keep((kind, model_path, weights_id(model_path)), load, sleep=sleep, wake=wake)
