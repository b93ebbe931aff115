"""Prompt loading from every source, its validation errors, and prompt drawing."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from alt_core import data, store
from alt_core.config import RunConfig
from alt_core.data import DataError, draw_prompts, load_prompts
from alt_core.tasks.demo.assets import DemoAssets

TRAIN = ["Review of the hotel: The room was", "My new phone is", "The soup was", "42"]
VALID = ["The film was", "This book", "The coffee was"]


def file_config(train: str, valid: str, **data_overrides) -> RunConfig:
    return RunConfig.model_validate(
        {
            "model": {"policy": "some/model"},
            "feedback": {"provider": "sentiment"},
            "data": {"source": "file", "train_path": train, "valid_path": valid,
                     **data_overrides},
        }
    )  # fmt: skip


def write(path: Path, prompts: list, column: str = "prompt") -> str:
    """Write a prompt file in the format its suffix names; returns its path."""
    frame = pd.DataFrame({column: prompts, "other": range(len(prompts))})
    name = path.name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    elif name.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(frame.to_json(orient="records", lines=True))
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    elif name.endswith(".json"):
        path.write_text(json.dumps(frame.to_dict("records")))
    return str(path)


# --- file --------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv", ".jsonl.gz", ".json"])
def test_file_source_reads_each_format(tmp_path, suffix):
    config = file_config(
        write(tmp_path / f"train{suffix}", TRAIN), write(tmp_path / f"valid{suffix}", VALID)
    )
    train = load_prompts(config, "train")
    assert list(train.columns) == ["prompt_id", "prompt"]
    assert train["prompt"].tolist() == TRAIN  # "42" stays text, in every format
    assert train["prompt_id"].tolist() == [0, 1, 2, 3]
    assert load_prompts(config, "valid")["prompt"].tolist() == VALID


def test_file_source_with_custom_column_and_valid_limit(tmp_path):
    config = file_config(
        write(tmp_path / "t.jsonl", TRAIN, column="text"),
        write(tmp_path / "v.jsonl", VALID, column="text"),
        prompt_column="text",
        num_valid_prompts=2,
    )
    assert load_prompts(config, "valid")["prompt"].tolist() == VALID[:2]
    assert len(load_prompts(config, "train")) == len(TRAIN)  # the limit is for valid only


def test_file_source_reads_fsspec_uris(tmp_path):
    with fsspec.open("memory://prompts-test/train.jsonl", "w") as fh:
        fh.write("".join(json.dumps({"prompt": p}) + "\n" for p in TRAIN))
    local_valid = write(tmp_path / "valid.csv", VALID)
    config = file_config("memory://prompts-test/train.jsonl", f"file://{local_valid}")
    assert load_prompts(config, "train")["prompt"].tolist() == TRAIN
    assert load_prompts(config, "valid")["prompt"].tolist() == VALID


def test_missing_file_is_named(tmp_path):
    valid = write(tmp_path / "v.csv", VALID)
    config = file_config(str(tmp_path / "nope.parquet"), valid)
    with pytest.raises(DataError, match=r"not found: .*nope\.parquet"):
        load_prompts(config, "train")


@pytest.mark.parametrize(
    ("name", "content"),
    [("bad.jsonl", b'{"prompt": "a"}\n{not json\n'), ("bad.parquet", b"definitely not parquet"),
     ("bad.csv", b'prompt\n"unterminated\n')],
)  # fmt: skip
def test_malformed_file_is_a_data_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    config = file_config(str(tmp_path / name), write(tmp_path / "v.csv", VALID))
    with pytest.raises(DataError, match=rf"cannot read prompt file .*{name}"):
        load_prompts(config, "train")


def test_unknown_suffix_is_a_data_error(tmp_path):
    (tmp_path / "prompts.txt").write_text("hello\n")
    config = file_config(str(tmp_path / "prompts.txt"), write(tmp_path / "v.csv", VALID))
    with pytest.raises(DataError, match=r"\*\.parquet, \*\.jsonl or \*\.csv"):
        load_prompts(config, "train")


def test_missing_column_names_the_columns_present(tmp_path):
    config = file_config(
        write(tmp_path / "t.csv", TRAIN, column="text"), write(tmp_path / "v.csv", VALID)
    )
    with pytest.raises(DataError, match=r"no column 'prompt'.*\['text', 'other'\].*prompt_column"):
        load_prompts(config, "train")


def test_empty_prompt_set_is_a_data_error(tmp_path):
    (tmp_path / "empty.csv").write_text("prompt,other\n")
    config = file_config(str(tmp_path / "empty.csv"), write(tmp_path / "v.csv", VALID))
    with pytest.raises(DataError, match="holds no prompts"):
        load_prompts(config, "train")


@pytest.mark.parametrize("bad", [None, "   ", 7, ""])
def test_blank_or_non_text_prompts_are_a_data_error(tmp_path, bad):
    path = tmp_path / "t.jsonl"
    rows = [{"prompt": "fine"}, {"prompt": bad}, {"prompt": "also fine"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = file_config(str(path), write(tmp_path / "v.csv", VALID))
    with pytest.raises(DataError, match=r"1 of 3 prompts .* \(first rows: \[1\]\)"):
        load_prompts(config, "train")


def test_blank_csv_cell_is_a_data_error(tmp_path):
    (tmp_path / "t.csv").write_text('prompt\nfine\n""\nok\n')
    config = file_config(str(tmp_path / "t.csv"), write(tmp_path / "v.csv", VALID))
    with pytest.raises(DataError, match="missing, not text, or blank"):
        load_prompts(config, "train")


# --- hf ----------------------------------------------------------------------------------


def hf_config(dataset: str, **data_overrides) -> RunConfig:
    return RunConfig.model_validate(
        {"model": {"policy": "some/model"}, "feedback": {"provider": "sentiment"},
         "data": {"source": "hf", "hf_dataset": dataset, **data_overrides}}
    )  # fmt: skip


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_hf_source_loads_a_local_data_folder(tmp_path, hf_cache):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", TRAIN)
    write(folder / "test.jsonl", VALID)
    config = hf_config(str(folder), valid_split="test", num_valid_prompts=1)
    assert load_prompts(config, "train")["prompt"].tolist() == TRAIN
    assert load_prompts(config, "valid")["prompt"].tolist() == VALID[:1]


def test_hf_source_loads_a_saved_dataset(tmp_path, hf_cache):
    import datasets

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"query": TRAIN}),
         "valid": datasets.Dataset.from_dict({"query": VALID})}
    )  # fmt: skip
    dd.save_to_disk(str(tmp_path / "saved"))
    config = hf_config(str(tmp_path / "saved"), prompt_column="query")
    valid = load_prompts(config, "valid")
    assert valid["prompt"].tolist() == VALID and valid["prompt_id"].tolist() == [0, 1, 2]


HH = [
    "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for 9 minutes.",
    "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant: Why did",
]


def test_hh_dialogues_become_the_conversation_up_to_the_last_reply(tmp_path, hf_cache):
    """Anthropic/hh-rlhf's layout: whole dialogues in `chosen`, splits train and test."""
    folder = tmp_path / "hh"
    folder.mkdir()
    write(folder / "train.jsonl", HH, column="chosen")
    write(folder / "test.jsonl", HH[:1], column="chosen")
    config = hf_config(
        str(folder), valid_split="test", prompt_column="chosen", prompt_format="hh_dialogue"
    )
    assert load_prompts(config, "train")["prompt"].tolist() == [
        "\n\nHuman: How do I boil an egg?\n\nAssistant:",
        "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:",
    ]
    assert load_prompts(config, "valid")["prompt"].tolist() == [
        "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    ]


def test_rows_that_are_not_dialogues_are_named(tmp_path):
    train = write(tmp_path / "t.jsonl", [HH[0], "just a prompt", None], column="chosen")
    config = file_config(train, train, prompt_column="chosen", prompt_format="hh_dialogue")
    with pytest.raises(DataError, match=r"2 of 3 rows .* not HH dialogues.*rows: \[1, 2\]"):
        load_prompts(config, "train")


def test_hf_unknown_split_and_column_are_data_errors(tmp_path, hf_cache):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "train.jsonl", TRAIN, column="text")
    config = hf_config(str(folder), valid_split="nope")
    with pytest.raises(DataError, match=r"split 'nope'.*data.valid_split"):
        load_prompts(config, "valid")
    with pytest.raises(DataError, match=r"no column 'prompt'.*'text'"):
        load_prompts(config, "train")


