"""RealToxicityPrompts-style prompts: nested prompt.text, the challenging subset, a
toxicity range and a held-out share, from a saved `datasets` folder and a JSONL file."""

from __future__ import annotations

import pandas as pd
import pytest

from alt_core.config import RunConfig
from alt_core.data import DataError, load_prompts


def _rows(n: int = 200) -> list[dict]:
    return [
        {"filename": f"{i}.txt", "challenging": i % 4 == 0,
         "prompt": {"text": f"Prompt number {i} says", "toxicity": (i % 10) / 10 if i % 7 else None},
         "continuation": {"text": " more", "toxicity": 0.1}}
        for i in range(n)
    ]  # fmt: skip


def _config(**data) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"policy": "gpt2"},
        "feedback": {"provider": "profanity"},
        "data": {"prompt_column": "prompt.text", "holdout_share": 0.2, **data},
    })  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> str:
    import datasets

    folder = tmp_path_factory.mktemp("rtp") / "rtp"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows())}).save_to_disk(folder)
    return str(folder)


def test_filters_and_held_out_share_from_a_saved_dataset(saved):
    config = _config(source="hf", hf_dataset=saved, challenging_only=True,
                     prompt_toxicity_range=[0.0, 0.5])  # fmt: skip
    train, valid = load_prompts(config, "train"), load_prompts(config, "valid")
    rows = pd.DataFrame(_rows())
    tox = rows["prompt"].map(lambda p: p["toxicity"])
    keep = rows[rows["challenging"] & tox.between(0, 0.5)]["prompt"].map(lambda p: p["text"])
    assert sorted([*train["prompt"], *valid["prompt"]]) == sorted(keep)
    assert not set(train["prompt"]) & set(valid["prompt"]) and len(valid) > 0
    # The split does not move when the filters change.
    wider = load_prompts(_config(source="hf", hf_dataset=saved), "valid")
    assert set(valid["prompt"]) <= set(wider["prompt"])


def test_a_jsonl_file_in_the_same_layout(tmp_path):
    path = tmp_path / "rtp.jsonl"
    pd.DataFrame(_rows(50)).to_json(path, orient="records", lines=True)
    config = _config(source="file", train_path=str(path), challenging_only=True)
    assert len(load_prompts(config, "train")) + len(load_prompts(config, "valid")) == 13


def test_missing_filter_column_and_empty_result_are_data_errors(tmp_path, saved):
    path = tmp_path / "plain.jsonl"
    pd.DataFrame({"prompt": {"text": "a"}.values()}).to_json(path, orient="records", lines=True)
    config = _config(source="file", train_path=str(path), prompt_column="prompt",
                     challenging_only=True)  # fmt: skip
    with pytest.raises(DataError, match="no column 'challenging'"):
        load_prompts(config, "train")
    config = _config(source="hf", hf_dataset=saved, prompt_toxicity_range=[0.95, 1.0])
    with pytest.raises(DataError, match="no rows are left after the filters"):
        load_prompts(config, "train")


def test_bad_toxicity_config_is_refused():
    with pytest.raises(ValueError, match="prompt_toxicity_range"):
        _config(source="hf", hf_dataset="x", prompt_toxicity_range=[0.6, 0.2])
    with pytest.raises(ValueError, match="feedback.toxicity.classifier is required"):
        RunConfig.model_validate({"model": {"policy": "gpt2"}, "data": {"source": "hf",
                                  "hf_dataset": "x"}, "feedback": {"provider": "toxicity_classifier"}})  # fmt: skip
