"""Prompt sets: load the train / validation prompts of a run and draw each iteration's.

Three sources (config `data.source`): the built-in demo prompts, prompt files (Parquet,
JSONL or CSV, local or any fsspec URI) and `datasets.load_dataset`. Nested fields are
addressed by dotted paths (`prompt.text` in the allenai/real-toxicity-prompts layout,
whose rows are {"prompt": {"text", "toxicity", ...}, "challenging", ...}), and the rows
can be filtered before use: `data.challenging_only` (RealToxicityPrompts' challenging
subset), `data.prompt_toxicity_range` (the prompt's own toxicity), and a held-out
validation share of a single split (`data.holdout_share`, by a hash of the prompt text,
so the split does not move when the filters change). Whatever the source,
the result is a table with `prompt_id` (the row index in the split, so ids are stable
across runs) and `prompt`, validated up front: a bad file fails here with a `DataError`
that names the file and the fix, not halfway through sampling.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import fsspec
import numpy as np
import pandas as pd

from alt_core.config import RunConfig

if TYPE_CHECKING:
    from alt_core.tasks.demo.assets import DemoAssets

Split = Literal["train", "valid"]
# Compression suffixes pandas / fsspec undo on the fly ("prompts.jsonl.gz").
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".json": "json",
           ".csv": "csv"}  # fmt: skip


# Where an Anthropic HH dialogue hands the turn to the assistant.
HH_ASSISTANT = "\n\nAssistant:"


class DataError(ValueError):
    """Prompts that cannot be used; the message names the source and the fix."""


def load_prompts(
    config: RunConfig, split: Split, demo_assets: DemoAssets | None = None
) -> pd.DataFrame:
    """The prompts of one split as a table (prompt_id, prompt).

    `demo_assets` saves rebuilding / re-checking the demo cache when the caller already
    has it; without it the demo source calls `ensure_demo_assets` (cached).
    """
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    data = config.data
    if data.source == "demo":
        # The demo tables are ours: their column is always "prompt".
        table, where = _demo_prompts(config, split, demo_assets), "the demo prompt table"
        column = "prompt"
    elif data.source == "file":
        # With a held-out share, both splits come from the train file.
        path = data.train_path if split == "train" or data.holdout_share else data.valid_path
        if not path:
            raise DataError(f"data.source=file needs data.{split}_path")
        table, where, column = flatten_columns(read_prompt_file(path)), path, data.prompt_column
    elif data.source == "hf":
        table, where = _hf_prompts(config, split), f"dataset {data.hf_dataset!r}"
        column = data.prompt_column
    else:  # the config's Literal makes this unreachable unless a source is added there only
        raise DataError(f"unknown data.source {data.source!r}; use demo, file or hf")
    if data.source != "demo":
        table = filter_rows(table, config, where)
        if data.holdout_share:
            table = holdout_split(table, column, data.holdout_share, split)
    if split == "valid" and data.num_valid_prompts is not None:
        table = table.iloc[: data.num_valid_prompts]
    where = f"{where} ({split} split)"
    if data.prompt_format == "hh_dialogue":
        table = dialogue_prompts(table, column, where)
    return validate_prompts(table, column, where)


def dialogue_prompts(table: pd.DataFrame, column: str, where: str) -> pd.DataFrame:
    """Cut every dialogue of `column` after its last assistant marker: the prompt is the
    conversation so far, ending where the assistant's last reply begins."""
    if column not in table.columns:
        return table  # validate_prompts names the missing column
    text = table[column]
    is_text = text.map(lambda v: isinstance(v, str)).astype(bool)
    parts = text.where(is_text, "").astype(str).str.rpartition(HH_ASSISTANT)
    bad = parts[1].eq("")
    if bad.any():
        rows = [int(i) for i in np.flatnonzero(bad.to_numpy())[:5]]
        raise DataError(
            f"{where}: {int(bad.sum())} of {len(text)} rows in column {column!r} are not HH "
            f"dialogues (no {HH_ASSISTANT!r} turn; first rows: {rows}). Set "
            f"data.prompt_format=text if the column holds plain prompts, or drop those rows"
        )
    return table.assign(**{column: parts[0] + parts[1]})