def test_hf_missing_dataset_is_a_data_error(tmp_path, hf_cache):
    config = hf_config(str(tmp_path / "does-not-exist"))
    with pytest.raises(DataError, match="cannot load split 'train'"):
        load_prompts(config, "train")


# --- demo --------------------------------------------------------------------------------


def demo_assets(tmp_path: Path) -> DemoAssets:
    train_uri, valid_uri = str(tmp_path / "train.parquet"), str(tmp_path / "valid.parquet")
    store.write_table(train_uri, pd.DataFrame({"prompt_id": [0, 1], "prompt": TRAIN[:2]}))
    store.write_table(valid_uri, pd.DataFrame({"prompt_id": [0, 1, 2], "prompt": VALID}))
    return DemoAssets(str(tmp_path / "model"), train_uri, valid_uri)


def test_demo_source_reads_the_committed_tables(tmp_path):
    config = RunConfig.model_validate({"data": {"num_valid_prompts": 2}})
    assets = demo_assets(tmp_path)
    assert load_prompts(config, "train", assets)["prompt"].tolist() == TRAIN[:2]
    assert load_prompts(config, "valid", assets)["prompt"].tolist() == VALID[:2]


def test_demo_source_without_assets_asks_the_cache(tmp_path, monkeypatch):
    import alt_core.tasks.demo.assets

    calls = []

    def fake_ensure(cache_dir, num_train, num_valid, seed, log=print):
        calls.append((cache_dir, num_train, num_valid, seed))
        return demo_assets(tmp_path)

    monkeypatch.setattr(alt_core.tasks.demo.assets, "ensure_demo_assets", fake_ensure)
    config = RunConfig.model_validate(
        {"seed": 4, "storage": {"cache_dir": str(tmp_path)},
         "data": {"demo_num_train": 2, "demo_num_valid": 3}}
    )  # fmt: skip
    assert load_prompts(config, "valid")["prompt"].tolist() == VALID
    assert calls == [(str(tmp_path), 2, 3, 4)]


