"""Loading a checkpoint without running code from it.

A training checkpoint is data: tensors, containers, numbers and a few DeepSpeed classes
rebuilt by setting attributes. DeepSpeed's checkpoint engine and Accelerate's
custom-object loader ask torch for full pickles; `data_only_loads` makes every
`torch.load` in the process weights-only for the duration of a load, with an explicit
allow-list, so a planted pickle fails to load instead of running. See docs/operating.md,
"What a run folder must be trusted with".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def unsafe_files(folder: Path, files: list[str]) -> str:
    """Which files of `folder` name classes or functions outside the allow-list, and
    which: read from the pickle opcodes, without unpickling anything."""
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in allowed_classes()}
    found = []
    for rel in files:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(folder / rel)
        except Exception:  # not a torch file (JSON, text, a script): never unpickled
            continue
        # numpy's array types: allowed by Accelerate's loader for its RNG file.
        unsafe = [n for n in names if n not in allowed and not n.startswith("numpy.")]
        if unsafe:
            found.append(f"{rel} (it names {', '.join(unsafe)})")
    return "; ".join(found) or f"a file of {folder}"


def allowed_classes() -> list[Any]:
    """The classes a checkpoint may hold besides tensors, containers and numbers: what
    DeepSpeed's ZeRO optimizer state pickles. Each is rebuilt by setting attributes on an
    instance made without calling `__init__` (enums by value), none runs code of its own
    there. numpy's array types for Accelerate's RNG file are added by Accelerate's own
    loader. Imported here, not at module level: DeepSpeed is loaded by then."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


# The torch switch that makes every torch.load weights-only, even one that asks for
# a full unpickler, and the one that would do the opposite.
_FORCE_SAFE, _FORCE_UNSAFE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def data_only_loads(allowed: list[Any] | None = None) -> Iterator[None]:
    """Within: every `torch.load` in this process uses torch's weights-only unpickler
    with `allowed` (default: `allowed_classes()`) added to its allow-list, whatever its
    caller passed for `weights_only`. DeepSpeed's checkpoint engine and Accelerate's
    custom-object loader ask for full pickles; a checkpoint is data, so they get none.
    A file that needs anything else fails with pickle.UnpicklingError, naming it."""
    saved = {name: os.environ.pop(name, None) for name in (_FORCE_SAFE, _FORCE_UNSAFE)}
    os.environ[_FORCE_SAFE] = "1"
    try:
        with torch.serialization.safe_globals(allowed_classes() if allowed is None else allowed):
            yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