def flatten_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Columns holding dicts (a nested JSON field) become dotted columns: `prompt` holding
    {"text": ..., "toxicity": ...} becomes `prompt.text` and `prompt.toxicity`."""
    for col in list(table.columns):
        values = table[col]
        if values.dtype == object and values.map(lambda v: isinstance(v, dict)).any():
            nested = pd.json_normalize(
                values.map(lambda v: v if isinstance(v, dict) else {}).tolist()
            )
            nested.index = table.index
            nested.columns = [f"{col}.{c}" for c in nested.columns]
            table = table.drop(columns=[col]).join(nested)
    return table


def filter_rows(table: pd.DataFrame, config: RunConfig, where: str) -> pd.DataFrame:
    """The rows `data.challenging_only` and `data.prompt_toxicity_range` keep."""
    data = config.data
    if not data.challenging_only and data.prompt_toxicity_range is None:
        return table
    if data.challenging_only:
        if "challenging" not in table.columns:
            raise DataError(
                f"{where} has no column 'challenging' for data.challenging_only; its columns "
                f"are {list(table.columns)}"
            )
        table = table[table["challenging"].fillna(False).astype(bool)]
    if data.prompt_toxicity_range is not None:
        col = data.toxicity_column
        if col not in table.columns:
            raise DataError(
                f"{where} has no column {col!r} for data.prompt_toxicity_range; its columns "
                f"are {list(table.columns)}. Set data.toxicity_column"
            )
        low, high = data.prompt_toxicity_range
        tox = pd.to_numeric(table[col], errors="coerce")
        table = table[tox.between(low, high)]
    if table.empty:
        raise DataError(
            f"{where}: no rows are left after the filters (data.challenging_only="
            f"{data.challenging_only}, data.prompt_toxicity_range={data.prompt_toxicity_range}); "
            f"widen them"
        )
    return table


def holdout_split(table: pd.DataFrame, column: str, share: float, split: Split) -> pd.DataFrame:
    """The train or held-out rows of one table: a row is held out when a hash of its
    prompt text falls in the first `share` of the hash range (stable across runs)."""
    if column not in table.columns:
        return table  # validate_prompts names the missing column
    held = table[column].map(lambda v: _unit_hash(str(v)) < share).astype(bool)
    return table[held if split == "valid" else ~held]


def _unit_hash(text: str) -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def validate_prompts(table: pd.DataFrame, column: str, where: str) -> pd.DataFrame:
    """Check the prompt column and return (prompt_id, prompt) with ids = row positions."""
    if column not in table.columns:
        raise DataError(
            f"{where} has no column {column!r}; its columns are {list(table.columns)}. "
            f"Set data.prompt_column to the column that holds the prompts."
        )
    prompts = table[column].reset_index(drop=True)
    if prompts.empty:
        raise DataError(f"{where} holds no prompts; point the config at a non-empty prompt set")
    is_text = prompts.map(lambda v: isinstance(v, str)).astype(bool)
    bad = ~is_text | prompts.where(is_text, "").astype(str).str.strip().eq("")
    if bad.any():
        rows = [int(i) for i in prompts.index[bad][:5]]
        raise DataError(
            f"{where}: {int(bad.sum())} of {len(prompts)} prompts in column {column!r} are "
            f"missing, not text, or blank (first rows: {rows}); drop or fill those rows"
        )
    return pd.DataFrame({"prompt_id": np.arange(len(prompts)), "prompt": prompts.astype(object)})


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).rstrip('.')}"


def _format_of(path: str) -> str:
    name = path.lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise DataError(
        f"cannot tell the format of prompt file {path}: name it *.parquet, *.jsonl or *.csv "
        f"(optionally compressed, e.g. *.jsonl.gz)"
    )


def _read_json(fh: Any) -> pd.DataFrame:
    """A .json file may hold records (a list) or JSON lines; try records first."""
    raw = fh.read()
    try:
        return pd.read_json(_text_io(raw), dtype=False)
    except ValueError:
        return pd.read_json(_text_io(raw), lines=True, dtype=False)


def _text_io(raw: bytes) -> io.StringIO:
    return io.StringIO(raw.decode("utf-8"))


# dtype=False / dtype=str keep prompts such as "42" as text instead of numbers.
READERS: dict[str, Callable[[Any], pd.DataFrame]] = {
    "parquet": pd.read_parquet,
    "jsonl": lambda fh: pd.read_json(fh, lines=True, dtype=False),
    "json": _read_json,
    "csv": lambda fh: pd.read_csv(fh, dtype=str, keep_default_na=False),
}


def read_prompt_file(path: str) -> pd.DataFrame:
    """Read a Parquet / JSONL / CSV file (local path or fsspec URI) into a table."""
    fmt = _format_of(path)
    fs, fs_path = fsspec.core.url_to_fs(path)
    try:
        found = fs.exists(fs_path)
    except OSError as exc:
        raise DataError(f"cannot reach prompt file {path}: {exc}") from exc
    if not found:
        raise DataError(f"prompt file not found: {path}; check data.train_path / data.valid_path")
    try:
        with fsspec.open(path, "rb", compression="infer") as fh:
            return READERS[fmt](fh)
    except Exception as exc:  # every reader has its own error types; name the file once
        raise DataError(
            f"cannot read prompt file {path} as {fmt}: {_reason(exc)}. "
            f"Check that the file is valid {fmt} (one JSON object per line for JSONL)"
        ) from exc


def _demo_prompts(config: RunConfig, split: Split, assets: DemoAssets | None) -> pd.DataFrame:
    from alt_core import store
    from alt_core.tasks.demo.assets import ensure_demo_assets

    if assets is None:
        assets = ensure_demo_assets(
            config.storage.cache_dir,
            config.data.demo_num_train,
            config.data.demo_num_valid,
            config.seed,
        )
    uri = assets.train_prompts_uri if split == "train" else assets.valid_prompts_uri
    return store.read_table(uri)


def _hf_prompts(config: RunConfig, split: Split) -> pd.DataFrame:
    """One split of a `datasets` data set: a hub name, a local data folder, or a folder
    written by `save_to_disk`."""
    import datasets

    name = config.data.hf_dataset
    train = split == "train" or config.data.holdout_share
    split_name = config.data.train_split if train else config.data.valid_split
    try:
        if _is_saved_dataset(name):
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[split_name]
        else:
            loaded = datasets.load_dataset(name, split=split_name)
    except Exception as exc:  # hub, file and split errors come in many types
        raise DataError(
            f"cannot load split {split_name!r} of dataset {name!r}: {_reason(exc)}. "
            f"Check data.hf_dataset and data.{split}_split (a single local file belongs in "
            f"data.source=file)"
        ) from exc
    column = config.data.prompt_column
    if "." in column and column not in loaded.column_names:
        loaded = loaded.flatten()  # prompt.text: the nested field as a column
    if column not in loaded.column_names:
        raise DataError(
            f"dataset {name!r} split {split_name!r} has no column {column!r}; its columns are "
            f"{loaded.column_names}. Set data.prompt_column to the column that holds the prompts."
        )
    wanted = [column, "challenging", config.data.toxicity_column]
    return loaded.select_columns([c for c in wanted if c in loaded.column_names]).to_pandas()


def _is_saved_dataset(name: str | None) -> bool:
    """Whether `name` is a local folder written by Dataset(Dict).save_to_disk."""
    if not name:
        return False
    folder = Path(name)
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def draw_prompts(prompts: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` rows drawn uniformly with replacement, deterministic in `seed`."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if prompts.empty:
        raise DataError("cannot draw prompts from an empty prompt table")
    rows = np.random.default_rng(seed).integers(0, len(prompts), size=n)
    return prompts.iloc[rows].reset_index(drop=True)