def test_bad_split_name():
    with pytest.raises(ValueError, match="split must be"):
        load_prompts(RunConfig(), "test")  # type: ignore[arg-type]


# --- draw --------------------------------------------------------------------------------


def test_draw_prompts_is_seeded_uniform_and_with_replacement():
    prompts = pd.DataFrame({"prompt_id": range(10), "prompt": [f"p{i}" for i in range(10)]})
    a, b = draw_prompts(prompts, 5000, seed=1), draw_prompts(prompts, 5000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(draw_prompts(prompts, 5000, seed=2))
    assert list(a.columns) == ["prompt_id", "prompt"] and list(a.index) == list(range(5000))
    assert (a["prompt"] == "p" + a["prompt_id"].astype(str)).all()  # rows stay whole
    counts = a["prompt_id"].value_counts()
    assert len(counts) == 10 and counts.between(400, 600).all()
    assert len(draw_prompts(prompts.head(2), 7, seed=0)) == 7  # more draws than prompts


def test_draw_prompts_rejects_bad_input():
    prompts = pd.DataFrame({"prompt_id": [0], "prompt": ["x"]})
    with pytest.raises(ValueError, match="positive"):
        draw_prompts(prompts, 0, seed=0)
    with pytest.raises(DataError, match="empty"):
        draw_prompts(prompts.iloc[:0], 3, seed=0)


def test_validate_prompts_resets_ids():
    table = pd.DataFrame({"prompt": ["a", "b"]}, index=[10, 20])
    out = data.validate_prompts(table, "prompt", "test table")
    assert out["prompt_id"].tolist() == [0, 1]
